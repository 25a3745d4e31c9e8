"""``compile-ops check``: every op and the MoE model, eager and compiled, against a reference;
every op eagerly in every dtype the user guide documents for it.

By default it starts its own ranks (gloo on CPU, NCCL/XCCL when an accelerator is present).
Under ``torchrun`` it joins that world instead, so the same command checks a multi-node job.
Rows print as they finish; ``--json`` prints one document at the end instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from compile_ops.testing.cases import OPS

from . import world as worlds
from .outcome import Job, Outcome, Row, close, measure
from .tables import Progress, Table, format_table, use_colour

HEADER = ("section", "case", "world", "backend", "eager", "compiled", "breaks", "time")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    worlds.add_world_arguments(parser, "default: 2 on CPU, min(2, devices) with an accelerator")
    parser.add_argument(
        "--ops", default=None, help=f"comma-separated subset of {','.join(OPS)} (default: all)"
    )
    parser.add_argument("--no-moe", action="store_true", help="skip the MoE model rows")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document (docs/commands.md)"
    )


def check_case(case) -> Outcome:
    """On one rank: eager and compiled results, graph breaks and time (runs inside a worker)."""
    import torch
    import torch.distributed as dist

    from compile_ops.testing.compare import to_device_keeping_layout

    rank = dist.get_rank()
    with measure() as out:
        x = to_device_keeping_layout(case.input(rank), case.device)
        want = case.expected()[rank].to(case.device)

        def fn(t):
            return case.post(case.call(case.pre(t), rank))

        out.eager_ok = close(fn(x), want)
        torch._dynamo.reset()
        out.graph_breaks = torch._dynamo.explain(fn)(x).graph_break_count
        torch._dynamo.reset()
        out.compiled_ok = close(torch.compile(fn, fullgraph=True)(x), want)
    return out


def collective_jobs(world_size: int, device: str, ops: tuple[str, ...]) -> list[Job]:
    from compile_ops.testing.cases import standard_cases

    cases = [c.with_(device=device) for c in standard_cases(world_size) if c.op in ops]
    return [Job("collectives", str(c), check_case, (c,)) for c in cases]


def check_dtypes(cases) -> Outcome:
    """On one rank: one op in each of its documented dtypes, eager, against the reference.

    Eager only, to stay cheap (a compile per dtype would cost seconds each): the row's compiled
    verdict is not run (shown as ``-``; ``compiled_ok`` true, ``graph_breaks`` 0 in JSON).
    """
    import torch.distributed as dist

    from compile_ops.testing.compare import to_device_keeping_layout

    rank = dist.get_rank()
    with measure() as out:
        failed = []
        for case in cases:
            dtype = str(case.dtype).removeprefix("torch.")
            try:
                x = to_device_keeping_layout(case.input(rank), case.device)
                got = case.post(case.call(case.pre(x), rank))
                if not close(got, case.expected()[rank].to(case.device)):
                    failed.append(f"{dtype}: wrong result")
            except Exception as e:  # the row names every dtype that fails, and why
                failed.append(f"{dtype}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        out.eager_ok, out.compiled_ok, out.graph_breaks = not failed, True, 0
        out.error = "; ".join(failed)
    return out


def dtype_jobs(world_size: int, device: str, ops: tuple[str, ...]) -> list[Job]:
    """One row per op: the op in every dtype it documents (``cases.dtypes_for``)."""
    from compile_ops.testing.cases import dtype_cases

    by_op: dict[str, list] = {}
    for case in dtype_cases(world_size):
        if case.op in ops:
            by_op.setdefault(case.op, []).append(case.with_(device=device))
    return [
        Job("dtypes", f"{op} x {len(cases)} dtypes", check_dtypes, (cases,))
        for op, cases in by_op.items()
    ]


def _mark(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def cells(row: Row) -> list[str]:
    eager_only = row.section == "dtypes"  # see check_dtypes
    return [
        row.section,
        row.name,
        str(row.world_size),
        row.backend,
        _mark(row.eager_ok),
        "-" if eager_only else _mark(row.compiled_ok),
        "-" if eager_only else str(row.graph_breaks),
        f"{row.seconds:.2f}s",
    ]


def _dtype_note() -> str:
    from compile_ops.testing.cases import DTYPES, REDUCIBLE_DTYPES

    def names(dtypes):
        return ", ".join(str(d).removeprefix("torch.") for d in dtypes)

    return (
        f"dtypes rows (eager): the reductions in {names(REDUCIBLE_DTYPES)}; the other ops also "
        f"in {names(d for d in DTYPES if d not in REDUCIBLE_DTYPES)}"
    )


def patch_table() -> str:
    """The Inductor patches, their state and why, from the registry's public status rows."""
    import inductor_patches

    rows = inductor_patches.status()
    if not rows:
        return "no inductor patches registered"
    return format_table(("patch", "state", "why"), [tuple(r) for r in rows])


def run_jobs(
    world: worlds.World, jobs: list[Job], progress: Progress | None, show_rows: bool = True
) -> list[Row]:
    """Run every job on every rank. With ``progress`` (the lead), show which one runs and,
    with ``show_rows``, print each row as soon as it is known."""
    names = [(len(j.section), len(j.name)) for j in jobs]
    widths = [max(w) for w in zip(*names, strict=True)] if jobs else [0, 0]
    table, paint = Table(HEADER, [*widths, 5, 7, 4, 4, 6, 8]), use_colour(sys.stdout)
    show_rows = show_rows and progress is not None
    if progress:
        progress.total = len(jobs)
    if show_rows:
        progress.emit(table.head())
    rows = []
    for job in jobs:
        if progress:
            progress.status(f"{job.section} {job.name}")
        row = _run_job(world, job)
        rows.append(row)
        if progress:
            progress.step()
        if show_rows:
            progress.emit(table.line(cells(row), None if row.ok else "red", paint))
    if progress:
        progress.clear()
    return rows


def _run_job(world: worlds.World, job: Job) -> Row:
    """The job's row; a rank that dies or does not answer in time fails the row, not the run
    (the next job starts the ranks afresh)."""
    start = time.perf_counter()
    try:
        per_rank = world.run(job.fn, *job.args)
    except Exception as e:
        why = sorted({t.strip().splitlines()[-1] for t in getattr(e, "failures", {}).values()})
        error = "; ".join(why) or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        elapsed = time.perf_counter() - start
        return Row(
            job.section, job.name, world.size, world.backend, False, False, -1, elapsed, error
        )
    return Row.from_ranks(job.section, job.name, world.size, world.backend, per_rank)


def report_json(rows: list[Row], world: worlds.World) -> dict:
    import inductor_patches

    from .schema import document

    return document(
        "check",
        ok=all(r.ok for r in rows),
        world_size=world.size,
        backend=world.backend,
        patches=[r._asdict() for r in inductor_patches.status()],
        rows=[r.to_json() for r in rows],
    )


def run(args: argparse.Namespace) -> int:
    from .check_moe import moe_jobs

    ops = worlds.parse_choices(args.ops, OPS, "--ops") if args.ops else OPS
    plan = worlds.plan_world(args, "compile-ops check")
    lead = worlds.is_lead_process()
    if lead and not args.json:
        print("Inductor patches")
        print(patch_table())
        print()
    progress = Progress(0, "check") if lead else None
    if progress:
        progress.status("joining torchrun's world" if plan.size is None else "starting ranks")
    with plan.start() as world:
        device = worlds.device_for(world.backend, "compile-ops check")
        jobs = collective_jobs(world.size, device, ops) + dtype_jobs(world.size, device, ops)
        if not args.no_moe:
            jobs += moe_jobs(world.size, device)
        rows = run_jobs(world, jobs, progress, show_rows=not args.json)
        if lead and args.json:
            print(json.dumps(report_json(rows, world), indent=1))
        elif lead:
            for r in rows:
                if r.error:
                    print(f"  {r.name}: {r.error}")
            print(f"\n{_dtype_note()}")
            print(f"\n{sum(r.ok for r in rows)}/{len(rows)} checks passed")
    return 0 if all(r.ok for r in rows) else 1
