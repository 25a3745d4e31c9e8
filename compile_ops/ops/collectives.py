"""The collectives: for each op, its public wrapper, its single-process reference, its opcheck
samples and its spec row (see spec.py), side by side.

Every wrapper returns a NEW tensor and never modifies its input. It resolves ``group`` at trace
time and hands the op constants only: the group's name, and its size or this process's rank
where the fake needs them, so compiled graphs hold strings and ints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from fake_impls import collectives as shapes
from fake_impls.collectives import REDUCE_OPS, error_class

from ..groups import GroupError, GroupLike, group_and_name
from . import kernels
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
# A reduction: one of REDUCE_OPS, or torch.distributed's ReduceOp (dist.ReduceOp.SUM, ...).
ReduceOpLike = str | dist.ReduceOp | dist.ReduceOp.RedOpType


def _check_one_per_rank(op: str, pg: ProcessGroup, sizes: Sequence[int], name: str) -> None:
    _check_count(op, name, len(sizes), pg.size())


@torch.compiler.assume_constant_result
def _check_count(op: str, name: str, given: int, group_size: int) -> None:
    # Called, not traced, by Dynamo (its arguments are constants), so the error it raises reaches
    # the caller as it is (see error_class) instead of as Dynamo's "observed exception".
    if given != group_size:
        raise error_class(GroupError)(
            f"compile_ops.{op}: len({name}) is {given} but the group has {group_size} ranks"
        )


@torch.compiler.assume_constant_result
def _refuse(kind: str, message: str) -> None:
    # Like _check_count: called, not traced, by Dynamo, so the error reaches the caller as itself
    # (see error_class), not as Dynamo's "Observed exception" of an error raised in traced code.
    raise error_class({"ValueError": ValueError, "TypeError": TypeError}[kind])(message)


def _reduce_op(op: ReduceOpLike, fn: str) -> str:
    """``op`` as the ops spell it: a string as given, a ``ReduceOp`` by its lower-case name.

    A ReduceOp the ops lack (BAND, PREMUL_SUM, ...) becomes ``"ReduceOp.<NAME>"``, which the
    shape rule rejects with the list of supported reductions.
    """
    if isinstance(op, str):
        return op
    name = getattr(getattr(op, "op", op), "name", None)  # a ReduceOp holds a RedOpType
    if not isinstance(name, str):
        _refuse(
            "TypeError",
            f"compile_ops.{fn}: op must be a str or a torch.distributed.ReduceOp, "
            f"got {type(op).__name__}",
        )
    return name.lower() if name.lower() in REDUCE_OPS else f"ReduceOp.{name}"


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


@switchable
def all_reduce(x: torch.Tensor, op: ReduceOpLike = "sum", group: GroupLike = None) -> torch.Tensor:
    """Reduce ``x`` over the group; every rank gets the result in a new tensor."""
    _, name = group_and_name(group, "all_reduce")
    return ops.all_reduce(x, _reduce_op(op, "all_reduce"), name)


ALL_REDUCE = OpSpec(
    "all_reduce",
    "(Tensor x, str op, str group_name) -> Tensor",
    shape=shapes.all_reduce_shape,
    kernel=kernels.all_reduce,
    twin="inplace",
    wrapper=all_reduce,
    params=("op",),
    samples=lambda g, rand: [(rand(2 * g.size(), 3), op, g.group_name) for op in ("sum", "max")],
    reference=lambda xs, calls: [_reduced(xs, calls[0]["op"]) for _ in xs],
)


# -- broadcast ------------------------------------------------------------------------------------


@switchable
def broadcast(x: torch.Tensor, src: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Rank ``src`` (a global rank, as in torch.distributed) sends ``x`` to every rank."""
    _, name = group_and_name(group, "broadcast")
    return ops.broadcast(x, src, name)


BROADCAST = OpSpec(
    "broadcast",
    "(Tensor x, int src, str group_name) -> Tensor",
    shape=shapes.broadcast_shape,
    kernel=kernels.broadcast,
    twin="inplace",
    wrapper=broadcast,
    params=("src",),
    samples=lambda g, rand: [(rand(2 * g.size(), 3), dist.get_global_rank(g, 0), g.group_name)],
    reference=lambda xs, calls: [xs[calls[0]["src"]].clone() for _ in xs],
)


# -- all_gather -----------------------------------------------------------------------------------


@switchable
def all_gather(x: torch.Tensor, dim: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (all the same shape) along ``dim``."""
    pg, name = group_and_name(group, "all_gather")
    return ops.all_gather(x, dim, pg.size(), name)


def _concatenated(xs: Tensors, calls: Calls) -> list[torch.Tensor]:
    return [torch.cat(list(xs), dim=calls[0]["dim"]) for _ in xs]


ALL_GATHER = OpSpec(
    "all_gather",
    "(Tensor x, int dim, int group_size, str group_name) -> Tensor",
    shape=shapes.all_gather_shape,
    kernel=kernels.all_gather,
    twin="out",
    wrapper=all_gather,
    params=("dim",),
    samples=lambda g, rand: [
        (rand(2 * g.size(), 3), dim, g.size(), g.group_name) for dim in (0, 1)
    ],
    reference=_concatenated,
)


# -- all_gatherv ----------------------------------------------------------------------------------


def all_gatherv(
    x: torch.Tensor, sizes: Sequence[int], dim: int = 0, group: GroupLike = None
) -> torch.Tensor:
    """Concatenate along ``dim`` where rank r contributes ``sizes[r]`` slices."""
    pg, name = group_and_name(group, "all_gatherv")
    _check_one_per_rank("all_gatherv", pg, sizes, "sizes")
    return ops.all_gatherv(x, list(sizes), dim, name)


def _rising(g: ProcessGroup) -> list[int]:
    return [r + 1 for r in range(g.size())]  # rank r holds r + 1 rows: uneven from 2 ranks up


ALL_GATHERV = OpSpec(
    "all_gatherv",
    "(Tensor x, SymInt[] sizes, int dim, str group_name) -> Tensor",
    shape=shapes.all_gatherv_shape,
    kernel=kernels.all_gatherv,
    twin="out",
    wrapper=all_gatherv,
    params=("sizes", "dim"),
    input_extent=lambda kwargs, rank, extent, n: kwargs["sizes"][rank],
    samples=lambda g, rand: [
        (rand(_rising(g)[g.rank()], 3), _rising(g), 0, g.group_name),
    ],
    reference=_concatenated,
)


# -- gather ---------------------------------------------------------------------------------------


def gather(x: torch.Tensor, dim: int = 0, dst: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (all the same shape) along ``dim`` on rank ``dst`` (a global
    rank, as in torch.distributed); every other rank gets an empty tensor (extent 0 along ``dim``).
    """
    pg, name = group_and_name(group, "gather")
    return ops.gather(x, dim, dst, pg.size(), dist.get_rank(), name)


def _gathered(xs: Tensors, calls: Calls) -> list[torch.Tensor]:
    dim, dst = calls[0]["dim"], calls[0]["dst"]
    whole = torch.cat(list(xs), dim=dim)
    return [whole.clone() if r == dst else whole.narrow(dim, 0, 0).clone() for r in range(len(xs))]


GATHER = OpSpec(
    "gather",
    "(Tensor x, int dim, int dst, int group_size, int rank, str group_name) -> Tensor",
    shape=shapes.gather_shape,
    kernel=kernels.gather,
    twin="out",
    wrapper=gather,
    params=("dim", "dst"),
    samples=lambda g, rand: [
        (rand(2, 3), dim, dist.get_global_rank(g, root), g.size(), dist.get_rank(), g.group_name)
        for dim, root in ((0, 0), (1, g.size() - 1))
    ],
    reference=_gathered,
)


# -- reduce_scatter -------------------------------------------------------------------------------


@switchable
def reduce_scatter(
    x: torch.Tensor, dim: int = 0, op: ReduceOpLike = "sum", group: GroupLike = None
) -> torch.Tensor:
    """Reduce ``x`` over the group and keep this rank's equal slice along ``dim``."""
    pg, name = group_and_name(group, "reduce_scatter")
    return ops.reduce_scatter(x, dim, _reduce_op(op, "reduce_scatter"), pg.size(), name)


def _scattered(xs: Tensors, sizes: Sequence[int], call: dict) -> list[torch.Tensor]:
    return list(_reduced(xs, call["op"]).split(list(sizes), dim=call["dim"]))


REDUCE_SCATTER = OpSpec(
    "reduce_scatter",
    "(Tensor x, int dim, str op, int group_size, str group_name) -> Tensor",
    shape=shapes.reduce_scatter_shape,
    kernel=kernels.reduce_scatter,
    twin="out",
    wrapper=reduce_scatter,
    params=("dim", "op"),
    input_extent=lambda kwargs, rank, extent, n: extent * n,
    samples=lambda g, rand: [
        (rand(2 * g.size(), 3), 0, op, g.size(), g.group_name) for op in ("sum", "avg")
    ],
    reference=lambda xs, calls: _scattered(
        xs, [xs[0].shape[calls[0]["dim"]] // len(xs)] * len(xs), calls[0]
    ),
)


# -- reduce_scatterv ------------------------------------------------------------------------------


def reduce_scatterv(
    x: torch.Tensor,
    sizes: Sequence[int],
    dim: int = 0,
    op: ReduceOpLike = "sum",
    group: GroupLike = None,
) -> torch.Tensor:
    """Reduce ``x`` over the group and keep this rank's ``sizes[rank]`` slices along ``dim``."""
    pg, name = group_and_name(group, "reduce_scatterv")
    _check_one_per_rank("reduce_scatterv", pg, sizes, "sizes")
    op = _reduce_op(op, "reduce_scatterv")
    return ops.reduce_scatterv(x, list(sizes), dim, op, pg.rank(), name)


REDUCE_SCATTERV = OpSpec(
    "reduce_scatterv",
    "(Tensor x, SymInt[] sizes, int dim, str op, int rank, str group_name) -> Tensor",
    shape=shapes.reduce_scatterv_shape,
    kernel=kernels.reduce_scatterv,
    twin="out",
    wrapper=reduce_scatterv,
    params=("sizes", "dim", "op"),
    input_extent=lambda kwargs, rank, extent, n: sum(kwargs["sizes"]),
    samples=lambda g, rand: [
        (rand(sum(_rising(g)), 3), _rising(g), 0, "sum", g.rank(), g.group_name),
    ],
    reference=lambda xs, calls: _scattered(xs, calls[0]["sizes"], calls[0]),
)


# -- all_to_all -----------------------------------------------------------------------------------


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
    if output_split_sizes is None and input_split_sizes is None:
        n = pg.size()
        if x.shape[0] % n != 0:
            _refuse(
                "ValueError",
                f"compile_ops.all_to_all: x.shape[0]={x.shape[0]} is not divisible by the group "
                f"size {n} (pass split sizes for uneven splits)",
            )
        output_split_sizes = input_split_sizes = [x.shape[0] // n] * n
    elif output_split_sizes is None or input_split_sizes is None:
        _refuse(
            "ValueError",
            "compile_ops.all_to_all: give both output_split_sizes and input_split_sizes, or neither",
        )
    _check_one_per_rank("all_to_all", pg, output_split_sizes, "output_split_sizes")
    _check_one_per_rank("all_to_all", pg, input_split_sizes, "input_split_sizes")
    return ops.all_to_all(x, list(output_split_sizes), list(input_split_sizes), name)


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


ALL_TO_ALL = OpSpec(
    "all_to_all",
    "(Tensor x, SymInt[] output_split_sizes, SymInt[] input_split_sizes, str group_name) -> Tensor",
    shape=shapes.all_to_all_shape,
    kernel=kernels.all_to_all,
    twin="out",
    wrapper=all_to_all,
    params=("output_split_sizes", "input_split_sizes"),
    input_extent=lambda kwargs, rank, extent, n: sum(kwargs["input_split_sizes"]),
    samples=lambda g, rand: [
        (rand(sum(_a2a_splits(g)[1]), 3), *_a2a_splits(g), g.group_name),
    ],
    reference=_exchanged,
)


SPECS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        ALL_REDUCE,
        BROADCAST,
        ALL_GATHER,
        ALL_GATHERV,
        REDUCE_SCATTER,
        REDUCE_SCATTERV,
        ALL_TO_ALL,
        GATHER,
    )
}
