"""What the eager kernels need from a ProcessGroup, at the lowest cost per call.

A small collective costs about 20 µs inside c10d, and whatever a kernel adds is paid on every
call, eager and compiled alike (Inductor calls these same kernels). So the kernels call
ProcessGroup methods directly (torch.distributed's Python wrappers re-check what is checked here
and cost ~8 µs more), keep one options object per collective and reduction, remember what they
learned about a group, and remember shape-rule verdicts (~1.5 µs per torch._check).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.distributed_c10d import (
    AllgatherOptions,
    AllreduceOptions,
    AllToAllOptions,
    ReduceScatterOptions,
)

from ..groups import GroupError, group_from_name

REDUCE_OP = {
    "sum": dist.ReduceOp.SUM,
    "avg": dist.ReduceOp.AVG,
    "product": dist.ReduceOp.PRODUCT,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
}
# Backends with a native AVG; elsewhere avg is a sum followed by a division.
NATIVE_AVG = frozenset({"nccl", "gloo"})
# Backends whose list all_gather accepts uneven sizes (NCCL groups one broadcast per rank).
UNEVEN_ALL_GATHER = frozenset({"nccl"})
# Data types every backend (gloo, NCCL, XCCL) moves as they are. Movement ops send any other
# dtype as its bytes (complex as pairs of reals): int16, the unsigned ints, float8, bits.
_CARRIED_AS_IS = frozenset(
    {
        torch.bool,
        torch.int8,
        torch.uint8,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    }
)
# Reductions a backend lacks for a dtype run in a wider one: neither gloo nor NCCL reduces int16.
# The result is cast back, which wraps exactly as int16 arithmetic would.
_WIDENED = {torch.int16: torch.int32}


def wait(work) -> None:
    # NCCL returns no Work for a synchronous call: it already sits on the current stream.
    if work is not None:
        work.wait()


def options(cls, **fields):
    opts = cls()
    # The caller waits for the result, as torch.distributed does for async_op=False; NCCL then
    # runs the collective on the current stream instead of a side stream plus events.
    opts.asyncOp = False
    for name, value in fields.items():
        setattr(opts, name, value)
    return opts


@functools.lru_cache(maxsize=64)
def rooted_options(cls, root: int):
    """Options of a collective with a root (broadcast, gather), one object per root rank."""
    opts = options(cls, rootRank=root)
    if hasattr(opts, "rootTensor"):
        opts.rootTensor = 0
    return opts


ALL_REDUCE_OPTS = {k: options(AllreduceOptions, reduceOp=v) for k, v in REDUCE_OP.items()}
REDUCE_SCATTER_OPTS = {k: options(ReduceScatterOptions, reduceOp=v) for k, v in REDUCE_OP.items()}
ALL_GATHER_OPTS = options(AllgatherOptions)
ALL_TO_ALL_OPTS = options(AllToAllOptions)

_SHAPES: dict[tuple, tuple[int, ...]] = {}
_SHAPES_MAX = 4096
# What a group serves, looked up once per group (weak: a destroyed group is not kept alive).
_DEVICE_TYPES: weakref.WeakKeyDictionary[ProcessGroup, frozenset[str]]
_DEVICE_TYPES = weakref.WeakKeyDictionary()


def cached_shape(rule: Callable[..., Sequence[int]], x: torch.Tensor, args: tuple) -> tuple:
    """``rule(x, *args)``, remembered per (x's shape and dtype, args); ``args`` must be hashable.

    Shape rules read nothing else, so a verdict holds for every call with the same key. Failures
    are not remembered: a bad argument raises the rule's own error on every call.
    """
    key = (rule, x.shape, x.dtype, *args)
    shape = _SHAPES.get(key)
    if shape is None:
        shape = tuple(rule(x, *args))
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[key] = shape
    return shape


def group(op: str, group_name: str, x: torch.Tensor) -> ProcessGroup:
    """The live group ``group_name``, checked to serve ``x``'s device."""
    pg = group_from_name(group_name, op)
    device_types = _DEVICE_TYPES.get(pg)
    if device_types is None:
        device_types = _DEVICE_TYPES[pg] = frozenset(d.type for d in pg._device_types)
    if x.device.type not in device_types:
        raise GroupError(
            f"compile_ops.{op}: x is on {x.device} but group {group_name!r} "
            f"({dist.get_backend(pg)}) serves only {sorted(device_types)} tensors"
        )
    return pg


def check_group_size(op: str, pg: ProcessGroup, expected: int, what: str) -> None:
    if pg.size() != expected:
        raise GroupError(
            f"compile_ops.{op}: {what} is {expected} but the group has {pg.size()} ranks"
        )


def check_rank(op: str, pg: ProcessGroup, rank: int) -> None:
    """A rank-dependent op was traced with ``rank``: it must run on that rank."""
    if pg.rank() != rank:
        raise GroupError(
            f"compile_ops.{op}: rank={rank} but this process is rank {pg.rank()} of the "
            "group (was the code compiled on another rank?)"
        )


def wire(t: torch.Tensor) -> torch.Tensor:
    """Contiguous ``t`` as every backend carries it, in the same memory: as it is, complex as
    pairs of reals, anything else as its bytes (a trailing dim of ``itemsize`` bytes, so splits
    along dim 0 keep their meaning)."""
    if t.dtype in _CARRIED_AS_IS:
        return t
    if t.is_complex():
        return torch.view_as_real(t)
    return t.unsqueeze(-1).view(torch.uint8)


def reducible(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous, in a dtype the backends reduce: ``t`` itself where possible, else a copy
    (non-contiguous, or widened)."""
    wide = _WIDENED.get(t.dtype)
    if wide is not None:
        return t.to(wide, memory_format=torch.contiguous_format)
    return t if t.is_contiguous() else t.contiguous()


def leading(t: torch.Tensor, dim: int) -> torch.Tensor | None:
    """``t`` with ``dim`` moved to the front as a contiguous *view*, or None if that needs a copy."""
    moved = t.movedim(dim, 0) if dim else t  # a new view costs ~1 µs; dim 0 is the usual case
    return moved if moved.is_contiguous() else None


def reduction(op: str, pg: ProcessGroup) -> tuple[str, bool]:
    """The reduction to ask the backend for, and whether to divide by the group size after it."""
    if op == "avg" and dist.get_backend(pg) not in NATIVE_AVG:
        return "sum", True
    return op, False
