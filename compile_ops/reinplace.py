"""Teach Inductor's reinplacing pass our in-place twins.

Where the input of ``all_reduce``/``broadcast`` is dead after the op, the pass rewrites the node to
``all_reduce_``/``broadcast_`` on the same buffer, so the compiled code neither allocates nor copies.
Where the input is still read later, the pass leaves the out-of-place op alone (one allocation).
The pairs come from the spec table: every op whose twin works in place on ``x``.
"""

from __future__ import annotations

import torch

from .ops import SPECS

# out-of-place op -> (in-place twin, index of the argument it writes)
INPLACE_TWINS = {
    spec.name: (spec.twin_name, 0) for spec in SPECS.values() if spec.twin == "inplace"
}


def register() -> None:
    """Add the twins to the pass's table (``import compile_ops`` calls this when Inductor loads)."""
    from torch._inductor.fx_passes.reinplace import InplaceableOp, inplaceable_ops

    ops = torch.ops.compile_ops
    for name, (twin, arg) in INPLACE_TWINS.items():
        inplaceable_ops[getattr(ops, name).default] = InplaceableOp(getattr(ops, twin).default, arg)
