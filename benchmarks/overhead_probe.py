"""Where does a collective's cost inside compiled code come from? Host time per call, world 1.

    python3 benchmarks/overhead_probe.py        # one GPU (NCCL) or CPU (gloo)

Each row times 2000 calls (after warm-up) with a device synchronisation at the end; the work on
the device is tiny, so the number is the host's cost per call. Rows isolate one ingredient each:
the compiled math alone, the math plus a Python op that only clones, plus a Python op that clones
and calls ProcessGroup.allreduce, plus our op; and eagerly the same ProcessGroup call on one
reused buffer, on a fresh buffer each call, and after the same math. Rows run in interleaved
rounds (``--rounds``), so a noisy stretch of the machine falls on all of them; the table shows
the minimum and the median over rounds.
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import AllreduceOptions, _resolve_process_group

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import compile_ops

N = 2000
lib = torch.library.Library("overhead_probe", "DEF")
lib.define("empty_only(Tensor x) -> Tensor")
lib.define("clone_only(Tensor x) -> Tensor")
lib.define("pg_only(Tensor x, str group_name) -> Tensor")
OPTS = AllreduceOptions()
OPTS.asyncOp = False


def _pg_only(x, group_name):
    x = x.clone()
    work = _resolve_process_group(group_name).allreduce([x], OPTS)
    if work is not None:
        work.wait()
    return x


lib.impl("empty_only", lambda x: torch.empty_like(x), "CompositeExplicitAutograd")
lib.impl("clone_only", lambda x: x.clone(), "CompositeExplicitAutograd")
lib.impl("pg_only", _pg_only, "CompositeExplicitAutograd")
torch.library.register_fake("overhead_probe::empty_only", lambda x: torch.empty_like(x))
torch.library.register_fake("overhead_probe::clone_only", lambda x: torch.empty_like(x))
torch.library.register_fake("overhead_probe::pg_only", lambda x, g: torch.empty_like(x))


def _sync() -> None:
    if torch.accelerator.current_accelerator(check_available=True) is not None:
        torch.accelerator.synchronize()


def per_call_us(fn, x) -> float:
    for _ in range(50):
        fn(x)
    _sync()
    start = time.perf_counter()
    for _ in range(N):
        fn(x)
    _sync()
    return (time.perf_counter() - start) / N * 1e6


def nested(depth, fn):
    def call(x):
        return nested_call(depth, fn, x)

    return call


def nested_call(depth, fn, x):
    return fn(x) if depth == 0 else nested_call(depth - 1, fn, x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="profile 'compiled math + ours'")
    args = parser.parse_args()
    rounds = args.rounds
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    backend = "nccl" if accelerator is not None else "gloo"
    device = accelerator.type if accelerator is not None else "cpu"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29555")
    dist.init_process_group(backend, rank=0, world_size=1)
    name = dist.group.WORLD.group_name
    pg = dist.group.WORLD
    x = torch.randn(1024, device=device)
    buf = x.clone()

    def raw(t):
        work = pg.allreduce([buf], OPTS)
        if work is not None:
            work.wait()
        return buf

    def fresh(t):
        return _pg_only(t, name)

    def math_fresh(t):
        return _pg_only(t * 2 + 1, name) + 1

    rows = {
        "eager ProcessGroup.allreduce (one reused buffer)": (raw, False),
        "eager ProcessGroup.allreduce, 60 frames deep": (nested(60, raw), False),
        "eager clone + ProcessGroup.allreduce": (fresh, False),
        "eager math + clone + ProcessGroup.allreduce": (math_fresh, False),
        "eager ours (wrapper)": (compile_ops.all_reduce, False),
        "compiled math": (lambda t: t * 2 + 1, True),
        "compiled math + Python op that launches nothing": (
            lambda t: torch.ops.overhead_probe.empty_only(t * 2 + 1) + 1,
            True,
        ),
        "compiled math, op, math (two kernels, op does nothing)": (
            lambda t: torch.ops.overhead_probe.empty_only(t * 2 + 1) * 0 + (t * 2 + 1) + 1,
            True,
        ),
        "compiled math + clone-only Python op": (
            lambda t: torch.ops.overhead_probe.clone_only(t * 2 + 1) + 1,
            True,
        ),
        "compiled math + clone+pg.allreduce Python op": (
            lambda t: torch.ops.overhead_probe.pg_only(t * 2 + 1, name) + 1,
            True,
        ),
        "compiled math + ours": (lambda t: compile_ops.all_reduce(t * 2 + 1) + 1, True),
        "compiled math + funcol": (
            lambda t: torch.distributed._functional_collectives.all_reduce(t * 2 + 1, "sum", pg)
            + 1,
            True,
        ),
    }
    print(
        f"backend {backend}, torch {torch.__version__}, env TORCH_NCCL_TRACE_BUFFER_SIZE="
        f"{os.environ.get('TORCH_NCCL_TRACE_BUFFER_SIZE')} TORCH_FR_BUFFER_SIZE="
        f"{os.environ.get('TORCH_FR_BUFFER_SIZE')}"
    )
    fns = {}
    for label, (fn, compiled) in rows.items():
        fns[label] = torch.compile(fn, fullgraph=True, dynamic=False) if compiled else fn
        fns[label](x)  # compile now, outside the timed rounds
    times = {label: [] for label in rows}
    for _ in range(rounds):
        for label, fn in fns.items():
            times[label].append(per_call_us(fn, x))
    print(f"{'host us per call':52s} {'min':>8s} {'median':>8s}   (over {rounds} rounds)")
    for label, ts in times.items():
        print(f"{label:52s} {min(ts):8.1f} {statistics.median(ts):8.1f}", flush=True)
    if args.profile:
        for label in ("compiled math", "compiled math + ours"):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                per_call_us(fns[label], x)
            print(f"\n{label}: host time by op over {N + 50} calls")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
