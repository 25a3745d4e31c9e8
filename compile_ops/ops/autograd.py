"""Gradients of the collectives, and the two conjugate pairs for replicated code.

Convention: each rank seeds the gradient of its own outputs, and the quantity differentiated is
the sum of every rank's loss. Under it the adjoint of a data movement is the reverse movement,
summed where copies of one value met: ``all_gather`` <-> ``reduce_scatter`` (sum),
``all_gatherv`` <-> ``reduce_scatterv`` (sum), ``all_to_all`` <-> the transposed ``all_to_all``,
``broadcast`` -> sum onto ``src``. These hold whatever the caller does with the result, so they are
registered on the ops (eager and compiled code both differentiate through them).

``all_reduce`` has no such gradient. Its result is usually consumed by code every rank runs
identically (a row-parallel layer's output): the gradient is then already complete on each rank
and the backward is the identity. Under the sum-of-losses convention it is an all-reduce. Both
are in use, and guessing wrong is off by a factor of the group size, so the op refuses a gradient
and the caller picks a side with :func:`reduce_from_group` or :func:`copy_to_group`. The same
holds for ``reduce_scatter(v)`` with ``min``/``max`` (the winner is a matter of ties) and
``product`` (no adjoint where an input is zero); ``avg`` is linear and has one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fake_impls.collectives import NAMESPACE

from ..groups import GroupLike, group_from_name, resolve_group
from . import consistency
from .collectives import SPECS

__all__ = ["GradientError", "copy_to_group", "reduce_from_group"]

ops = torch.ops.compile_ops
# Reductions that are linear in x, and what the backward scales the gathered gradient by.
_LINEAR_REDUCTIONS = {"sum": False, "avg": True}


class GradientError(RuntimeError):
    """A gradient was required through a collective whose gradient depends on how its result is used."""


def _refuse(op: str, what: str) -> None:
    raise GradientError(
        f"compile_ops.{op}: x requires grad, but {what} has no gradient that holds for every "
        "use of its result. If every rank consumes the sum identically (e.g. a row-parallel "
        "layer's output), use compile_ops.reduce_from_group (forward all-reduce, backward "
        "identity); if each rank's gradient is a partial sum, use copy_to_group on the input of "
        "the rank-local part (forward identity, backward all-reduce). Under torch.no_grad() or "
        "on x.detach() the op runs as is."
    )


def _wants_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


# ----------------------------------------------------------------------------------------------
# Movement ops: one backward each, registered with torch.library.register_autograd.


def _all_gather_backward(ctx, grad):
    dim, group_size, group_name = ctx.args
    if grad.is_complex():  # reductions carry complex numbers as pairs of reals
        dim %= grad.dim()
        real = ops.reduce_scatter(torch.view_as_real(grad), dim, "sum", group_size, group_name)
        return torch.view_as_complex(real), None, None, None
    return ops.reduce_scatter(grad, dim, "sum", group_size, group_name), None, None, None


def _all_gatherv_backward(ctx, grad):
    # The adjoint is reduce_scatterv(grad, sizes, dim, "sum", rank). Its output shape depends on
    # this rank, which the forward op does not carry, and a rank read from process state at trace
    # time would be baked into a graph that the compile caches share between ranks. An all_to_all
    # needs no rank: each rank sends every other rank its slice of grad, receives one slice of
    # its own extent from each rank and sums them (the same traffic as a reduce-scatter).
    sizes, dim, group_name = ctx.args
    own = ctx.extent
    rows = grad.movedim(dim, 0)
    received = ops.all_to_all(rows, [own] * len(sizes), list(sizes), group_name)
    summed = received.unflatten(0, (len(sizes), own)).sum(0)
    return summed.movedim(0, dim), None, None, None


def _all_to_all_backward(ctx, grad):
    output_split_sizes, input_split_sizes, group_name = ctx.args
    return ops.all_to_all(grad, input_split_sizes, output_split_sizes, group_name), None, None, None


def _broadcast_backward(ctx, grad):
    src, group_name = ctx.args
    return ops.broadcast_backward(grad, src, group_name), None, None


def _broadcast_backward_backward(ctx, grad):
    src, group_name = ctx.args
    return ops.broadcast(grad, src, group_name), None, None


def _keep_args(ctx, inputs, output) -> None:
    ctx.args = tuple(inputs[1:])


def _keep_args_and_extent(ctx, inputs, output) -> None:
    x, sizes, dim, group_name = inputs
    ctx.args = (sizes, dim % x.dim(), group_name)
    ctx.extent = x.shape[dim]


# broadcast's adjoint needs the rank at run time (src gets the sum, the others zeros), so it is an
# op of its own rather than a composition of ops whose graph would depend on the tracing rank.
BROADCAST_BACKWARD_SCHEMA = "broadcast_backward(Tensor grad, int src, str group_name) -> Tensor"


def _broadcast_backward_kernel(grad: torch.Tensor, src: int, group_name: str) -> torch.Tensor:
    """The sum of every rank's ``grad`` on rank ``src``; zeros on every other rank."""
    pg = group_from_name(group_name, "broadcast_backward")
    out = grad.clone(memory_format=torch.contiguous_format)
    dist.reduce(out, dst=src, op=dist.ReduceOp.SUM, group=pg)
    if dist.get_rank() != src:
        out.zero_()  # the backend may have used this rank's buffer as scratch
    return out


# ----------------------------------------------------------------------------------------------
# Reductions: an autograd kernel that refuses before any byte moves.


def _reduce_scatter_backward(ctx, grad):
    dim, op, group_size, group_name = ctx.args
    out = ops.all_gather(grad, dim, group_size, group_name)
    return (out / group_size if _LINEAR_REDUCTIONS[op] else out), None, None, None, None


def _reduce_scatterv_backward(ctx, grad):
    sizes, dim, op, _rank, group_name = ctx.args
    out = ops.all_gatherv(grad, sizes, dim, group_name)
    return (out / len(sizes) if _LINEAR_REDUCTIONS[op] else out), None, None, None, None, None


def _checked_autograd_kernel(op_name: str, backward, reduce_op_index: int):
    """The autograd kernel ``register_autograd`` would build, plus a refusal before the forward.

    ``register_autograd`` offers no hook that runs before the forward, and a refused gradient
    must raise before any communication; so this builds the same ``autograd.Function`` itself.
    """
    op = getattr(ops, op_name).default

    class Backward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():
                out = op(*args)
            ctx.args = args[1:]
            return out

        @staticmethod
        def backward(ctx, grad):
            return backward(ctx, grad)

    def kernel(*args):
        if not _wants_grad(args[0]):
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)
        reduce_op = args[reduce_op_index]
        if reduce_op not in _LINEAR_REDUCTIONS:
            _refuse(op_name, f"op={reduce_op!r}")
        return Backward.apply(*args)

    return kernel


def _all_reduce_autograd(x: torch.Tensor, op: str, group_name: str) -> torch.Tensor:
    if _wants_grad(x):
        _refuse("all_reduce", "all_reduce")
    with torch._C._AutoDispatchBelowAutograd():
        return ops.all_reduce.default(x, op, group_name)


def _twin_autograd(name: str, mutated: str):
    """Autograd kernel of an in-place or out= twin: no gradient, and the write is recorded.

    A twin writes a buffer the caller owns (static buffers of a captured graph); it has no
    backward. Bumping the written tensor's version lets autograd catch a tensor that an earlier
    op saved for its backward and the twin then overwrote.
    """
    packet, _, overload = name.partition(".")
    op = getattr(getattr(ops, packet), overload or "default")
    functional = packet.removesuffix("_")

    def kernel(*args, **kwargs):
        target = kwargs[mutated] if mutated in kwargs else args[0]
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            which = "x" if args[0].requires_grad else mutated
            raise GradientError(
                f"compile_ops.{name}: {which} requires grad, but the in-place and out= forms "
                f"have no gradient; use the functional compile_ops.{functional}"
            )
        with torch._C._AutoDispatchBelowAutograd():
            result = op(*args, **kwargs)
        torch.autograd.graph.increment_version(target)
        return result

    return kernel


def _register(lib: torch.library.Library) -> None:
    """Define ``broadcast_backward`` and register every collective's autograd kernel."""
    lib.define(BROADCAST_BACKWARD_SCHEMA)
    lib.impl(
        "broadcast_backward",
        consistency.checked("broadcast_backward", _broadcast_backward_kernel),
        "CompositeExplicitAutograd",
    )
    torch.library.register_fake(
        f"{NAMESPACE}::broadcast_backward",
        lambda grad, src, group_name: torch.empty_like(grad),
        lib=lib,
    )
    torch.fx.node.has_side_effect(ops.broadcast_backward.default)
    for name, backward, setup in (
        ("all_gather", _all_gather_backward, _keep_args),
        ("all_gatherv", _all_gatherv_backward, _keep_args_and_extent),
        ("all_to_all", _all_to_all_backward, _keep_args),
        ("broadcast", _broadcast_backward, _keep_args),
        ("broadcast_backward", _broadcast_backward_backward, _keep_args),
    ):
        torch.library.register_autograd(
            f"{NAMESPACE}::{name}", backward, setup_context=setup, lib=lib
        )
    for spec in SPECS.values():
        mutated = "x" if spec.twin == "inplace" else "out"
        lib.impl(spec.twin_name, _twin_autograd(spec.twin_name, mutated), "Autograd")
    lib.impl("all_reduce", _all_reduce_autograd, "Autograd")
    lib.impl(
        "reduce_scatter",
        _checked_autograd_kernel("reduce_scatter", _reduce_scatter_backward, 2),
        "Autograd",
    )
    lib.impl(
        "reduce_scatterv",
        _checked_autograd_kernel("reduce_scatterv", _reduce_scatterv_backward, 3),
        "Autograd",
    )


_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
_register(_lib)


# ----------------------------------------------------------------------------------------------
# The conjugate pairs (Megatron-LM's ``g`` and ``f``).


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group_name):
        return ops.all_reduce(x, "sum", group_name)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group_name):
        ctx.group_name = group_name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ops.all_reduce(grad, "sum", ctx.group_name), None


def reduce_from_group(x: torch.Tensor, group: GroupLike = None) -> torch.Tensor:
    """Sum ``x`` over the group; the gradient passes through unchanged.

    For a sum that every rank then consumes identically, so that each rank's gradient of the
    result is already the whole gradient: the output of a row-parallel layer. Megatron-LM's
    ``reduce_from_tensor_model_parallel_region``.
    """
    pg = resolve_group(group, "reduce_from_group")
    return _ReduceFromGroup.apply(x, pg.group_name)


def copy_to_group(x: torch.Tensor, group: GroupLike = None) -> torch.Tensor:
    """``x`` unchanged; the gradient is summed over the group.

    For a value every rank holds the same copy of and feeds into rank-local work, so that each
    rank's gradient of it is a partial sum: the input of a column-parallel layer. Megatron-LM's
    ``copy_to_tensor_model_parallel_region``.
    """
    pg = resolve_group(group, "copy_to_group")
    return _CopyToGroup.apply(x, pg.group_name)
