"""``compile-ops check``'s units: a job (one case, run on every rank), each rank's verdict on
it, and the row that sums up every rank's.

An :class:`Outcome` packs into a fixed-size byte tensor, so ranks under ``torchrun`` exchange
them with a plain ``all_gather`` (no pickling, no NumPy).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["Job", "Outcome", "Row", "close", "measure"]

_NUMBERS = struct.Struct("<??id")  # eager_ok, compiled_ok, graph_breaks, seconds
_ERROR_BYTES = 1024


@dataclass
class Outcome:
    eager_ok: bool = False
    compiled_ok: bool = False
    graph_breaks: int = -1
    seconds: float = 0.0
    error: str = ""

    def pack(self) -> torch.Tensor:
        error = self.error.encode()[:_ERROR_BYTES].ljust(_ERROR_BYTES, b"\0")
        numbers = _NUMBERS.pack(self.eager_ok, self.compiled_ok, self.graph_breaks, self.seconds)
        return torch.frombuffer(bytearray(numbers + error), dtype=torch.uint8)

    @classmethod
    def unpack(cls, data: torch.Tensor) -> Outcome:
        raw = bytes(data.tolist())
        eager_ok, compiled_ok, breaks, seconds = _NUMBERS.unpack_from(raw)
        error = raw[_NUMBERS.size :].rstrip(b"\0").decode(errors="replace")
        return cls(eager_ok, compiled_ok, breaks, seconds, error)


@contextmanager
def measure() -> Iterator[Outcome]:
    """An :class:`Outcome` to fill in; exceptions become its error, the time its seconds."""
    out = Outcome()
    start = time.perf_counter()
    try:
        yield out
    except Exception as e:  # reported in the row; the exit code is non-zero
        first = str(e).splitlines()[0] if str(e) else ""
        out.error = f"{type(e).__name__}: {first}"
    out.seconds = time.perf_counter() - start


def close(got: torch.Tensor, want: torch.Tensor, **tolerance: float) -> bool:
    try:
        torch.testing.assert_close(got, want, **tolerance)
    except AssertionError:
        return False
    return True


@dataclass
class Row:
    section: str
    name: str
    world_size: int
    backend: str
    eager_ok: bool
    compiled_ok: bool
    graph_breaks: int
    seconds: float
    error: str = ""
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = self.eager_ok and self.compiled_ok and self.graph_breaks == 0 and not self.error

    @classmethod
    def from_ranks(
        cls, section: str, name: str, world_size: int, backend: str, per_rank: Sequence[Outcome]
    ) -> Row:
        """One row from every rank's outcome: ok only where every rank is ok."""
        return cls(
            section,
            name,
            world_size,
            backend,
            eager_ok=all(r.eager_ok for r in per_rank),
            compiled_ok=all(r.compiled_ok for r in per_rank),
            graph_breaks=max(r.graph_breaks for r in per_rank),
            seconds=max(r.seconds for r in per_rank),
            error="; ".join(sorted({r.error for r in per_rank if r.error})),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One row to produce: its section and name, and the function every rank runs for it."""

    section: str
    name: str
    fn: Callable[..., Outcome]
    args: tuple
