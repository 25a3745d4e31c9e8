"""Which tile a program works on, and which expert and rows a row tile of the MoE grouped GEMMs
covers, found on the device from the cumulative group ends (pairs sorted by expert; see
experts.py): shared by the pointer tiles (triton_grouped_gemm.py), the persistent TMA tile and
its row gather (triton_tma_gemm.py).

Every expert's rows start a new tile (its last tile may be partial), so expert ``e`` owns
``cdiv(ends[e] - ends[e-1], BLOCK_M)`` consecutive row tiles."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def expert_tiles(start, end, BLOCK_M):
    """Each expert's row tiles, and the cumulative tile count up to and including it, from the
    vectors of the experts' first rows and row ends (zero past the last expert).

    The kernels load ``start`` and ``end`` themselves, with ``ends_ptr + e - 1`` and ``ends_ptr
    + e``: torch's mutation analysis of a traced kernel counts a pointer handed to a helper
    whose result addresses a store as written, and Inductor would then copy ``ends`` for every
    launch (and fail to compile such an input of unbacked size)."""
    tiles = (end - start + BLOCK_M - 1) // BLOCK_M
    return tiles, tl.cumsum(tiles, 0)


@triton.jit
def tile_rows(pid_m, start, end, tiles, tile_end, EXPERTS_POW2: tl.constexpr, BLOCK_M):
    """(expert, first row, row end) of row tile ``pid_m``, from ``expert_tiles``; the expert is
    N_EXPERTS or more (and the rows empty) past the last real tile."""
    expert = tl.sum((tile_end <= pid_m).to(tl.int32), 0)
    mine = tl.arange(0, EXPERTS_POW2) == expert
    row0 = tl.sum(tl.where(mine, start + (pid_m - tile_end + tiles) * BLOCK_M, 0), 0)
    return expert, row0, tl.sum(tl.where(mine, end, 0), 0)


@triton.jit
def many_rows(ends_ptr, N_EXPERTS: tl.constexpr, LARGE_FROM: tl.constexpr):
    """Whether at least LARGE_FROM rows per expert are routed on average: the many-rows
    (prefill) tile's counts; below, the few-rows tile serves them."""
    return tl.load(ends_ptr + N_EXPERTS - 1) >= LARGE_FROM * N_EXPERTS


@triton.jit
def expert_order(t, tiles, tile_end, num_n, EXPERTS_POW2: tl.constexpr):
    """(row tile, column tile) of tile index ``t``, expert by expert: all of one expert's tiles,
    its row tiles fastest, come before the next expert's. The programs running at once then
    share the weight tiles of one or two experts, and each weight tile is read from device
    memory about once (``tiles``, ``tile_end``: from ``expert_tiles``; ``t`` below the total)."""
    expert = tl.sum((tile_end * num_n <= t).to(tl.int32), 0)
    mine = tl.arange(0, EXPERTS_POW2) == expert
    own = tl.sum(tl.where(mine, tiles, 0), 0)  # at least 1: an expert without tiles has no t
    first = tl.sum(tl.where(mine, tile_end - tiles, 0), 0)
    local = t - first * num_n
    return first + local % own, local // own


@triton.jit
def grouped_order(t, num_m, num_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of tile index ``t``: GROUP_M row tiles share each sweep of the
    column tiles, so their weight tiles stay in L2."""
    per_group = GROUP_M * num_n
    first_m = (t // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (t % per_group) % size_m, (t % per_group) // size_m
