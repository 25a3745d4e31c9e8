"""Cases for the capacity all_to_all send buffer: the Triton kernel against the torch ops.

Run as a script (``TRITON_INTERPRET=1`` on a CPU, the tests do), it launches the kernel itself
and exits 1 naming every case whose ``wire`` or ``back`` differs in a single bit."""

from __future__ import annotations

import sys

import torch

from compile_ops.moe import peer_pack as pp

# tokens, max_tokens_per_rank, max_tokens_per_peer, ranks, experts, top-k, dtype, hidden
CASES = [
    (5, 8, 8, 2, 8, 2, torch.float32, 40),
    (8, 8, 3, 2, 8, 2, torch.bfloat16, 300),  # blocks overflow: tokens dropped
    (0, 4, 4, 2, 8, 2, torch.bfloat16, 64),  # a rank with no tokens
    (1, 1, 1, 2, 4, 1, torch.float32, 8),  # one row per peer
    (37, 40, 40, 3, 12, 3, torch.bfloat16, 513),  # odd hidden, three ranks
    (64, 64, 20, 4, 16, 6, torch.float16, 128),  # expert 0 on every rank (TP-sharded)
    (300, 300, 300, 2, 64, 6, torch.bfloat16, 256),  # several token blocks and scan chunks
]


def inputs(case, device):
    tokens, per_rank, per_peer, ranks, experts, k, dtype, hidden = case
    g = torch.Generator().manual_seed(tokens * 31 + ranks)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    ids = torch.argsort(torch.rand(tokens, experts, generator=g), dim=1)[:, :k]  # distinct
    weights = torch.rand(tokens, k, generator=g)
    owners = torch.zeros(experts, ranks, dtype=torch.bool)
    owners[torch.arange(experts), torch.arange(experts) * ranks // experts] = True
    if ranks > 2:
        owners[0, :] = True
    args = [t.to(device) for t in (x, ids, weights, owners)]
    return args, per_peer, per_rank


def mismatches(pack, device) -> list[str]:
    """Cases where ``pack(x, ids, weights, owners, per_peer, per_rank)`` differs from the torch
    ops in any bit of ``wire`` or any entry of ``back``."""
    bad = []
    for case in CASES:
        args, per_peer, per_rank = inputs(case, device)
        want_wire, want_back = pp.peer_pack_torch(*args, per_peer)
        wire, back = pack(*args, per_peer, per_rank)
        same_wire = torch.equal(wire.view(torch.uint8), want_wire.view(torch.uint8))
        if not (same_wire and torch.equal(back, want_back)):
            bad.append(f"case {case}: wire equal {same_wire}, back equal "
                       f"{torch.equal(back, want_back)}")  # fmt: skip
    return bad


if __name__ == "__main__":
    from compile_ops.moe import triton_peer_pack as tpp

    failed = mismatches(lambda *a: tpp.pack(tpp.peer_pack_kernel, *a), "cpu")
    print("\n".join(failed) or f"{len(CASES)} cases equal")
    sys.exit(1 if failed else 0)
