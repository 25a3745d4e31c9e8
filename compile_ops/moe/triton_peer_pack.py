"""The capacity all_to_all manager's send buffer in one Triton launch (see peer_pack.py).

Slot ``j`` of peer ``r``'s block holds the ``j``-th token (in token order) that has an expert on
``r``; the rest of the block is padding. Placing a token needs the number of tokens before it that
go to the same peer, a running count over tokens. Written with torch ops that is an owner lookup,
a scan, an inverse scatter and a gather: nine small kernels whose launch gaps, in a replayed
decode step, cost more than the bytes they move. Here every program counts the tokens before its
own block itself (a loop over the routing, a few KiB) and then writes its share of the wire rows:
one launch, no intermediate in memory.

Program ``(i, c)`` handles tokens ``[i*BLOCK_T, (i+1)*BLOCK_T)`` and slots of the same range in
every peer's block, columns ``[c*BLOCK_H, (c+1)*BLOCK_H)`` of the rows; programs with ``c == 0``
also write the routing columns and ``back``. The grid depends on the capacity alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK_T = 16  # tokens (and slots of each peer's block) per program
BLOCK_H = 256  # columns of x per program
NUM_WARPS = 4


@triton.jit
def _owner_cells(e, n_experts, N_RANKS: tl.constexpr, RANKS_POW2: tl.constexpr):
    """Offsets and mask, ``[rows, RANKS_POW2]``, of expert ``e``'s row of ``owners`` (none for
    ``-1``, a padding id). The kernel loads them itself: torch's analysis of a traced kernel
    counts a pointer handed to a helper whose result leads to a store address as written
    (the ids and the owner table were, while a helper loaded them), and the compiled graph
    then treats that input as mutated: copied before the launch wherever Inductor cannot
    reinplace the write."""
    r = tl.arange(0, RANKS_POW2)
    ok = (e >= 0) & (e < n_experts)
    return e[:, None] * N_RANKS + r[None, :], ok[:, None] & (r < N_RANKS)[None, :]


@triton.jit
def _column(tile, r, q):
    """Column ``q`` of a ``[rows, ranks]`` tile."""
    return tl.sum(tl.where(r[None, :] == q, tile, 0), 1)


@triton.jit
def _sent(total, r, q, PER_PEER: tl.constexpr):
    """Rows rank ``q`` receives: the tokens offered to it, at most its block."""
    return tl.minimum(tl.sum(tl.where(r == q, total, 0), 0), PER_PEER)


@triton.jit
def _store_routing(
    wire_ptr, row, row_ok, ids, weights, hidden, stride, K: tl.constexpr, HALVES: tl.constexpr
):
    """Each row's float32 routing (K ids, then K weights) as raw bits in wire columns
    ``hidden..``: one wire element per value, or two (low half first) in a 16-bit wire, as
    ``Tensor.view`` lays a float32 out in 16-bit elements."""
    kk = tl.arange(0, ids.shape[1])
    ok = row_ok[:, None] & (kk < K)[None, :]
    base = wire_ptr + row.to(tl.int64)[:, None] * stride + hidden
    for part in tl.static_range(2):
        values = ids if part == 0 else weights
        if HALVES == 1:
            tl.store(base + part * K + kk[None, :], values, mask=ok)
        else:
            bits = values.to(tl.int32, bitcast=True)
            col = part * 2 * K + 2 * kk[None, :]
            half = wire_ptr.dtype.element_ty
            tl.store(base + col, bits.to(tl.int16).to(half, bitcast=True), mask=ok)
            tl.store(base + col + 1, (bits >> 16).to(tl.int16).to(half, bitcast=True), mask=ok)


@triton.jit
def peer_pack_kernel(
    x_ptr, ids_ptr, weights_ptr, owners_ptr, wire_ptr, back_ptr,
    n_tokens, n_experts, hidden, stride_x, stride_wire,
    K: tl.constexpr, K_POW2: tl.constexpr, N_RANKS: tl.constexpr, RANKS_POW2: tl.constexpr,
    PER_PEER: tl.constexpr, PER_RANK: tl.constexpr, HALVES: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_SCAN: tl.constexpr,
):  # fmt: skip
    """See the module docstring. ``x`` and ``wire`` share a dtype (rows are copied, the
    routing's bits written into it); ``owners`` ``[E, N_RANKS]`` bool; ``back`` ``[T,
    N_RANKS]`` int64: the token's slot on that rank, ``N_RANKS * PER_PEER`` where it is not
    sent, ``N_RANKS * PER_PEER + 1`` where it was dropped (that peer's block was full)."""
    first = tl.program_id(0) * BLOCK_T
    r = tl.arange(0, RANKS_POW2)
    # Rows each rank is offered in all, and by the tokens before this program's block.
    total = tl.zeros([RANKS_POW2], dtype=tl.int32)
    before = tl.zeros([RANKS_POW2], dtype=tl.int32)
    # hit [tokens, RANKS_POW2]: 1 where the token has one of its experts on the rank.
    for s0 in range(0, PER_RANK, BLOCK_SCAN):  # n_tokens <= PER_RANK; a fixed trip count
        ts = s0 + tl.arange(0, BLOCK_SCAN)
        hit = tl.zeros([BLOCK_SCAN, RANKS_POW2], dtype=tl.int32)
        for k in tl.static_range(K):
            e = tl.load(ids_ptr + ts.to(tl.int64) * K + k, mask=ts < n_tokens, other=-1)
            cells, ok = _owner_cells(e, n_experts, N_RANKS, RANKS_POW2)
            hit |= tl.load(owners_ptr + cells, mask=ok, other=0).to(tl.int32)
        total += tl.sum(hit, 0)
        before += tl.sum(tl.where((ts < first)[:, None], hit, 0), 0)
    t = first + tl.arange(0, BLOCK_T)
    t_ok = t < n_tokens
    hit = tl.zeros([BLOCK_T, RANKS_POW2], dtype=tl.int32)
    for k in tl.static_range(K):
        e = tl.load(ids_ptr + t.to(tl.int64) * K + k, mask=t_ok, other=-1)
        cells, ok = _owner_cells(e, n_experts, N_RANKS, RANKS_POW2)
        hit |= tl.load(owners_ptr + cells, mask=ok, other=0).to(tl.int32)
    running = before[None, :] + tl.cumsum(hit, 0)
    kept = (hit > 0) & (running <= PER_PEER)
    slot = r[None, :] * PER_PEER + running - 1
    # Slots [first, first + BLOCK_T) of each peer's block are this program's to pad.
    j = first + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    rows = tl.load(
        x_ptr + t.to(tl.int64)[:, None] * stride_x + cols[None, :],
        mask=t_ok[:, None] & col_ok[None, :],
        other=0,
    )
    for q in tl.static_range(N_RANKS):
        kept_q = _column(kept.to(tl.int32), r, q) > 0
        out = wire_ptr + _column(slot, r, q).to(tl.int64)[:, None] * stride_wire + cols[None, :]
        tl.store(out, rows, mask=kept_q[:, None] & col_ok[None, :])
        pad_q = (j >= _sent(total, r, q, PER_PEER)) & (j < PER_PEER)
        out = wire_ptr + (q * PER_PEER + j).to(tl.int64)[:, None] * stride_wire + cols[None, :]
        tl.store(out, tl.zeros_like(rows), mask=pad_q[:, None] & col_ok[None, :])
    if tl.program_id(1) == 0:
        dump = N_RANKS * PER_PEER
        back = tl.where(kept, slot, tl.where(hit > 0, dump + 1, dump)).to(tl.int64)
        back_at = t.to(tl.int64)[:, None] * N_RANKS + r[None, :]
        tl.store(back_ptr + back_at, back, mask=t_ok[:, None] & (r < N_RANKS)[None, :])
        kk = tl.arange(0, K_POW2)
        at = t.to(tl.int64)[:, None] * K + kk[None, :]
        k_ok = t_ok[:, None] & (kk < K)[None, :]
        ids = tl.load(ids_ptr + at, mask=k_ok, other=0).to(tl.float32)
        weights = tl.load(weights_ptr + at, mask=k_ok, other=0.0)
        no_ids = tl.full([BLOCK_T, K_POW2], -1.0, dtype=tl.float32)
        no_weights = tl.zeros([BLOCK_T, K_POW2], dtype=tl.float32)
        for q in tl.static_range(N_RANKS):
            kept_q = _column(kept.to(tl.int32), r, q) > 0
            slot_q = _column(slot, r, q)
            _store_routing(wire_ptr, slot_q, kept_q, ids, weights, hidden, stride_wire, K, HALVES)
            pad_q = (j >= _sent(total, r, q, PER_PEER)) & (j < PER_PEER)
            pad_rows = q * PER_PEER + j
            _store_routing(
                wire_ptr, pad_rows, pad_q, no_ids, no_weights, hidden, stride_wire, K, HALVES
            )


def pack(kernel, x, topk_ids, topk_weights, owners, per_peer: int, per_rank: int):
    """Allocate and launch: ``kernel`` is ``peer_pack_kernel`` itself (Triton's interpreter on
    a CPU, in the tests) or wrapped for tracing (the op below)."""
    x, topk_ids = x.contiguous(), topk_ids.contiguous()
    topk_weights, owners = topk_weights.contiguous(), owners.contiguous()
    (n_tokens, hidden), k = x.shape, topk_ids.shape[1]
    n_experts, n_ranks = owners.shape
    halves = 4 // x.element_size()
    wire = x.new_empty((n_ranks * per_peer, hidden + 2 * k * halves))
    back = topk_ids.new_empty((n_tokens, n_ranks))
    grid = (triton.cdiv(per_rank, BLOCK_T), triton.cdiv(hidden, BLOCK_H))
    kernel[grid](
        x, topk_ids, topk_weights, owners, wire, back,
        n_tokens, n_experts, hidden, x.stride(0), wire.stride(0),
        **kernel_constants(k, n_ranks, per_peer, per_rank, halves), num_warps=NUM_WARPS,
    )  # fmt: skip
    return wire, back


def kernel_constants(k: int, n_ranks: int, per_peer: int, per_rank: int, halves: int) -> dict:
    """The compile-time arguments of ``peer_pack_kernel``: top-k, ranks, the capacity, and
    wire elements per float32 (1, or 2 in a 16-bit wire)."""
    ranks_pow2 = triton.next_power_of_2(n_ranks)
    return {
        "K": k, "K_POW2": triton.next_power_of_2(k), "N_RANKS": n_ranks, "RANKS_POW2": ranks_pow2,
        "PER_PEER": per_peer, "PER_RANK": per_rank, "HALVES": halves,
        "BLOCK_T": BLOCK_T, "BLOCK_H": BLOCK_H,
        # a [BLOCK_SCAN, ranks] tile of the routing per step of the count: ~4K entries
        "BLOCK_SCAN": max(16, min(256, 4096 // ranks_pow2)),
    }  # fmt: skip


@triton_op("compile_ops_moe::peer_pack", mutates_args=())
def peer_pack(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    owners: torch.Tensor,
    per_peer: int,
    per_rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wire [n * per_peer, W], back [T, n])`` for ``x`` ``[T <= per_rank, H]`` (16- or
    32-bit), ``topk_ids`` ``[T, k]`` int64, ``topk_weights`` ``[T, k]`` float32 and ``owners``
    ``[E, n]`` bool; see peer_pack.py for the layout."""
    kernel = wrap_triton(peer_pack_kernel)
    return pack(kernel, x, topk_ids, topk_weights, owners, per_peer, per_rank)
