"""The arithmetic of an MoE block: routing and SiLU-gated experts. No communication here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .experts import grouped_experts, resolve_experts_impl
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


def local_experts(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of ``sum_k weights[:, k] * expert[ids[:, k]](x)``, in float32.

    ``expert_ids`` ``[El]`` are the consecutive global ids of the experts packed in
    ``gate_up``/``down`` by :func:`pack_local_experts` (whole experts or TP slices). Routes to
    experts held elsewhere, and padding rows (any id outside ``expert_ids``), contribute
    nothing. Only the routed (row, local expert) pairs are computed, grouped on the device
    (experts.py), so one compiled graph serves any routing and any row count. Also returns the
    routing mass this rank covered per row, ``[R]`` (the debug check of the reduce contract
    sums it). ``impl``: one of ``experts.EXPERTS_IMPLS`` but "auto", resolved; None: resolved
    here from the weights' device and dtype.
    """
    if impl is None:
        impl = resolve_experts_impl(gate_up.device, gate_up.dtype)
    return grouped_experts(x, ids, weights, expert_ids, gate_up, down, impl)


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
