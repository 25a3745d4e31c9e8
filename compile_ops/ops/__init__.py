"""The ``torch.ops.compile_ops`` collectives.

    spec.py         OpSpec: what one row says about an op (schema, shape rule, kernel, twin,
                    wrapper, samples, reference) and what follows from it
    collectives.py  the rows, each decorating its public wrapper, beside its reference: SPECS
    arguments.py    argument rules of the wrappers, shared with their functional twins
    kernels.py      eager kernels: the communication over a ProcessGroup
    backend.py      what the kernels need per call (options, group lookup, dtype carriage)
    register.py     the one loop that defines every row with torch.library
    consistency.py  debug mode: each kernel first checks its arguments against every rank's
    funcol.py       the opt-in switch to torch's functional collectives (the wrappers' twins)
    autograd.py     gradients where the adjoint is unambiguous; refusals and conjugate pairs

Importing this package defines the ops. Shape rules and fakes live in ``fake_impls.collectives``.
"""

import torch

from fake_impls.audit import set_collective_samples
from fake_impls.collectives import REDUCE_OPS

from . import register
from .collectives import SPECS
from .spec import OpSpec, opcheck_samples

__all__ = ["REDUCE_OPS", "SPECS", "OpSpec", "opcheck_samples"]

_library = torch.library.Library(register.NAMESPACE, "DEF")
register.register(_library, SPECS.values())
from . import autograd  # noqa: E402  (registers on the ops just defined)


# `compile-ops audit compile_ops` runs opcheck on the rows' samples.
def _samples(group):
    return {**opcheck_samples(SPECS.values(), group), **autograd.opcheck_samples(group)}


set_collective_samples(_samples)
