"""Host time of the compiled MoE candidates of benchmarks/moe_experts.py: how long Python takes to
issue one call (every kernel launched, none waited for) and how many kernels a call launches.

    python3 benchmarks/moe_host_time.py                          # Qwen1.5-MoE-A2.7B, 16 and 512 tokens
    python3 benchmarks/moe_host_time.py --shape DeepSeek-V2-Lite --tokens 512 --json out.json

Below about 1 ms of device time a launched call of a compiled block waits for the host, so its
launched time (moe_experts.py) is set by this, not by its kernels (``--graphs`` there). Issue
time: ``--calls`` calls back to back after a synchronisation, few enough that the launch queue
never fills; the median of ``--repeats`` such runs. Kernels: a profiler count over 5 calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moe_experts import SHAPES, candidates, random_weights

from compile_ops.moe import MoEConfig


def issue_us(fn, x, calls: int, repeats: int) -> float:
    """Median microseconds the host takes to issue one call (the device idle at the start)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        times.append((time.perf_counter() - start) / calls * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def kernels_per_call(fn, x, calls: int = 5) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(x)
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.count for e in prof.key_averages() if e.device_type == cuda) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="Qwen1.5-MoE-A2.7B", choices=list(SHAPES))
    parser.add_argument("--tokens", default="16,512", help="comma-separated")
    parser.add_argument("--impls", default="triton", help="experts_impl values")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", help="write the rows (and the environment) here")
    args = parser.parse_args(argv)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    torch._dynamo.config.capture_scalar_outputs = True
    hidden, inter, experts, k = SHAPES[args.shape]
    config = MoEConfig(hidden=hidden, intermediate=inter, experts=experts, top_k=k)
    device = torch.device("cuda")
    fns = candidates(config, random_weights(config, device), device, args.impls.split(","))
    rows = []
    for tokens in map(int, args.tokens.split(",")):
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
        for label, fn in fns.items():
            for _ in range(20):  # compiled and warm
                fn(x)
            row = {"shape": args.shape, "tokens": tokens, "impl": label}
            row["issue_us"] = issue_us(fn, x, args.calls, args.repeats)
            row["kernels_per_call"] = kernels_per_call(fn, x)
            rows.append(row)
            print(f"{args.shape} {tokens:5} {label:18} issue {row['issue_us']:6.1f} us  "
                  f"{row['kernels_per_call']:.0f} kernels a call", flush=True)  # fmt: skip
    if args.json:
        env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(device)}
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
