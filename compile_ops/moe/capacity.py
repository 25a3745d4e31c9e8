"""Capacity mode's fixed sizes, and the checks that keep tokens within them.

In capacity mode every buffer and every collective's split size derives from two Python ints, the
same on every rank, so a compiled forward reads nothing back to the host and can be captured in a
device graph. What that costs: a check of the token counts can no longer stop a replayed graph
(see docs/moe.md, "Capacity mode").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compile_ops.graph_capture import is_capturing

from .comm import GroupComm


@dataclass(frozen=True)
class Capacity:
    """The fixed sizes of capacity mode; every buffer and every split size derives from them.

    ``per_rank`` (``max_tokens_per_rank``): the most tokens one rank brings to one call.
    ``per_peer`` (``max_tokens_per_peer``): rows the all_to_all manager reserves for each peer;
    ``per_rank`` always suffices, since a token goes at most once to each peer.
    """

    per_rank: int
    per_peer: int

    def agree(self, comm: GroupComm, device: torch.device) -> None:
        """Every rank must use the same capacity (else the fixed-size collectives mismatch).

        Runs once, at construction, and raises the same error on every rank.
        """
        mine = torch.tensor([[self.per_rank, self.per_peer]], device=device)
        table = comm.all_gather(mine).tolist()
        if any(row != table[0] for row in table):
            raise ValueError(
                f"compile_ops.moe: the ranks of group {comm.group!r} were given different "
                f"capacities, [max_tokens_per_rank, max_tokens_per_peer] by rank: {table}; "
                "every rank must use the same"
            )

    def check(self, comm: GroupComm, x: torch.Tensor, sends: torch.Tensor | None = None) -> None:
        """Refuse more tokens than the capacity, before any token moves.

        Eager: every rank's count (and, given ``sends``, rows per peer) are exchanged and each
        rank raises the same error. Compiled: the token count is bounded symbolically, which
        becomes a guard on ``x``'s size; nothing is read back. While a graph is being captured
        the exchange is skipped (a captured graph cannot read counts on the host).
        """
        if not (torch.compiler.is_compiling() or is_capturing(x.device)):
            self._check_on_host(comm, x.shape[0], x.device, sends)
        # On one line, with these names: a failed guard on x's size quotes this source line.
        n_tokens, max_tokens_per_rank = x.shape[0], self.per_rank
        torch._check(n_tokens <= max_tokens_per_rank, lambda: "compile_ops.moe: x has more rows than max_tokens_per_rank")  # fmt: skip

    def _check_on_host(self, comm, n_tokens: int, device, sends: torch.Tensor | None) -> None:
        mine = torch.tensor([n_tokens], device=device)
        if sends is not None:
            mine = torch.cat([mine, sends.to(mine.dtype)])
        table = comm.all_gather(mine.unsqueeze(0)).tolist()
        where = f"compile_ops.moe: rank {{}} of group {comm.group!r}"
        for rank, (tokens, *per_peer) in enumerate(table):
            if tokens > self.per_rank:
                raise ValueError(
                    f"{where.format(rank)} has {tokens} tokens, more than "
                    f"max_tokens_per_rank={self.per_rank}; no token was moved"
                )
            for peer, rows in enumerate(per_peer):
                if rows > self.per_peer:
                    raise ValueError(
                        f"{where.format(rank)} routes {rows} tokens to rank {peer}, more than "
                        f"max_tokens_per_peer={self.per_peer} (max_tokens_per_rank="
                        f"{self.per_rank} always fits); no token was moved"
                    )

    @classmethod
    def of(cls, manager: str, per_rank: int, per_peer: int | None = None) -> Capacity:
        """Validated sizes for ``manager``; ``per_peer`` defaults to ``per_rank``."""
        for arg, value in (("max_tokens_per_rank", per_rank), ("max_tokens_per_peer", per_peer)):
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"compile_ops.moe: {arg}={value!r} must be a positive int")
        if per_peer is None:
            return cls(per_rank, per_rank)
        if manager != "all_to_all":
            raise ValueError(
                f"compile_ops.moe: max_tokens_per_peer applies to the all_to_all manager only; "
                f"{manager!r} moves max_tokens_per_rank rows to every rank"
            )
        if per_peer > per_rank:
            raise ValueError(
                f"compile_ops.moe: max_tokens_per_peer={per_peer} is larger than "
                f"max_tokens_per_rank={per_rank}; a rank never sends a peer more than its tokens"
            )
        return cls(per_rank, per_peer)
