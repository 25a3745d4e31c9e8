"""Triton grouped GEMMs of the MoE experts, on pairs sorted by expert (see experts.py).

For sorted position ``p`` in expert ``e``'s group ``[ends[e-1], ends[e])``:

* ``gate_up_silu``: ``act[p] = silu(x[rows[p]] @ gate[e].T) * (x[rows[p]] @ up[e].T)`` — the
  rows are gathered in the prologue, the gate and up tiles share them, and SiLU-and-multiply
  runs on the float32 accumulators: ``[P, 2I]`` never exists.
* ``down_scatter``: ``out[dest[p]] = scale[p] * (act[p] @ down[e].T)`` — the routing weight is
  applied in the epilogue and the row stored at its pair's place, so the per-row sum that
  follows reads pairs in token order.

Each launch's grid is the worst case for ``P`` rows: ``cdiv(P, BLOCK_M) + E`` row tiles (each
expert's last tile may be partial) times the column tiles (two launches per kernel in 16-bit,
one per tile size, see ``CONFIGS``). On Hopper and newer, in 16 bits, the many-rows launch is
the persistent kernel of triton_tma_gemm.py instead (one program per multiprocessor; its tiles
come by TMA, so gate_up first gathers ``x[rows]`` into ``[P + 1, H]`` in one pass). Each
program finds its expert and rows from ``ends`` on the device; programs past the last real tile
return at once. Nothing is read back to
the host and the launch depends on shapes alone, so the same launch serves a captured graph
whatever the routing. Rows past ``ends[-1]`` are neither read nor written.

Registered with ``torch.library.triton_op``: Dynamo and Inductor see the kernels (no graph
break, unbacked row counts welcome); the fake is the same function run on fake tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import triton_tma_gemm as ttg
from .triton_expert_tiles import expert_tiles, grouped_order, many_rows, tile_rows


class TileConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


# Two tiles per kernel, chosen by a sweep on an H200 (bfloat16; benchmarks/moe_experts.py
# --sweep, docs/moe.md): 64-row tiles where experts get few rows (decode: the weights stream
# once and little of a tile is wasted), 128-row tiles where they get many (prefill: each weight
# tile is reused by twice the rows). The row count is data, unbacked when compiled, so both are
# launched: each program first reads the routed row count on the device and returns at once
# unless its tile is the one for that count. No host read; a captured graph keeps both launches.
LARGE_FROM_ROWS_PER_EXPERT = 96
CONFIGS: dict[tuple[str, int], tuple[TileConfig, ...]] = {
    ("gate_up", 2): (TileConfig(64, 128, 64, 8, 4, 4), TileConfig(128, 128, 64, 8, 8, 3)),
    ("down", 2): (TileConfig(64, 128, 64, 8, 4, 4), TileConfig(128, 256, 64, 8, 8, 3)),
    # float32 (exact products, no TF32): one tile for every count; not tuned.
    ("gate_up", 4): (TileConfig(64, 64, 32, 8, 4, 3),),
    ("down", 4): (TileConfig(64, 64, 32, 8, 4, 3),),
}
# On Hopper and newer, in 16 bits, the many-rows counts go to the persistent TMA kernel
# (triton_tma_gemm.py) instead of the 128-row pointer tile above: (tile, flatten the tile loop
# into the k-loop), from a sweep on an H200 at the three prefill shapes (docs/moe.md). Four
# stages did not fit beside the pointer tile's layouts; with the copy engine's they do. Group 0:
# the tiles are walked expert by expert; against bands of 8 row tiles, 2-4% faster in four of
# the six products at those shapes and within 1% in the other two (moe_prefill_tiles.py).
PERSISTENT_CONFIGS: dict[str, tuple[TileConfig, bool]] = {
    "gate_up": (TileConfig(128, 128, 64, 0, 8, 4), False),
    "down": (TileConfig(128, 256, 64, 0, 8, 4), True),
}


def tile_configs(kernel: str, dtype: torch.dtype) -> tuple[TileConfig, ...]:
    """(few rows per expert, many rows per expert) tiles, or one tile for every count."""
    return CONFIGS[(kernel, 4 if dtype == torch.float32 else 2)]


@triton.jit
def _not_my_regime(
    ends_ptr, N_EXPERTS: tl.constexpr, REGIME: tl.constexpr, LARGE_FROM: tl.constexpr
):
    """Whether this launch's tile is not the one for the routed row count (REGIME 0: one tile
    for every count; 1: few rows per expert; 2: at least LARGE_FROM per expert)."""
    if REGIME == 0:
        return False
    else:
        large = many_rows(ends_ptr, N_EXPERTS, LARGE_FROM)
        if REGIME == 1:
            return large
        else:
            return large == 0


@triton.jit
def _tile(
    start, end, num_m, N,
    EXPERTS_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    """This program's expert, its rows (sorted positions) and columns, with their masks, from
    the experts' first rows and row ends; the expert is N_EXPERTS or more (nothing to do) past
    the last real tile."""
    pid_m, pid_n = grouped_order(tl.program_id(0), num_m, tl.cdiv(N, BLOCK_N), GROUP_M)
    tiles, tile_end = expert_tiles(start, end, BLOCK_M)
    expert, row0, row_end = tile_rows(pid_m, start, end, tiles, tile_end, EXPERTS_POW2, BLOCK_M)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return expert, offs_m, offs_m < row_end, offs_n, offs_n < N


@triton.jit
def _load(ptrs, rows_ok, cols_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """A tile, masked only along the dimensions that may run past the end."""
    if EVEN_ROWS and EVEN_COLS:
        return tl.load(ptrs)
    elif EVEN_ROWS:
        return tl.load(ptrs, mask=cols_ok[None, :], other=0.0)
    elif EVEN_COLS:
        return tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
    else:
        return tl.load(ptrs, mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)


@triton.jit
def _dot(a, b, acc):
    # float32 stays float32, as F.linear computes it (Triton's default would be TF32).
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def grouped_gemm_kernel(
    a_ptr, w_ptr, ends_ptr, rows_ptr, dest_ptr, scale_ptr, out_ptr,
    num_m, N, K, stride_a, stride_we, stride_wn, stride_out,
    N_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, REGIME: tl.constexpr, LARGE_FROM: tl.constexpr,
    GATE_UP: tl.constexpr,
):  # fmt: skip
    """Both products (the module docstring says what each computes): GATE_UP reads ``rows_ptr``
    and ignores ``dest_ptr``/``scale_ptr``; otherwise the reverse. One prologue finds the tile."""
    if _not_my_regime(ends_ptr, N_EXPERTS, REGIME, LARGE_FROM):
        return
    e = tl.arange(0, EXPERTS_POW2)  # loaded here, not in a helper: see expert_tiles
    start = tl.load(ends_ptr + e - 1, mask=(e > 0) & (e < N_EXPERTS), other=0)
    end = tl.load(ends_ptr + e, mask=e < N_EXPERTS, other=0)
    expert, offs_m, in_rows, offs_n, in_cols = _tile(
        start, end, num_m, N, EXPERTS_POW2, BLOCK_M, BLOCK_N, GROUP_M
    )
    if expert >= N_EXPERTS:
        return
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    if GATE_UP:
        token = tl.load(rows_ptr + offs_m, mask=in_rows, other=0).to(tl.int64)
        a_ptrs = a_ptr + token[:, None] * stride_a + offs_k[None, :]
        u_ptrs = w_ptrs + N * stride_wn
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_in = offs_k < K - k0
            a = _load(a_ptrs, in_rows, k_in, False, EVEN_K)
            g = _load(w_ptrs, k_in, in_cols, EVEN_K, EVEN_N)
            u = _load(u_ptrs, k_in, in_cols, EVEN_K, EVEN_N)
            acc_g = _dot(a, g, acc_g)
            acc_u = _dot(a, u, acc_u)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
        act = acc_g * tl.sigmoid(acc_g) * acc_u
        out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_out + offs_n[None, :]
        tl.store(
            out_ptrs, act.to(out_ptr.dtype.element_ty), mask=in_rows[:, None] & in_cols[None, :]
        )
    else:
        a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_a + offs_k[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_in = offs_k < K - k0
            a = _load(a_ptrs, in_rows, k_in, False, EVEN_K)
            b = _load(w_ptrs, k_in, in_cols, EVEN_K, EVEN_N)
            acc = _dot(a, b, acc)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        scale = tl.load(scale_ptr + offs_m, mask=in_rows, other=0.0)
        dest = tl.load(dest_ptr + offs_m, mask=in_rows, other=0).to(tl.int64)
        out_ptrs = out_ptr + dest[:, None] * stride_out + offs_n[None, :]
        acc = acc * scale[:, None]
        tl.store(
            out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=in_rows[:, None] & in_cols[None, :]
        )


def kernel_constants(kernel: str, cfg: TileConfig, regime: int, n_experts: int, n: int, k: int):
    """The compile-time arguments of ``grouped_gemm_kernel`` for ``kernel`` ("gate_up" or
    "down") with tile ``cfg``, an ``[n, k]`` weight per expert and launch ``regime``."""
    return {
        "N_EXPERTS": n_experts,
        "EXPERTS_POW2": triton.next_power_of_2(n_experts),
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
        "GROUP_M": cfg.group_m,
        "EVEN_K": k % cfg.block_k == 0,
        "EVEN_N": n % cfg.block_n == 0,
        "REGIME": regime,
        "LARGE_FROM": LARGE_FROM_ROWS_PER_EXPERT,
        "GATE_UP": kernel == "gate_up",
    }


def _launches(
    kernel: str, dtype: torch.dtype, pairs, n_experts: int, n: int, k: int, persistent: bool
):
    """(grid, row tiles, compile-time arguments) of each launch of ``kernel`` with the pointer
    tiles; with ``persistent`` the many-rows one is left to the persistent kernel.

    Row tiles are the worst case for ``pairs`` rows, and for the few-rows tile at most what
    fewer than ``LARGE_FROM_ROWS_PER_EXPERT * n_experts`` routed rows can need (it returns
    at once above that): its programs all run, idle or not, and at prefill an idle grid sized
    for every row costs a wave of empty programs per SM-full of tiles."""
    configs = tile_configs(kernel, dtype)
    for regime, cfg in enumerate(configs, start=int(len(configs) > 1)):
        if regime == 2 and persistent:
            continue
        num_m = triton.cdiv(pairs, cfg.block_m) + n_experts
        if regime == 1:
            most = triton.cdiv(LARGE_FROM_ROWS_PER_EXPERT * n_experts, cfg.block_m) + n_experts
            num_m = torch.sym_min(num_m, most)
        meta = kernel_constants(kernel, cfg, regime, n_experts, n, k)
        meta |= {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        yield (num_m * triton.cdiv(n, cfg.block_n),), num_m, meta


class Persistent(NamedTuple):
    """The persistent TMA kernel and the row gather that feeds it, as a launch takes them
    (wrapped for tracing or not), and its grid (one program per multiprocessor)."""

    kernel: object
    gather: object
    programs: int


def persistent_for(x: torch.Tensor) -> Persistent | None:
    """The persistent kernel for ``x``'s device and dtype, traced; None where the pointer tile
    serves every count (float32, or a GPU without the copy engine). The launches also fall
    back to the pointer tile for rows the copy engine cannot address (``ttg.tma_ready``)."""
    if x.dtype == torch.float32 or not ttg.supported(x.device):
        return None
    kernels = map(wrap_triton, (ttg.persistent_grouped_gemm_kernel, ttg.gather_rows_kernel))
    return Persistent(*kernels, ttg.programs(x.device))


def launch_gate_up_silu(kernel, x, rows, gate_up, ends, persistent=None) -> torch.Tensor:
    """``gate_up_silu``'s body with ``kernel`` launched as given: wrapped for tracing by the op,
    or ``grouped_gemm_kernel`` itself (Triton's interpreter on a CPU, in the tests); with
    ``persistent`` (a ``Persistent``), that kernel takes the many-rows counts, on the rows
    gathered here (the copy engine reads contiguous rows)."""
    x, gate_up = x.contiguous(), gate_up.contiguous()
    n_experts, two_i, hidden = gate_up.shape
    inter = two_i // 2
    # The copy engine reads a gathered copy of x's rows (a fresh buffer), never x itself.
    persistent = persistent if ttg.rows_fit(x) and ttg.tma_ready(gate_up) else None
    out = x.new_empty((rows.shape[0], inter))
    launches = _launches(
        "gate_up", x.dtype, rows.shape[0], n_experts, inter, hidden, persistent is not None
    )
    for grid, num_m, meta in launches:
        kernel[grid](
            x, gate_up, ends, rows, ends, ends, out,  # ends: dest and scale are not read
            num_m, inter, hidden, x.stride(0), gate_up.stride(0), gate_up.stride(1), out.stride(0),
            **meta,
        )  # fmt: skip
    if persistent is not None:
        cfg, flatten = PERSISTENT_CONFIGS["gate_up"]
        gathered = ttg.gather_rows(persistent.gather, x, rows, ends, LARGE_FROM_ROWS_PER_EXPERT)
        ttg.launch(
            persistent.kernel, gathered, gate_up, ends, None, None, out, cfg, flatten,
            persistent.programs, LARGE_FROM_ROWS_PER_EXPERT,
        )  # fmt: skip
    return out


def launch_down_scatter(kernel, act, down, ends, dest, scale, persistent=None) -> torch.Tensor:
    """``down_scatter``'s body with ``kernel`` launched as given (see launch_gate_up_silu)."""
    act, down = act.contiguous(), down.contiguous()
    n_experts, hidden, inter = down.shape
    persistent = persistent if ttg.tma_ready(act, down) else None
    out = act.new_empty((act.shape[0], hidden))
    launches = _launches(
        "down", act.dtype, act.shape[0], n_experts, hidden, inter, persistent is not None
    )
    for grid, num_m, meta in launches:
        kernel[grid](
            act, down, ends, ends, dest, scale, out,  # ends: rows are not read
            num_m, hidden, inter, act.stride(0), down.stride(0), down.stride(1), out.stride(0),
            **meta,
        )  # fmt: skip
    if persistent is not None:
        cfg, flatten = PERSISTENT_CONFIGS["down"]
        ttg.launch(
            persistent.kernel, act, down, ends, dest, scale, out, cfg, flatten,
            persistent.programs, LARGE_FROM_ROWS_PER_EXPERT,
        )  # fmt: skip
    return out


@triton_op("compile_ops_moe::gate_up_silu", mutates_args=())
def gate_up_silu(
    x: torch.Tensor, rows: torch.Tensor, gate_up: torch.Tensor, ends: torch.Tensor
) -> torch.Tensor:
    """``[P, I]``: ``silu(x[rows] @ gate.T) * (x[rows] @ up.T)`` per expert group (rows past
    ``ends[-1]`` unwritten). ``x`` ``[R, H]``, ``rows`` ``[P]``, ``gate_up`` ``[E, 2I, H]``."""
    kernel = wrap_triton(grouped_gemm_kernel)
    return launch_gate_up_silu(kernel, x, rows, gate_up, ends, persistent_for(x))


@triton_op("compile_ops_moe::down_scatter", mutates_args=())
def down_scatter(
    act: torch.Tensor,
    down: torch.Tensor,
    ends: torch.Tensor,
    dest: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """``[P, H]``: row ``dest[p]`` is ``scale[p] * act[p] @ down[e].T`` for sorted position
    ``p`` of expert ``e`` (rows no position maps to are unwritten). ``down`` ``[E, H, I]``."""
    kernel = wrap_triton(grouped_gemm_kernel)
    return launch_down_scatter(kernel, act, down, ends, dest, scale, persistent_for(act))
