"""The three studies of ``compile-ops bench``, run on every rank of one world, one step at a time.

* latency: per op, dtype and size, each contender of :mod:`.contenders`. Ratios are to raw c10d.
* overhead: what adding a collective to a compiled function costs: compiled(math + op) minus
  compiled(math), next to one raw c10d call (target: at most raw + 5 µs). Where graphs can be
  captured, also the same difference between two captured graphs.
* dispatch: per-call cost of tiny eager calls, ours against ``_c10d_functional`` (target: 0.8x)
  and against a bare ``Library.define`` op and a ``torch.library.custom_op`` doing the same.

A step is one study at one op, dtype and size; the launcher runs the steps one by one, so it can
show progress, and each rank keeps its compiled functions from step to step. Compiled functions
use ``dynamic=True``, so one compile serves every size.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.graph_capture import GraphCaptureError, capture, graph_backend

from ..world import rank_device
from .config import Config, Step
from .contenders import (
    Compiled,
    funcol,
    math,
    ours,
    process_group_all_reduce,
    raw,
    raw_output,
    wrapped_all_reduce,
)
from .timing import Clock

__all__ = ["DTYPES", "TINY_ELEMENTS", "Bench", "Result", "environment", "run_rank", "run_step"]

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MIB = 1 << 20
TINY_ELEMENTS = 64
F = torch.ops._c10d_functional


@dataclass
class Result:
    """Measurements (rank 0's, or one step's); everything in it is plain data for JSON."""

    env: dict[str, str] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    overhead: list[dict[str, Any]] = field(default_factory=list)
    dispatch: list[dict[str, Any]] = field(default_factory=list)
    generated: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, other: Result) -> None:
        self.env = self.env or other.env
        for name in ("latency", "overhead", "dispatch", "generated", "errors"):
            getattr(self, name).extend(getattr(other, name))


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, msg=lambda m: f"compile-ops bench: {what}: {m}")


class Bench:
    """Runs on every rank of a world; the studies issue identical collectives on each."""

    def __init__(self, config: Config):
        self.config = config
        self.group = dist.group.WORLD
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        backend = dist.get_backend(self.group)
        self.device = rank_device(backend)
        self.clock = Clock(self.device, self.group)
        self.compiled = Compiled(self.world, self.group.group_name)
        self.graphs = self._graphs_available()
        self.env = environment(backend, self.world)

    def _graphs_available(self) -> bool:
        if self.device.type == "cpu":
            return False
        try:
            graph_backend(self.device)
        except GraphCaptureError:
            return False
        return True

    def inputs(self, nbytes: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Enough distinct inputs that small sizes are not served from cache (at most 8)."""
        n = max(self.world * 2, nbytes // dtype.itemsize // self.world * self.world)
        copies = max(1, min(8, (64 * MIB) // max(nbytes, 1)))
        g = torch.Generator(device=self.device).manual_seed(1234 + self.rank)
        return [
            torch.rand(n, dtype=dtype, device=self.device, generator=g) + 0.5 for _ in range(copies)
        ]

    def step(self, step: Step) -> Result:
        """One step; an exception becomes an error line (shown, and a non-zero exit code)."""
        out = Result(env=self.env)
        study = getattr(self, step.study)
        args = (step.op, step.dtype, step.nbytes) if step.op else ()
        try:
            study(out, *args)
        except Exception as e:
            where = " ".join(map(str, (step.study, *args)))
            out.errors.append(f"{where}: {type(e).__name__}: {e}")
        finally:
            self.clock.sync()
        return out

    def latency(self, out: Result, op: str, dtype_name: str, nbytes: int) -> None:
        xs = self.inputs(nbytes, DTYPES[dtype_name])
        k, world, name = len(xs), self.world, self.group.group_name
        raw_xs = [x.clone() for x in xs]  # raw all_reduce writes its input
        buf = raw_output(op, xs[0], world)
        compiled = self.compiled.get("ours", op)
        contenders = {
            "raw": lambda i: raw(op, raw_xs[i % k], buf, self.group),
            "funcol": lambda i: funcol(op, xs[i % k], world, name),
            "eager": lambda i: ours(op, xs[i % k], world),
            "compiled": lambda i: compiled(xs[i % k]),
        }
        check = self._reference(op, xs[0])
        for variant in ("funcol", "eager", "compiled"):
            _assert_close(contenders[variant](0), check, f"{op} {variant}")
        replay = self._captured(out, compiled, xs[0], check, f"{op} {dtype_name} {nbytes} graph")
        if replay is not None:
            contenders["graph"] = replay
        stats = self.clock.measure(contenders, self.config.reps, self.config.block_ms)
        for variant, s in stats.items():
            out.latency.append(
                {"op": op, "dtype": dtype_name, "bytes": nbytes, "variant": variant, **asdict(s)}
            )

    def _captured(self, out: Result, fn, x, check, what: str) -> Callable[[int], object] | None:
        """Replays of ``fn(x)`` captured in a graph; None where graphs are not available."""
        if not self.graphs:
            return None
        try:
            graph = capture(fn, x, groups=self.group)
            graph.replay()
            if check is not None:
                _assert_close(graph.output, check, what)
        except Exception as e:
            out.errors.append(f"{what}: {type(e).__name__}: {e}")
            return None
        return lambda i: graph.replay()

    def _reference(self, op: str, x: torch.Tensor) -> torch.Tensor:
        buf = x.clone()
        out = raw_output(op, buf, self.world)
        raw(op, buf, out, self.group)
        return buf if out is None else out

    def overhead(self, out: Result, op: str, dtype_name: str, nbytes: int) -> None:
        xs = self.inputs(nbytes, DTYPES[dtype_name])
        k = len(xs)
        raw_xs = [math(x) for x in xs]
        buf = raw_output(op, xs[0], self.world)
        base = self.compiled.get("math", op)
        with_ours = self.compiled.get("math+ours", op)
        with_funcol = self.compiled.get("math+funcol", op)
        check = self._reference(op, math(xs[0]))
        _assert_close(with_ours(xs[0]), check, f"{op} math+ours")
        _assert_close(with_funcol(xs[0]), check, f"{op} math+funcol")
        contenders = {
            "raw": lambda i: raw(op, raw_xs[i % k], buf, self.group),
            "math": lambda i: base(xs[i % k]),
            "math+ours": lambda i: with_ours(xs[i % k]),
            "math+funcol": lambda i: with_funcol(xs[i % k]),
        }
        what = f"{op} {dtype_name} {nbytes} graph"
        replay_base = self._captured(out, base, xs[0], None, f"{what} math")
        replay_ours = self._captured(out, with_ours, xs[0], check, f"{what} math+ours")
        if replay_base is not None and replay_ours is not None:
            contenders["graph math"] = replay_base
            contenders["graph math+ours"] = replay_ours
        stats = self.clock.measure(contenders, self.config.reps, self.config.block_ms)
        for variant, s in stats.items():
            out.overhead.append(
                {"op": op, "dtype": dtype_name, "bytes": nbytes, "variant": variant, **asdict(s)}
            )

    def dispatch(self, out: Result) -> None:
        """Tiny fp32 all_reduce: what each way of calling it costs per call."""
        import torch.distributed._functional_collectives as fc

        x = self.inputs(TINY_ELEMENTS * 4, torch.float32)[0][:TINY_ELEMENTS].clone()
        raw_x = x.clone()
        group, name = self.group, self.group.group_name
        pg_all_reduce = process_group_all_reduce(group)
        wrapped = wrapped_all_reduce()
        op = torch.ops.compile_ops.all_reduce.default
        contenders = {
            "raw dist.all_reduce": lambda i: dist.all_reduce(raw_x, group=group),
            "ProcessGroup.allreduce": lambda i: pg_all_reduce(raw_x),
            "_c10d_functional+wait": lambda i: F.wait_tensor(F.all_reduce(x, "sum", name)),
            "funcol.all_reduce+wait": lambda i: fc.wait_tensor(fc.all_reduce(x, "sum", group)),
            **{label: (lambda i, f=f: f(x, name)) for label, f in wrapped.items()},
            "ours op": lambda i: op(x, "sum", name),
            "ours wrapper": lambda i: compile_ops.all_reduce(x),
        }
        stats = self.clock.measure(contenders, self.config.reps, self.config.block_ms)
        for variant, s in stats.items():
            out.dispatch.append({"variant": variant, **asdict(s)})

    def profile(self, out: Result) -> None:
        from .profile import profile

        profile(self, out)


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
        if acc.type == "cuda":  # CUDA-only facts, where they exist
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            env["cuda"] = str(torch.version.cuda)
    else:
        env["device"] = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    return env


_bench: Bench | None = None


def run_step(config: Config, step: Step) -> Result:
    """One step on this rank (module level, so worker pools can ship it); the rank's
    compiled functions persist from step to step while the configuration stays the same."""
    global _bench
    if _bench is None or _bench.config != config:
        _bench = Bench(config)
    # Each kind of compiled function is one code object for every op and dtype (8 entries with
    # the defaults): raise Dynamo's limit, and fail rather than silently time eager code.
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        return _bench.step(step)


def run_rank(config: Config) -> Result:
    """Every step on this rank, with its environment: the whole benchmark in one call."""
    result = Result()
    for step in config.steps():
        result.add(run_step(config, step))
    return result
