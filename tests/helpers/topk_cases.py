"""Cases for the Triton top-k of the routing (triton_topk.py) against a stable descending sort.

Run as a script (``TRITON_INTERPRET=1`` on a CPU, the tests do), it launches the kernel itself
and exits 1 naming every case whose ids differ from the first ``k`` of
``sort(scores, descending=True, stable=True)`` with NaN as the best score: torch.topk's choice,
with equal scores in expert order. The cases cover no tokens, a token count that is not a
multiple of a program's block, expert counts that are not powers of two, ``k`` equal to the
expert count, ties, NaN and rows of -inf (what a group mask leaves)."""

from __future__ import annotations

import sys

import torch

# (tokens, experts, k, scores): "rand" distinct scores, "ties" drawn from four values,
# "nan" with NaN in places, "masked" with all but a few experts at -inf
CASES = [
    (0, 8, 2, "rand"),
    (1, 8, 8, "rand"),  # k = experts
    (33, 60, 4, "rand"),  # Qwen1.5-MoE's 60 experts: padded columns past the last
    (100, 64, 6, "ties"),  # DeepSeek-V2-Lite's shape, many equal scores
    (70, 256, 8, "rand"),  # DeepSeek-V3's 256 experts, 8 tokens a program
    (20, 64, 6, "nan"),
    (20, 16, 6, "masked"),  # three finite scores a row: the other picks are -inf, in id order
    (5, 2048, 3, "ties"),  # one token a program
]


def inputs(case, device) -> tuple[torch.Tensor, int]:
    tokens, experts, k, kind = case
    g = torch.Generator().manual_seed(tokens * 31 + experts + k)
    scores = torch.rand(tokens, experts, generator=g)
    if kind == "ties":
        scores = torch.randint(0, 4, (tokens, experts), generator=g).float()
    elif kind == "nan":
        scores[torch.rand(tokens, experts, generator=g) < 0.1] = float("nan")
    elif kind == "masked":
        keep = torch.rand(tokens, experts, generator=g).argsort(-1)[:, :3]
        scores = torch.full_like(scores, float("-inf")).scatter(1, keep, scores.gather(1, keep))
    return scores.to(device), k


def expected(scores: torch.Tensor, k: int) -> torch.Tensor:
    ranked = torch.where(scores.isnan(), float("inf"), scores)
    return ranked.sort(stable=True, dim=-1, descending=True).indices[:, :k]


def mismatches(run, device) -> list[str]:
    """Names of the cases where ``run(scores, k)`` differs from ``expected``."""
    bad = []
    for case in CASES:
        scores, k = inputs(case, device)
        got = run(scores, k).cpu()
        if got.dtype != torch.int64 or not torch.equal(got, expected(scores.cpu(), k)):
            bad.append(str(case))
    return bad


if __name__ == "__main__":
    from compile_ops.moe import triton_topk

    def run(scores, k):
        return triton_topk.launch_topk_ids(triton_topk.topk_ids_kernel, scores, k)

    failed = mismatches(run, "cpu")
    print("\n".join(failed) or f"{len(CASES)} cases equal")
    sys.exit(1 if failed else 0)
