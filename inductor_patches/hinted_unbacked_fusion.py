"""Let Inductor fuse buffers whose unbacked sizes carry a hint (torch 2.11; built into 2.12).

The scheduler fuses two nodes only when they share memory, measured in bytes by
``GraphLowering.get_dep_size_hint``. torch 2.11 counts zero bytes for any dependency whose size
has an unbacked symbol, so with an unbacked token dimension no buffer of token size is ever
fused into its consumer, nor two kernels that read the same one ("no shared data"): every value
that lowering stores stays a kernel and a round trip through memory of its own. In the MoE
block that splits the weighted sum of the top-k outputs in two kernels with a float32
``[tokens, hidden]`` buffer between them (from top-5 on, where the sum has more reads than
``realize_acc_reads_threshold``).

torch 2.12 counts such a dependency when every unbacked symbol in its size has a hint given by
the user (``torch._dynamo.decorators.mark_unbacked(t, dim, hint_override=n)``, as
``compile_ops.moe.mark_token_dim`` does). This patch gives torch 2.11 the same rule and nothing
more: sizes without such a hint still count zero, and which fusions are legal is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .registry import Patch, Replacement, register

ON_BY_DEFAULT = True


def hinted_size(sizevars: Any, dep: Any, count_bytes: bool) -> int | None:
    """Bytes (or elements) of ``dep`` by the user's hints when its size is unbacked and every
    unbacked symbol in it has one; None where torch 2.11's own rule answers."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    try:
        if not dep.has_unbacked_symbols():
            return None
        symbols = free_unbacked_symbols(dep.get_numel())
    except KeyError:  # a StarDep on a buffer the graph does not hold (torch's own caveat)
        return None
    if not symbols or not symbols <= sizevars.var_to_hint_override.keys():
        return None
    return dep.numbytes_hint() if count_bytes else dep.numel_hint()


def _make_get_dep_size_hint(original: Callable[..., int]) -> Callable[..., int]:
    def get_dep_size_hint(self, dep, count_bytes: bool = True) -> int:
        key = (dep, count_bytes)
        if key not in self.dep_size_hint_cache:
            size = hinted_size(self.sizevars, dep, count_bytes)
            if size is not None:  # the original answers from its cache when the key is there
                self.dep_size_hint_cache[key] = size
        return original(self, dep, count_bytes)

    return get_dep_size_hint


PATCH = register(
    Patch(
        name="hinted_unbacked_fusion",
        summary="fuse buffers of hinted unbacked size (torch 2.12's rule for torch 2.11)",
        torch_versions=">=2.11,<2.12",
        replacements=(
            Replacement(
                "torch._inductor.graph.GraphLowering",
                "get_dep_size_hint",
                ("self", "dep", "count_bytes"),
                _make_get_dep_size_hint,
            ),
        ),
        default=ON_BY_DEFAULT,
        default_reason=(
            "torch 2.12's own rule, which only counts sizes the user hinted; legal fusions are "
            "unchanged (docs/patches.md); COMPILE_OPS_PATCHES=-hinted_unbacked_fusion turns it off"
        ),
    )
)
