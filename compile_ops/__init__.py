"""compile-ops: collectives and MoE ops that stay correct and fast under torch.compile.

``import compile_ops`` registers the ``torch.ops.compile_ops`` namespace with fake kernels and
teaches Inductor's reinplacing pass the in-place twins.
"""

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

reinplace.register()

__version__ = "0.1.0"

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
