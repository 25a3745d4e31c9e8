"""Cases for the Triton grouping (triton_group_pairs.py) against experts.group_pairs' stable sort.

Run as a script (``TRITON_INTERPRET=1`` on a CPU, the tests do), it launches the two kernels
itself and exits 1 naming every case whose sorted rows, pairs, weights or group ends differ
from the sort's. The cases cover no pairs at all, one pair, a pair count that fills its chunks
exactly, many chunks, every pair on one expert, none on this rank, and a key count (local
experts + 1) at a power of two."""

from __future__ import annotations

import sys

import torch

# (rows, top_k, n_local, first expert, global experts, ids): "drawn" ids come from [-1, experts),
# so some pairs are padding (-1) or another rank's (outside [first, first + n_local)); "local"
# routes every pair to the first local expert, "elsewhere" every pair below it
CASES = [
    (0, 2, 4, 0, 4, "drawn"),  # no pairs: the ends are all zero
    (1, 1, 4, 0, 4, "drawn"),
    (64, 2, 8, 0, 8, "drawn"),  # 128 pairs: exactly one chunk, the next one empty
    (300, 6, 64, 0, 64, "drawn"),  # 1800 pairs over 15 chunks (DeepSeek-V2-Lite's E and top-k)
    (200, 4, 7, 3, 20, "drawn"),  # 7 local experts + the key for others: 8 keys, a power of 2
    (90, 8, 255, 1, 256, "drawn"),  # 256 keys
    (50, 2, 1, 5, 6, "local"),  # one local expert, every pair on it
    (40, 3, 4, 10, 20, "elsewhere"),  # every pair is another rank's (or padding)
]


def inputs(case, device):
    rows, k, n_local, first, experts, routed = case
    g = torch.Generator().manual_seed(rows * 31 + k * 7 + n_local)
    ids = torch.randint(-1, first if routed == "elsewhere" else experts, (rows, k), generator=g)
    if routed == "local":
        ids.fill_(first)
    weights = torch.rand(rows, k, generator=g)
    return ids.to(device), torch.tensor(first, device=device), weights.to(device), n_local


def mismatches(run, device) -> list[str]:
    """Names of the cases where ``run(ids, first, weights, n_local)`` (a ``SortedPairs``-like
    4-tuple) differs from the sort."""
    from compile_ops.moe.experts import group_pairs

    bad = []
    for case in CASES:
        ids, first, weights, n_local = inputs(case, device)
        rows, pairs, scale, ends = (t.cpu() for t in run(ids, first, weights, n_local))
        want = group_pairs(ids.cpu(), first.cpu(), n_local)
        k = ids.shape[1]
        ok = (
            torch.equal(pairs, want.order)
            and torch.equal(rows, want.order // k)
            and torch.equal(scale, weights.cpu().reshape(-1).float()[want.order])
            and torch.equal(ends, want.ends)
        )
        if not ok:
            bad.append(str(case))
    return bad


def main() -> int:
    from compile_ops.moe import triton_group_pairs as tgp

    kernels = (tgp.count_kernel, tgp.place_kernel)
    bad = mismatches(lambda *a: tgp.launch_group_pairs(kernels, *a), "cpu")
    for case in bad:
        print(f"case {case}: differs from the stable sort")
    if bad:
        return 1
    print(f"{len(CASES)} cases equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
