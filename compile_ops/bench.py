"""``compile-ops bench``: our collectives side by side with raw c10d and torch's functional ones.

Every number comes from one world and one process per rank, with all contenders interleaved round
by round, so drift and noise fall on all of them alike. Three studies:

* latency: per op, dtype and size, (a) raw in-place c10d, (b) ``_c10d_functional`` op + wait,
  (c) our op eager, (d) our op in a compiled function, (e) that compiled function replayed from a
  CUDA graph (CUDA only). Ratios are to (a).
* overhead: what adding a collective to a compiled function costs: compiled(math + op) minus
  compiled(math), next to one raw c10d call (target: at most raw + 5 µs). On CUDA also the same
  difference between two captured graphs.
* dispatch: per-call cost of tiny eager calls, ours against ``_c10d_functional`` (target: 0.8x)
  and against a bare ``Library.define`` op and a ``torch.library.custom_op`` doing the same.

Timing: on accelerators, device events around a block of calls (a block's time per call is the
steady-state cost, host- or device-bound, whichever is slower); on CPU the host clock. The median
over blocks is reported, with the interquartile range as spread. Compiled functions use
``dynamic=True``, so one compile serves every size.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import _resolve_process_group

import compile_ops

from .ops.backend import ALL_REDUCE_OPTS, wait

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
ACCELERATOR_SIZES = tuple(4 * KIB * 4**i for i in range(9))  # 4 KiB .. 256 MiB
CPU_SIZES = tuple(4 * KIB * 4**i for i in range(6))  # 4 KiB .. 4 MiB: gloo on a few cores
LARGE = 16 * MIB  # from here on a stray copy would show as a clear excess over raw
TINY_ELEMENTS = 64
TARGET_SLACK_US = 5.0  # compiled overhead target: one raw call + this
TARGET_DISPATCH_RATIO = 0.8  # eager target: this times _c10d_functional all_reduce + wait
STUDIES = ("latency", "overhead", "dispatch")
VARIANTS = ("raw", "funcol", "eager", "compiled", "graph")
VARIANT_TITLES = {
    "raw": "(a) raw c10d",
    "funcol": "(b) funcol+wait",
    "eager": "(c) ours eager",
    "compiled": "(d) ours compiled",
    "graph": "(e) ours graph",
}


@dataclass(frozen=True)
class Config:
    studies: tuple[str, ...] = STUDIES
    ops: tuple[str, ...] = OPS
    dtypes: tuple[str, ...] = tuple(DTYPES)
    sizes: tuple[int, ...] = ACCELERATOR_SIZES
    reps: int = 20
    block_ms: float = 2.0
    profile_dir: str | None = None


@dataclass
class Stats:
    median_us: float
    p25_us: float
    p75_us: float
    blocks: int
    calls_per_block: int

    @classmethod
    def of(cls, samples: Sequence[float], calls_per_block: int) -> Stats:
        q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        return cls(statistics.median(samples), q[0], q[2], len(samples), calls_per_block)


@dataclass
class Result:
    """One rank's measurements; everything in it pickles back to the launcher."""

    env: dict[str, str]
    latency: list[dict[str, Any]] = field(default_factory=list)
    overhead: list[dict[str, Any]] = field(default_factory=list)
    dispatch: list[dict[str, Any]] = field(default_factory=list)
    generated: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Reference ops for the dispatch study: the cheapest ways to wrap a c10d call in an op.

_lib = torch.library.Library("compile_ops_bench", "DEF")
_lib.define("bare_all_reduce(Tensor x, str group_name) -> Tensor")


def _clone_and_all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    out = x.clone()
    dist.all_reduce(out, group=_resolve_process_group(group_name))
    return out


_lib.impl("bare_all_reduce", _clone_and_all_reduce, "CompositeExplicitAutograd")


@torch.library.custom_op("compile_ops_bench::custom_all_reduce", mutates_args=())
def _custom_all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    return _clone_and_all_reduce(x, group_name)


# ----------------------------------------------------------------------------------------------
# Timing


class Clock:
    """Per-call time of a block of calls: device events on accelerators, the host clock on CPU."""

    def __init__(self, device: torch.device, group: dist.ProcessGroup):
        self.device = device
        self.group = group
        self.on_device = device.type != "cpu"

    def sync(self) -> None:
        if self.on_device:
            torch.accelerator.synchronize()

    def start_together(self) -> None:
        self.sync()
        dist.barrier(group=self.group)
        self.sync()

    def per_call_us(self, fn: Callable[[int], object], calls: int) -> float:
        if not self.on_device:
            start = time.perf_counter()
            for i in range(calls):
                fn(i)
            return (time.perf_counter() - start) / calls * 1e6
        begin = torch.Event(device=self.device, enable_timing=True)
        end = torch.Event(device=self.device, enable_timing=True)
        begin.record()
        for i in range(calls):
            fn(i)
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) * 1e3 / calls

    def measure(
        self, contenders: dict[str, Callable[[int], object]], reps: int, block_ms: float
    ) -> dict[str, Stats]:
        """Interleave the contenders block by block; the same sequence on every rank."""
        calls = {}
        for name, fn in contenders.items():
            self.start_together()
            self.per_call_us(fn, 3)  # warm-up
            self.start_together()
            estimate = self.per_call_us(fn, 3)
            calls[name] = self._agree(max(1, min(500, int(block_ms * 1e3 / max(estimate, 1.0)))))
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(reps):
            for name, fn in contenders.items():
                self.start_together()
                samples[name].append(self.per_call_us(fn, calls[name]))
        return {name: Stats.of(s, calls[name]) for name, s in samples.items()}

    def _agree(self, calls: int) -> int:
        # Every rank must issue the same number of collectives: all take the smallest count.
        t = torch.tensor([calls], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())


# ----------------------------------------------------------------------------------------------
# Contenders


F = torch.ops._c10d_functional


def _equal_splits(x: torch.Tensor, world: int) -> list[int]:
    return [x.shape[0] // world] * world


def ours(op: str, x: torch.Tensor, world: int) -> torch.Tensor:
    if op == "all_reduce":
        return compile_ops.all_reduce(x)
    if op == "all_gather":
        return compile_ops.all_gather(x)
    if op == "reduce_scatter":
        return compile_ops.reduce_scatter(x)
    if op == "all_to_all":
        splits = _equal_splits(x, world)
        return compile_ops.all_to_all(x, splits, splits)
    raise ValueError(f"compile-ops bench: unknown op {op!r}")


def funcol(op: str, x: torch.Tensor, world: int, name: str) -> torch.Tensor:
    if op == "all_reduce":
        out = F.all_reduce(x, "sum", name)
    elif op == "all_gather":
        out = F.all_gather_into_tensor(x, world, name)
    elif op == "reduce_scatter":
        out = F.reduce_scatter_tensor(x, "sum", world, name)
    elif op == "all_to_all":
        splits = _equal_splits(x, world)
        out = F.all_to_all_single(x, splits, splits, name)
    else:
        raise ValueError(f"compile-ops bench: unknown op {op!r}")
    return F.wait_tensor(out)


def raw(op: str, x: torch.Tensor, out: torch.Tensor | None, group: dist.ProcessGroup) -> None:
    """The in-place c10d call, into a preallocated ``out``: the floor every wrapper adds to."""
    if op == "all_reduce":
        dist.all_reduce(x, group=group)
    elif op == "all_gather":
        dist.all_gather_into_tensor(out, x, group=group)
    elif op == "reduce_scatter":
        dist.reduce_scatter_tensor(out, x, group=group)
    elif op == "all_to_all":
        dist.all_to_all_single(out, x, group=group)
    else:
        raise ValueError(f"compile-ops bench: unknown op {op!r}")


def raw_output(op: str, x: torch.Tensor, world: int) -> torch.Tensor | None:
    if op == "all_gather":
        return x.new_empty(x.shape[0] * world)
    if op == "reduce_scatter":
        return x.new_empty(x.shape[0] // world)
    if op == "all_to_all":
        return torch.empty_like(x)
    return None


def math(x: torch.Tensor) -> torch.Tensor:
    """The compiled work a collective is added to (one fused elementwise kernel)."""
    return x * 2 + 1


class Compiled:
    """One compiled function per (kind, op), shared across sizes and dtypes."""

    def __init__(self, world: int, name: str):
        self.world, self.name = world, name
        self._cache: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {}

    def get(self, kind: str, op: str) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (kind, "" if kind == "math" else op)
        if key not in self._cache:
            world, name = self.world, self.name
            fns = {
                "ours": lambda x: ours(op, x, world),
                "math": math,
                "math+ours": lambda x: ours(op, math(x), world),
                "math+funcol": lambda x: funcol(op, math(x), world, name),
            }
            self._cache[key] = torch.compile(fns[kind], fullgraph=True, dynamic=True)
        return self._cache[key]


def cuda_graph(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """Capture ``fn(x)`` once in a CUDA graph; return the graph and its output (CUDA only)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x)
    return graph, out


class Bench:
    """Runs on every rank of a world; the studies issue identical collectives on each."""

    def __init__(self, config: Config):
        self.config = config
        self.group = dist.group.WORLD
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        backend = dist.get_backend(self.group)
        if backend == "gloo":
            self.device = torch.device("cpu")
        else:
            acc = torch.accelerator.current_accelerator()
            self.device = torch.device(acc.type, torch.accelerator.current_device_index())
        self.clock = Clock(self.device, self.group)
        self.compiled = Compiled(self.world, self.group.group_name)
        self.capture = self.device.type == "cuda"
        self.result = Result(env=environment(backend, self.world))

    # -- inputs --------------------------------------------------------------------------------

    def inputs(self, nbytes: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Enough distinct inputs that small sizes are not served from cache (at most 8)."""
        n = max(self.world * 2, nbytes // dtype.itemsize // self.world * self.world)
        copies = max(1, min(8, (64 * MIB) // max(nbytes, 1)))
        g = torch.Generator(device=self.device).manual_seed(1234 + self.rank)
        return [
            torch.rand(n, dtype=dtype, device=self.device, generator=g) + 0.5 for _ in range(copies)
        ]

    # -- studies -------------------------------------------------------------------------------

    def run(self) -> Result:
        studies = self.config.studies
        for op in self.config.ops:
            for dtype_name in self.config.dtypes:
                for nbytes in self.config.sizes:
                    if "latency" in studies:
                        self._guarded(self.latency, op, dtype_name, nbytes)
                    if "overhead" in studies:
                        self._guarded(self.overhead, op, dtype_name, nbytes)
        if "dispatch" in studies:
            self._guarded(self.dispatch)
        if self.config.profile_dir:
            self._guarded(self.profile, Path(self.config.profile_dir))
        return self.result

    def _guarded(self, study: Callable[..., None], *args: Any) -> None:
        try:
            study(*args)
        except Exception as e:
            # Shown under the tables and turned into a non-zero exit code; never hidden.
            where = " ".join(map(str, (study.__name__, *args)))
            self.result.errors.append(f"{where}: {type(e).__name__}: {e}")
        finally:
            self.clock.sync()

    def latency(self, op: str, dtype_name: str, nbytes: int) -> None:
        xs = self.inputs(nbytes, DTYPES[dtype_name])
        k, world, name = len(xs), self.world, self.group.group_name
        raw_xs = [x.clone() for x in xs]  # raw all_reduce writes its input
        out = raw_output(op, xs[0], world)
        compiled = self.compiled.get("ours", op)
        contenders = {
            "raw": lambda i: raw(op, raw_xs[i % k], out, self.group),
            "funcol": lambda i: funcol(op, xs[i % k], world, name),
            "eager": lambda i: ours(op, xs[i % k], world),
            "compiled": lambda i: compiled(xs[i % k]),
        }
        check = self._reference(op, xs[0])
        for variant in ("funcol", "eager", "compiled"):
            _assert_close(contenders[variant](0), check, f"{op} {variant}")
        replay = self._captured(compiled, xs[0], check, f"{op} {dtype_name} {nbytes} graph")
        if replay is not None:
            contenders["graph"] = replay
        stats = self.clock.measure(contenders, self.config.reps, self.config.block_ms)
        for variant, s in stats.items():
            self.result.latency.append(
                {"op": op, "dtype": dtype_name, "bytes": nbytes, "variant": variant, **asdict(s)}
            )

    def _captured(self, fn, x, check, what: str) -> Callable[[int], object] | None:
        """Replays of ``fn(x)`` captured in a CUDA graph; None off CUDA or if capture fails."""
        if not self.capture:
            return None
        try:
            graph, out = cuda_graph(fn, x)
            graph.replay()
            if check is not None:
                _assert_close(out, check, what)
        except Exception as e:
            self.result.errors.append(f"{what}: {type(e).__name__}: {e}")
            return None
        return lambda i: graph.replay()

    def _reference(self, op: str, x: torch.Tensor) -> torch.Tensor:
        buf = x.clone()
        out = raw_output(op, buf, self.world)
        raw(op, buf, out, self.group)
        return buf if out is None else out

    def overhead(self, op: str, dtype_name: str, nbytes: int) -> None:
        xs = self.inputs(nbytes, DTYPES[dtype_name])
        k = len(xs)
        raw_xs = [math(x) for x in xs]
        out = raw_output(op, xs[0], self.world)
        base = self.compiled.get("math", op)
        with_ours = self.compiled.get("math+ours", op)
        with_funcol = self.compiled.get("math+funcol", op)
        check = self._reference(op, math(xs[0]))
        _assert_close(with_ours(xs[0]), check, f"{op} math+ours")
        _assert_close(with_funcol(xs[0]), check, f"{op} math+funcol")
        contenders = {
            "raw": lambda i: raw(op, raw_xs[i % k], out, self.group),
            "math": lambda i: base(xs[i % k]),
            "math+ours": lambda i: with_ours(xs[i % k]),
            "math+funcol": lambda i: with_funcol(xs[i % k]),
        }
        what = f"{op} {dtype_name} {nbytes} graph"
        replay_base = self._captured(base, xs[0], None, f"{what} math")
        replay_ours = self._captured(with_ours, xs[0], check, f"{what} math+ours")
        if replay_base is not None and replay_ours is not None:
            contenders["graph math"] = replay_base
            contenders["graph math+ours"] = replay_ours
        stats = self.clock.measure(contenders, self.config.reps, self.config.block_ms)
        for variant, s in stats.items():
            self.result.overhead.append(
                {"op": op, "dtype": dtype_name, "bytes": nbytes, "variant": variant, **asdict(s)}
            )

    def dispatch(self) -> None:
        """Tiny fp32 all_reduce: what each way of calling it costs per call."""
        import torch.distributed._functional_collectives as fc

        x = self.inputs(TINY_ELEMENTS * 4, torch.float32)[0][:TINY_ELEMENTS].clone()
        raw_x = x.clone()
        group, name = self.group, self.group.group_name
        options = ALL_REDUCE_OPTS["sum"]
        op = torch.ops.compile_ops.all_reduce.default
        contenders = {
            "raw dist.all_reduce": lambda i: dist.all_reduce(raw_x, group=group),
            "ProcessGroup.allreduce": lambda i: wait(group.allreduce([raw_x], options)),
            "_c10d_functional+wait": lambda i: F.wait_tensor(F.all_reduce(x, "sum", name)),
            "funcol.all_reduce+wait": lambda i: fc.wait_tensor(fc.all_reduce(x, "sum", group)),
            "Library.define op": lambda i: torch.ops.compile_ops_bench.bare_all_reduce(x, name),
            "torch.library.custom_op": lambda i: _custom_all_reduce(x, name),
            "ours op": lambda i: op(x, "sum", name),
            "ours wrapper": lambda i: compile_ops.all_reduce(x),
        }
        stats = self.clock.measure(contenders, self.config.reps, self.config.block_ms)
        for variant, s in stats.items():
            self.result.dispatch.append({"variant": variant, **asdict(s)})

    # -- profiles ------------------------------------------------------------------------------

    def profile(self, out_dir: Path) -> None:
        """What a compiled call spends its host time on: profiler tables, cProfile, the code."""
        from torch._inductor.utils import run_and_get_code

        lead = self.rank == 0
        x = self.inputs(4 * KIB, torch.float32)[0]
        code = []
        for kind, op in [*(("math+ours", op) for op in OPS), ("math+funcol", "all_reduce")]:
            torch._dynamo.reset()  # compile afresh, so that the generated code is captured
            _, sources = run_and_get_code(self.compiled.get(kind, op), x)
            copies = [line for src in sources for line in copies_in(src)]
            self.result.generated.append({"fn": f"{kind} {op}", "copies": copies})
            code += [f"# ===== {kind} {op}", *sources]
        tables, summaries = [], []
        activities = list(torch.profiler.supported_activities())
        for kind in ("math", "math+ours", "math+funcol"):
            fn = self.compiled.get(kind, "all_reduce")
            for _ in range(20):
                fn(x)
            self.clock.start_together()
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(50):
                    fn(x)
                self.clock.sync()
            tables.append(f"===== {kind} all_reduce: 50 calls, 4 KiB fp32")
            tables.append(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))
            if lead and kind == "math+ours":
                out_dir.mkdir(parents=True, exist_ok=True)
                prof.export_chrome_trace(str(out_dir / "trace_math_ours.json"))
            self.clock.start_together()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(2000):
                fn(x)
            self.clock.sync()
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
            summaries.append(f"===== {kind} all_reduce: 2000 calls, 4 KiB fp32\n{text.getvalue()}")
        if lead:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "generated_code.py").write_text("\n\n".join(code))
            (out_dir / "profiler_tables.txt").write_text("\n".join(tables))
            (out_dir / "cprofile.txt").write_text("\n".join(summaries))


def copies_in(source: str) -> list[str]:
    """Lines of Inductor's generated ``call()`` that copy or clone a buffer."""
    body = source[source.find("def call(") :]
    body = body[: body.find("\nrunner = ")] if "\nrunner = " in body else body
    return [line.strip() for line in body.splitlines() if re.search(r"clone|copy", line)]


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, msg=lambda m: f"compile-ops bench: {what}: {m}")


def environment(backend: str, world: int) -> dict[str, str]:
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backend": backend,
        "world": str(world),
        "cpus": str(os.cpu_count()),
    }
    if torch.accelerator.is_available() and backend != "gloo":
        acc = torch.accelerator.current_accelerator()
        env["device"] = f"{acc.type}: {torch.get_device_module(acc.type).get_device_name()}"
        if acc.type == "cuda":
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            env["cuda"] = str(torch.version.cuda)
    else:
        env["device"] = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    return env


def run_rank(config: Config) -> Result:
    """Runs inside each rank (module level, so worker pools can ship it)."""
    # Each kind of compiled function is one code object for every op and dtype (8 entries with
    # the defaults): raise Dynamo's limit, and fail rather than silently time eager code.
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        return Bench(config).run()


# ----------------------------------------------------------------------------------------------
# Tables


def size_label(nbytes: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= scale:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def _cell(s: dict[str, Any], ref: dict[str, Any] | None = None) -> str:
    text = f"{s['median_us']:.1f} ±{_spread(s):.0%}"
    return f"{text} {s['median_us'] / ref['median_us']:.2f}x" if ref else text


def _spread(s: dict[str, Any]) -> float:
    return (s["p75_us"] - s["p25_us"]) / s["median_us"] if s["median_us"] else 0.0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _grouped(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    grouped: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault((r["op"], r["dtype"], r["bytes"]), {})[r["variant"]] = r
    return grouped


def _variant_table(rows: list[dict[str, Any]], cell: Callable[[str, int, dict, str], str]) -> str:
    """One row per op/dtype/size, one column per variant; ``cell(op, bytes, row's variants, v)``."""
    grouped = _grouped(rows)
    variants = [v for v in VARIANTS if any(v in g for g in grouped.values())]
    body = [
        [
            op,
            dtype,
            size_label(nbytes),
            *(cell(op, nbytes, g, v) if v in g else "-" for v in variants),
        ]
        for (op, dtype, nbytes), g in grouped.items()
    ]
    header = ["op", "dtype", "size", *(VARIANT_TITLES[v] for v in variants)]
    return _table(header, body)


def latency_table(rows: list[dict[str, Any]]) -> str:
    return _variant_table(
        rows, lambda op, nbytes, g, v: _cell(g[v], None if v == "raw" else g.get("raw"))
    )


# Bus bandwidth as nccl-tests defines it: the bytes each rank must send or receive over its link
# for a ring algorithm, per second. It is comparable across world sizes and with the link's own
# limit. ``bytes`` is each rank's input; all_gather moves n - 1 of its n output chunks.
_BUS_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: n - 1,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}


def bus_bandwidth_gbps(op: str, nbytes: int, world: int, median_us: float) -> float:
    return _BUS_FACTOR[op](world) * nbytes / median_us / 1e3 if median_us else 0.0


def bandwidth_table(rows: list[dict[str, Any]], world: int) -> str:
    def cell(op: str, nbytes: int, g: dict, v: str) -> str:
        bw = bus_bandwidth_gbps(op, nbytes, world, g[v]["median_us"])
        raw = bus_bandwidth_gbps(op, nbytes, world, g["raw"]["median_us"]) if "raw" in g else 0
        return f"{bw:.2f}" + (f" {bw / raw:.2f}x" if v != "raw" and raw else "")

    return _variant_table(rows, cell)


def overhead_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per op/dtype/size: compiled overhead of the collective and whether it meets the target."""
    out = []
    for (op, dtype, nbytes), g in _grouped(rows).items():
        raw_us, base = g["raw"]["median_us"], g["math"]["median_us"]
        row = {
            "op": op,
            "dtype": dtype,
            "bytes": nbytes,
            "raw_us": raw_us,
            "math_us": base,
            "ours_overhead_us": g["math+ours"]["median_us"] - base,
            "funcol_overhead_us": g["math+funcol"]["median_us"] - base,
            "target_us": raw_us + TARGET_SLACK_US,
        }
        if "graph math+ours" in g:
            row["graph_overhead_us"] = (
                g["graph math+ours"]["median_us"] - g["graph math"]["median_us"]
            )
        row["met"] = row["ours_overhead_us"] <= row["target_us"]
        out.append(row)
    return out


def overhead_table(rows: list[dict[str, Any]]) -> str:
    summary = overhead_rows(rows)
    graph = any("graph_overhead_us" in r for r in summary)
    header = [
        "op",
        "dtype",
        "size",
        "raw call",
        "compiled math",
        "+ours",
        "+funcol",
        "target",
        "met",
    ] + (["+ours in graph"] if graph else [])
    body = []
    for r in summary:
        line = [
            r["op"],
            r["dtype"],
            size_label(r["bytes"]),
            f"{r['raw_us']:.1f}",
            f"{r['math_us']:.1f}",
            f"{r['ours_overhead_us']:+.1f}",
            f"{r['funcol_overhead_us']:+.1f}",
            f"{r['target_us']:.1f}",
            "yes" if r["met"] else "NO",
        ]
        if graph:
            line.append(f"{r.get('graph_overhead_us', float('nan')):+.1f}")
        body.append(line)
    return _table(header, body)


def dispatch_table(rows: list[dict[str, Any]]) -> str:
    ref = next((r for r in rows if r["variant"] == "_c10d_functional+wait"), None)
    body = [[r["variant"], _cell(r, ref)] for r in rows]
    return _table(["tiny fp32 all_reduce", "µs per call, vs _c10d_functional+wait"], body)


def dispatch_ratio(rows: list[dict[str, Any]], variant: str = "ours wrapper") -> float | None:
    by = {r["variant"]: r["median_us"] for r in rows}
    if variant in by and "_c10d_functional+wait" in by:
        return by[variant] / by["_c10d_functional+wait"]
    return None


def report(result: Result) -> str:
    env = ", ".join(f"{k} {v}" for k, v in result.env.items())
    parts = [f"compile-ops bench: {env}"]
    if result.latency:
        parts += [
            "",
            "Latency per call, µs (median ±IQR, ratio to (a)); size = each rank's input",
            latency_table(result.latency),
        ]
        world = int(result.env.get("world", "1"))
        if world > 1:
            parts += [
                "",
                f"Bus bandwidth, GB/s (nccl-tests convention, world {world}; ratio to (a))",
                bandwidth_table(result.latency, world),
            ]
    if result.overhead:
        parts += [
            "",
            "Compiled overhead of a collective, µs: compiled(math + op) - compiled(math)",
            overhead_table(result.overhead),
        ]
    if result.dispatch:
        parts += [
            "",
            f"Eager per-call cost, {TINY_ELEMENTS} fp32 elements",
            dispatch_table(result.dispatch),
        ]
    parts += ["", *summary_lines(result)]
    return "\n".join(parts)


def summary_lines(result: Result) -> list[str]:
    lines = ["Targets:"]
    if result.overhead:
        summary = overhead_rows(result.overhead)
        missed = [r for r in summary if not r["met"]]
        worst = max(summary, key=lambda r: r["ours_overhead_us"] - r["raw_us"])
        lines.append(
            f"  compiled overhead <= raw + {TARGET_SLACK_US:.0f} µs: "
            f"{len(summary) - len(missed)}/{len(summary)} met; worst excess "
            f"{worst['ours_overhead_us'] - worst['raw_us']:+.1f} µs over raw "
            f"({worst['op']} {worst['dtype']} {size_label(worst['bytes'])})"
        )
        large = [r for r in summary if r["bytes"] >= LARGE]
        if large:
            # An extra pass over memory is device work. Graph replays time the device alone;
            # launched calls also carry the host's cost, which at 16 MiB can exceed the transfer.
            in_graph = all("graph_overhead_us" in r for r in large)
            key, timed = (
                ("graph_overhead_us", "in graph") if in_graph else ("ours_overhead_us", "launched")
            )
            excess = max(r[key] - r["raw_us"] for r in large)
            lines.append(
                f"  no extra pass over memory at >= {size_label(LARGE)} ({timed}): worst excess "
                f"over raw {excess:+.1f} µs ({'met' if excess <= TARGET_SLACK_US else 'MISSED'})"
            )
    ratio = dispatch_ratio(result.dispatch)
    if ratio is not None:
        verdict = "met" if ratio <= TARGET_DISPATCH_RATIO else "MISSED"
        op_alone = dispatch_ratio(result.dispatch, "ours op")
        lines.append(
            f"  eager tiny all_reduce <= {TARGET_DISPATCH_RATIO}x _c10d_functional+wait: "
            f"{ratio:.2f}x, {verdict} (the op without the wrapper: {op_alone:.2f}x)"
        )
    ours = [g for g in result.generated if g["fn"].startswith("math+ours")]
    if ours:
        clean = [g for g in ours if not g["copies"]]
        lines.append(f"  no copy/clone in generated code, input dead: {len(clean)}/{len(ours)} ops")
    for g in result.generated:
        lines += [f"    {g['fn']}: {line}" for line in g["copies"]]
    lines += [f"  ERROR {e}" for e in result.errors]
    if len(lines) == 1:
        lines.append("  none measured (the overhead and dispatch studies check them)")
    return lines


# ----------------------------------------------------------------------------------------------
# Command line


def parse_sizes(text: str) -> tuple[int, ...]:
    units = {"K": KIB, "M": MIB, "G": GIB}
    sizes = []
    for item in text.split(","):
        item = item.strip().upper().removesuffix("IB").removesuffix("B")
        scale = units.get(item[-1:], 1)
        sizes.append(int(item[:-1] if scale > 1 else item) * scale)
    return tuple(sizes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one rank, all_reduce, fp32, two sizes, few repetitions (under a minute on CPU)",
    )
    parser.add_argument(
        "--world-size",
        "-n",
        type=int,
        default=None,
        help="ranks to start (default: 1 with an accelerator or --quick, else 2)",
    )
    parser.add_argument(
        "--backend",
        choices=("gloo", "nccl", "xccl"),
        default=None,
        help="default: nccl/xccl when an accelerator is present, else gloo",
    )
    parser.add_argument(
        "--studies",
        default=None,
        help=f"comma-separated subset of {','.join(STUDIES)} (default: all)",
    )
    parser.add_argument("--ops", default=None, help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--dtypes", default=None, help="comma-separated subset of bf16,fp32")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="bytes per rank, e.g. 4K,1M,256M (default: 4K..256M on accelerators, 4K..4M on CPU)",
    )
    parser.add_argument("--reps", type=int, default=None, help="timed blocks per contender")
    parser.add_argument(
        "--out", default=None, help="directory for results.json and report.txt (created)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also write profiler tables, cProfile and generated code to --out",
    )


def config_from(args: argparse.Namespace, backend: str) -> Config:
    config = Config(sizes=ACCELERATOR_SIZES if backend != "gloo" else CPU_SIZES)
    if args.quick:
        config = replace(
            config,
            ops=("all_reduce",),
            dtypes=("fp32",),
            sizes=(4 * KIB, 1 * MIB),
            reps=5,
            block_ms=1.0,
        )
    if args.studies:
        config = replace(config, studies=_choices(args.studies, STUDIES, "--studies"))
    if args.ops:
        config = replace(config, ops=_choices(args.ops, OPS, "--ops"))
    if args.dtypes:
        config = replace(config, dtypes=_choices(args.dtypes, tuple(DTYPES), "--dtypes"))
    if args.sizes:
        config = replace(config, sizes=args.sizes)
    if args.reps:
        config = replace(config, reps=args.reps)
    if args.profile:
        if not args.out:
            raise SystemExit("compile-ops bench: --profile needs --out DIR")
        config = replace(config, profile_dir=str(Path(args.out).resolve()))
    return config


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"compile-ops bench: {flag} takes a subset of {allowed}, got {text!r}")
    return chosen


def run(args: argparse.Namespace) -> int:
    from .check import _default_backend
    from .testing.pool import WorkerPool

    backend = args.backend or _default_backend()
    # One rank with an accelerator (the target configuration) and for --quick (one process to
    # start and compile in); two over gloo otherwise.
    world = args.world_size or (2 if backend == "gloo" and not args.quick else 1)
    if backend != "gloo" and world > torch.accelerator.device_count():
        raise SystemExit(
            f"compile-ops bench: {backend} needs one device per rank; {world} ranks but "
            f"{torch.accelerator.device_count()} devices"
        )
    config = config_from(args, backend)
    start = time.perf_counter()
    pool = WorkerPool(world, backend).start()
    try:
        result = pool.run(run_rank, config)[0]
    finally:
        pool.close()
    text = report(result) + f"\n  wall time {time.perf_counter() - start:.0f} s"
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(asdict(result), indent=1))
        (out / "report.txt").write_text(text + "\n")
    print(text)
    return 1 if result.errors else 0
