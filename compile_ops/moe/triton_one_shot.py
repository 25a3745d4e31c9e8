"""The one-shot all_to_all's Triton kernel (see one_shot.py): push, one barrier, copy out.

Each rank's receive buffer has two halves, used by alternate calls: a call pushes this rank's
block for each peer into the peers' current half, meets every rank at a flag barrier and copies
its own current half out. One barrier per call suffices: a rank writes a half again two calls
later, after the barrier of the call between, which every peer reaches only once it has copied
that half out.

Program ``b`` of every rank owns the same element ranges of every block: it writes them into the
peers' buffers and, after the barrier, copies them out of its own. So the barrier is per program
(program ``b`` waits for program ``b`` of every rank), not per grid: nothing waits for a program
that may not be resident yet. Each program keeps its own call count (which half) on the device,
so a replayed graph alternates too.

Flags live in torch's signal pads (one ``int32`` per ``(program, sender)`` on every rank). A
signal turns the receiver's flag from 0 to 1, retrying while it is still 1 (the receiver has
not taken the previous one); taking it turns it back to 0. Each pair of ranks signals in the
same order on both sides, so the flags need no reset between calls, graph replays included.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 1024  # elements (of 4 bytes, where the row allows) each program moves per step
NUM_WARPS = 4
MAX_PROGRAMS = 64


@triton.jit
def _arrive_and_wait(signal_ptrs, rank, slot, N_RANKS: tl.constexpr, RANKS_POW2: tl.constexpr):
    """Tell program ``slot`` of every rank that this one got here, then wait for all of them.

    One lane per rank, so one thread does each atomic; lanes that are done (or past the last
    rank) compare against -1, which no flag holds, and change nothing.
    """
    r = tl.arange(0, RANKS_POW2)
    valid = r < N_RANKS
    peer = tl.where(valid, r, rank)
    one = tl.full([RANKS_POW2], 1, tl.int32)
    zero = tl.zeros([RANKS_POW2], tl.int32)
    # Every thread's stores (the rows pushed to the peers) happen before the flag is set; the
    # release makes them visible, at system scope, to whoever acquires the flag.
    tl.debug_barrier()
    pads = tl.load(signal_ptrs + peer).to(tl.pointer_type(tl.int32))
    theirs = pads + slot * N_RANKS + rank
    done = ~valid
    while tl.min(done.to(tl.int32), 0) == 0:
        old = tl.atomic_cas(theirs, tl.where(done, -1, zero), one, sem="release", scope="sys")
        done = done | (old == 0)
    mine = tl.load(signal_ptrs + rank).to(tl.pointer_type(tl.int32)) + slot * N_RANKS + peer
    taken = ~valid
    while tl.min(taken.to(tl.int32), 0) == 0:
        old = tl.atomic_cas(mine, tl.where(taken, -1, one), zero, sem="acquire", scope="sys")
        taken = taken | (old == 1)
    tl.debug_barrier()


@triton.jit
def one_shot_all_to_all_kernel(
    x_ptr, out_ptr, buffer_ptrs, signal_ptrs, calls_ptr, rank, per_peer,
    N_RANKS: tl.constexpr, RANKS_POW2: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """``x`` and ``out``: ``[N_RANKS * per_peer]`` elements; block ``p`` of ``x`` goes to rank
    ``p``, block ``q`` of ``out`` comes from rank ``q``. ``calls``: int32, one per program."""
    b = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    offs = tl.arange(0, BLOCK)
    calls = tl.load(calls_ptr + b)
    half = (calls & 1).to(tl.int64) * N_RANKS * per_peer  # & wraps evenly past 2**31
    for p in tl.static_range(N_RANKS):
        theirs = tl.load(buffer_ptrs + p).to(tl.pointer_type(x_ptr.dtype.element_ty)) + half
        for start in range(b * BLOCK, per_peer, step):
            i = start + offs
            m = i < per_peer
            rows = tl.load(x_ptr + p * per_peer + i, mask=m)
            tl.store(theirs + rank * per_peer + i, rows, mask=m)
    # Every rank has pushed its ranges of program b into this rank's current half.
    _arrive_and_wait(signal_ptrs, rank, b, N_RANKS, RANKS_POW2)
    mine = tl.load(buffer_ptrs + rank).to(tl.pointer_type(x_ptr.dtype.element_ty)) + half
    for q in tl.static_range(N_RANKS):
        for start in range(b * BLOCK, per_peer, step):
            i = start + offs
            m = i < per_peer
            tl.store(out_ptr + q * per_peer + i, tl.load(mine + q * per_peer + i, mask=m), mask=m)
    tl.store(calls_ptr + b, calls + 1)


def launch(x, out, buffer_ptrs, signal_ptrs, calls, rank: int, n_ranks: int) -> None:
    """Exchange ``x`` into ``out`` (flat, same dtype, ``n_ranks`` equal blocks); one program per
    entry of ``calls``."""
    per_peer = x.numel() // n_ranks
    one_shot_all_to_all_kernel[(calls.numel(),)](
        x, out, buffer_ptrs, signal_ptrs, calls, rank, per_peer,
        N_RANKS=n_ranks, RANKS_POW2=triton.next_power_of_2(n_ranks), BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )  # fmt: skip


def programs_for(per_peer: int, n_ranks: int, signal_pad_bytes: int) -> int:
    """Programs of one launch: enough to move ``per_peer`` elements in a few steps, within the
    flags the signal pad holds (one int32 per program and rank)."""
    fits = signal_pad_bytes // 4 // n_ranks
    return max(1, min(triton.cdiv(per_peer, BLOCK), MAX_PROGRAMS, fits))
