"""``compile-ops check``: every op, eager and compiled, against the single-process reference.

By default it starts its own ranks (gloo on CPU, NCCL when GPUs are present). Under ``torchrun``
(the env:// variables are set) it joins that world instead, so the same command checks a
multi-node job.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .testing.cases import Case, standard_cases

Runner = Callable[..., list[Any]]


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

    @classmethod
    def from_ranks(cls, section: str, name: str, world_size: int, backend: str, per_rank) -> Row:
        """One row from every rank's result dict: ok only where every rank is ok."""
        return cls(
            section,
            name,
            world_size,
            backend,
            eager_ok=all(r["eager_ok"] for r in per_rank),
            compiled_ok=all(r["compiled_ok"] for r in per_rank),
            graph_breaks=max(r["graph_breaks"] for r in per_rank),
            seconds=max(r["seconds"] for r in per_rank),
            error="; ".join(sorted({r["error"] for r in per_rank if r["error"]})),
        )

    @property
    def ok(self) -> bool:
        return self.eager_ok and self.compiled_ok and self.graph_breaks == 0 and not self.error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--world-size",
        "-n",
        type=int,
        default=None,
        help="ranks to start (default: 2 on CPU, min(2, GPUs) with GPUs)",
    )
    parser.add_argument(
        "--backend",
        choices=("gloo", "nccl", "xccl"),
        default=None,
        help="default: nccl/xccl when an accelerator is present, else gloo",
    )


def _default_backend() -> str:
    if not torch.accelerator.is_available():
        return "gloo"
    return {"cuda": "nccl", "xpu": "xccl"}.get(torch.accelerator.current_accelerator().type, "gloo")


def _device_for(backend: str) -> str:
    if backend == "gloo":
        return "cpu"
    if not torch.accelerator.is_available():
        raise SystemExit(f"compile-ops check: --backend {backend} needs an accelerator; none found")
    return torch.accelerator.current_accelerator().type


def check_case(case: Case) -> dict[str, Any]:
    """On one rank: eager and compiled results, graph breaks and time (runs inside a worker)."""
    rank = dist.get_rank()
    x = case.input(rank).to(case.device)
    want = case.expected()[rank].to(case.device)

    def fn(t):
        return case.post(case.call(case.pre(t), rank))

    out: dict[str, Any] = {"eager_ok": False, "compiled_ok": False, "graph_breaks": -1, "error": ""}
    start = time.perf_counter()
    try:
        out["eager_ok"] = _close(fn(x), want)
        torch._dynamo.reset()
        out["graph_breaks"] = torch._dynamo.explain(fn)(x).graph_break_count
        torch._dynamo.reset()
        out["compiled_ok"] = _close(torch.compile(fn, fullgraph=True)(x), want)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    out["seconds"] = time.perf_counter() - start
    return out


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    try:
        torch.testing.assert_close(got, want)
    except AssertionError:
        return False
    return True


def collective_rows(run: Runner, world_size: int, backend: str) -> list[Row]:
    device = _device_for(backend)
    rows = []
    for case in standard_cases(world_size):
        case = case.with_(device=device)
        per_rank = run(check_case, case)
        rows.append(Row.from_ranks("collectives", str(case), world_size, backend, per_rank))
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("section", "case", "world", "backend", "eager", "compiled", "breaks", "time")
    body = [
        (
            r.section,
            r.name,
            str(r.world_size),
            r.backend,
            _mark(r.eager_ok),
            _mark(r.compiled_ok),
            str(r.graph_breaks),
            f"{r.seconds:.2f}s",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
    for r in rows:
        if r.error:
            print(f"  {r.name}: {r.error}")


def print_patches() -> None:
    import inductor_patches

    print("Inductor patches")
    print(inductor_patches.format_status())
    print()


def _mark(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def _under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def run(args: argparse.Namespace) -> int:
    backend = args.backend or _default_backend()
    if _under_torchrun():
        return _run_in_existing_world(backend)
    world_size = args.world_size
    if world_size is None:
        world_size = 2 if backend == "gloo" else min(2, torch.accelerator.device_count())
    if world_size < 1:
        raise SystemExit(f"compile-ops check: --world-size must be at least 1, got {world_size}")
    if backend != "gloo" and world_size > torch.accelerator.device_count():
        raise SystemExit(
            f"compile-ops check: {backend} needs one device per rank; {world_size} ranks but "
            f"{torch.accelerator.device_count()} devices (use --world-size or --backend gloo)"
        )
    from .moe.check import moe_rows
    from .testing.pool import WorkerPool

    pool = WorkerPool(world_size, backend).start()
    try:
        rows = collective_rows(pool.run, world_size, backend)
        rows += moe_rows(pool.run, world_size, backend)
    finally:
        pool.close()
    print_patches()
    print_table(rows)
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed")
    return 1 if failed else 0


def _run_in_existing_world(backend: str) -> int:
    import compile_ops  # noqa: F401

    if backend != "gloo":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.accelerator.set_device_index(local % torch.accelerator.device_count())
    dist.init_process_group(backend)
    world_size = dist.get_world_size()

    def everywhere(fn, *a):
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, fn(*a))
        return gathered

    from .moe.check import moe_rows

    rows = collective_rows(everywhere, world_size, backend)
    rows += moe_rows(everywhere, world_size, backend)
    failed = [r for r in rows if not r.ok]
    if dist.get_rank() == 0:
        print_patches()
        print_table(rows)
        print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed")
    dist.destroy_process_group()
    return 1 if failed else 0
