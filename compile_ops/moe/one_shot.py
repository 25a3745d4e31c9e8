"""The capacity all_to_all manager's exchange on one host's CUDA GPUs: one launch, no NCCL.

At decode sizes NCCL's all_to_all is latency, not bandwidth: it runs as grouped send/recv, about
8 us a call on two H200s for a few KiB, where a ring all_gather takes about 5 (docs/benchmarks.md).
Here every rank keeps a receive buffer that every rank of the group can write (torch's symmetric
memory: CUDA IPC, so GPUs of one host with peer access); one Triton launch pushes this rank's
block for each peer into that peer's buffer, meets every rank at a flag barrier and copies its own
buffer out (triton_one_shot.py; the buffer has two halves, used by alternate calls, so one
barrier per call suffices). Serving engines do the same for their decode all_to_all.

It is an op of its own (``compile_ops_moe::one_shot_all_to_all``: schema, fake, side effect), not
a transport of ``compile_ops.all_to_all``: that op cannot tell that every rank's splits are equal,
and ranks choosing different transports would wait for each other forever. Its contract says so:
every rank passes the same shape, split into equal blocks, one per rank. The capacity manager
always does; it uses this op where :func:`usable` (a collective, at construction) agreed.
"""

from __future__ import annotations

import socket
import zlib
from dataclasses import dataclass

import torch

from compile_ops.graph_capture import is_capturing
from compile_ops.groups import group_from_name

from .comm import GroupComm

OP = "compile_ops_moe::one_shot_all_to_all"
# Above this many bytes a call is bandwidth, not latency, and NCCL moves it faster than a few
# programs' stores; the buffer also costs twice this much device memory per size used.
MAX_BYTES = 8 << 20


@dataclass(frozen=True)
class _Workspace:
    """A receive buffer every rank can write, with the addresses the kernel needs."""

    buffer: torch.Tensor  # two halves of the exchanged size; keeps the allocation alive
    buffer_ptrs: torch.Tensor  # int64 [n]: rank r's buffer
    signal_ptrs: torch.Tensor  # int64 [n]: rank r's signal pad
    calls: torch.Tensor  # int32 [programs]: calls each program has made (which half is next)
    rank: int
    n_ranks: int


_workspaces: dict[tuple[str, torch.device, int], _Workspace] = {}


def _workspace(group_name: str, device: torch.device, nbytes: int, per_peer: int) -> _Workspace:
    """The buffer for exchanges of ``nbytes`` (``per_peer`` kernel elements per block)."""
    from . import triton_one_shot

    key = (group_name, device, nbytes)
    if key in _workspaces:
        return _workspaces[key]
    if is_capturing(device):
        raise RuntimeError(
            f"{OP}: first call with {nbytes} bytes on group {group_name!r} while a graph is being "
            "captured; its buffer is set up by a collective that cannot be captured, so run the "
            "step once before capturing (compile_ops.graph_capture warms up first)"
        )
    # torch's symmetric memory has no public module yet (torch 2.11-2.14); this is the API its
    # own fused collectives use.
    from torch.distributed import _symmetric_memory as symm_mem

    pg = group_from_name(group_name, "moe.one_shot_all_to_all")
    # Every rank must exchange the same size: a peer with a smaller buffer would be written past
    # its end. Checked once per size, when the buffer is made (a collective anyway).
    comm = GroupComm(group_name, "moe.one_shot_all_to_all")
    sizes = comm.all_gather(torch.tensor([nbytes], device=device)).tolist()
    if sizes != [nbytes] * comm.size:
        raise ValueError(
            f"{OP}: the ranks of group {group_name!r} passed different sizes, bytes by rank: "
            f"{sizes}; every rank must pass the same shape and dtype"
        )
    size = 2 * nbytes
    buffer = symm_mem.empty(size, dtype=torch.uint8, device=device)
    handle = symm_mem.rendezvous(buffer, pg.group_name)  # collective: every rank allocates
    # Where this buffer sits in the handle's allocation: the same on every rank (symmetric).
    base = handle.get_buffer(handle.rank, (size,), torch.uint8).data_ptr()
    offset = buffer.data_ptr() - base
    ptrs = [
        handle.get_buffer(r, (size,), torch.uint8, storage_offset=offset).data_ptr()
        for r in range(handle.world_size)
    ]
    if ptrs[handle.rank] != buffer.data_ptr():
        raise RuntimeError(f"{OP}: symmetric memory gave this rank's buffer a second address")
    programs = triton_one_shot.programs_for(per_peer, handle.world_size, handle.signal_pad_size)
    ws = _Workspace(
        buffer,
        torch.tensor(ptrs, dtype=torch.int64, device=device),
        torch.tensor(handle.signal_pad_ptrs, dtype=torch.int64, device=device),
        torch.zeros(programs, dtype=torch.int32, device=device),
        handle.rank,
        handle.world_size,
    )
    _workspaces[key] = ws
    return ws


@torch.library.custom_op(OP, mutates_args=())
def one_shot_all_to_all(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """Block ``p`` of ``x`` (dim 0 split into one equal block per rank) goes to rank ``p``;
    block ``q`` of the result came from rank ``q``. Every rank passes the same shape."""
    from . import triton_one_shot  # needs triton and a CUDA device; imported where it is used

    if x.device.type != "cuda":
        raise ValueError(f"{OP}: x is on {x.device}; this exchange runs on CUDA devices only")
    n_ranks = group_from_name(group_name, "moe.one_shot_all_to_all").size()
    if x.shape[0] % n_ranks:
        raise ValueError(
            f"{OP}: x.shape[0]={x.shape[0]} does not split into {n_ranks} equal blocks"
        )
    src = x.contiguous()
    out = torch.empty_like(src)
    if src.numel() == 0:  # nothing to move on any rank (every rank passes this shape)
        return out
    flat, flat_out = src.view(-1).view(torch.uint8), out.view(-1).view(torch.uint8)
    if (src.nbytes // n_ranks) % 4 == 0:  # move 4-byte words where every block allows
        flat, flat_out = flat.view(torch.int32), flat_out.view(torch.int32)
    ws = _workspace(group_name, x.device, src.nbytes, flat.numel() // n_ranks)
    triton_one_shot.launch(
        flat, flat_out, ws.buffer_ptrs, ws.signal_ptrs, ws.calls, ws.rank, ws.n_ranks
    )
    return out


@one_shot_all_to_all.register_fake
def _(x: torch.Tensor, group_name: str) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# A collective is never dead code (see compile_ops.ops.register).
torch.fx.node.has_side_effect(torch.ops.compile_ops_moe.one_shot_all_to_all.default)


def usable(comm: GroupComm, device: torch.device) -> bool:
    """Whether every rank of ``comm``'s group can use the one-shot exchange on ``device``.

    A collective where the answer could differ between ranks (the same on all: no). Needs NCCL
    groups of CUDA devices on one host that can reach each other's memory.
    """
    if comm.size == 1 or comm.backend != "nccl" or device.type != "cuda":
        return False
    host = zlib.crc32(socket.gethostname().encode())
    index = torch.cuda.current_device() if device.index is None else device.index
    table = comm.all_gather(torch.tensor([[host, index]], device=device)).tolist()
    mine = all(h == host for h, _ in table) and all(
        d == index or torch.cuda.can_device_access_peer(index, d) for _, d in table
    )
    verdicts = comm.all_gather(torch.tensor([int(mine)], device=device)).tolist()
    return all(verdicts)
