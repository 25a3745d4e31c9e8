"""The many-rows (prefill) tile of the MoE grouped GEMMs on Hopper and newer GPUs: a persistent
kernel whose operand tiles are copied by the tensor memory accelerator (TMA).

It computes what ``grouped_gemm_kernel`` (triton_grouped_gemm.py) computes in either role:
gate_up with SiLU-and-multiply in the epilogue, or down with the routing weight applied and each
row stored at its pair's place. What differs:

* One program per multiprocessor. Each counts the real row tiles from ``ends`` on the device and
  walks them, so the grid depends on the machine alone: the same launch serves any routing and a
  captured graph, and no program is launched for a tile that does not exist (below the
  many-rows count all of them return at once).
* The copy engine moves rectangles, so the rows of A must be contiguous: gate_up reads
  ``x[rows]`` gathered beforehand by the op (one pass over ``P x H``), down reads ``act``.
* The weights ``[E, n, K]`` are addressed as one ``[E * n, K]`` matrix. A tile that runs past
  its expert's last row or column reads the next expert's rows (or the copy engine's zero fill
  past the end) and masks them at the store; only real rows are written.

The launch is chosen by the ops in triton_grouped_gemm.py (tiles, when it runs); the measured
gain over the pointer tile is in docs/moe.md.
"""

from __future__ import annotations

import contextvars

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from .triton_expert_tiles import (
    expert_order,
    expert_tiles,
    grouped_order,
    many_rows,
    tile_rows,
)


def supported(device: torch.device) -> bool:
    """Whether ``device`` has the copy engine this kernel is written for: an NVIDIA GPU of
    compute capability 9.0 or newer (ROCm builds report AMD GPUs as "cuda" too)."""
    return (
        device.type == "cuda"
        and torch.version.hip is None
        and torch.cuda.get_device_capability(device) >= (9, 0)
    )


def programs(device: torch.device) -> int:
    """The persistent grid: one program per multiprocessor of ``device``."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def persistent_grouped_gemm_kernel(
    a_ptr, w_ptr, ends_ptr, dest_ptr, scale_ptr, out_ptr, M, N, K, stride_out, W_ROWS,
    N_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr, LARGE_FROM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PROGRAMS: tl.constexpr, FLATTEN: tl.constexpr, GATE_UP: tl.constexpr,
):  # fmt: skip
    """``out[p] = silu(a[p] @ gate.T) * (a[p] @ up.T)`` (GATE_UP, gate rows ``[0, N)`` and up
    rows ``[N, 2N)`` of each expert's ``W_ROWS``), else ``out[dest[p]] = scale[p] * a[p] @ w.T``,
    for sorted position ``p`` of expert ``e``. Returns at once below ``LARGE_FROM`` rows per
    expert on average: the few-rows tile serves those counts. GROUP_M 0 walks the tiles expert
    by expert (``expert_order``), else in bands of GROUP_M row tiles (``grouped_order``)."""
    if not many_rows(ends_ptr, N_EXPERTS, LARGE_FROM):
        return
    # Made here, past the return: no descriptor is ever made over an empty tensor.
    a_desc = tl.make_tensor_descriptor(a_ptr, [M, K], [K, 1], [BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, [N_EXPERTS * W_ROWS, K], [K, 1], [BLOCK_N, BLOCK_K])
    e = tl.arange(0, EXPERTS_POW2)  # loaded here, not in a helper: see expert_tiles
    start = tl.load(ends_ptr + e - 1, mask=(e > 0) & (e < N_EXPERTS), other=0)
    end = tl.load(ends_ptr + e, mask=e < N_EXPERTS, other=0)
    tiles, tile_end = expert_tiles(start, end, BLOCK_M)
    num_m = tl.sum(tiles, 0)
    num_n = tl.cdiv(N, BLOCK_N)
    for t in tl.range(tl.program_id(0), num_m * num_n, PROGRAMS, flatten=FLATTEN):
        if GROUP_M == 0:
            pid_m, pid_n = expert_order(t, tiles, tile_end, num_n, EXPERTS_POW2)
        else:
            pid_m, pid_n = grouped_order(t, num_m, num_n, GROUP_M)
        expert, row0, row_end = tile_rows(pid_m, start, end, tiles, tile_end, EXPERTS_POW2, BLOCK_M)
        offs_m = row0 + tl.arange(0, BLOCK_M)
        in_rows = offs_m < row_end
        n0 = pid_n * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        w_row = expert * W_ROWS + n0
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if GATE_UP:
            acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                a = a_desc.load([row0, k0])
                acc = tl.dot(a, w_desc.load([w_row, k0]).T, acc)
                acc_u = tl.dot(a, w_desc.load([w_row + N, k0]).T, acc_u)
            acc = acc * tl.sigmoid(acc) * acc_u
            dest = offs_m.to(tl.int64)
        else:
            for k0 in range(0, K, BLOCK_K):
                acc = tl.dot(a_desc.load([row0, k0]), w_desc.load([w_row, k0]).T, acc)
            acc = acc * tl.load(scale_ptr + offs_m, mask=in_rows, other=0.0)[:, None]
            dest = tl.load(dest_ptr + offs_m, mask=in_rows, other=0).to(tl.int64)
        out_ptrs = out_ptr + dest[:, None] * stride_out + offs_n[None, :]
        mask = in_rows[:, None] & (offs_n < N)[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gather_rows_kernel(
    x_ptr, rows_ptr, ends_ptr, out_ptr, P, R, H, stride_x,
    N_EXPERTS: tl.constexpr, LARGE_FROM: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    """``out[p] = x[rows[p]]`` for ``p < P``, and zeros for ``p == P`` (or where ``rows[p]`` is
    ``R`` or more): BLOCK_P rows a program, so each moves wide tiles rather than one short row.
    Below ``LARGE_FROM`` rows per expert the persistent kernel returns at once, and so does
    this one: the few-rows tile gathers its own rows."""
    if not many_rows(ends_ptr, N_EXPERTS, LARGE_FROM):
        return
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    row = tl.load(rows_ptr + p, mask=p < P, other=R)
    read, write = (row < R)[:, None], (p <= P)[:, None]
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        in_cols = (cols < H)[None, :]
        values = tl.load(
            x_ptr + row[:, None] * stride_x + cols[None, :], mask=read & in_cols, other=0.0
        )
        tl.store(out_ptr + p[:, None] * H + cols[None, :], values, mask=write & in_cols)


# (rows, columns) a program of gather_rows_kernel moves per step, from a sweep on an H200 at the
# prefill shapes (benchmarks/moe_prefill_tiles.py --gather).
GATHER_TILE = (16, 256)


def gather_rows(kernel, x: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor, large_from):
    """``[P + 1, H]``: ``x[rows]`` and a zero row (never empty, whatever ``P`` and ``x``'s row
    count), written only where the persistent kernel will read it (see the kernel). One
    coalesced pass with ``kernel`` (``gather_rows_kernel``, wrapped for tracing or not):
    Inductor's own fused gather of these rows ran 3-4x slower at prefill (torch 2.11)."""
    out = x.new_empty((rows.shape[0] + 1, x.shape[1]))
    block_p, block_h = GATHER_TILE
    kernel[(triton.cdiv(out.shape[0], block_p),)](
        x, rows, ends, out, rows.shape[0], x.shape[0], x.shape[1], x.stride(0),
        N_EXPERTS=ends.shape[0], LARGE_FROM=large_from, BLOCK_P=block_p, BLOCK_H=block_h,
    )  # fmt: skip
    return out


def kernel_constants(
    cfg, flatten: bool, n_experts: int, gate_up: bool, programs: int, large_from: int
) -> dict:
    """The compile-time arguments of ``persistent_grouped_gemm_kernel`` (``cfg``: a
    ``TileConfig``), for its launch and for compiling it without a GPU."""
    return {
        "N_EXPERTS": n_experts, "EXPERTS_POW2": triton.next_power_of_2(n_experts),
        "LARGE_FROM": large_from, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m, "PROGRAMS": programs,
        "FLATTEN": flatten, "GATE_UP": gate_up,
    }  # fmt: skip


def launch(kernel, a, w, ends, dest, scale, out, cfg, flatten: bool, programs: int, large_from):
    """One launch of ``kernel`` (``persistent_grouped_gemm_kernel``, wrapped for tracing or not)
    over ``a`` ``[P, K]`` and ``w`` ``[E, n, K]``, both contiguous; gate_up when ``dest`` is
    None (``n`` = 2 x the output's columns), down otherwise. ``cfg``: a ``TileConfig``."""
    n_experts, w_rows, k = w.shape
    gate_up = dest is None
    launch_args = (
        a, w, ends, ends if gate_up else dest, ends if gate_up else scale, out,
        a.shape[0], w_rows // 2 if gate_up else w_rows, k, out.stride(0), w_rows,
    )  # fmt: skip
    meta = kernel_constants(cfg, flatten, n_experts, gate_up, programs, large_from)
    meta |= {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}

    def run() -> None:
        # The kernel writes its descriptors to a little global memory that Triton asks its
        # allocator for at launch. Inductor's launcher sets torch's for compiled graphs; for
        # eager calls it is set here, in a copy of the caller's context, so the caller's own
        # choice of allocator is left as it was.
        triton.set_allocator(lambda size, _align, _stream: a.new_empty(size, dtype=torch.int8))
        kernel[(programs,)](*launch_args, **meta)

    contextvars.copy_context().run(run)


def rows_fit(*tensors: torch.Tensor) -> bool:
    """Whether rows of these tensors' last dimension are whole 16-byte units, as the copy
    engine's row strides must be."""
    return all(t.shape[-1] * t.element_size() % 16 == 0 for t in tensors)


def tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether the copy engine can address these contiguous tensors as matrices of their last
    dimension: whole 16-byte rows and a 16-byte aligned first element. A traced (fake) tensor
    has no address, so there the storage offset alone is checked; Inductor assumes the same of
    its inputs' allocations (see "Input Alignment handling" in torch/_inductor)."""
    return rows_fit(*tensors) and all(
        t.storage_offset() * t.element_size() % 16 == 0 and (is_fake(t) or t.data_ptr() % 16 == 0)
        for t in tensors
    )
