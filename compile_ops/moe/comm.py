"""The public collectives bound to one group, so no MoE code path can forget or mix up its group."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.groups import GroupError, GroupLike


class GroupComm:
    """``compile_ops`` collectives that always name the same group.

    MoE code never calls a collective directly; it calls these methods, which pass ``group=``
    every time (an AgRs manager once called ``dist.reduce_scatter`` without a group and silently
    reduced over the wrong ranks).

    On a one-rank group each method returns its input and traces or launches nothing: there a
    collective moves nothing yet costs its launch and host work (serving engines skip it too).
    The input itself, not a copy: every caller passes a tensor it made for the call (or the
    block's input, to agrs's all_gatherv) and only reads the result.
    """

    def __init__(self, group: GroupLike, owner: str) -> None:
        pg = compile_ops.resolve_group(group, owner)
        if pg.rank() < 0:
            raise GroupError(
                f"compile_ops.{owner}: this process (rank {dist.get_rank()}) is "
                f"not a member of group {pg.group_name!r}"
            )
        # A string is what compiled graphs can hold; torch's own name always resolves back.
        self.group = group if isinstance(group, str) else pg.group_name
        self.size = pg.size()
        self.rank = pg.rank()
        self.backend = str(dist.get_backend(pg))
        self.device_types = frozenset(d.type for d in pg._device_types)
        self.owner = owner

    def check_device(self, device: torch.device) -> None:
        if device.type not in self.device_types:
            raise GroupError(
                f"compile_ops.{self.owner}: the weights are on {device} but group {self.group!r} "
                f"({self.backend}) serves only {sorted(self.device_types)} tensors"
            )

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        return compile_ops.all_reduce(x, "sum", group=self.group)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        return compile_ops.all_gather(x, 0, group=self.group)

    def all_gatherv(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        if self.size == 1:
            return x
        return compile_ops.all_gatherv(x, sizes, 0, group=self.group)

    def reduce_scatter(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        return compile_ops.reduce_scatter(x, 0, "sum", group=self.group)

    def reduce_scatterv(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        if self.size == 1:
            return x
        return compile_ops.reduce_scatterv(x, sizes, 0, "sum", group=self.group)

    def all_to_all(
        self, x: torch.Tensor, output_splits: Sequence[int], input_splits: Sequence[int]
    ) -> torch.Tensor:
        if self.size == 1:
            return x
        return compile_ops.all_to_all(x, output_splits, input_splits, group=self.group)

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Entry r of the result is what rank r sent to this rank (one entry per rank)."""
        if self.size == 1:
            return counts
        ones = [1] * self.size
        return compile_ops.all_to_all(counts, ones, ones, group=self.group)

    def token_counts(self, n_tokens: int | torch.SymInt, device: torch.device) -> list:
        """Every rank's token count; this rank's entry is ``n_tokens`` itself.

        Under torch.compile the other ranks' counts are data: Dynamo traces ``.tolist()`` of an
        integer tensor into unbacked SymInts, so changing counts never recompile.
        """
        if self.size == 1:
            return [n_tokens]
        mine = torch.full((1,), n_tokens, dtype=torch.int64, device=device)
        counts = self.all_gather(mine).tolist()
        for c in counts:
            torch._check(c >= 0)
        torch._check(counts[self.rank] == n_tokens)
        counts[self.rank] = n_tokens
        return counts
