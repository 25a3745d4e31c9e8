"""The arithmetic of an MoE block: routing and SiLU-gated experts. No communication here.

``local_experts`` (the grouped compute of this rank's experts) lives in experts.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .experts import local_experts
from .routing import route

__all__ = [
    "local_experts",
    "pack_local_experts",
    "reference_experts",
    "route",
    "shared_expert",
    "swiglu",
]


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
    """One expert (or one TP slice of it): ``down(silu(gate(x)) * up(x))``."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def pack_local_experts(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
    """``gate``/``up`` ``[El, I, H]`` and ``down`` ``[El, H, I]`` as :func:`local_experts` takes
    them: ``gate_up`` ``[El, 2I, H]`` (gate rows, then up rows: transformers' fused layout) and
    ``down`` ``[El, H, I]``, contiguous."""
    return torch.cat([gate, up], dim=1).contiguous(), down.contiguous()


def reference_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w) -> torch.Tensor:
    """``sum_k weights[:, k] * expert[ids[:, k]](x)``, expert by expert, in float32."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w.gate.shape[0]):
        token, slot = (ids == e).nonzero(as_tuple=True)
        if token.numel():
            y = swiglu(x[token], w.gate[e], w.up[e], w.down[e]).float()
            out.index_add_(0, token, y * weights[token, slot, None])
    return out


def shared_expert(x: torch.Tensor, w) -> torch.Tensor | None:
    """The shared expert on every token, scaled by ``sigmoid(x @ shared_expert_gate.T)`` where
    the block has that gate (Qwen2-MoE); None without a shared expert."""
    if w.shared_gate is None:
        return None
    y = swiglu(x, w.shared_gate, w.shared_up, w.shared_down)
    if w.shared_expert_gate is not None:
        y = torch.sigmoid(F.linear(x, w.shared_expert_gate)) * y
    return y
