"""Define every op of the spec table with ``torch.library``: one loop, one place.

For each row: the op and its twin are defined (tagged as torch tags its own collectives), get
their eager kernels (CompositeExplicitAutograd: every device a backend can reach, without naming
one), their fakes (from the shape rule; they also serve, and refuse, meta tensors), the twin's
functionalization rule, and the out-of-place op is marked side-effectful.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fake_impls import collectives as fakes

from . import consistency
from .backend import cached_shape
from .spec import OpSpec

NAMESPACE = fakes.NAMESPACE

# pt2_compliant: the ops pass opcheck (tested), as torch's own _c10d_functional ops do. Where
# torch has it (2.14+), `out` marks an out= overload, again as on _c10d_functional's.
# No ``torch.Tag.out`` on the ``.out`` twins: from torch 2.14 Inductor lowers a functional custom
# op whose overload carries that tag to an ``ExternKernelOut`` of the twin, a node it treats as
# pure (a collective whose result one rank does not use is deleted, and the other ranks wait for
# it forever) and to which it passes list arguments flattened (``all_to_all.out(x, 3, 3, ...)``).
# Untagged, the op stays the side-effectful fallback kernel it is on every torch. Guarded by
# tests/test_op_contracts.py::test_compiled_code_keeps_every_op_whose_result_is_unused.
_TAGS = (torch.Tag.pt2_compliant_tag,)


def _cache_key(spec: OpSpec) -> Callable[[tuple], tuple]:
    """The shape cache's key for a rule's arguments: they as they are, lists made tuples."""
    lists = spec.list_arguments
    if not lists:
        return lambda args: args

    def key(args: tuple) -> tuple:
        hashable = list(args)
        for i in lists:
            hashable[i] = tuple(hashable[i])
        return tuple(hashable)

    return key


def eager_kernels(spec: OpSpec) -> dict[str, Callable[..., torch.Tensor]]:
    """The CompositeExplicitAutograd kernels of ``spec``'s op and twin.

    The out-of-place op always allocates its result and never returns ``x`` or a view of it: a
    compiler that trusts the functional schema may reuse a buffer it believes unchanged.
    """
    rule, into, name, twin = spec.shape, spec.kernel, spec.name, spec.twin_name
    key = _cache_key(spec)

    if spec.twin == "inplace":

        def functional(x, *args):
            cached_shape(rule, x, key(args[:-1]))
            out = x.clone(memory_format=torch.contiguous_format)
            into(name, out, *args)
            return out

        def inplace(x, *args):
            cached_shape(rule, x, key(args[:-1]))
            into(twin, x, *args)
            return x

        return {name: functional, twin: inplace}

    def allocating(x, *args):
        out = x.new_empty(cached_shape(rule, x, key(args[:-1])))
        into(name, out, x, *args)
        return out

    def out_variant(x, *args, out):
        fakes.check_out(name, out, x, rule(x, *args[:-1]))
        into(name, out, x, *args)
        return out

    return {name: allocating, twin: out_variant}


def fake_kernels(spec: OpSpec) -> dict[str, Callable[..., torch.Tensor]]:
    """The fakes of ``spec``'s op and twin, from its shape rule."""
    twin = (
        fakes.inplace_fake(spec.twin_name, spec.shape)
        if spec.twin == "inplace"
        else fakes.out_fake(spec.name, spec.shape)
    )
    return {spec.name: fakes.functional_fake(spec.name, spec.shape), spec.twin_name: twin}


def _functionalize_twin(functional: str, mutated: str) -> Callable[..., torch.Tensor]:
    """Functionalization rule for a twin: run the out-of-place op, then write its result back.

    With it, AOTAutograd can trace a direct call of a twin, and Inductor can lower the twin that
    its reinplacing pass puts in the graph (it refuses mutating ops without such a rule).
    """

    def kernel(*args, **kwargs):
        target = kwargs[mutated] if mutated in kwargs else args[0]
        kwargs = {k: v for k, v in kwargs.items() if k != mutated}
        torch._functionalize_sync(target)
        plain = torch.utils._pytree.tree_map_only(
            torch.Tensor,
            lambda t: torch._from_functional_tensor(t) if torch._is_functional_tensor(t) else t,
            (args, kwargs),
        )
        with torch._C._ExcludeDispatchKeyGuard(
            torch._C.DispatchKeySet(torch._C.DispatchKey.Functionalize)
        ):
            result = getattr(torch.ops.compile_ops, functional).default(*plain[0], **plain[1])
        torch._functionalize_replace(target, result)
        torch._functionalize_commit_update(target)
        torch._functionalize_sync(target)
        return target

    return kernel


def register(lib: torch.library.Library, specs: Iterable[OpSpec]) -> None:
    """Define and implement every op of ``specs`` (and its twin) in ``lib``."""
    ops = torch.ops.compile_ops
    for spec in specs:
        kernels, fake = eager_kernels(spec), fake_kernels(spec)
        for name, schema in spec.overloads.items():
            lib.define(schema, tags=_TAGS)
            # In debug mode the kernel first checks its arguments against every other rank's.
            lib.impl(name, consistency.checked(name, kernels[name]), "CompositeExplicitAutograd")
            torch.library.register_fake(f"{NAMESPACE}::{name}", fake[name], lib=lib)
        mutated = "x" if spec.twin == "inplace" else "out"
        lib.impl(spec.twin_name, _functionalize_twin(spec.name, mutated), "Functionalize")
        # A collective is never dead code: if one rank's compiler drops it (say its result has
        # zero elements there) every other rank waits for it forever.
        torch.fx.node.has_side_effect(getattr(ops, spec.name).default)
