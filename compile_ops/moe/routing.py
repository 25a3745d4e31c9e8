"""Which experts a token goes to, and with what weight: the routing of the supported families.

| family | scores | choice | weights |
| --- | --- | --- | --- |
| Mixtral | softmax | top-k | renormalised |
| Qwen2-MoE, Qwen3-MoE | softmax | top-k | optionally renormalised |
| DeepSeek-V2 | softmax | top-k, optionally within the best groups (group score: max) | x routed scale |
| DeepSeek-V3 | sigmoid | top-k of score + bias within the best groups (score: sum of top 2) | score, renormalised, x routed scale |

Everything is computed in float32 whatever the model dtype (16-bit router products accumulate in
float32), so every rank (and the single-device reference) picks the same experts for the same
token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import MoEConfig
from .experts import triton_available


def route(
    x: torch.Tensor,
    router: torch.Tensor,
    config: MoEConfig,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights [T, k] float32, expert ids [T, k] int64)`` for tokens ``x`` ``[T, H]``.

    ``router`` is ``[E, H]``; ``bias`` ``[E]`` (DeepSeek-V3's score correction) shifts the
    scores used to choose experts, not the weights.
    """
    logits = _logits(x, router)
    scores = logits.softmax(-1) if config.scoring == "softmax" else logits.sigmoid()
    choice = scores if bias is None else scores + bias.float()
    if config.topk_groups < config.expert_groups:
        choice = _mask_to_best_groups(choice, config)
    ids = _topk_ids(choice, config.top_k)
    weights = scores.gather(1, ids)
    if config.renormalize:
        # The epsilon (DeepSeek-V3's) is far below float32 resolution for any real sum.
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    if config.routed_scaling != 1.0:
        weights = weights * config.routed_scaling
    return weights, ids


def _topk_ids(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.topk(scores, k).indices``; on CUDA with triton, one Triton launch
    (triton_topk.py: torch's selection took 29 us of a 1 ms block on an H200)."""
    if scores.device.type == "cuda" and triton_available():
        from . import triton_topk  # needs triton; imported where it is used

        return triton_topk.topk_ids(scores, k)
    return torch.topk(scores, k, dim=-1).indices


def _logits(x: torch.Tensor, router: torch.Tensor) -> torch.Tensor:
    """``x @ router.T`` in float32.

    On CUDA and XPU, with ``x`` and ``router`` both 16-bit, the 16-bit product with a float32
    result (``torch.mm``'s ``out_dtype``): a product of two 16-bit values is exact in float32 and
    the sums are float32, as in the float32 product, but ``x`` is never copied to float32 and
    the product runs on tensor cores. On an H200 at 4096 tokens of Qwen1.5-MoE's shape the copy
    and the float32 product took 80 us, a tenth of the block (docs/moe.md). Elsewhere (the CPU
    has no such product) both are cast.
    """
    sixteen_bit = x.dtype == router.dtype and x.dtype in (torch.bfloat16, torch.float16)
    if sixteen_bit and x.device.type in ("cuda", "xpu"):
        return torch.mm(x, router.t(), out_dtype=torch.float32)
    return F.linear(x.float(), router.float())


def _mask_to_best_groups(choice: torch.Tensor, config: MoEConfig) -> torch.Tensor:
    """``choice`` with every expert outside the token's ``topk_groups`` best groups at -inf."""
    # Explicit sizes: a -1 would make the compiler assume at least one token.
    tokens, groups, experts = choice.shape[0], config.expert_groups, config.experts
    grouped = choice.view(tokens, groups, experts // groups)
    if config.group_score == "max":
        group_scores = grouped.amax(-1)
    else:
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
    best = _topk_ids(group_scores, config.topk_groups)
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
    return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(tokens, experts)
