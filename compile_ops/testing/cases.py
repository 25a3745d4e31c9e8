"""Deterministic op cases: per-rank inputs, the call, and the single-process reference.

Used by the test suite and by ``compile-ops check``. Inputs are small integers, so sums and
products over a few ranks are exact even in bfloat16 and results can be compared exactly (``avg``
is the one inexact reduction and gets the dtype's default tolerance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

import compile_ops

from . import reference

OPS = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gatherv",
    "reduce_scatter",
    "reduce_scatterv",
    "all_to_all",
)
MODES = ("eager", "compiled", "dynamic")


@dataclass(frozen=True)
class Case:
    op: str
    world_size: int
    dtype: torch.dtype = torch.float32
    dim: int = 0
    reduce_op: str = "sum"
    uneven: bool = False
    contiguous: bool = True
    seed: int = 0
    device: str = "cpu"

    def __str__(self) -> str:
        parts = [self.op, f"w{self.world_size}", str(self.dtype).removeprefix("torch.")]
        if self.op not in ("all_reduce", "broadcast", "all_to_all"):
            parts.append(f"dim{self.dim}")
        if self.op in ("all_reduce", "reduce_scatter", "reduce_scatterv"):
            parts.append(self.reduce_op)
        if self.uneven:
            parts.append("uneven")
        if not self.contiguous:
            parts.append("strided")
        return "-".join(parts)

    # -- sizes ---------------------------------------------------------------------------------

    def sizes(self) -> list[int]:
        """Per-rank extents along ``dim`` for the v-ops (a zero among them from 3 ranks up)."""
        n = self.world_size
        return [(r + 1) % 3 for r in range(n)] if self.uneven else [2] * n

    def input_splits(self, rank: int) -> list[int]:
        n = self.world_size
        return [(rank + 2 * r) % 3 for r in range(n)] if self.uneven else [2] * n

    def output_splits(self, rank: int) -> list[int]:
        return [self.input_splits(s)[rank] for s in range(self.world_size)]

    def _extent(self, rank: int) -> int:
        if self.op in ("all_gather", "all_gatherv"):
            return self.sizes()[rank] if self.op == "all_gatherv" else 2
        if self.op in ("reduce_scatter", "reduce_scatterv"):
            return sum(self.sizes()) if self.op == "reduce_scatterv" else 2 * self.world_size
        if self.op == "all_to_all":
            return sum(self.input_splits(rank))
        return 3

    # -- data ----------------------------------------------------------------------------------

    def input(self, rank: int) -> torch.Tensor:
        shape = [3, 4, 5]
        dim = 0 if self.op == "all_to_all" else self.dim % len(shape)
        shape[dim] = self._extent(rank)
        g = torch.Generator().manual_seed(self.seed * 1000 + rank)
        low, high = (-2, 3) if self.reduce_op == "product" else (-4, 5)
        if self.contiguous:
            x = torch.randint(low, high, shape, generator=g)
        else:  # same values, transposed storage
            x = torch.randint(low, high, shape[::-1], generator=g).permute(2, 1, 0)
        return x.to(self.dtype)

    @staticmethod
    def pre(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def post(y: torch.Tensor) -> torch.Tensor:
        return y + 1

    def call(self, x: torch.Tensor, rank: int, group=None) -> torch.Tensor:
        op = self.op
        if op == "all_reduce":
            return compile_ops.all_reduce(x, self.reduce_op, group=group)
        if op == "broadcast":
            return compile_ops.broadcast(x, src=self.world_size - 1, group=group)
        if op == "all_gather":
            return compile_ops.all_gather(x, self.dim, group=group)
        if op == "all_gatherv":
            return compile_ops.all_gatherv(x, self.sizes(), self.dim, group=group)
        if op == "reduce_scatter":
            return compile_ops.reduce_scatter(x, self.dim, self.reduce_op, group=group)
        if op == "reduce_scatterv":
            return compile_ops.reduce_scatterv(x, self.sizes(), self.dim, self.reduce_op, group)
        if op == "all_to_all":
            return compile_ops.all_to_all(
                x, self.output_splits(rank), self.input_splits(rank), group=group
            )
        raise ValueError(f"unknown op {op!r}")

    def expected(self) -> list[torch.Tensor]:
        """``post(reference(pre(inputs)))`` for every rank."""
        xs = [self.pre(self.input(r)) for r in range(self.world_size)]
        op = self.op
        if op == "all_reduce":
            out = reference.all_reduce(xs, self.reduce_op)
        elif op == "broadcast":
            out = reference.broadcast(xs, src=self.world_size - 1)
        elif op in ("all_gather", "all_gatherv"):
            out = reference.all_gather(xs, self.dim)
        elif op == "reduce_scatter":
            out = reference.reduce_scatter(xs, self.dim, self.reduce_op)
        elif op == "reduce_scatterv":
            out = reference.reduce_scatterv(xs, self.sizes(), self.dim, self.reduce_op)
        elif op == "all_to_all":
            splits = [self.input_splits(r) for r in range(self.world_size)]
            out = reference.all_to_all(xs, splits)
        else:
            raise ValueError(f"unknown op {op!r}")
        return [self.post(t) for t in out]

    def with_(self, **changes) -> Case:
        return replace(self, **changes)


def standard_cases(world_size: int) -> list[Case]:
    """One case per op, uneven where the op allows it: the table ``compile-ops check`` prints."""
    uneven = {"all_gatherv", "reduce_scatterv", "all_to_all"}
    return [Case(op, world_size, uneven=op in uneven) for op in OPS]


def run_case(case: Case, modes: tuple[str, ...] = MODES) -> dict[str, object]:
    """On every rank: the case's result per mode, plus graph-break and recompile counts.

    Runs inside a worker of a pool (see ``pool.py``); module-level so it pickles.
    """
    rank = dist.get_rank()
    x = case.input(rank).to(case.device)
    x_before = x.clone()

    def fn(t: torch.Tensor) -> torch.Tensor:
        return case.post(case.call(case.pre(t), rank))

    results: dict[str, object] = {}
    for mode in modes:
        if mode == "eager":
            results[mode] = fn(x)
        else:
            results[mode], results[f"{mode}_frames"] = _compiled(fn, x, dynamic=mode == "dynamic")
    results["input_intact"] = torch.equal(x, x_before)
    return results


def _compiled(fn: Callable, x: torch.Tensor, dynamic: bool):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=dynamic)
    return compiled(x), counter.frame_count
