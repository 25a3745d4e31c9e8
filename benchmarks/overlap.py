"""Does overlapping a collective with independent compute pay? Side by side, in one run.

    torchrun --nproc-per-node 2 benchmarks/overlap.py [--sizes 4096,8192,16384] [--k 8192]

The step: ``all_reduce(x @ w1)`` next to an independent ``y @ w2`` (bf16, M x K @ K x K). Variants:

  ours eager          compile_ops.all_reduce (synchronous, on the current stream), then y @ w2
  c10d async eager    dist.all_reduce(async_op=True) on NCCL's stream while y @ w2 runs (by hand)
  ours compiled       torch.compile of the step with our ops
  funcol compiled     the same, under compile_ops.use_functional_collectives()
  funcol reordered    the same, with Inductor's reorder_for_compute_comm_overlap on

Each time is the median of --iters steps (after --warmup), measured with events on the device;
ratios are against "ours eager". Rank 0 prints one row per M.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compile_ops


def step_ours(x, w1, y, w2):
    return compile_ops.all_reduce(x @ w1), y @ w2


def step_c10d_async(x, w1, y, w2):
    h = x @ w1
    work = dist.all_reduce(h, async_op=True)
    other = y @ w2
    work.wait()
    return h, other


def median_ms(fn, args, warmup: int, iters: int) -> float:
    device = torch.accelerator.current_accelerator()
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(iters):
        start = torch.Event(device=device, enable_timing=True)
        end = torch.Event(device=device, enable_timing=True)
        dist.barrier()
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def compiled(step, funcol: bool, reorder: bool):
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    inductor_config.reorder_for_compute_comm_overlap = reorder
    fn = torch.compile(step, fullgraph=True)

    def run(*args):
        with compile_ops.use_functional_collectives(funcol):
            return fn(*args)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192,16384", help="values of M")
    parser.add_argument("--k", type=int, default=8192, help="K = N")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()

    dist.init_process_group("nccl")
    torch.accelerator.set_device_index(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.accelerator.current_accelerator()
    variants = {
        "ours eager": lambda: step_ours,
        "c10d async eager": lambda: step_c10d_async,
        "ours compiled": lambda: compiled(step_ours, funcol=False, reorder=False),
        "funcol compiled": lambda: compiled(step_ours, funcol=True, reorder=False),
        "funcol reordered": lambda: compiled(step_ours, funcol=True, reorder=True),
    }
    if dist.get_rank() == 0:
        print(
            f"torch {torch.__version__}, {torch.accelerator.device_count()} x "
            f"{torch.get_device_module(device).get_device_name()}, world {dist.get_world_size()}"
        )
        print(f"{'M':>6} " + " ".join(f"{name:>22}" for name in variants))
    for m in (int(s) for s in args.sizes.split(",")):
        gen = torch.Generator(device).manual_seed(dist.get_rank())
        k = args.k
        x, y = (torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=gen) for _ in "xy")
        w1, w2 = (
            torch.randn(k, k, device=device, dtype=torch.bfloat16, generator=gen) / k**0.5
            for _ in "12"
        )
        inputs = (x, w1, y, w2)
        reference = step_ours(*inputs)
        times = {}
        for name, make in variants.items():
            fn = make()
            for got, want in zip(fn(*inputs), reference, strict=True):
                torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
            times[name] = median_ms(fn, inputs, args.warmup, args.iters)
        if dist.get_rank() == 0:
            base = times["ours eager"]
            cells = (f"{t:9.3f} ms {t / base:5.3f}x" for t in times.values())
            print(f"{m:>6} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
