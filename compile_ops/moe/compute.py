"""The arithmetic of an MoE block: routing and SiLU-gated experts. No communication here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import MoEConfig


def route(x: torch.Tensor, router: torch.Tensor, config: MoEConfig):
    """``(weights [T, k] float32, expert ids [T, k] int64)`` for tokens ``x`` ``[T, H]``.

    Scores are computed in float32 whatever the model dtype, so every rank (and the single-device
    reference) picks the same experts for the same token.
    """
    logits = F.linear(x.float(), router.float())
    scores = logits.softmax(-1) if config.scoring == "softmax" else logits.sigmoid()
    weights, ids = torch.topk(scores, config.top_k, dim=-1)
    if config.renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
    """One expert (or one TP slice of it): ``down(silu(gate(x)) * up(x))``."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def pack_local_experts(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
    """``gate``/``up`` ``[El, I, H]`` and ``down`` ``[El, H, I]`` as the two matrices that
    :func:`local_experts` multiplies by: ``[El * 2I, H]`` and ``[H, El * I]``."""
    n_local, inter, hidden = gate.shape
    gate_up = torch.cat([gate, up], dim=1).reshape(n_local * 2 * inter, hidden)
    return gate_up.contiguous(), down.permute(1, 0, 2).reshape(hidden, n_local * inter).contiguous()


def local_experts(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of ``sum_k weights[:, k] * expert[ids[:, k]](x)``, in float32.

    ``expert_ids`` ``[El]`` are the global ids of the experts packed in ``gate_up``/``down`` by
    :func:`pack_local_experts` (whole experts or TP slices). Routes to experts held elsewhere
    contribute nothing. Every row runs through every local expert and its routing weight (zero
    where not routed) scales the result: three matrix products, no data-dependent shapes, so one
    compiled graph serves any routing and any row count. Also returns the routing mass this rank
    covered per row, ``[R]`` (the debug check of the reduce contract sums it).
    """
    routed = ids.unsqueeze(-1) == expert_ids  # [R, k, El]
    coef = (weights.unsqueeze(-1) * routed).sum(1)  # [R, El]
    n_local = expert_ids.shape[0]
    h = F.linear(x, gate_up).view(x.shape[0], n_local, 2, -1)  # [R, El, 2, I]
    a = F.silu(h[:, :, 0]) * h[:, :, 1] * coef.unsqueeze(-1).to(x.dtype)  # [R, El, I]
    y = F.linear(a.reshape(x.shape[0], -1), down)
    return y.float(), coef.sum(-1)


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
    if w.shared_gate is None:
        return None
    return swiglu(x, w.shared_gate, w.shared_up, w.shared_down)
