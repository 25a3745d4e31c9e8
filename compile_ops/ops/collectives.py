"""The collectives: for each op, its public wrapper, its single-process reference, its opcheck
samples and its spec row (see spec.py), side by side: the row decorates the wrapper.

Every wrapper returns a NEW tensor and never modifies its input. It resolves ``group`` at trace
time and hands the op constants only: the group's name, and its size or this process's rank
where the fake needs them, so compiled graphs hold strings and ints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from fake_impls import collectives as shapes

from ..groups import GroupLike, group_and_name
from . import kernels
from .arguments import ReduceOpLike, all_to_all_splits, check_one_per_rank, reduce_op_name
from .funcol import switchable
from .spec import Calls, OpSpec

__all__ = [
    "all_gather",
    "all_gatherv",
    "all_reduce",
    "all_to_all",
    "broadcast",
    "gather",
    "reduce_scatter",
    "reduce_scatterv",
]

ops = torch.ops.compile_ops
Tensors = Sequence[torch.Tensor]
F = TypeVar("F", bound=Callable[..., torch.Tensor])

SPECS: dict[str, OpSpec] = {}  # filled by @_collective, in the order of this file


def _collective(schema: str, **row: Any) -> Callable[[F], F]:
    """Add the decorated public wrapper's row to SPECS. The op is named after the wrapper; its
    shape rule is ``fake_impls.collectives.<name>_shape`` and its eager kernel
    ``kernels.<name>``, so the name is written once. ``row``: OpSpec's remaining fields."""

    def add(wrapper: F) -> F:
        name = wrapper.__name__
        shape, kernel = getattr(shapes, f"{name}_shape"), getattr(kernels, name)
        SPECS[name] = OpSpec(name, schema, shape=shape, kernel=kernel, wrapper=wrapper, **row)
        return wrapper

    return add


def _reduced(inputs: Tensors, op: str) -> torch.Tensor:
    """``op`` over ``inputs`` in float64 (int64 for integers), cast back: at least as accurate as
    any backend."""
    dtype = inputs[0].dtype
    wide = torch.float64 if dtype.is_floating_point else torch.int64
    stacked = torch.stack([t.to(wide) for t in inputs])
    reduce = {
        "sum": lambda: stacked.sum(0),
        "avg": lambda: stacked.mean(0),
        "product": lambda: stacked.prod(0),
        "max": lambda: stacked.amax(0),
        "min": lambda: stacked.amin(0),
    }
    return reduce[op]().to(dtype)


# -- all_reduce -----------------------------------------------------------------------------------


@_collective(
    "(Tensor x, str op, str group_name) -> Tensor",
    twin="inplace",
    params=("op",),
    samples=lambda g, rand: [(rand(2 * g.size(), 3), op, g.group_name) for op in ("sum", "max")],
    reference=lambda xs, calls: [_reduced(xs, calls[0]["op"]) for _ in xs],
)
@switchable
def all_reduce(x: torch.Tensor, op: ReduceOpLike = "sum", group: GroupLike = None) -> torch.Tensor:
    """Reduce ``x`` over the group; every rank gets the result in a new tensor."""
    _, name = group_and_name(group, "all_reduce")
    return ops.all_reduce(x, reduce_op_name(op, "all_reduce"), name)


# -- broadcast ------------------------------------------------------------------------------------


@_collective(
    "(Tensor x, int src, str group_name) -> Tensor",
    twin="inplace",
    params=("src",),
    samples=lambda g, rand: [(rand(2 * g.size(), 3), dist.get_global_rank(g, 0), g.group_name)],
    reference=lambda xs, calls: [xs[calls[0]["src"]].clone() for _ in xs],
)
@switchable
def broadcast(x: torch.Tensor, src: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Rank ``src`` (a global rank, as in torch.distributed) sends ``x`` to every rank."""
    _, name = group_and_name(group, "broadcast")
    return ops.broadcast(x, src, name)


# -- all_gather -----------------------------------------------------------------------------------


def _concatenated(xs: Tensors, calls: Calls) -> list[torch.Tensor]:
    return [torch.cat(list(xs), dim=calls[0]["dim"]) for _ in xs]


@_collective(
    "(Tensor x, int dim, int group_size, str group_name) -> Tensor",
    twin="out",
    params=("dim",),
    samples=lambda g, rand: [
        (rand(2 * g.size(), 3), dim, g.size(), g.group_name) for dim in (0, 1)
    ],
    reference=_concatenated,
)
@switchable
def all_gather(x: torch.Tensor, dim: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (all the same shape) along ``dim``."""
    pg, name = group_and_name(group, "all_gather")
    return ops.all_gather(x, dim, pg.size(), name)


# -- all_gatherv ----------------------------------------------------------------------------------


def _rising(g: ProcessGroup) -> list[int]:
    return [r + 1 for r in range(g.size())]  # rank r holds r + 1 rows: uneven from 2 ranks up


@_collective(
    "(Tensor x, SymInt[] sizes, int dim, str group_name) -> Tensor",
    twin="out",
    params=("sizes", "dim"),
    input_extent=lambda kwargs, rank, extent, n: kwargs["sizes"][rank],
    samples=lambda g, rand: [
        (rand(_rising(g)[g.rank()], 3), _rising(g), 0, g.group_name),
    ],
    reference=_concatenated,
)
def all_gatherv(
    x: torch.Tensor, sizes: Sequence[int], dim: int = 0, group: GroupLike = None
) -> torch.Tensor:
    """Concatenate along ``dim`` where rank r contributes ``sizes[r]`` slices."""
    pg, name = group_and_name(group, "all_gatherv")
    check_one_per_rank("all_gatherv", pg, sizes, "sizes")
    return ops.all_gatherv(x, list(sizes), dim, name)


# -- reduce_scatter -------------------------------------------------------------------------------


def _scattered(xs: Tensors, sizes: Sequence[int], call: dict) -> list[torch.Tensor]:
    return list(_reduced(xs, call["op"]).split(list(sizes), dim=call["dim"]))


@_collective(
    "(Tensor x, int dim, str op, int group_size, str group_name) -> Tensor",
    twin="out",
    params=("dim", "op"),
    input_extent=lambda kwargs, rank, extent, n: extent * n,
    samples=lambda g, rand: [
        (rand(2 * g.size(), 3), 0, op, g.size(), g.group_name) for op in ("sum", "avg")
    ],
    reference=lambda xs, calls: _scattered(
        xs, [xs[0].shape[calls[0]["dim"]] // len(xs)] * len(xs), calls[0]
    ),
)
@switchable
def reduce_scatter(
    x: torch.Tensor, dim: int = 0, op: ReduceOpLike = "sum", group: GroupLike = None
) -> torch.Tensor:
    """Reduce ``x`` over the group and keep this rank's equal slice along ``dim``."""
    pg, name = group_and_name(group, "reduce_scatter")
    return ops.reduce_scatter(x, dim, reduce_op_name(op, "reduce_scatter"), pg.size(), name)


# -- reduce_scatterv ------------------------------------------------------------------------------


@_collective(
    "(Tensor x, SymInt[] sizes, int dim, str op, int rank, str group_name) -> Tensor",
    twin="out",
    params=("sizes", "dim", "op"),
    input_extent=lambda kwargs, rank, extent, n: sum(kwargs["sizes"]),
    samples=lambda g, rand: [
        (rand(sum(_rising(g)), 3), _rising(g), 0, "sum", g.rank(), g.group_name),
    ],
    reference=lambda xs, calls: _scattered(xs, calls[0]["sizes"], calls[0]),
)
def reduce_scatterv(
    x: torch.Tensor,
    sizes: Sequence[int],
    dim: int = 0,
    op: ReduceOpLike = "sum",
    group: GroupLike = None,
) -> torch.Tensor:
    """Reduce ``x`` over the group and keep this rank's ``sizes[rank]`` slices along ``dim``."""
    pg, name = group_and_name(group, "reduce_scatterv")
    check_one_per_rank("reduce_scatterv", pg, sizes, "sizes")
    op = reduce_op_name(op, "reduce_scatterv")
    return ops.reduce_scatterv(x, list(sizes), dim, op, pg.rank(), name)


# -- all_to_all -----------------------------------------------------------------------------------


def _exchanged(xs: Tensors, calls: Calls) -> list[torch.Tensor]:
    """Rank s sends ``calls[s]["input_split_sizes"][r]`` rows to rank r (None: equal splits)."""
    n = len(xs)
    splits = [
        c["input_split_sizes"] or [x.shape[0] // n] * n for x, c in zip(xs, calls, strict=True)
    ]
    pieces = [list(x.split(list(s))) for x, s in zip(xs, splits, strict=True)]
    return [torch.cat([pieces[s][r] for s in range(n)]) for r in range(n)]


def _a2a_splits(g: ProcessGroup) -> tuple[list[int], list[int]]:
    """(received, sent) row counts of this rank: uneven, with zeros from 3 ranks up."""
    n, rank = g.size(), g.rank()
    return [(s + rank) % 3 for s in range(n)], [(rank + r) % 3 for r in range(n)]


@_collective(
    "(Tensor x, SymInt[] output_split_sizes, SymInt[] input_split_sizes, str group_name) -> Tensor",
    twin="out",
    params=("output_split_sizes", "input_split_sizes"),
    input_extent=lambda kwargs, rank, extent, n: sum(kwargs["input_split_sizes"]),
    samples=lambda g, rand: [
        (rand(sum(_a2a_splits(g)[1]), 3), *_a2a_splits(g), g.group_name),
    ],
    reference=_exchanged,
)
@switchable
def all_to_all(
    x: torch.Tensor,
    output_split_sizes: Sequence[int] | None = None,
    input_split_sizes: Sequence[int] | None = None,
    group: GroupLike = None,
) -> torch.Tensor:
    """Send ``input_split_sizes[r]`` rows of ``x`` to rank r; receive ``output_split_sizes[r]``.

    ``None`` for both (the default) means equal splits of dim 0 (as in ``all_to_all_single``).
    """
    pg, name = group_and_name(group, "all_to_all")
    splits = all_to_all_splits(x, pg, output_split_sizes, input_split_sizes)
    return ops.all_to_all(x, *splits, name)


# -- gather ---------------------------------------------------------------------------------------


def _gathered(xs: Tensors, calls: Calls) -> list[torch.Tensor]:
    dim, dst = calls[0]["dim"], calls[0]["dst"]
    whole = torch.cat(list(xs), dim=dim)
    return [whole.clone() if r == dst else whole.narrow(dim, 0, 0).clone() for r in range(len(xs))]


@_collective(
    "(Tensor x, int dim, int dst, int group_size, int rank, str group_name) -> Tensor",
    twin="out",
    params=("dim", "dst"),
    samples=lambda g, rand: [
        (rand(2, 3), dim, dist.get_global_rank(g, root), g.size(), dist.get_rank(), g.group_name)
        for dim, root in ((0, 0), (1, g.size() - 1))
    ],
    reference=_gathered,
)
def gather(x: torch.Tensor, dim: int = 0, dst: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (all the same shape) along ``dim`` on rank ``dst`` (a global
    rank, as in torch.distributed); every other rank gets an empty tensor (extent 0 along ``dim``).
    """
    pg, name = group_and_name(group, "gather")
    return ops.gather(x, dim, dst, pg.size(), dist.get_rank(), name)
