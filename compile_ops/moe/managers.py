"""All2all managers: move tokens to the ranks that hold their experts, and the outputs back.

One interface for every manager::

    d = manager.dispatch(x, topk_ids, topk_weights)   # this rank's expert inputs (+ routing)
    y = <this rank's experts on d.x>                   # partial: only this rank's expert shards
    out = manager.combine(y, d)
    if not manager.output_is_reduced:                  # the block reduces, exactly once
        out = all_reduce(out, group=manager's group)
    out = manager.home_rows(out, d)                    # this rank's tokens

``output_is_reduced`` is a class-level statement that every manager must make (a class without
it cannot be defined): does ``combine`` already add up the partial outputs of all ranks? If a
manager says False but did reduce, the block reduces twice (outputs ``n``-fold too large); if it
says True but did not, the sum is missing. The block's debug mode detects both at run time.

Each manager exists in two modes. Dynamic mode (the default) moves exactly the rows needed: the
counts and splits are read back to the host. Capacity mode (``max_tokens_per_rank``) moves
fixed-size buffers whose sizes are Python ints, keeps every count on the device and reads
nothing back, so the whole block can be captured in a device graph (see docs/moe.md).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .capacity import Capacity
from .comm import GroupComm
from .layout import Layout
from .one_shot import MAX_BYTES as ONE_SHOT_MAX_BYTES
from .one_shot import one_shot_all_to_all
from .one_shot import usable as one_shot_usable
from .peer_pack import dropped, not_sent, peer_pack
from .wire import from_wire, pack_routing, padding_rows, to_wire


@dataclass(frozen=True)
class Dispatched:
    """What a rank's experts work on: rows ``x`` with their top-k ids and weights."""

    x: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    state: tuple[Any, ...] = ()


def _unpack_routing(x: torch.Tensor, routing: torch.Tensor, state=()) -> Dispatched:
    k = routing.shape[-1] // 2
    return Dispatched(x, routing[:, :k].to(torch.int64), routing[:, k:], tuple(state))


def _moved(comm: GroupComm, move, x, topk_ids, topk_weights, state) -> Dispatched:
    """``move`` (rows of a ``[T, ...]`` tensor to where the experts are) applied to the tokens
    and to their routing. The ids and weights travel packed as one tensor, one collective for
    both; on a one-rank group nothing travels, so they are not packed."""
    if comm.size == 1:
        return Dispatched(move(x), move(topk_ids), move(topk_weights), tuple(state))
    return _unpack_routing(move(x), move(pack_routing(topk_ids, topk_weights)), state)


class All2AllManager(torch.nn.Module, abc.ABC):
    """Base of the managers: binds the layout's group; subclasses state ``name`` and
    ``output_is_reduced`` (checked when the class is defined) and implement ``dispatch`` and
    ``combine`` (abstract: a manager without them cannot be instantiated), and ``home_rows``
    if needed."""

    name: ClassVar[str]
    output_is_reduced: ClassVar[bool]
    capacity: Capacity | None = None  # set by the capacity-mode managers

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "output_is_reduced", None), bool):
            raise TypeError(
                f"{cls.__name__} must state output_is_reduced (True if combine() returns outputs "
                "already summed over the group, False if the block must reduce them)"
            )
        if not isinstance(getattr(cls, "name", None), str):
            raise TypeError(f"{cls.__name__} must have a name")

    def __init__(self, layout: Layout, experts: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        layout.check_experts(experts)
        self.layout = layout
        self.comm = GroupComm(layout.group, f"moe.{type(self).__name__}")
        self.comm.check_device(torch.device(device))

    @abc.abstractmethod
    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> Dispatched:
        """Move each token to the ranks that hold its experts; ``Dispatched.state`` carries
        what ``combine`` needs to bring the outputs back."""

    @abc.abstractmethod
    def combine(self, y: torch.Tensor, d: Dispatched) -> torch.Tensor:
        """The experts' outputs ``y`` back on the tokens ``dispatch`` took them from: summed
        over the group if and only if ``output_is_reduced``."""

    def home_rows(self, out: torch.Tensor, d: Dispatched) -> torch.Tensor:
        """This rank's token rows of the (by now reduced) combine output."""
        return out

    def extra_repr(self) -> str:
        reduced = self.output_is_reduced
        return f"group={self.comm.group!r}, layout={self.layout}, output_is_reduced={reduced}"


class NaiveManager(All2AllManager):
    """all_gather every token to every rank (padded to the longest rank). ``combine`` returns
    the partial outputs of all tokens unreduced; the block all_reduces them; each rank keeps its
    own rows."""

    name = "naive"
    output_is_reduced = False

    def dispatch(self, x, topk_ids, topk_weights):
        n_tokens = x.shape[0]
        sizes = self.comm.token_counts(n_tokens, x.device)
        longest = sizes[0]
        for s in sizes[1:]:
            longest = torch.sym_max(longest, s)
        torch._check(longest >= n_tokens)
        pad = longest - n_tokens

        def move(t):  # padding rows have weight 0: they reach no expert
            return self.comm.all_gather(torch.cat([t, t.new_zeros((pad, t.shape[1]))]))

        return _moved(self.comm, move, x, topk_ids, topk_weights, (longest, n_tokens))

    def combine(self, y, d):
        return y

    def home_rows(self, out, d):
        longest, n_tokens = d.state
        return out.narrow(0, self.comm.rank * longest, n_tokens)


class AgRsManager(All2AllManager):
    """all_gatherv the tokens (counts may differ per rank), reduce_scatterv the outputs back."""

    name = "agrs"
    output_is_reduced = True

    def dispatch(self, x, topk_ids, topk_weights):
        sizes = self.comm.token_counts(x.shape[0], x.device)

        def move(t):
            return self.comm.all_gatherv(t, sizes)

        return _moved(self.comm, move, x, topk_ids, topk_weights, (sizes,))

    def combine(self, y, d):
        (sizes,) = d.state
        return self.comm.reduce_scatterv(y, sizes)


class AllToAllManager(All2AllManager):
    """Each token goes once to every rank that holds a shard of one of its experts (splits come
    from the routing), and the partial outputs come back the same way and are summed per token."""

    name = "all_to_all"
    output_is_reduced = True

    def __init__(self, layout: Layout, experts: int, device: torch.device | str = "cpu") -> None:
        super().__init__(layout, experts, device)
        self.register_buffer("owners", layout.owners(experts).to(device), persistent=False)

    def dispatch(self, x, topk_ids, topk_weights):
        n, n_tokens = self.comm.size, x.shape[0]
        wanted = self.owners[topk_ids].any(dim=1)  # [T, n]: rank r gets token t
        if n == 1:  # every expert is here, so every token stays: no count to read back
            send = recv = [n_tokens]
        else:
            send_counts = wanted.sum(0)
            recv_counts = self.comm.exchange_counts(send_counts)
            counts = torch.cat([send_counts, recv_counts]).tolist()
            for c in counts:
                torch._check(c >= 0)
            send, recv = counts[:n], counts[n:]
        total = sum(send)
        torch._check(total <= n * n_tokens)
        # (rank, token) pairs in rank-major order, the wanted ones first: rank r's rows are
        # contiguous and come before rank r+1's, as all_to_all expects.
        skipped = (~wanted).t().reshape(-1).to(torch.int8)
        order = torch.argsort(skipped, stable=True).narrow(0, 0, total)
        token = order % n_tokens

        def move(t):
            return self.comm.all_to_all(t[token], recv, send)

        return _moved(self.comm, move, x, topk_ids, topk_weights, (send, recv, token, n_tokens))

    def combine(self, y, d):
        send, recv, token, n_tokens = d.state
        back = self.comm.all_to_all(y, send, recv)
        out = torch.zeros((n_tokens, y.shape[1]), dtype=torch.float32, device=y.device)
        return out.index_add(0, token, back.float()).to(y.dtype)


# ---- capacity mode: fixed-size buffers, counts on the device, no host read -----------------


def _padded_wire(capacity: Capacity, comm: GroupComm, x, ids, weights) -> torch.Tensor:
    """``x`` and its routing as one ``[per_rank, ...]`` wire tensor, padded at the end with
    rows that reach no expert (id -1, weight 0)."""
    capacity.check(comm, x)
    wire = to_wire(x, pack_routing(ids, weights))
    return torch.cat([wire, padding_rows(capacity.per_rank - x.shape[0], x, ids.shape[1])])


def _unwire(wire: torch.Tensor, hidden: int, state: tuple) -> Dispatched:
    return _unpack_routing(*from_wire(wire, hidden), state)


class _CapacityMode:
    """The construction of the capacity-mode managers (mixed in before All2AllManager): the
    bounds, agreed on by every rank of the group (a collective)."""

    def __init__(
        self, layout: Layout, experts: int, device: torch.device | str, capacity: Capacity
    ) -> None:
        super().__init__(layout, experts, device)
        self.capacity = capacity
        capacity.agree(self.comm, torch.device(device))


class CapacityNaiveManager(_CapacityMode, All2AllManager):
    """naive in capacity mode: all_gather every rank's ``per_rank`` rows (its tokens, then
    padding); ``combine`` returns the partial outputs of all ``n * per_rank`` rows unreduced,
    the block all_reduces them and each rank keeps its own."""

    name = "naive"
    output_is_reduced = False

    def dispatch(self, x, topk_ids, topk_weights):
        wire = _padded_wire(self.capacity, self.comm, x, topk_ids, topk_weights)
        return _unwire(self.comm.all_gather(wire), x.shape[1], (x.shape[0],))

    def combine(self, y, d):
        return y

    def home_rows(self, out, d):
        (n_tokens,) = d.state
        return out.narrow(0, self.comm.rank * self.capacity.per_rank, n_tokens)


class CapacityAgRsManager(CapacityNaiveManager):
    """agrs in capacity mode: the same all_gather of ``per_rank`` rows per rank, and a
    reduce_scatter that returns this rank's rows summed over the group."""

    name = "agrs"
    output_is_reduced = True

    def combine(self, y, d):
        return self.comm.reduce_scatter(y)

    def home_rows(self, out, d):
        (n_tokens,) = d.state
        return out.narrow(0, 0, n_tokens)


class CapacityAllToAllManager(_CapacityMode, All2AllManager):
    """all_to_all in capacity mode: a fixed buffer of ``per_peer`` rows for each peer holds the
    tokens routed to it (in token order, then padding), exchanged with equal static splits; the
    partial outputs come back the same way and are summed per token.

    Padding rows carry expert id -1 and weight 0, so the receiver needs no counts. Where
    ``per_peer < per_rank`` a peer may be offered more rows than fit: the rows past its buffer
    are dropped and counted in the device buffer ``dropped`` (eager mode raises instead).
    """

    name = "all_to_all"
    output_is_reduced = True

    def __init__(
        self,
        layout: Layout,
        experts: int,
        device: torch.device | str,
        capacity: Capacity,
        one_shot: bool | None = None,
    ) -> None:
        super().__init__(layout, experts, device, capacity)
        self.register_buffer("owners", layout.owners(experts).to(device), persistent=False)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.register_buffer("dropped", zero, persistent=False)
        usable = one_shot is not False and one_shot_usable(self.comm, torch.device(device))
        if one_shot and not usable:
            raise ValueError(
                f"compile_ops.moe: one_shot=True, but group {self.comm.group!r} "
                f"({self.comm.backend}, {self.comm.size} ranks) on {device} cannot use it: it "
                "needs NCCL groups of CUDA GPUs on one host with peer access"
            )
        # Every rank reached the same verdict (a collective), so all take the same path.
        self.one_shot = usable

    def _exchange(self, x: torch.Tensor) -> torch.Tensor:
        """Equal blocks of ``per_peer`` rows, one per rank, both ways."""
        if self.one_shot and x.nbytes <= ONE_SHOT_MAX_BYTES:  # x's size is the same on every rank
            return one_shot_all_to_all(x, self.comm.group)  # the group bound to this manager
        splits = [self.capacity.per_peer] * self.comm.size
        return self.comm.all_to_all(x, splits, splits)

    def dispatch(self, x, topk_ids, topk_weights):
        n, cap = self.comm.size, self.capacity
        wire, back = peer_pack(x, topk_ids, topk_weights, self.owners, cap.per_peer, cap.per_rank)
        # Rows offered to each peer (sent or dropped), for the eager check, before anything
        # moves (compiled, this is dead code and removed).
        cap.check(self.comm, x, sends=(back != not_sent(n, cap.per_peer)).sum(0))
        received = self._exchange(wire)
        if cap.per_peer < cap.per_rank:
            self.dropped.add_((back == dropped(n, cap.per_peer)).sum())
        return _unwire(received, x.shape[1], (back,))

    def combine(self, y, d):
        (back,) = d.state
        n, per_peer = self.comm.size, self.capacity.per_peer
        partials = self._exchange(y)
        sent = back < not_sent(n, per_peer)
        rows = partials[torch.where(sent, back, 0)].float()  # [T, n, H]
        return torch.where(sent.unsqueeze(-1), rows, 0.0).sum(1).to(y.dtype)

    def reset_dropped(self) -> None:
        self.dropped.zero_()


MANAGERS: dict[str, type[All2AllManager]] = {
    m.name: m for m in (NaiveManager, AgRsManager, AllToAllManager)
}
CAPACITY_MANAGERS: dict[str, type[All2AllManager]] = {
    m.name: m for m in (CapacityNaiveManager, CapacityAgRsManager, CapacityAllToAllManager)
}


def make_manager(
    name: str,
    layout: Layout,
    experts: int,
    device: torch.device | str = "cpu",
    *,
    max_tokens_per_rank: int | None = None,
    max_tokens_per_peer: int | None = None,
    one_shot: bool | None = None,
) -> All2AllManager:
    """The manager called ``name`` for ``layout``; an unknown name raises (no fallback).

    With ``max_tokens_per_rank`` it works in capacity mode (fixed-size buffers, no host read;
    collective at construction: every rank of the group must build it, with the same values).
    ``max_tokens_per_peer`` (all_to_all only) reserves fewer rows per peer than the default
    ``max_tokens_per_rank``: less memory and traffic, rows past it are dropped (and counted).
    ``one_shot`` (all_to_all in capacity mode): exchange the buffers in one launch over
    symmetric memory (one_shot.py) instead of NCCL; ``None`` does where every rank can (one
    host's CUDA GPUs with peer access), ``True`` raises where they cannot. The choice is the
    manager's ``one_shot`` attribute.
    """
    if name not in MANAGERS:
        raise ValueError(
            f"compile_ops.moe: unknown manager {name!r}; choose one of {sorted(MANAGERS)}"
        )
    if max_tokens_per_rank is None:
        for arg, value in (("max_tokens_per_peer", max_tokens_per_peer), ("one_shot", one_shot)):
            if value is not None:
                raise ValueError(
                    f"compile_ops.moe: {arg} belongs to capacity mode; give max_tokens_per_rank too"
                )
        return MANAGERS[name](layout, experts, device)
    capacity = Capacity.of(name, max_tokens_per_rank, max_tokens_per_peer)
    if name == "all_to_all":
        return CapacityAllToAllManager(layout, experts, device, capacity, one_shot)
    if one_shot is not None:
        raise ValueError(
            f"compile_ops.moe: one_shot applies to the all_to_all manager only, not {name!r}"
        )
    return CAPACITY_MANAGERS[name](layout, experts, device, capacity)
