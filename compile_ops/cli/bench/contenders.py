"""What ``compile-ops bench`` races: each way of running the same collective.

(a) raw in-place c10d into a preallocated output, the floor every wrapper adds to;
(b) torch's ``_c10d_functional`` op + wait; (c) our public op eager; (d) our op in a compiled
function; (e) that compiled function replayed from a captured graph. For the per-call cost of
tiny eager calls, also the cheapest ways to wrap a c10d call in an op of one's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

import compile_ops

__all__ = [
    "VARIANTS",
    "VARIANT_TITLES",
    "Compiled",
    "funcol",
    "math",
    "ours",
    "process_group_all_reduce",
    "raw",
    "raw_output",
    "wrapped_all_reduce",
]

VARIANTS = ("raw", "funcol", "eager", "compiled", "graph")
VARIANT_TITLES = {
    "raw": "(a) raw c10d",
    "funcol": "(b) funcol+wait",
    "eager": "(c) ours eager",
    "compiled": "(d) ours compiled",
    "graph": "(e) ours graph",
}
F = torch.ops._c10d_functional


def _equal_splits(x: torch.Tensor, world: int) -> list[int]:
    return [x.shape[0] // world] * world


def ours(op: str, x: torch.Tensor, world: int) -> torch.Tensor:
    if op == "all_reduce":
        return compile_ops.all_reduce(x)
    if op == "all_gather":
        return compile_ops.all_gather(x)
    if op == "reduce_scatter":
        return compile_ops.reduce_scatter(x)
    if op == "all_to_all":
        splits = _equal_splits(x, world)
        return compile_ops.all_to_all(x, splits, splits)
    raise ValueError(f"compile-ops bench: unknown op {op!r}")


def funcol(op: str, x: torch.Tensor, world: int, name: str) -> torch.Tensor:
    if op == "all_reduce":
        out = F.all_reduce(x, "sum", name)
    elif op == "all_gather":
        out = F.all_gather_into_tensor(x, world, name)
    elif op == "reduce_scatter":
        out = F.reduce_scatter_tensor(x, "sum", world, name)
    elif op == "all_to_all":
        splits = _equal_splits(x, world)
        out = F.all_to_all_single(x, splits, splits, name)
    else:
        raise ValueError(f"compile-ops bench: unknown op {op!r}")
    return F.wait_tensor(out)


def raw(op: str, x: torch.Tensor, out: torch.Tensor | None, group: dist.ProcessGroup) -> None:
    """The in-place c10d call, into a preallocated ``out``: the floor every wrapper adds to."""
    if op == "all_reduce":
        dist.all_reduce(x, group=group)
    elif op == "all_gather":
        dist.all_gather_into_tensor(out, x, group=group)
    elif op == "reduce_scatter":
        dist.reduce_scatter_tensor(out, x, group=group)
    elif op == "all_to_all":
        dist.all_to_all_single(out, x, group=group)
    else:
        raise ValueError(f"compile-ops bench: unknown op {op!r}")


def raw_output(op: str, x: torch.Tensor, world: int) -> torch.Tensor | None:
    if op == "all_gather":
        return x.new_empty(x.shape[0] * world)
    if op == "reduce_scatter":
        return x.new_empty(x.shape[0] // world)
    if op == "all_to_all":
        return torch.empty_like(x)
    return None


def math(x: torch.Tensor) -> torch.Tensor:
    """The compiled work a collective is added to (one fused elementwise kernel)."""
    return x * 2 + 1


class Compiled:
    """One compiled function per (kind, op), shared across sizes and dtypes."""

    def __init__(self, world: int, name: str):
        self.world, self.name = world, name
        self._cache: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {}

    def get(self, kind: str, op: str) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (kind, "" if kind == "math" else op)
        if key not in self._cache:
            world, name = self.world, self.name
            fns = {
                "ours": lambda x: ours(op, x, world),
                "math": math,
                "math+ours": lambda x: ours(op, math(x), world),
                "math+funcol": lambda x: funcol(op, math(x), world, name),
            }
            self._cache[key] = torch.compile(fns[kind], fullgraph=True, dynamic=True)
        return self._cache[key]


# ----------------------------------------------------------------------------------------------
# The dispatch study's reference points: the cheapest ways to wrap a c10d call.


def process_group_all_reduce(group: dist.ProcessGroup) -> Callable[[torch.Tensor], None]:
    """``ProcessGroup.allreduce`` called directly, waited on as ``async_op=False`` would be:
    what our kernels call, without ``torch.distributed``'s Python wrapper around it."""
    options = dist.AllreduceOptions()
    options.reduceOp = dist.ReduceOp.SUM
    options.asyncOp = False

    def call(x: torch.Tensor) -> None:
        work = group.allreduce([x], options)
        if work is not None:  # NCCL returns none for a synchronous call
            work.wait()

    return call


def _clone_and_all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    out = x.clone()
    # torch's own name -> group lookup, the one its functional collectives use: the reference
    # pays what funcol pays, not our alias resolution.
    dist.all_reduce(out, group=dist.distributed_c10d._resolve_process_group(group_name))
    return out


_lib = torch.library.Library("compile_ops_bench", "DEF")
_lib.define("bare_all_reduce(Tensor x, str group_name) -> Tensor")
_lib.impl("bare_all_reduce", _clone_and_all_reduce, "CompositeExplicitAutograd")


@torch.library.custom_op("compile_ops_bench::custom_all_reduce", mutates_args=())
def _custom_all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    return _clone_and_all_reduce(x, group_name)


def wrapped_all_reduce() -> dict[str, Callable[[torch.Tensor, str], torch.Tensor]]:
    """The same clone + all_reduce behind a bare ``Library.define`` op and a ``custom_op``."""
    return {
        "Library.define op": torch.ops.compile_ops_bench.bare_all_reduce,
        "torch.library.custom_op": _custom_all_reduce,
    }
