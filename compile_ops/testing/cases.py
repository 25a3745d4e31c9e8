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
from .compare import to_device_keeping_layout

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
    """One call of one op on every rank of a world, with inputs made from ``seed``.

    ``shape`` is each rank's input shape except along the op's dimension, whose extent follows
    from ``sizes`` (v-ops), ``splits`` (all_to_all) or the world size. ``layout`` lays the same
    values out contiguously, transposed (permuted storage) or sliced (every other element).
    """

    op: str
    world_size: int
    dtype: torch.dtype = torch.float32
    dim: int = 0
    reduce_op: str = "sum"
    uneven: bool = False
    layout: str = "contiguous"
    shape: tuple[int, ...] = (3, 4, 5)
    sizes: tuple[int, ...] | None = None
    splits: tuple[tuple[int, ...], ...] | None = None
    src: int | None = None
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
        if self.layout != "contiguous":
            parts.append(self.layout)
        if self.shape != (3, 4, 5):
            parts.append("x".join(map(str, self.shape)))
        return "-".join(parts)

    # -- sizes ---------------------------------------------------------------------------------

    def extents(self) -> list[int]:
        """Per-rank extents along ``dim`` for the v-ops (a zero among them from 3 ranks up)."""
        if self.sizes is not None:
            return list(self.sizes)
        n = self.world_size
        return [(r + 1) % 3 for r in range(n)] if self.uneven else [2] * n

    def input_splits(self, rank: int) -> list[int]:
        """Rows rank ``rank`` sends to each rank."""
        if self.splits is not None:
            return list(self.splits[rank])
        n = self.world_size
        return [(rank + 2 * r) % 3 for r in range(n)] if self.uneven else [2] * n

    def output_splits(self, rank: int) -> list[int]:
        return [self.input_splits(s)[rank] for s in range(self.world_size)]

    def source_rank(self) -> int:
        return self.world_size - 1 if self.src is None else self.src

    def _dim(self) -> int:
        return 0 if self.op == "all_to_all" else self.dim % len(self.shape)

    def _extent(self, rank: int) -> int:
        if self.op == "all_gatherv":
            return self.extents()[rank]
        if self.op == "reduce_scatterv":
            return sum(self.extents())
        if self.op == "all_gather":
            return self.shape[self._dim()]
        if self.op == "reduce_scatter":
            return self.shape[self._dim()] * self.world_size
        if self.op == "all_to_all":
            return sum(self.input_splits(rank))
        return self.shape[self._dim()]

    # -- data ----------------------------------------------------------------------------------

    def input(self, rank: int) -> torch.Tensor:
        shape = list(self.shape)
        shape[self._dim()] = self._extent(rank)
        g = torch.Generator().manual_seed(self.seed * 1000 + rank)
        low, high = (-2, 3) if self.reduce_op == "product" else (-4, 5)
        # The layout is made after the dtype conversion, which would otherwise copy a sliced
        # tensor into a contiguous one.
        if self.layout == "transposed" and len(shape) > 1:
            x = torch.randint(low, high, shape[::-1], generator=g).to(self.dtype)
            return x.permute(*reversed(range(len(shape))))
        if self.layout == "sliced":
            wide = [*shape[:-1], 2 * shape[-1]]
            return torch.randint(low, high, wide, generator=g).to(self.dtype)[..., ::2]
        return torch.randint(low, high, shape, generator=g).to(self.dtype)

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
            return compile_ops.broadcast(x, src=self.source_rank(), group=group)
        if op == "all_gather":
            return compile_ops.all_gather(x, self.dim, group=group)
        if op == "all_gatherv":
            return compile_ops.all_gatherv(x, self.extents(), self.dim, group=group)
        if op == "reduce_scatter":
            return compile_ops.reduce_scatter(x, self.dim, self.reduce_op, group=group)
        if op == "reduce_scatterv":
            return compile_ops.reduce_scatterv(x, self.extents(), self.dim, self.reduce_op, group)
        if op == "all_to_all":
            return compile_ops.all_to_all(
                x, self.output_splits(rank), self.input_splits(rank), group=group
            )
        raise ValueError(f"unknown op {op!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The op on this process's rank (a picklable, compilable callable)."""
        return self.call(x, dist.get_rank())

    def reference(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every rank's result for inputs ``xs``, computed in one process."""
        op = self.op
        if op == "all_reduce":
            return reference.all_reduce(xs, self.reduce_op)
        if op == "broadcast":
            return reference.broadcast(xs, src=self.source_rank())
        if op in ("all_gather", "all_gatherv"):
            return reference.all_gather(xs, self.dim)
        if op == "reduce_scatter":
            return reference.reduce_scatter(xs, self.dim, self.reduce_op)
        if op == "reduce_scatterv":
            return reference.reduce_scatterv(xs, self.extents(), self.dim, self.reduce_op)
        if op == "all_to_all":
            return reference.all_to_all(xs, [self.input_splits(r) for r in range(self.world_size)])
        raise ValueError(f"unknown op {op!r}")

    def expected(self) -> list[torch.Tensor]:
        """``post(reference(pre(inputs)))`` for every rank."""
        xs = [self.pre(self.input(r)) for r in range(self.world_size)]
        return [self.post(t) for t in self.reference(xs)]

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
    x = to_device_keeping_layout(case.input(rank), case.device)
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


def assert_case_results(case: Case, results: list[dict], modes: tuple[str, ...] = MODES) -> None:
    """Every rank's ``run_case`` results equal the reference, its input is intact, and each
    compiled mode ran as one frame (no graph break, no recompile)."""
    for rank, (got, want) in enumerate(zip(results, case.expected(), strict=True)):
        if not got["input_intact"]:
            raise AssertionError(f"{case}: rank {rank}'s input was modified")
        for mode in modes:
            where = f"{case} {mode} rank {rank}"
            torch.testing.assert_close(got[mode], want, msg=lambda m, where=where: f"{where}: {m}")
            if mode != "eager" and got[f"{mode}_frames"] != 1:
                raise AssertionError(f"{case} {mode}: graph breaks or recompiles")


def _compiled(fn: Callable, x: torch.Tensor, dynamic: bool):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=dynamic)
    return compiled(x), counter.frame_count
