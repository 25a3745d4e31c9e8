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


class GradientError(RuntimeError):
    """A gradient was required through a collective whose gradient depends on how its result is used."""


def _refuse_sum(op: str) -> None:
    raise GradientError(
        f"compile_ops.{op}: x requires grad, but {op}'s gradient depends on how its result is "
        "used. If every rank consumes the sum identically (e.g. a row-parallel layer's output), "
        "use compile_ops.reduce_from_group (forward all-reduce, backward identity); if each "
        "rank's gradient is a partial sum, use copy_to_group on the input of the rank-local "
        "part (forward identity, backward all-reduce). Under torch.no_grad() or on x.detach() "
        "the op runs as is."
    )


def _refuse_unknown(op: str, *args) -> None:
    raise GradientError(
        f"compile_ops.{op}: x requires grad, but {op} has no gradient formula. Under "
        "torch.no_grad() or on x.detach() the op runs as is."
    )


def _refuse_nonlinear(op: str, reduce_op: str) -> None:
    raise GradientError(
        f"compile_ops.{op}: x requires grad, but op={reduce_op!r} has no gradient (min and max "
        "would send it to the winning rank, which ties leave open; a product has none where an "
        "input is zero). Under torch.no_grad() or on x.detach() the op runs as is."
    )


# ----------------------------------------------------------------------------------------------
# Backward formulas: (grad of the output, x's shape, the op's arguments after x) -> grad of x.


def _all_gather_grad(grad, x_shape, dim, group_size, group_name):
    if grad.is_complex():  # reductions carry complex numbers as pairs of reals
        real = torch.view_as_real(grad)
        summed = ops.reduce_scatter(real, dim % len(x_shape), "sum", group_size, group_name)
        return torch.view_as_complex(summed)
    return ops.reduce_scatter(grad, dim, "sum", group_size, group_name)


def _all_gatherv_grad(grad, x_shape, sizes, dim, group_name):
    # The adjoint is reduce_scatterv(grad, sizes, dim, "sum", rank). Its output shape depends on
    # this rank, which the forward op does not carry, and a rank read from process state at trace
    # time would be baked into a graph that the compile caches share between ranks. An all_to_all
    # needs no rank: each rank sends every other rank its slice of grad, receives one slice of
    # its own extent from each rank and sums them (the same traffic as a reduce-scatter).
    dim %= len(x_shape)
    own = x_shape[dim]
    received = ops.all_to_all(grad.movedim(dim, 0), [own] * len(sizes), list(sizes), group_name)
    return received.unflatten(0, (len(sizes), own)).sum(0).movedim(0, dim)


def _reduce_scatter_grad(grad, x_shape, dim, op, group_size, group_name):
    out = ops.all_gather(grad, dim, group_size, group_name)
    return out / group_size if op == "avg" else out


def _reduce_scatterv_grad(grad, x_shape, sizes, dim, op, rank, group_name):
    out = ops.all_gatherv(grad, sizes, dim, group_name)
    return out / len(sizes) if op == "avg" else out


def _all_to_all_grad(grad, x_shape, output_split_sizes, input_split_sizes, group_name):
    return ops.all_to_all(grad, input_split_sizes, output_split_sizes, group_name)


def _broadcast_grad(grad, x_shape, src, group_name):
    return ops.broadcast_backward(grad, src, group_name)


def _broadcast_backward_grad(grad, x_shape, src, group_name):
    return ops.broadcast(grad, src, group_name)


def _check_reduce_scatter(op: str, x, dim, reduce_op, *args) -> None:
    if reduce_op not in ("sum", "avg"):
        _refuse_nonlinear(op, reduce_op)


def _check_reduce_scatterv(op: str, x, sizes, dim, reduce_op, *args) -> None:
    _check_reduce_scatter(op, x, dim, reduce_op)


def _check_all_reduce(op: str, x, reduce_op, *args) -> None:
    if reduce_op in ("sum", "avg"):
        _refuse_sum(op)
    _refuse_nonlinear(op, reduce_op)


# op -> (backward formula or None, check that may refuse a gradient before the forward or None)
GRADIENTS = {
    "all_gather": (_all_gather_grad, None),
    "all_gatherv": (_all_gatherv_grad, None),
    "reduce_scatter": (_reduce_scatter_grad, _check_reduce_scatter),
    "reduce_scatterv": (_reduce_scatterv_grad, _check_reduce_scatterv),
    "all_to_all": (_all_to_all_grad, None),
    "broadcast": (_broadcast_grad, None),
    "broadcast_backward": (_broadcast_backward_grad, None),
    "all_reduce": (None, _check_all_reduce),
}


def _autograd_kernel(name: str, gradient, refusal):
    """The Autograd kernel of a functional collective.

    ``torch.library.register_autograd`` builds the same ``autograd.Function`` around an op. It is
    built here instead because a refused gradient must raise before the forward moves any byte
    (register_autograd has no hook there), and because this kernel runs on every call that needs
    no gradient too, where its plain path costs about half of register_autograd's.
    """
    op = getattr(ops, name).default

    def forward(ctx, x, *args):
        with torch._C._AutoDispatchBelowAutograd():
            out = op(x, *args)
        ctx.x_shape, ctx.args = x.shape, args
        return out

    def backward(ctx, grad):
        return gradient(grad, ctx.x_shape, *ctx.args), *(None for _ in ctx.args)

    function = type(
        f"{name}_backward",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )

    def kernel(x, *args):
        if x.requires_grad and torch.is_grad_enabled():
            if refusal is not None:
                refusal(name, x, *args)
            return function.apply(x, *args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(x, *args)

    return kernel


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
    """Define ``broadcast_backward`` and register every collective's Autograd kernel."""
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
    for name, (gradient, refusal) in GRADIENTS.items():
        lib.impl(name, _autograd_kernel(name, gradient, refusal), "Autograd")
    for spec in SPECS.values():
        if spec.name not in GRADIENTS:  # an op without a formula refuses rather than drop grads
            lib.impl(spec.name, _autograd_kernel(spec.name, None, _refuse_unknown), "Autograd")
        mutated = "x" if spec.twin == "inplace" else "out"
        lib.impl(spec.twin_name, _twin_autograd(spec.twin_name, mutated), "Autograd")


def opcheck_samples(group: dist.ProcessGroup) -> dict[str, list]:
    """opcheck inputs for ``broadcast_backward``, the one op defined here rather than by a spec."""
    grad = torch.randn(2 * group.size(), 3, generator=torch.Generator().manual_seed(group.rank()))
    device = "cpu" if "cpu" in {d.type for d in group._device_types} else None
    device = device or torch.accelerator.current_accelerator().type
    return {
        "broadcast_backward": [
            ((grad.to(device), dist.get_global_rank(group, 0), group.group_name), {})
        ]
    }


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
