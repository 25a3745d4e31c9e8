"""Terminal output shared by the commands: aligned tables, colour, and a live progress line.

Tables go to stdout. Progress goes to stderr: on a terminal one line, rewritten in place as work
finishes; elsewhere (a pipe, a CI log) one plain line per step, so logs show where time went.
Colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

__all__ = ["Progress", "Table", "colour", "format_table", "use_colour"]

_COLOURS = {"red": "31", "yellow": "33", "green": "32"}


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def colour(text: str, name: str | None, enabled: bool) -> str:
    if not enabled or name is None:
        return text
    return f"\033[{_COLOURS[name]}m{text}\033[0m"


class Table:
    """Columns of fixed widths, so rows can be printed one by one as they are produced.

    ``widths`` defaults to the header's; pass the widest known cells to align a stream of rows.
    ``paint(row)`` may name a colour for a row's last column (applied after padding).
    """

    def __init__(self, header: Sequence[str], widths: Sequence[int] | None = None):
        self.header = list(header)
        self.widths = [
            max(len(h), w) for h, w in zip(header, widths or [0] * len(header), strict=True)
        ]

    @classmethod
    def fitting(cls, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
        """A table whose columns fit ``header`` and every one of ``rows``."""
        return cls(header, [max((len(r[i]) for r in rows), default=0) for i in range(len(header))])

    def head(self) -> str:
        """The header and a rule under each column (the last, free-text one: under its title)."""
        rule = [*self.widths[:-1], len(self.header[-1])]
        return "\n".join([self.line(self.header), "  ".join("-" * w for w in rule)])

    def line(
        self, cells: Sequence[str], last_colour: str | None = None, paint: bool = False
    ) -> str:
        padded = [c.ljust(w) for c, w in zip(cells, self.widths, strict=True)]
        padded[-1] = colour(padded[-1].rstrip(), last_colour, paint)
        return "  ".join(padded).rstrip()


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A whole table at once: header, a rule per column, one line per row."""
    table = Table.fitting(header, rows)
    return "\n".join([table.head(), *(table.line(r) for r in rows)])


class Progress:
    """``[n/total] elapsed  what is running``: rewritten in place on a terminal, else one line
    per step. Call :meth:`emit` for output (stdout) so it never lands inside the progress line."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None):
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.start = time.perf_counter()
        self._shown = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def status(self, what: str) -> None:
        """Show that ``what`` is under way."""
        text = f"{self.label} [{self.done}/{self.total}] {self.elapsed():.0f}s  {what}"
        if self.live:
            self.stream.write("\r\033[K" + text)
            self._shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def step(self) -> None:
        self.done += 1

    def emit(self, text: str, out: TextIO | None = None) -> None:
        """Print ``text`` (to stdout by default) above the progress line."""
        self.clear()
        out = out or sys.stdout
        out.write(text + "\n")
        out.flush()

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
