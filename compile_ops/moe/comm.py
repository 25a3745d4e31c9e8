"""The public collectives bound to one group, so no MoE code path can forget or mix up its group."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.groups import GroupError, GroupLike, refuse


class GroupComm:
    """``compile_ops`` collectives that always name the same group.

    MoE code never calls a collective directly; it calls these methods, which pass ``group=``
    every time (an AgRs manager once called ``dist.reduce_scatter`` without a group and silently
    reduced over the wrong ranks). On a one-rank group they return their input (see ``_alone``).
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

    def _alone(self, op: str, x: torch.Tensor, **sizes: Sequence[int]) -> bool:
        """Whether the group has one rank. There ``op`` would return ``x``'s values, so the caller
        returns ``x`` and no collective is traced or launched: at one rank it moves nothing, yet
        costs its launch and host work.

        ``x`` itself, not a copy (the op's result is always new): every caller passes a tensor
        it made for the call, or the block's input, and only reads the result (each method says
        which); one that writes into either must copy.

        What the op would refuse is refused first, with its message: a size list (``sizes``, by
        argument name) without one entry or whose entry is not ``x.shape[0]`` (compiled: while
        tracing, or by a run-time assertion for sizes read from data), ``x`` without a dim 0,
        ``x`` on a device the group does not serve. Not repeated: the reductions' refusal of
        some dtypes and of a gradient through all_reduce, which only matter with more than one
        rank (at one, a sum is its input whatever the dtype, and so is its gradient).
        """
        if self.size != 1:
            return False
        where = f"compile_ops.{op}:"
        for name, entries in sizes.items():
            if len(entries) != 1:
                message = f"{where} len({name}) is {len(entries)} but the group has 1 ranks"
                refuse(message, "GroupError")
        if x.dim() == 0 and op != "all_reduce":  # the others work along dim 0
            refuse(f"{where} x must have at least one dimension", "ValueError")
        for name, (entry,) in sizes.items():
            _check_rows(op, name, entry, x.shape[0])
        if x.device.type not in self.device_types:
            refuse(
                f"{where} x is on {x.device} but group {self.group!r} ({self.backend}) serves "
                f"only {sorted(self.device_types)} tensors",
                "GroupError",
            )
        return True

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self._alone("all_reduce", x):
            return x  # the block's reduce: combine's output, made for the call, then returned
        return compile_ops.all_reduce(x, "sum", group=self.group)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        if self._alone("all_gather", x):
            return x  # padded tokens, wire rows or counts, all made for the call; results read
        return compile_ops.all_gather(x, 0, group=self.group)

    def all_gatherv(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        if self._alone("all_gatherv", x, sizes=sizes):
            return x  # agrs: the block's input and its routing; the experts only read them
        return compile_ops.all_gatherv(x, sizes, 0, group=self.group)

    def reduce_scatter(self, x: torch.Tensor) -> torch.Tensor:
        if self._alone("reduce_scatter", x):
            return x  # the expert outputs, made for the call; they become the block's output
        return compile_ops.reduce_scatter(x, 0, "sum", group=self.group)

    def reduce_scatterv(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        if self._alone("reduce_scatterv", x, sizes=sizes):
            return x  # the expert outputs, made for the call; they become the block's output
        return compile_ops.reduce_scatterv(x, sizes, 0, "sum", group=self.group)

    def all_to_all(
        self, x: torch.Tensor, output_split_sizes: Sequence[int], input_split_sizes: Sequence[int]
    ) -> torch.Tensor:
        splits = {"input_split_sizes": input_split_sizes, "output_split_sizes": output_split_sizes}
        if self._alone("all_to_all", x, **splits):
            return x  # rows gathered for the call, or the expert outputs; results only read
        return compile_ops.all_to_all(x, output_split_sizes, input_split_sizes, group=self.group)

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Entry r of the result is what rank r sent to this rank (one entry per rank)."""
        ones = [1] * self.size
        if self._alone("all_to_all", counts, input_split_sizes=ones, output_split_sizes=ones):
            return counts  # the send counts, made for the call; read back to the host
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


# The size lists whose sum the op's shape rule checks against x's rows; the others are checked
# as all_gatherv's kernel checks its own entry (gloo, not the op, refuses all_to_all's output).
_SUMMED = {("reduce_scatterv", "sizes"), ("all_to_all", "input_split_sizes")}


def _check_rows(op: str, name: str, entry: int | torch.SymInt, rows: int | torch.SymInt) -> None:
    """At one rank, ``name``'s one entry must be x's row count."""
    if not torch.compiler.is_compiling():
        if not 0 <= entry == rows:
            raise ValueError(f"compile_ops.{op}: {_mismatch(op, name, entry, rows)}")
        return
    from torch.fx.experimental.symbolic_shapes import guard_or_true

    if not guard_or_true(entry == rows):  # provably not: refused while tracing
        message = f"compile_ops.{op}: {name} is not [x.shape[0]], as a one-rank group needs"
        refuse(message, "ValueError")
    # It holds, or a size read from data leaves it open until run time: a run-time assertion
    # (whose message Dynamo takes only as a constant).
    torch._check(
        entry == rows,
        lambda: "compile_ops.moe: a one-rank collective's size list is not [x.shape[0]]",
    )


def _mismatch(op: str, name: str, entry: int, rows: int) -> str:
    """What the op says of a size list that does not fit x at one rank."""
    if entry < 0:
        return f"{name}[0]={entry} is negative"
    if (op, name) in _SUMMED:
        return f"{name} sum to {entry} but x.shape[0] is {rows}"
    return f"x.shape[0]={rows} on rank 0 but {name}[0]={entry}"
