"""Shape rules and fake kernels for the ``compile_ops`` collectives.

Each rule validates its arguments and returns the output shape. The same rule runs in the fake
kernel (at trace time, on SymInts) and in the eager kernel (before any communication), so a bad
argument fails identically in both, on every rank that passes the same arguments.

A rule takes the op's arguments except the trailing ``group_name``: ``rule(x, *args)``. The
fake factories at the end turn a rule into the fake of an op and of its twin.

Only arguments are read here, never process state: the FX graph cache is shared by all ranks of a
machine, so a shape taken from ``dist.get_rank()`` would be served to the wrong rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NAMESPACE = "compile_ops"
REDUCE_OPS = ("sum", "avg", "product", "min", "max")

# Reductions need arithmetic; data movement only needs the bytes.
_REDUCIBLE_DTYPES = frozenset(
    {
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
    }
)

SymInt = int | torch.SymInt


def _check(cond, op: str, message: str) -> None:
    # torch._check_value raises ValueError on a concrete False and, for SymBools, records a
    # guard or a runtime assert instead of specialising.
    torch._check_value(cond, lambda: f"compile_ops.{op}: {message}")


def check_reduce_op(op: str, reduce_op: str, dtype: torch.dtype) -> None:
    _check(reduce_op in REDUCE_OPS, op, f"op={reduce_op!r} is not one of {REDUCE_OPS}")
    _check(
        dtype in _REDUCIBLE_DTYPES,
        op,
        f"x.dtype={dtype} cannot be reduced; supported: {sorted(map(str, _REDUCIBLE_DTYPES))}",
    )
    if reduce_op == "avg":
        _check(dtype.is_floating_point, op, f"op='avg' needs a floating dtype, got x.dtype={dtype}")


def normalize_dim(op: str, x: torch.Tensor, dim: int) -> int:
    _check(x.dim() > 0, op, "x must have at least one dimension")
    _check(
        -x.dim() <= dim < x.dim(),
        op,
        f"dim={dim} is out of range for x with {x.dim()} dimensions",
    )
    return dim % x.dim()


def _check_group_size(op: str, group_size: int) -> None:
    _check(group_size >= 1, op, f"group_size={group_size} must be positive")


def _check_sizes(op: str, name: str, sizes: Sequence[SymInt], expected_sum: SymInt, what: str):
    _check(len(sizes) >= 1, op, f"{name} must have one entry per rank, got an empty list")
    for i, s in enumerate(sizes):
        _check(s >= 0, op, f"{name}[{i}]={s} is negative")
    _check(
        sum(sizes) == expected_sum, op, f"{name} sum to {sum(sizes)} but {what} is {expected_sum}"
    )


def _with_extent(x: torch.Tensor, dim: int, extent: SymInt) -> list[SymInt]:
    shape = list(x.shape)
    shape[dim] = extent
    return shape


def all_reduce_shape(x: torch.Tensor, op: str) -> list[SymInt]:
    check_reduce_op("all_reduce", op, x.dtype)
    return list(x.shape)


def broadcast_shape(x: torch.Tensor, src: int) -> list[SymInt]:
    _check(src >= 0, "broadcast", f"src={src} must be a non-negative global rank")
    return list(x.shape)


def all_gather_shape(x: torch.Tensor, dim: int, group_size: int) -> list[SymInt]:
    _check_group_size("all_gather", group_size)
    dim = normalize_dim("all_gather", x, dim)
    return _with_extent(x, dim, x.shape[dim] * group_size)


def all_gatherv_shape(x: torch.Tensor, sizes: Sequence[SymInt], dim: int) -> list[SymInt]:
    dim = normalize_dim("all_gatherv", x, dim)
    _check(len(sizes) >= 1, "all_gatherv", "sizes must have one entry per rank, got []")
    for i, s in enumerate(sizes):
        _check(s >= 0, "all_gatherv", f"sizes[{i}]={s} is negative")
    return _with_extent(x, dim, sum(sizes))


def reduce_scatter_shape(x: torch.Tensor, dim: int, op: str, group_size: int) -> list[SymInt]:
    check_reduce_op("reduce_scatter", op, x.dtype)
    _check_group_size("reduce_scatter", group_size)
    dim = normalize_dim("reduce_scatter", x, dim)
    extent = x.shape[dim]
    _check(
        extent % group_size == 0,
        "reduce_scatter",
        f"x.shape[{dim}]={extent} is not divisible by the group size {group_size}",
    )
    return _with_extent(x, dim, extent // group_size)


def reduce_scatterv_shape(
    x: torch.Tensor, sizes: Sequence[SymInt], dim: int, op: str, rank: int
) -> list[SymInt]:
    check_reduce_op("reduce_scatterv", op, x.dtype)
    dim = normalize_dim("reduce_scatterv", x, dim)
    _check_sizes("reduce_scatterv", "sizes", sizes, x.shape[dim], f"x.shape[{dim}]")
    _check(0 <= rank < len(sizes), "reduce_scatterv", f"rank={rank} is outside sizes")
    return _with_extent(x, dim, sizes[rank])


def all_to_all_shape(
    x: torch.Tensor, output_split_sizes: Sequence[SymInt], input_split_sizes: Sequence[SymInt]
) -> list[SymInt]:
    _check(x.dim() > 0, "all_to_all", "x must have at least one dimension")
    _check(
        len(output_split_sizes) == len(input_split_sizes),
        "all_to_all",
        f"output_split_sizes has {len(output_split_sizes)} entries but input_split_sizes has "
        f"{len(input_split_sizes)}; both need one per rank",
    )
    _check_sizes("all_to_all", "input_split_sizes", input_split_sizes, x.shape[0], "x.shape[0]")
    for i, s in enumerate(output_split_sizes):
        _check(s >= 0, "all_to_all", f"output_split_sizes[{i}]={s} is negative")
    return _with_extent(x, 0, sum(output_split_sizes))


def gather_shape(x: torch.Tensor, dim: int, dst: int, group_size: int, rank: int) -> list[SymInt]:
    """Every rank's ``x`` along ``dim`` on global rank ``dst``; an empty slice on the others.

    ``rank`` is this process's global rank: the shape depends on it, so it is an argument.
    """
    _check_group_size("gather", group_size)
    _check(dst >= 0, "gather", f"dst={dst} must be a non-negative global rank")
    dim = normalize_dim("gather", x, dim)
    return _with_extent(x, dim, x.shape[dim] * group_size if rank == dst else 0)


def check_out(op: str, out: torch.Tensor, x: torch.Tensor, shape: Sequence[SymInt]) -> None:
    _check(out.dtype == x.dtype, op, f"out.dtype={out.dtype} differs from x.dtype={x.dtype}")
    _check(out.device == x.device, op, f"out is on {out.device} but x is on {x.device}")
    _check(
        list(out.shape) == list(shape),
        op,
        f"out.shape={list(out.shape)} but the result has shape {list(shape)}",
    )


# Fake kernels, one factory per kind of overload. Each calls the op's shape rule with the op's
# arguments minus the trailing ``group_name`` (the convention every shape rule above follows).


def functional_fake(rule: Callable[..., Sequence[SymInt]]) -> Callable[..., torch.Tensor]:
    """Fake of an out-of-place op: a new tensor of the rule's shape."""

    def fake(x, *args):
        return x.new_empty(rule(x, *args[:-1]))

    return fake


def inplace_fake(rule: Callable[..., Sequence[SymInt]]) -> Callable[..., torch.Tensor]:
    """Fake of an in-place twin (``<op>_``): checks the arguments, returns the tensor it writes."""

    def fake(x, *args):
        rule(x, *args[:-1])
        return x

    return fake


def out_fake(op: str, rule: Callable[..., Sequence[SymInt]]) -> Callable[..., torch.Tensor]:
    """Fake of an ``.out`` twin: checks the arguments and ``out``, returns ``out``."""

    def fake(x, *args, out):
        check_out(op, out, x, rule(x, *args[:-1]))
        return out

    return fake
