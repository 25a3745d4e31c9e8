"""compile-ops: collectives and MoE ops that stay correct and fast under torch.compile.

``import compile_ops`` registers the ``torch.ops.compile_ops`` namespace with fake kernels,
teaches Inductor's reinplacing pass the in-place twins and applies the Inductor patches that are
on (see ``inductor_patches`` and docs/patches.md). It does not import Inductor, which costs
seconds: the last two happen right after Inductor's modules are first imported, before anything
is compiled.
"""

import inductor_patches

from . import reinplace
from .collectives import (
    REDUCE_OPS,
    all_gather,
    all_gatherv,
    all_reduce,
    all_to_all,
    broadcast,
    reduce_scatter,
    reduce_scatterv,
)
from .groups import GroupError, register_group, registered_groups, resolve_group, unregister_group

__version__ = "0.1.0"

# Code compiled by another compile-ops version or patch set is never served from the cache.
inductor_patches.set_cache_key_component("compile_ops", __version__)
inductor_patches.apply_configured()
inductor_patches.when_imported(
    "torch._inductor.fx_passes.reinplace", lambda _module: reinplace.register()
)

__all__ = [
    "REDUCE_OPS",
    "GroupError",
    "all_gather",
    "all_gatherv",
    "all_reduce",
    "all_to_all",
    "broadcast",
    "reduce_scatter",
    "reduce_scatterv",
    "register_group",
    "registered_groups",
    "resolve_group",
    "unregister_group",
]
