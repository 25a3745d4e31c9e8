"""MoE on the compile_ops collectives: a reference block, the same block sharded (TP, EP, TP x EP)
with token movement by an all2all manager (dynamic, or capacity mode with no host read), and an
explicit contract on who reduces the outputs.
"""

from .block import MoEBlock, ShardedMoEBlock, mark_token_dim
from .capacity import Capacity
from .config import MoEConfig
from .contract import ReduceContractError
from .experts import EXPERTS_IMPLS, resolve_experts_impl
from .layout import Layout
from .managers import (
    CAPACITY_MANAGERS,
    MANAGERS,
    AgRsManager,
    All2AllManager,
    AllToAllManager,
    CapacityAgRsManager,
    CapacityAllToAllManager,
    CapacityNaiveManager,
    Dispatched,
    NaiveManager,
    make_manager,
)
from .model import ModelWeights, MoEDecoderLayer, MoEModel, reference_model, sharded_model
from .weights import MoEWeights

__all__ = [
    "CAPACITY_MANAGERS",
    "EXPERTS_IMPLS",
    "MANAGERS",
    "AgRsManager",
    "All2AllManager",
    "AllToAllManager",
    "Capacity",
    "CapacityAgRsManager",
    "CapacityAllToAllManager",
    "CapacityNaiveManager",
    "Dispatched",
    "Layout",
    "MoEBlock",
    "MoEConfig",
    "MoEDecoderLayer",
    "MoEModel",
    "MoEWeights",
    "ModelWeights",
    "NaiveManager",
    "ReduceContractError",
    "ShardedMoEBlock",
    "make_manager",
    "mark_token_dim",
    "reference_model",
    "resolve_experts_impl",
    "sharded_model",
]
