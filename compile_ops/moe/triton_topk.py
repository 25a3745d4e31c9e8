"""The ids of each token's ``k`` best experts in one Triton launch: the routing's choice on GPUs.

A token's scores (a few dozen to a few hundred experts) fit in registers, so one program
takes a block of tokens and picks the best expert ``k`` times over. ``torch.topk`` on the same
``[T, E]`` float32 scores is a general selection (a radix select, then a sort of the chosen):
at 4096 tokens of DeepSeek-V2-Lite's router (64 experts, top-6) it took 29 us of the block's
call on an H200 (docs/moe.md), for a matrix of 1 MB.

The order is torch.topk's: best first; ``NaN`` counts as the best score; of equal scores the
lowest expert id comes first (torch leaves that order unspecified). Every shape depends on the
token count alone, and nothing is read back, so a captured graph serves any scores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

# Scores a program holds (tokens x experts padded to a power of two): 16 per thread at 4 warps.
ELEMENTS = 2048
NUM_WARPS = 4


@triton.jit
def topk_ids_kernel(
    scores_ptr, ids_ptr, T, E, stride_t,
    K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """``ids[t, j]``: the expert of token ``t``'s ``j``-th best score, for BLOCK_T tokens."""
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.arange(0, BLOCK_E)
    real = (t < T)[:, None] & (e < E)[None, :]
    scores = tl.load(scores_ptr + t[:, None] * stride_t + e[None, :], mask=real, other=0.0)
    scores = tl.where(scores != scores, float("inf"), scores)  # NaN first, as torch.topk
    # A taken expert (or a padding column) is never picked again, even where every score left
    # is -inf: the pick is the lowest free expert holding the best free score.
    taken = ~real
    for j in tl.static_range(K):
        best = tl.max(tl.where(taken, float("-inf"), scores), 1)
        candidates = (scores == best[:, None]) & ~taken
        pick = tl.min(tl.where(candidates, e[None, :], BLOCK_E), 1)
        tl.store(ids_ptr + t * K + j, pick.to(tl.int64), mask=t < T)
        taken = taken | (e[None, :] == pick[:, None])


def launch_topk_ids(kernel, scores: torch.Tensor, k: int) -> torch.Tensor:
    """``topk_ids``' body with ``kernel`` launched as given: wrapped for tracing by the op, or
    ``topk_ids_kernel`` itself (Triton's interpreter on a CPU, in the tests)."""
    _check_arguments(scores, k)
    scores = scores.contiguous()
    tokens, experts = scores.shape
    block_e = triton.next_power_of_2(experts)
    block_t = max(1, ELEMENTS // block_e)
    ids = scores.new_empty((tokens, k), dtype=torch.int64)
    # One program more than needed when ``tokens`` is a multiple of the block (it stores
    # nothing): the grid is never empty.
    kernel[(tokens // block_t + 1,)](
        scores, ids, tokens, experts, experts,
        K=k, BLOCK_T=block_t, BLOCK_E=block_e, num_warps=NUM_WARPS,
    )  # fmt: skip
    return ids


def _check_arguments(scores: torch.Tensor, k: int) -> None:
    op = "compile_ops_moe.topk_ids"
    torch._check(
        scores.dim() == 2 and scores.dtype == torch.float32,
        lambda: f"{op}: scores must be [tokens, experts] float32, got {scores.dtype} "
        f"{tuple(scores.shape)}",
    )
    torch._check(
        1 <= k <= scores.shape[-1],
        lambda: f"{op}: k={k} must be between 1 and the {scores.shape[-1]} experts",
    )


@triton_op("compile_ops_moe::topk_ids", mutates_args=())
def topk_ids(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[T, k]`` int64: ``torch.topk(scores, k).indices`` for ``scores`` ``[T, E]`` float32,
    with equal scores in expert order (the module docstring says why a kernel)."""
    return launch_topk_ids(wrap_triton(topk_ids_kernel), scores, k)
