"""Where a manager's token movement spends its time: torch.profiler over a few steps, per manager.

    python3 benchmarks/moe_move_profile.py              # two GPUs, EP, 4096 tokens x 4096 hidden
    python3 benchmarks/moe_move_profile.py -n 4 --layout tp

"Movement" is what ``moe_managers.py`` times as "move": dispatch, combine and the block's reduce,
with the experts replaced by the identity. Prints, per manager, the median step time and the
profiler's tables by host time and by device time; with ``$OUT`` set, also writes them there
with a trace of rank 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_managers import _layout, _move_tokens, _sync

from compile_ops.moe import MANAGERS, MoEConfig, MoEWeights, ShardedMoEBlock, compute


def profile_movement(manager: str, layout: str, tokens: int, config: MoEConfig) -> str:
    """On every rank: the step's median time and the profiler's tables (as text)."""
    device = torch.device(
        torch.accelerator.current_accelerator().type, torch.accelerator.current_device_index()
    )
    rank = dist.get_rank()
    weights = MoEWeights.random(config, seed=0, dtype=torch.bfloat16, device=device)
    block = ShardedMoEBlock(config, weights, _layout(layout), manager)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(tokens, config.hidden, generator=g).to(device, torch.bfloat16)
    topk_weights, topk_ids = compute.route(x, weights.router, config)

    def step():
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        _move_tokens(block, x, topk_ids, topk_weights)
        _sync(device)
        return (time.perf_counter() - start) * 1e3

    for _ in range(5):
        step()
    times = [step() for _ in range(20)]
    activity = torch.profiler.ProfilerActivity
    activities = [activity.CPU, getattr(activity, device.type.upper())]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            step()
    if rank == 0 and os.environ.get("OUT"):
        prof.export_chrome_trace(str(Path(os.environ["OUT"]) / f"trace_{manager}.json"))
    table = prof.key_averages().table
    return (
        f"{manager} ({layout}): median {statistics.median(times):.3f} ms, min {min(times):.3f} ms "
        f"over 20 steps; profile of 5 steps, each after a barrier (its all_reduce is listed)\n"
        + table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=55)
        + table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=55)
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", "-n", type=int, default=2, help="ranks, one device each")
    parser.add_argument("--layout", choices=("ep", "tp"), default="ep")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per rank")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args(argv)
    from compile_ops.cli.world import default_backend
    from compile_ops.testing.pool import WorkerPool

    if args.world_size > torch.accelerator.device_count():
        raise SystemExit(f"-n {args.world_size}: needs one accelerator per rank")
    backend = default_backend()
    # The experts are not run, so their size does not matter; the router's does not either.
    config = MoEConfig(
        hidden=args.hidden,
        intermediate=64,
        experts=args.experts,
        top_k=args.top_k,
        shared_intermediate=0,
    )
    pool = WorkerPool(args.world_size, backend).start()
    try:
        for manager in MANAGERS:
            text = pool.run(profile_movement, manager, args.layout, args.tokens, config)[0]
            print(text)
            if os.environ.get("OUT"):
                Path(os.environ["OUT"], f"profile_{manager}.txt").write_text(text)
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
