"""Eager kernels: the communication of each op over a ProcessGroup.

Two kinds, named by the op's twin in its spec (see spec.py):

* in place (``twin="inplace"``): ``kernel(op, buf, *args)`` communicates in place on ``buf``,
  which holds this rank's input (the out-of-place op passes a fresh copy, the twin ``x`` itself);
* into an output (``twin="out"``): ``kernel(op, out, x, *args)`` writes the result into ``out``,
  already allocated with the shape the op's shape rule gives.

``args`` are the op's schema arguments after ``x``, ending with ``group_name``; ``op`` names the
overload in error messages. The shape rule has already run; each kernel checks what needs the
live group (membership, group size, device), then makes the ProcessGroup call. Nothing is sent
before every check has passed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.distributed_c10d import BroadcastOptions, GatherOptions

from ..groups import GroupError
from .backend import (
    ALL_GATHER_OPTS,
    ALL_REDUCE_OPTS,
    ALL_TO_ALL_OPTS,
    REDUCE_SCATTER_OPTS,
    UNEVEN_ALL_GATHER,
    check_group_size,
    check_rank,
    group,
    leading,
    reducible,
    reduction,
    rooted_options,
    wait,
    wire,
)


def all_reduce(op: str, buf: torch.Tensor, reduce_op: str, group_name: str) -> None:
    pg = group(op, group_name, buf)
    work = reducible(buf)
    reduce_op, divide = reduction(reduce_op, pg)
    wait(pg.allreduce([work], ALL_REDUCE_OPTS[reduce_op]))
    if divide:
        work.div_(pg.size())
    if work is not buf:
        buf.copy_(work)


def broadcast(op: str, buf: torch.Tensor, src: int, group_name: str) -> None:
    pg = group(op, group_name, buf)
    ranks = dist.get_process_group_ranks(pg)
    if src not in ranks:
        raise GroupError(f"compile_ops.{op}: src={src} is not a member of the group")
    work = buf if buf.is_contiguous() else buf.contiguous()
    wait(pg.broadcast([wire(work)], rooted_options(BroadcastOptions, ranks.index(src))))
    if work is not buf:
        buf.copy_(work)


# -- gathers ----------------------------------------------------------------------------------


def _all_gather_base(pg: ProcessGroup, out: torch.Tensor, x: torch.Tensor) -> None:
    wait(pg._allgather_base(wire(out), wire(x), ALL_GATHER_OPTS))


def _gather_into(out: torch.Tensor, x: torch.Tensor, dim: int, sizes: Sequence[int], pg) -> None:
    """Concatenate every rank's ``x`` along ``dim`` into ``out``; sizes[r] is rank r's extent."""
    rows = leading(out, dim)
    src = (x.movedim(dim, 0) if dim else x).contiguous()
    even = sizes.count(sizes[0]) == len(sizes)
    if even and rows is not None:
        _all_gather_base(pg, rows, src)
    elif even:
        stacked = src.new_empty((pg.size() * src.shape[0], *src.shape[1:]))
        _all_gather_base(pg, stacked, src)
        out.copy_(stacked.movedim(0, dim))
    elif rows is not None and dist.get_backend(pg) in UNEVEN_ALL_GATHER:
        parts = [wire(p) for p in rows.split(list(sizes))]
        wait(pg.allgather([parts], [wire(src)], ALL_GATHER_OPTS))
    else:
        # Uneven sizes on a backend without an uneven gather: pad every rank to the largest
        # extent, gather with the tensor API, then compact.
        longest = max(sizes)
        padded = src.new_zeros((longest, *src.shape[1:]))
        padded[: src.shape[0]].copy_(src)
        stacked = src.new_empty((pg.size() * longest, *src.shape[1:]))
        _all_gather_base(pg, stacked, padded)
        chunks = [stacked[r * longest : r * longest + n] for r, n in enumerate(sizes)]
        if rows is not None:
            torch.cat(chunks, dim=0, out=rows)
        else:
            out.copy_(torch.cat(chunks, dim=0).movedim(0, dim))


def all_gather(op: str, out, x, dim: int, group_size: int, group_name: str) -> None:
    pg = group(op, group_name, x)
    check_group_size(op, pg, group_size, "group_size")
    dim %= x.dim()
    _gather_into(out, x, dim, [x.shape[dim]] * group_size, pg)


def _check_own_size(op: str, pg: ProcessGroup, x: torch.Tensor, sizes, dim: int, name="sizes"):
    check_group_size(op, pg, len(sizes), f"len({name})")
    rank = pg.rank()
    if x.shape[dim] != sizes[rank]:
        raise ValueError(
            f"compile_ops.{op}: x.shape[{dim}]={x.shape[dim]} on rank {rank} but "
            f"{name}[{rank}]={sizes[rank]}"
        )


def all_gatherv(op: str, out, x, sizes: Sequence[int], dim: int, group_name: str) -> None:
    pg = group(op, group_name, x)
    dim %= x.dim()
    _check_own_size(op, pg, x, sizes, dim)
    _gather_into(out, x, dim, sizes, pg)


def gather(op: str, out, x, dim: int, dst: int, group_size: int, rank: int, group_name: str):
    """Every rank's ``x`` concatenated along ``dim`` into ``out`` on global rank ``dst``."""
    pg = group(op, group_name, x)
    check_group_size(op, pg, group_size, "group_size")
    if dist.get_rank() != rank:
        raise GroupError(
            f"compile_ops.{op}: rank={rank} but this process is global rank {dist.get_rank()} "
            "(was the code compiled on another rank?)"
        )
    ranks = dist.get_process_group_ranks(pg)
    if dst not in ranks:
        raise GroupError(f"compile_ops.{op}: dst={dst} is not a member of the group")
    dim %= x.dim()
    src = (x.movedim(dim, 0) if dim else x).contiguous()
    rows = buf = None
    received = []  # the root receives one tensor per rank; the others pass none
    if rank == dst:
        rows = leading(out, dim)
        buf = (
            rows if rows is not None else src.new_empty((group_size * src.shape[0], *src.shape[1:]))
        )
        received = [[wire(part) for part in buf.view(group_size, *src.shape).unbind(0)]]
    wait(pg.gather(received, [wire(src)], rooted_options(GatherOptions, ranks.index(dst))))
    if buf is not None and rows is None:
        out.copy_(buf.movedim(0, dim))


# -- reduce-scatters --------------------------------------------------------------------------


def _scatter_reduce_into(out, x, dim, sizes, reduce_op, pg) -> None:
    """Reduce every rank's ``x``; leave slice ``rank`` (extents ``sizes``) along ``dim`` in ``out``."""
    rows = leading(x, dim)
    src = reducible(rows if rows is not None else x.movedim(dim, 0))
    dst = leading(out, dim) if src.dtype == out.dtype else None
    buf = dst if dst is not None else src.new_empty((out.shape[dim], *src.shape[1:]))
    reduce_op, divide = reduction(reduce_op, pg)
    opts = REDUCE_SCATTER_OPTS[reduce_op]
    if sizes.count(sizes[0]) == len(sizes):
        wait(pg._reduce_scatter_base(buf, src, opts))
    else:
        wait(pg.reduce_scatter([buf], [list(src.split(list(sizes)))], opts))
    if divide:
        buf.div_(pg.size())
    if dst is None:
        out.copy_(buf.movedim(0, dim))


def reduce_scatter(op: str, out, x, dim: int, reduce_op: str, group_size: int, group_name: str):
    pg = group(op, group_name, x)
    check_group_size(op, pg, group_size, "group_size")
    dim %= x.dim()
    _scatter_reduce_into(out, x, dim, [x.shape[dim] // group_size] * group_size, reduce_op, pg)


def reduce_scatterv(op: str, out, x, sizes, dim: int, reduce_op: str, rank: int, group_name: str):
    pg = group(op, group_name, x)
    check_group_size(op, pg, len(sizes), "len(sizes)")
    check_rank(op, pg, rank)
    _scatter_reduce_into(out, x, dim % x.dim(), sizes, reduce_op, pg)


# -- all_to_all -------------------------------------------------------------------------------


def all_to_all(op: str, out, x, output_split_sizes, input_split_sizes, group_name: str) -> None:
    pg = group(op, group_name, x)
    check_group_size(op, pg, len(input_split_sizes), "len(input_split_sizes)")
    src = x if x.is_contiguous() else x.contiguous()
    dst = (
        out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    )
    out_splits, in_splits = list(output_split_sizes), list(input_split_sizes)
    wait(pg.alltoall_base(wire(dst), wire(src), out_splits, in_splits, ALL_TO_ALL_OPTS))
    if dst is not out:
        out.copy_(dst)
