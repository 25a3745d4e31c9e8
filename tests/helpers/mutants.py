"""Deliberately broken variants of our ops, installed inside the worker ranks.

Each replaces one registration (a kernel or a fake) with a classic collective bug; ``restore``
puts the original back. The mutation tests assert that the testing kit catches every one.
"""

import torch
import torch.distributed as dist

from compile_ops.ops import SPECS
from compile_ops.ops.register import fake_kernels
from fake_impls.collectives import all_gather_shape

_installed: list[torch.library.Library] = []


def _returns_input(x, op, group_name):
    dist.all_reduce(x)  # reduces the caller's tensor in place and hands it back
    return x


def _reduces_twice(x, op, group_name):
    out = x.clone()
    dist.all_reduce(out)
    dist.all_reduce(out)
    return out


def _drops_a_rank(x, dim, group_size, group_name):
    out = x.new_empty(all_gather_shape(x, dim, group_size))
    torch.ops.compile_ops.all_gather.out(x, dim, group_size, group_name, out=out)
    dim = dim % x.dim()
    if group_size > 1:  # the last rank's slice never arrives
        out.narrow(dim, (group_size - 1) * x.shape[dim], x.shape[dim]).zero_()
    return out


def _wrong_fake(x, sizes, dim, op, rank, group_name):
    shape = list(x.shape)
    shape[dim % x.dim()] = sizes[0]  # the first rank's extent, not this rank's
    return x.new_empty(shape)


MUTANTS = {
    "returns_input": ("all_reduce", "kernel", _returns_input),
    "reduces_twice": ("all_reduce", "kernel", _reduces_twice),
    "drops_a_rank": ("all_gather", "kernel", _drops_a_rank),
    "wrong_fake_shape": ("reduce_scatterv", "fake", _wrong_fake),
}


def install(name: str) -> None:
    op, kind, fn = MUTANTS[name]
    if kind == "kernel":
        lib = torch.library.Library("compile_ops", "IMPL")
        lib.impl(op, fn, "CompositeExplicitAutograd", allow_override=True)
        _installed.append(lib)
    else:
        torch.library.register_fake(f"compile_ops::{op}", fn, allow_override=True)


def restore() -> None:
    while _installed:
        _installed.pop()._destroy()
    for spec in SPECS.values():
        for name, fn in fake_kernels(spec).items():
            torch.library.register_fake(f"compile_ops::{name}", fn, allow_override=True)
