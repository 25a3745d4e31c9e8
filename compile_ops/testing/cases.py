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

from compile_ops.ops import SPECS
from fake_impls import collectives as shapes

from .compare import to_device_keeping_layout

OPS = tuple(SPECS)
MODES = ("eager", "compiled", "dynamic")
# The dtypes the user guide documents: the reductions take REDUCIBLE_DTYPES; data movement takes
# any dtype, and these are the ones tested (those no backend carries go as bytes).
REDUCIBLE_DTYPES = tuple(sorted(shapes.REDUCIBLE_DTYPES, key=str))
DTYPES = (
    *REDUCIBLE_DTYPES,
    torch.bool,
    torch.complex64,
    torch.complex128,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
)
# Dtypes on which ``pre``/``post`` do arithmetic (elsewhere CPU kernels lack it, or bool promotes).
_ARITHMETIC = frozenset(REDUCIBLE_DTYPES) | {torch.complex64, torch.complex128}


def dtypes_for(op: str) -> tuple[torch.dtype, ...]:
    """Every documented dtype ``op`` takes."""
    return REDUCIBLE_DTYPES if SPECS[op].reduces else DTYPES


@dataclass(frozen=True)
class Case:
    """One call of one op on every rank of a world, with inputs made from ``seed``.

    ``shape`` is each rank's input shape except along the op's dimension, whose extent follows
    from ``sizes`` (v-ops), ``splits`` (all_to_all) or the world size. ``layout`` lays the same
    values out contiguously, transposed (permuted storage) or sliced (every other element).
    The arguments the op takes (its spec's ``params``) come from the fields: see ``arguments``.
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
        if "dim" in self.spec.params:
            parts.append(f"dim{self.dim}")
        if self.spec.reduces:
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
        """The root of a rooted op (broadcast's ``src``, gather's ``dst``): the last rank unless
        ``src`` says otherwise."""
        return self.world_size - 1 if self.src is None else self.src

    @property
    def spec(self):
        return SPECS[self.op]

    def arguments(self, rank: int) -> dict:
        """The keyword arguments rank ``rank`` passes to the op's public wrapper."""
        values = {
            "op": lambda: self.reduce_op,
            "dim": lambda: self.dim,
            "src": self.source_rank,
            "dst": self.source_rank,
            "sizes": self.extents,
            "output_split_sizes": lambda: self.output_splits(rank),
            "input_split_sizes": lambda: self.input_splits(rank),
        }
        return {name: values[name]() for name in self.spec.params}

    def _dim(self) -> int:
        return self.dim % len(self.shape) if "dim" in self.spec.params else 0

    def _extent(self, rank: int) -> int:
        base = self.shape[self._dim()]
        return self.spec.input_extent(self.arguments(rank), rank, base, self.world_size)

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

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Math before the op (so compiled code has a producer to fuse or reinplace)."""
        return x * 2 if self.dtype in _ARITHMETIC else x

    def post(self, y: torch.Tensor) -> torch.Tensor:
        """Math after the op (a consumer of its result)."""
        return y + 1 if self.dtype in _ARITHMETIC else y

    def call(self, x: torch.Tensor, rank: int, group=None) -> torch.Tensor:
        return self.spec.wrapper(x, **self.arguments(rank), group=group)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The op on this process's rank (a picklable, compilable callable)."""
        return self.call(x, dist.get_rank())

    def reference(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every rank's result for inputs ``xs``, computed in one process."""
        return self.spec.reference(xs, [self.arguments(r) for r in range(self.world_size)])

    def expected(self) -> list[torch.Tensor]:
        """``post(reference(pre(inputs)))`` for every rank."""
        xs = [self.pre(self.input(r)) for r in range(self.world_size)]
        return [self.post(t) for t in self.reference(xs)]

    def with_(self, **changes) -> Case:
        return replace(self, **changes)


def standard_cases(world_size: int) -> list[Case]:
    """One case per op, uneven where the op allows it: the table ``compile-ops check`` prints."""
    return [Case(op, world_size, uneven=SPECS[op].uneven) for op in OPS]


def dtype_cases(world_size: int) -> list[Case]:
    """One case per op and documented dtype (uneven where the op allows it; the layouts rotate)."""
    layouts = ("contiguous", "transposed", "sliced")
    return [
        Case(op, world_size, dtype=dtype, uneven=SPECS[op].uneven, layout=layouts[i % 3], seed=9)
        for op in OPS
        for i, dtype in enumerate(dtypes_for(op))
    ]


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
