"""Register a fake kernel only after it agrees with the real kernel on sample inputs.

A wrong fake does not fail where it is wrong: the compiled graph is planned around the fake's
shapes, dtypes and strides, so the error (or silently wrong data) shows up later, far from the op.
:func:`register` therefore runs the real kernel and the fake on the same inputs first and names
the first output field on which they disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch._library.fake_impl import FakeImplCtx, set_ctx_getter
from torch._prims_common import check_significant_strides
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree

__all__ = [
    "FakeMismatch",
    "Sample",
    "check_fake",
    "leaf_pairs",
    "qualname",
    "register",
    "resolve_op",
]

Sample = tuple[Sequence[Any], Mapping[str, Any]]
"""One set of inputs for an op: ``(args, kwargs)``."""

OpLike = str | torch._ops.OpOverload | torch._ops.OpOverloadPacket


class FakeMismatch(ValueError):
    """A fake kernel's outputs differ from the real kernel's on a sample input."""


def resolve_op(op: OpLike) -> torch._ops.OpOverload:
    """The overload behind ``"ns::name[.overload]"``, an OpOverload, or a one-overload packet."""
    if isinstance(op, torch._ops.OpOverload):
        return op
    if isinstance(op, torch._ops.OpOverloadPacket):
        overloads = op.overloads()
        if len(overloads) != 1:
            raise ValueError(
                f"{op._qualified_op_name} has overloads {overloads}; name one, e.g. "
                f"torch.ops.{op._qualified_op_name.replace('::', '.')}.{overloads[0]}"
            )
        return getattr(op, overloads[0])
    if not isinstance(op, str) or "::" not in op:
        raise TypeError(f"expected 'namespace::name[.overload]' or an OpOverload, got {op!r}")
    namespace, name = op.split("::", 1)
    base, _, overload = name.partition(".")
    packet = getattr(getattr(torch.ops, namespace), base, None)
    if packet is None:
        raise ValueError(f"{op}: no such operator (is the library that defines it imported?)")
    overload = overload or "default"
    if overload not in packet.overloads():
        raise ValueError(f"{op}: no overload {overload!r}; it has {packet.overloads()}")
    return getattr(packet, overload)


def qualname(op: torch._ops.OpOverload) -> str:
    """``ns::name`` for the default overload, ``ns::name.overload`` otherwise (torch's spelling)."""
    return op.name()


def check_fake(op: OpLike, fake: Callable[..., Any], samples: Sequence[Sample]) -> None:
    """Raise :class:`FakeMismatch` unless ``fake`` matches ``op``'s real kernel on every sample.

    Compared per output: structure, shape, dtype, device, strides of the dimensions longer than
    one (the others carry no layout; torch's own check skips strides off CUDA), storage offset,
    and that a new tensor is not an input or a view of one.
    Sizes the fake leaves data-dependent (``torch.library.get_ctx().new_dynamic_size()``) cannot
    be compared and are skipped.
    """
    op = resolve_op(op)
    if not samples:
        raise ValueError(f"{qualname(op)}: give at least one sample input to check the fake on")
    for index, (args, kwargs) in enumerate(samples):
        real_out = op(*args, **kwargs)
        fake_args, fake_kwargs, fake_out = _run_fake(op, fake, args, kwargs)
        on = f"{qualname(op)} on sample {index}"
        _check_fresh(f"{on}: the kernel's", op, real_out, (args, kwargs))
        _compare(f"{on}: the fake disagrees with the kernel", real_out, fake_out)
        _check_fresh(f"{on}: the fake's", op, fake_out, (fake_args, fake_kwargs))


def register(
    op: OpLike,
    fake: Callable[..., Any],
    *,
    samples: Sequence[Sample],
    lib: torch.library.Library | None = None,
    allow_override: bool = False,
) -> torch._ops.OpOverload:
    """Check ``fake`` against ``op``'s real kernel on ``samples``, then register it.

    ``lib`` owns the registration (destroying it removes the fake); by default torch keeps it for
    the life of the process. A second fake for the same op is refused unless ``allow_override``.
    """
    op = resolve_op(op)
    check_fake(op, fake, samples)
    # Pass the name with its overload: register_fake given an OpOverload drops the overload name.
    torch.library.register_fake(qualname(op), fake, lib=lib, allow_override=allow_override)
    return op


def _run_fake(op, fake, args, kwargs):
    # Imported here: symbolic_shapes pulls in sympy (half a second), which a checked
    # registration needs and ``import compile_ops`` does not.
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())

    def to_fake(t: torch.Tensor) -> torch.Tensor:
        return mode.from_tensor(t, static_shapes=True)

    fake_args, fake_kwargs = pytree.tree_map_only(
        torch.Tensor, to_fake, (tuple(args), dict(kwargs))
    )
    # As FakeTensorMode itself calls a registered fake: inside the mode, with a context object
    # that lets the fake create data-dependent sizes.
    ctx = FakeImplCtx(mode, op)
    with set_ctx_getter(lambda: ctx), mode:
        out = fake(*fake_args, **fake_kwargs)
    return fake_args, fake_kwargs, out


def leaf_pairs(a: Any, b: Any) -> list[tuple[Any, Any]] | None:
    """The leaves of two pytrees side by side, or None where the trees differ in structure."""
    a_leaves, a_spec = pytree.tree_flatten(a)
    b_leaves, b_spec = pytree.tree_flatten(b)
    if a_spec != b_spec:
        return None
    return list(zip(a_leaves, b_leaves, strict=True))


def _compare(where: str, real_out, fake_out) -> None:
    pairs = leaf_pairs(real_out, fake_out)
    if pairs is None:
        raise FakeMismatch(
            f"{where}: it returns {_describe(fake_out)}, the kernel {_describe(real_out)}"
        )
    for i, (real, fake) in enumerate(pairs):
        name = "the output" if len(pairs) == 1 else f"output {i}"
        if isinstance(real, torch.Tensor) != isinstance(fake, torch.Tensor):
            raise FakeMismatch(
                f"{where}: {name} is {_describe(fake)}, the kernel's {_describe(real)}"
            )
        if not isinstance(real, torch.Tensor):
            continue
        _compare_tensor(f"{where}: {name}", real, fake)


def _compare_tensor(where: str, real: torch.Tensor, fake: torch.Tensor) -> None:
    def differ(field: str, got, want) -> FakeMismatch:
        return FakeMismatch(f"{where} has {field} {got} but the kernel's has {want}")

    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols  # see _run_fake

    if fake.dim() != real.dim():
        raise differ("shape", list(fake.shape), list(real.shape))
    comparable = True
    for got, want in zip(fake.shape, real.shape, strict=True):
        if isinstance(got, torch.SymInt) and free_unbacked_symbols(got):
            comparable = False  # data-dependent: the fake cannot know it
        elif got != want:
            raise differ("shape", list(fake.shape), list(real.shape))
    if fake.dtype != real.dtype:
        raise differ("dtype", fake.dtype, real.dtype)
    if fake.device != real.device:
        raise differ("device", fake.device, real.device)
    if comparable and not check_significant_strides(real, fake, only_cuda=False)[0]:
        raise differ("strides", fake.stride(), real.stride())
    if comparable and fake.storage_offset() != real.storage_offset():
        raise differ("storage offset", fake.storage_offset(), real.storage_offset())


def _check_fresh(whose: str, op, out, inputs) -> None:
    """A return the schema declares as new must not be an input or a view of one.

    A compiler that trusts the schema may reuse or drop the input buffer; the result then reads
    whatever it holds (the all-zeros all_reduce under torch.compile).
    """
    inputs = [t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    returns = op._schema.returns
    values = [out] if len(returns) == 1 else list(out or ())
    for i, (ret, value) in enumerate(zip(returns, values, strict=False)):
        if ret.alias_info is not None:
            continue
        for t in pytree.tree_leaves(value):
            if isinstance(t, torch.Tensor) and any(torch._C._is_alias_of(t, x) for x in inputs):
                raise FakeMismatch(
                    f"{whose} {_output_name(i, len(returns))} is an input or a view of one, but "
                    "the schema declares a new tensor (allocate it, e.g. with x.new_empty(shape))"
                )


def _output_name(index: int, count: int) -> str:
    return "output" if count == 1 else f"output {index}"


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(map(_describe, value))})"
    return repr(value)
