"""``compile-ops audit NAMESPACE``: can ``torch.compile(fullgraph=True)`` trace each op in it?

The verdicts come from :func:`fake_impls.audit`; this module prints them: one row per overload
(``--failing``: the failing ones only), then each problem, then the counts. Exit code 1 when any
op fails, 2 when the namespace has no ops or a module given to ``--import`` does not import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from .tables import Table, colour, use_colour

HEADER = ("op", "fake kernel", "schema", "opcheck", "status")
STATUS_COLOURS = {"fail": "red", "warn": "yellow", "ok": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("namespace", help="a torch.ops namespace, e.g. compile_ops, aten, mylib")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: the library that defines the namespace (repeatable)",
    )
    parser.add_argument("--failing", action="store_true", help="show only the failing ops")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document (docs/commands.md)"
    )


def format_reports(reports: Sequence, failing_only: bool = False, paint: bool = False) -> str:
    """The table, one line per problem, and the counts (which always cover every op)."""
    shown = [r for r in reports if r.status == "fail"] if failing_only else list(reports)
    rows = [(r.op, r.fake or "none", r.schema, r.opcheck, r.status) for r in shown]
    table = Table.fitting(HEADER, rows)
    lines = [table.head()]
    lines += [table.line(row, STATUS_COLOURS[row[-1]], paint) for row in rows]
    lines += [
        f"{colour(r.status, STATUS_COLOURS[r.status], paint)}: {r.op}: {p}"
        for r in shown
        for p in r.problems
    ]
    lines.append(", ".join(f"{n} {s}" for s, n in counts(reports).items()))
    return "\n".join(lines)


def counts(reports: Sequence) -> dict[str, int]:
    return {s: sum(r.status == s for r in reports) for s in ("ok", "warn", "fail")}


def _import(module: str) -> str | None:
    """None, or why ``module`` did not import (one line)."""
    try:
        importlib.import_module(module)
    except Exception as e:  # any failure of the user's module is reported, not raised
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def run(args: argparse.Namespace) -> int:
    from fake_impls import audit

    for module in args.imports:
        if (why := _import(module)) is not None:
            print(f"compile-ops audit: --import {module} failed: {why}", file=sys.stderr)
            return 2
    try:
        reports = audit(args.namespace)
    except ValueError as e:
        print(f"compile-ops audit: {e} (see --import)", file=sys.stderr)
        return 2
    failed = any(r.status == "fail" for r in reports)
    if args.json:
        from .schema import document

        shown = [r for r in reports if r.status == "fail" or not args.failing]
        ops = [asdict(r) for r in shown]
        doc = document(
            "audit", ok=not failed, namespace=args.namespace, counts=counts(reports), ops=ops
        )
        print(json.dumps(doc, indent=1))
    else:
        print(format_reports(reports, args.failing, use_colour(sys.stdout)))
    return 1 if failed else 0
