"""A small MoE model: attention-free decoder layers ``x + moe(rms_norm(x))``, stacked."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .block import MoEBlock, ShardedMoEBlock
from .config import MoEConfig
from .layout import Layout
from .weights import MoEWeights


class MoEDecoderLayer(torch.nn.Module):
    def __init__(self, norm: torch.Tensor, moe: torch.nn.Module, eps: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("norm", norm)
        self.moe = moe
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.moe(F.rms_norm(x, (x.shape[-1],), self.norm, self.eps))


class MoEModel(torch.nn.Module):
    def __init__(self, layers: list[MoEDecoderLayer]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@dataclass(frozen=True)
class ModelWeights:
    norms: tuple[torch.Tensor, ...]
    moe: tuple[MoEWeights, ...]

    @classmethod
    def random(
        cls,
        config: MoEConfig,
        layers: int,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> ModelWeights:
        """Layer ``i``'s MoE weights are ``MoEWeights.random`` of seed ``1000 * seed + i``, so
        one layer can be rebuilt alone; the norms come from ``seed`` itself."""
        moe = tuple(
            MoEWeights.random(config, seed * 1000 + i, dtype, device) for i in range(layers)
        )
        g = torch.Generator().manual_seed(seed)
        norms = tuple(
            (1 + 0.1 * torch.randn(config.hidden, generator=g)).to(dtype=dtype, device=device)
            for _ in range(layers)
        )
        return cls(norms, moe)


def reference_model(config: MoEConfig, weights: ModelWeights) -> MoEModel:
    return MoEModel(
        [
            MoEDecoderLayer(norm, MoEBlock(config, w))
            for norm, w in zip(weights.norms, weights.moe, strict=True)
        ]
    )


def sharded_model(
    config: MoEConfig, weights: ModelWeights, layout: Layout, manager: str, debug: bool = False
) -> MoEModel:
    return MoEModel(
        [
            MoEDecoderLayer(norm, ShardedMoEBlock(config, w, layout, manager, debug))
            for norm, w in zip(weights.norms, weights.moe, strict=True)
        ]
    )
