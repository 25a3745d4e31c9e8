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

import functools
from collections.abc import Callable, Sequence

import torch

NAMESPACE = "compile_ops"
REDUCE_OPS = ("sum", "avg", "product", "min", "max")

# What the reductions accept (they need arithmetic); data movement takes any dtype.
REDUCIBLE_DTYPES = frozenset(
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


def error_class(kind: type[Exception]) -> type[Exception]:
    """The class to raise ``kind`` as: ``kind`` itself, or, while torch.compile traces, a
    subclass of ``kind`` that is also Dynamo's ``Unsupported``.

    Dynamo wraps any other exception raised while it traces (ours would arrive as a
    ``TorchRuntimeError`` whose first line is Dynamo's own). An ``Unsupported`` it hands on as it
    is: under ``fullgraph=True`` the caller gets our message first and can still catch ``kind``;
    otherwise Dynamo breaks the graph before the call, which then runs eagerly and raises ``kind``.
    """
    if torch._guards.TracingContext.try_get() is None:
        return kind
    return _traced_error_class(kind)


@functools.cache
def _traced_error_class(kind: type[Exception]) -> type[Exception]:
    try:
        from torch._dynamo.exc import Unsupported
    except ImportError:  # a torch without Dynamo: nothing wraps our errors
        return kind

    class TracedError(kind, Unsupported):
        def __init__(self, message: str) -> None:
            Unsupported.__init__(self, message)

    # Shown as the class it stands for: "ValueError: compile_ops.<op>: ...".
    TracedError.__name__ = TracedError.__qualname__ = kind.__qualname__
    TracedError.__module__ = kind.__module__
    return TracedError


def shown(value):
    """``value`` for an error message: a symbolic size as the number it stands for now.

    A check fails at trace time only on the values it was traced with, so those are the ones
    to show, not the symbols (``s77``) they are traced as.
    """
    if isinstance(value, torch.SymInt):
        hint = value.node.hint
        return value if hint is None else int(hint)
    if isinstance(value, (list, tuple, torch.Size)):
        return [shown(v) for v in value]
    return value


def _check(cond, op: str, message: Callable[[], str]) -> None:
    """Raise ``ValueError("compile_ops.<op>: <message()>")`` unless ``cond`` holds.

    ``cond`` may be a SymBool. On sizes traced as symbols it becomes a guard, so a compiled
    graph is only reused where it holds. On sizes read from tensor data (unbacked, e.g.
    ``.tolist()`` splits) it is decided here only where it is provably false: otherwise torch
    would check it at run time with a message of its own (``Eq(u2 + u3, s77)``) before the eager
    kernel, which runs this same rule on the real values and raises this message.
    """
    if isinstance(cond, torch.SymBool):
        from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols, guard_or_true

        if free_unbacked_symbols(cond):
            cond = guard_or_true(cond)
    torch._check_with(error_class(ValueError), cond, lambda: f"compile_ops.{op}: {message()}")


def check_reduce_op(op: str, reduce_op: str, dtype: torch.dtype) -> None:
    _check(reduce_op in REDUCE_OPS, op, lambda: f"op={reduce_op!r} is not one of {REDUCE_OPS}")
    _check(
        dtype in REDUCIBLE_DTYPES,
        op,
        lambda: f"x.dtype={dtype} cannot be reduced; supported: "
        f"{sorted(map(str, REDUCIBLE_DTYPES))}",
    )
    if reduce_op == "avg":
        _check(
            dtype.is_floating_point,
            op,
            lambda: f"op='avg' needs a floating dtype, got x.dtype={dtype}",
        )


def normalize_dim(op: str, x: torch.Tensor, dim: int) -> int:
    _check(x.dim() > 0, op, lambda: "x must have at least one dimension")
    _check(
        -x.dim() <= dim < x.dim(),
        op,
        lambda: f"dim={dim} is out of range for x with {x.dim()} dimensions",
    )
    return dim % x.dim()


def _check_group_size(op: str, group_size: int) -> None:
    _check(group_size >= 1, op, lambda: f"group_size={group_size} must be positive")


def _check_nonnegative(op: str, name: str, sizes: Sequence[SymInt]) -> None:
    _check(len(sizes) >= 1, op, lambda: f"{name} must have one entry per rank, got []")
    for i, s in enumerate(sizes):
        _check(s >= 0, op, lambda i=i, s=s: f"{name}[{i}]={shown(s)} is negative")


def _check_sizes(op: str, name: str, sizes: Sequence[SymInt], expected_sum: SymInt, what: str):
    _check_nonnegative(op, name, sizes)
    _check(
        sum(sizes) == expected_sum,
        op,
        lambda: f"{name} sum to {shown(sum(sizes))} but {what} is {shown(expected_sum)}",
    )


def _with_extent(x: torch.Tensor, dim: int, extent: SymInt) -> list[SymInt]:
    shape = list(x.shape)
    shape[dim] = extent
    return shape


def all_reduce_shape(x: torch.Tensor, op: str) -> list[SymInt]:
    check_reduce_op("all_reduce", op, x.dtype)
    return list(x.shape)


def broadcast_shape(x: torch.Tensor, src: int) -> list[SymInt]:
    _check(src >= 0, "broadcast", lambda: f"src={src} must be a non-negative global rank")
    return list(x.shape)


def all_gather_shape(x: torch.Tensor, dim: int, group_size: int) -> list[SymInt]:
    _check_group_size("all_gather", group_size)
    dim = normalize_dim("all_gather", x, dim)
    return _with_extent(x, dim, x.shape[dim] * group_size)


def all_gatherv_shape(x: torch.Tensor, sizes: Sequence[SymInt], dim: int) -> list[SymInt]:
    dim = normalize_dim("all_gatherv", x, dim)
    _check_nonnegative("all_gatherv", "sizes", sizes)
    return _with_extent(x, dim, sum(sizes))


def reduce_scatter_shape(x: torch.Tensor, dim: int, op: str, group_size: int) -> list[SymInt]:
    check_reduce_op("reduce_scatter", op, x.dtype)
    _check_group_size("reduce_scatter", group_size)
    dim = normalize_dim("reduce_scatter", x, dim)
    extent = x.shape[dim]
    _check(
        extent % group_size == 0,
        "reduce_scatter",
        lambda: f"x.shape[{dim}]={shown(extent)} is not divisible by the group size {group_size}",
    )
    return _with_extent(x, dim, extent // group_size)


def reduce_scatterv_shape(
    x: torch.Tensor, sizes: Sequence[SymInt], dim: int, op: str, rank: int
) -> list[SymInt]:
    check_reduce_op("reduce_scatterv", op, x.dtype)
    dim = normalize_dim("reduce_scatterv", x, dim)
    _check_sizes("reduce_scatterv", "sizes", sizes, x.shape[dim], f"x.shape[{dim}]")
    _check(0 <= rank < len(sizes), "reduce_scatterv", lambda: f"rank={rank} is outside sizes")
    return _with_extent(x, dim, sizes[rank])


def all_to_all_shape(
    x: torch.Tensor, output_split_sizes: Sequence[SymInt], input_split_sizes: Sequence[SymInt]
) -> list[SymInt]:
    _check(x.dim() > 0, "all_to_all", lambda: "x must have at least one dimension")
    _check(
        len(output_split_sizes) == len(input_split_sizes),
        "all_to_all",
        lambda: f"output_split_sizes has {len(output_split_sizes)} entries but input_split_sizes "
        f"has {len(input_split_sizes)}; both need one per rank",
    )
    _check_sizes("all_to_all", "input_split_sizes", input_split_sizes, x.shape[0], "x.shape[0]")
    _check_nonnegative("all_to_all", "output_split_sizes", output_split_sizes)
    return _with_extent(x, 0, sum(output_split_sizes))


def gather_shape(x: torch.Tensor, dim: int, dst: int, group_size: int, rank: int) -> list[SymInt]:
    """Every rank's ``x`` along ``dim`` on global rank ``dst``; an empty slice on the others.

    ``rank`` is this process's global rank: the shape depends on it, so it is an argument.
    """
    _check_group_size("gather", group_size)
    _check(dst >= 0, "gather", lambda: f"dst={dst} must be a non-negative global rank")
    dim = normalize_dim("gather", x, dim)
    return _with_extent(x, dim, x.shape[dim] * group_size if rank == dst else 0)


def check_out(op: str, out: torch.Tensor, x: torch.Tensor, shape: Sequence[SymInt]) -> None:
    _check(
        out.dtype == x.dtype, op, lambda: f"out.dtype={out.dtype} differs from x.dtype={x.dtype}"
    )
    _check(out.device == x.device, op, lambda: f"out is on {out.device} but x is on {x.device}")

    def message() -> str:
        return f"out.shape={shown(out.shape)} but the result has shape {shown(shape)}"

    _check(out.dim() == len(shape), op, message)
    for have, want in zip(out.shape, shape, strict=True):
        _check(have == want, op, message)


# Fake kernels, one factory per kind of overload. Each calls the op's shape rule with the op's
# arguments minus the trailing ``group_name`` (the convention every shape rule above follows).
# register_fake also makes a fake the op's kernel for meta tensors; a collective given those
# outside fake mode (no data, nothing to send) raises instead of returning a shape.


def _refuse_meta(op: str, x: torch.Tensor) -> None:
    if x.is_meta:
        from torch._subclasses.fake_tensor import FakeTensor

        if not isinstance(x, FakeTensor):
            raise ValueError(
                f"compile_ops.{op}: x is on the meta device, which holds no data, so nothing "
                "would be sent; trace with FakeTensorMode or torch.compile to get shapes"
            )


def functional_fake(op: str, rule: Callable[..., Sequence[SymInt]]) -> Callable[..., torch.Tensor]:
    """Fake of an out-of-place op: a new tensor of the rule's shape."""

    def fake(x, *args):
        _refuse_meta(op, x)
        return x.new_empty(rule(x, *args[:-1]))

    return fake


def inplace_fake(op: str, rule: Callable[..., Sequence[SymInt]]) -> Callable[..., torch.Tensor]:
    """Fake of an in-place twin (``<op>_``): checks the arguments, returns the tensor it writes."""

    def fake(x, *args):
        _refuse_meta(op, x)
        rule(x, *args[:-1])
        return x

    return fake


def out_fake(op: str, rule: Callable[..., Sequence[SymInt]]) -> Callable[..., torch.Tensor]:
    """Fake of an ``.out`` twin: checks the arguments and ``out``, returns ``out``."""

    def fake(x, *args, out):
        _refuse_meta(op, x)
        check_out(op, out, x, rule(x, *args[:-1]))
        return out

    return fake
