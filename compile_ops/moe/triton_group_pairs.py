"""The routed pairs grouped by local expert in two Triton launches: the Triton path's grouping.

The result is the stable sort of experts.group_pairs, as a counting sort. The pairs are cut in
chunks of ``BLOCK`` (in pair order); the first launch counts each chunk's pairs per key (the
local expert, or ``n_local`` for a pair routed elsewhere); a running sum along each key's row of
counts gives its pairs before each chunk; the second launch adds the pairs of all smaller keys,
places every pair at that start plus the number of earlier pairs of its chunk with the same
key, and writes the group ends. At each sorted position it writes what the grouped GEMMs read,
the token row, the pair and its routing weight, so the gathers that would follow a sort are
part of the placing.

Written with torch ops the same grouping is a key kernel, a radix sort (one to nine launches with
its copies and fills), a ``searchsorted`` and the gathers: at decode sizes those launches cost
more host time than their bytes cost device time. Every shape depends on the pair count alone
and nothing is read back to the host, so a captured graph serves any routing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 128  # pairs per program: the rank within a chunk compares every pair with every pair
NUM_WARPS = 4


@triton.jit
def _key(ids, first, N_LOCAL: tl.constexpr):
    """The sort key of pairs with global expert ``ids``: the local expert, or N_LOCAL for a pair
    routed elsewhere (another rank's expert, a padding id)."""
    local = ids - first
    return tl.where((local >= 0) & (local < N_LOCAL), local, N_LOCAL).to(tl.int32)


@triton.jit
def count_kernel(
    ids_ptr, first_ptr, counts_ptr, P,
    N_LOCAL: tl.constexpr, BINS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """``counts[key, chunk]``: this chunk's pairs with each key."""
    pair = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = pair < P
    key = _key(tl.load(ids_ptr + pair, mask=in_range, other=0), tl.load(first_ptr), N_LOCAL)
    counts = tl.histogram(key, BINS, mask=in_range)
    tl.store(counts_ptr + tl.arange(0, BINS) * tl.num_programs(0) + tl.program_id(0), counts)


@triton.jit
def place_kernel(
    ids_ptr, first_ptr, weights_ptr, counts_ptr, within_ptr, rows_ptr, pairs_ptr, scale_ptr,
    ends_ptr, P, TOP_K: tl.constexpr, N_LOCAL: tl.constexpr, BINS: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Each pair at its (key, chunk)'s first position plus the chunk's earlier pairs with its
    key (a stable order): its token row, itself and its routing weight. ``within`` is the
    running sum of ``counts`` along each key's row (its pairs up to and including each chunk,
    its total in the last); program 0 also writes ``ends``."""
    # The ids are loaded here, not in a helper: see triton_expert_tiles.expert_tiles.
    pair = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = pair < P
    key = _key(tl.load(ids_ptr + pair, mask=in_range, other=0), tl.load(first_ptr), N_LOCAL)
    chunk, chunks = tl.program_id(0), tl.num_programs(0)
    i = tl.arange(0, BLOCK)
    earlier = (key[None, :] == key[:, None]) & (i[None, :] < i[:, None])
    rank = tl.sum(earlier.to(tl.int32), axis=1)
    b = tl.arange(0, BINS)
    totals = tl.load(within_ptr + b * chunks + chunks - 1)
    key_ends = tl.cumsum(totals, 0)
    smaller_keys = tl.gather(key_ends - totals, key, 0)
    cell = key * chunks + chunk
    earlier_chunks = tl.load(within_ptr + cell, mask=in_range) - tl.load(
        counts_ptr + cell, mask=in_range
    )
    at = smaller_keys + earlier_chunks + rank
    weight = tl.load(weights_ptr + pair, mask=in_range, other=0.0)
    tl.store(rows_ptr + at, pair // TOP_K, mask=in_range)
    tl.store(pairs_ptr + at, pair, mask=in_range)
    tl.store(scale_ptr + at, weight.to(tl.float32), mask=in_range)
    if chunk == 0:
        tl.store(ends_ptr + b, key_ends, mask=b < N_LOCAL)


class SortedPairs(NamedTuple):
    """At sorted position ``s``: ``rows[s]`` the token row, ``pairs[s]`` the pair (``row * k +
    slot``), ``scale[s]`` its routing weight (float32); ``ends[e]`` (int32, cumulative) closes
    local expert ``e``'s positions. Pairs routed elsewhere fill the positions past ``ends[-1]``."""

    rows: torch.Tensor
    pairs: torch.Tensor
    scale: torch.Tensor
    ends: torch.Tensor


def launch_group_pairs(
    kernels, ids: torch.Tensor, first_expert: torch.Tensor, weights: torch.Tensor, n_local: int
) -> SortedPairs:
    """``group_pairs``'s body with ``kernels`` (count, place) launched as given: wrapped for
    tracing by the op, or the kernels themselves (Triton's interpreter on a CPU, in the tests)."""
    count, place = kernels
    _check_arguments(ids, first_expert, weights, n_local)
    rows, top_k = ids.shape
    ids, weights = ids.contiguous(), weights.contiguous()
    first_expert = first_expert.reshape(1)
    pairs = rows * top_k
    # One chunk more than needed when ``pairs`` is a multiple of BLOCK (it counts nothing): the
    # grid is never empty, and ``ends`` is read from the last chunk even with no pairs.
    chunks = pairs // BLOCK + 1
    bins = triton.next_power_of_2(n_local + 1)
    counts = ids.new_empty((bins, chunks), dtype=torch.int32)
    count[(chunks,)](
        ids, first_expert, counts, pairs,
        N_LOCAL=n_local, BINS=bins, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip
    # Row by row, the rows in parallel: one running sum over the whole buffer ran as a single
    # program, 14 us of DeepSeek-V2-Lite's 4096-token call on an H200 (docs/benchmarks.md).
    within = counts.cumsum(1, dtype=torch.int32)
    out = SortedPairs(
        ids.new_empty((pairs,)),
        ids.new_empty((pairs,)),
        weights.new_empty((pairs,), dtype=torch.float32),
        counts.new_empty((n_local,)),
    )
    place[(chunks,)](
        ids, first_expert, weights, counts, within, *out, pairs,
        TOP_K=top_k, N_LOCAL=n_local, BINS=bins, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def _check_arguments(ids, first_expert, weights, n_local) -> None:
    op = "compile_ops_moe.group_pairs"
    torch._check(
        ids.dim() == 2 and not ids.is_floating_point(),
        lambda: f"{op}: ids must be [rows, top_k] integer expert ids, got {ids.dtype} "
        f"{tuple(ids.shape)}",
    )
    both_2d = weights.dim() == 2 and ids.dim() == 2
    torch._check(
        both_2d and weights.shape[1] == ids.shape[1],
        lambda: f"{op}: weights must match ids' shape {tuple(ids.shape)}, got "
        f"{tuple(weights.shape)}",
    )
    torch._check(  # a symbolic row count: checked without a guard
        weights.shape[0] == ids.shape[0],
        lambda: f"{op}: weights must match ids' shape {tuple(ids.shape)}, got "
        f"{tuple(weights.shape)}",
    )
    for name, tensor in (("weights", weights), ("first_expert", first_expert)):
        message = f"{op}: {name} must be on ids' device {ids.device}, got {tensor.device}"
        torch._check(tensor.device == ids.device, lambda message=message: message)
    torch._check(
        first_expert.numel() == 1,
        lambda: f"{op}: first_expert must hold one expert id, got {tuple(first_expert.shape)}",
    )
    torch._check(n_local >= 1, lambda: f"{op}: n_local must be at least 1, got {n_local}")


@triton_op("compile_ops_moe::group_pairs", mutates_args=())
def group_pairs(
    ids: torch.Tensor, first_expert: torch.Tensor, weights: torch.Tensor, n_local: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, pairs, scale, ends)`` (see ``SortedPairs``) for ``ids`` ``[R, k]`` (int64 global
    expert ids), ``weights`` ``[R, k]`` and this rank's experts ``first_expert`` (a 0-d int64
    tensor) ``.. first_expert + n_local - 1``; the order of experts.group_pairs."""
    return tuple(launch_group_pairs(kernels(), ids, first_expert, weights, n_local))


def kernels() -> tuple:
    """The two launches of ``group_pairs``, wrapped for tracing."""
    return wrap_triton(count_kernel), wrap_triton(place_kernel)
