"""Which shard of the experts each rank of a group holds.

A group of ``ep_size * tp_size`` ranks is a grid: rank ``g`` is EP slot ``g // tp_size`` and TP
slice ``g % tp_size`` (TP inner, as in torchtitan and vLLM). EP slot ``s`` holds whole experts
``[s * E/ep_size, (s + 1) * E/ep_size)``; TP slice ``t`` holds rows ``[t * I/tp_size, ...)`` of the
intermediate dimension of each of them. ``tp`` is the grid ``1 x n``, ``ep`` is ``n x 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.groups import GroupError, GroupLike

from .comm import GroupComm

KINDS = ("tp", "ep", "tp_ep")


@dataclass(frozen=True)
class Layout:
    kind: str
    group: str
    size: int
    rank: int
    tp_size: int
    ep_size: int

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def ep_rank(self) -> int:
        return self.rank // self.tp_size

    def __str__(self) -> str:
        return self.kind if self.kind != "tp_ep" else f"tp{self.tp_size}xep{self.ep_size}"

    @classmethod
    def tp(cls, group: GroupLike = None) -> Layout:
        """Every rank holds a 1/n slice of every expert."""
        comm = GroupComm(group, "moe.Layout.tp")
        return cls("tp", comm.group, comm.size, comm.rank, tp_size=comm.size, ep_size=1)

    @classmethod
    def ep(cls, group: GroupLike = None) -> Layout:
        """Every rank holds 1/n of the experts, whole."""
        comm = GroupComm(group, "moe.Layout.ep")
        return cls("ep", comm.group, comm.size, comm.rank, tp_size=1, ep_size=comm.size)

    @classmethod
    def tp_ep(cls, group: GroupLike, tp: GroupLike, ep: GroupLike) -> Layout:
        """Both: ``tp`` is this rank's TP subgroup (its grid row), ``ep`` its EP subgroup."""
        where = "moe.Layout.tp_ep"
        whole = compile_ops.resolve_group(group, where)
        tp_pg = compile_ops.resolve_group(tp, where)
        ep_pg = compile_ops.resolve_group(ep, where)
        comm = GroupComm(whole, where)
        if tp_pg.size() * ep_pg.size() != comm.size:
            raise GroupError(
                f"compile_ops.{where}: tp has {tp_pg.size()} ranks and ep {ep_pg.size()}, but the "
                f"group has {comm.size}; it must be their product"
            )
        layout = cls("tp_ep", comm.group, comm.size, comm.rank, tp_pg.size(), ep_pg.size())
        # The subgroups must be this rank's row and column of the grid, in group ranks.
        want_tp = [layout.ep_rank * layout.tp_size + t for t in range(layout.tp_size)]
        want_ep = [s * layout.tp_size + layout.tp_rank for s in range(layout.ep_size)]
        for name, pg, want in (("tp", tp_pg, want_tp), ("ep", ep_pg, want_ep)):
            got = [dist.get_group_rank(whole, g) for g in dist.get_process_group_ranks(pg)]
            if got != want:
                raise GroupError(
                    f"compile_ops.{where}: {name} holds group ranks {got} but rank {comm.rank} of "
                    f"a {layout.ep_size}x{layout.tp_size} (ep x tp) grid needs {want} "
                    "(group rank = ep_rank * tp_size + tp_rank)"
                )
        return layout

    def check_experts(self, experts: int) -> None:
        if experts % self.ep_size:
            raise ValueError(
                f"compile_ops.moe: experts={experts} is not divisible by the EP size "
                f"{self.ep_size} of layout {self}"
            )

    def check_intermediate(self, intermediate: int) -> None:
        if intermediate % self.tp_size:
            raise ValueError(
                f"compile_ops.moe: intermediate={intermediate} is not divisible by the TP size "
                f"{self.tp_size} of layout {self}"
            )

    def local_experts(self, experts: int) -> range:
        per_slot = experts // self.ep_size
        return range(self.ep_rank * per_slot, (self.ep_rank + 1) * per_slot)

    def local_rows(self, intermediate: int) -> slice:
        per_slice = intermediate // self.tp_size
        return slice(self.tp_rank * per_slice, (self.tp_rank + 1) * per_slice)

    def owners(self, experts: int) -> torch.Tensor:
        """``[experts, size]`` bool: group rank r holds a shard of expert e."""
        self.check_experts(experts)
        slot_of_expert = torch.arange(experts) // (experts // self.ep_size)
        slot_of_rank = torch.arange(self.size) // self.tp_size
        return slot_of_expert[:, None] == slot_of_rank[None, :]
