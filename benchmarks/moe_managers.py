"""Time the MoE all2all managers side by side, and compute the bytes each moves per token.

    python3 benchmarks/moe_managers.py                 # CPU: gloo, 4 spawned ranks
    python3 benchmarks/moe_managers.py --device gpu    # one GPU: NCCL, world 1
    python3 benchmarks/moe_managers.py --device gpu -n 2 --tokens 4096 --hidden 4096 \
        --intermediate 14336 --experts 8 --top-k 2          # two GPUs, Mixtral-like sizes

CPU mode times, per layout and manager, the token movement alone (dispatch, combine and the
block's reduce, with the experts replaced by the identity) and the whole block, eagerly, with the
managers interleaved so that machine noise hits all of them alike; ratios are to AgRs. GPU mode
first checks the MoE model (every manager x layout, eager and compiled with Inductor) against
the single-device reference over NCCL, then times the block per manager, eager and compiled.
The summary table comes last; with ``$OUT`` set, the full results go to ``$OUT/moe_managers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compile_ops.moe import (
    MANAGERS,
    Layout,
    MoEBlock,
    MoEConfig,
    MoEWeights,
    ShardedMoEBlock,
    compute,
    mark_token_dim,
)

ROUTING_BYTES_PER_K = 8  # expert id and weight, float32 each, travel with every token
# Largest difference from the reference accepted, by element size (outputs are O(1)).
MAX_ERROR = {4: 1e-3, 2: 1e-1}


def bytes_per_token(manager: str, n: int, hidden: int, elem: int, k: int, dests: float) -> float:
    """Bytes one rank sends per token of its own (ring algorithms for all_reduce/reduce_scatter).

    naive:      all_gather x + routing to n-1 ranks, then the block all_reduces all n*T rows
                (2(n-1)/n of them per rank):            (n-1)(H b + 8k) + 2(n-1) H b
    agrs:       all_gatherv x + routing, reduce_scatterv: (n-1)(H b + 8k) + (n-1) H b
    all_to_all: x + routing to the d ranks that hold one of the token's experts, and the
                partial outputs back:                    d (H b + 8k) + d H b
    """
    row, meta = hidden * elem, ROUTING_BYTES_PER_K * k
    if manager == "naive":
        return (n - 1) * (row + meta) + 2 * (n - 1) * row
    if manager == "agrs":
        return (n - 1) * (row + meta) + (n - 1) * row
    return dests * (row + meta) + dests * row


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize()


def _move_tokens(block: ShardedMoEBlock, x, ids, weights):
    """The block with the identity for experts: only the manager's traffic and the reduce."""
    manager = block.manager
    d = manager.dispatch(x, ids, weights)
    out = manager.combine(d.x, d)
    if not manager.output_is_reduced:
        out = manager.comm.all_reduce(out)
    return manager.home_rows(out, d)


def time_managers(kind: str, config: MoEConfig, tokens: int, dtype, reps: int, compiled: bool):
    """On every rank: median seconds per manager, for token movement and the whole block, and
    the largest difference of the block's output from the single-device reference."""
    backend = dist.get_backend()
    device = torch.device("cpu" if backend == "gloo" else torch.accelerator.current_accelerator())
    rank, n = dist.get_rank(), dist.get_world_size()
    layout = _layout(kind)
    weights = MoEWeights.random(config, seed=0, dtype=dtype, device=device)
    blocks = {m: ShardedMoEBlock(config, weights, layout, m) for m in MANAGERS}
    xs = [
        torch.randn(tokens, config.hidden, generator=torch.Generator().manual_seed(r))
        for r in range(n)
    ]
    x = xs[rank].to(dtype=dtype, device=device)
    want = MoEBlock(config, weights)(torch.cat(xs).to(dtype=dtype, device=device))
    want = want[rank * tokens : (rank + 1) * tokens]
    topk_weights, topk_ids = compute.route(x, weights.router, config)
    owners = blocks["all_to_all"].manager.owners
    dests = owners[topk_ids].any(1).sum(1) - owners[topk_ids].any(1)[:, layout.rank].int()
    runs = {}
    for m, block in blocks.items():
        if compiled:
            fn = torch.compile(block, fullgraph=True)
            runs[m] = {"block": lambda fn=fn: fn(mark_token_dim(x.clone()))}
        else:
            runs[m] = {
                "move": lambda b=block: _move_tokens(b, x, topk_ids, topk_weights),
                "block": lambda b=block: b(x),
            }
    times: dict[str, dict[str, list[float]]] = {m: {k: [] for k in r} for m, r in runs.items()}
    errors = {}
    for rep in range(reps + 2):  # two warm-up rounds (and the compile, when compiled)
        for m, parts in runs.items():
            for part, fn in parts.items():
                _barrier(device)
                start = time.perf_counter()
                with torch._dynamo.config.patch(capture_scalar_outputs=True):
                    out = fn()
                _sync(device)
                if rep >= 2:
                    times[m][part].append(time.perf_counter() - start)
                if part == "block":
                    errors[m] = (out.float() - want.float()).abs().max().item()
    medians = {m: {k: statistics.median(v) for k, v in parts.items()} for m, parts in times.items()}
    return {"seconds": medians, "dests_per_token": dests.float().mean().item(), "errors": errors}


def _barrier(device: torch.device) -> None:
    import compile_ops

    compile_ops.all_reduce(torch.zeros(1, device=device), group=None)
    _sync(device)


def _layout(kind: str) -> Layout:
    from compile_ops.cli.check_moe import layout

    return layout(kind)


def _cpu(args) -> tuple[list[dict], list[str]]:
    from compile_ops.testing.pool import WorkerPool

    n = 4
    config = MoEConfig(hidden=256, intermediate=512, experts=8, top_k=2)
    tokens, reps = (32, 3) if args.quick else (256, 15)
    results, lines = [], []
    pool = WorkerPool(n).start()
    try:
        for kind in ("ep", "tp", "tp_ep"):
            per_rank = pool.run(time_managers, kind, config, tokens, torch.float32, reps, False)
            results += _rows(kind, per_rank, n, config, 4, "gloo/cpu", tokens)
    finally:
        pool.close()
    lines.append(
        f"world {n} (gloo), {tokens} tokens/rank, hidden {config.hidden}, float32, "
        f"{config.experts} experts, top-{config.top_k}; eager; ratio = time / agrs time"
    )
    return results, lines


def _rows(kind, per_rank, n, config, elem, where, tokens, compiled=False):
    rows = []
    slowest = {
        m: {p: max(r["seconds"][m][p] for r in per_rank) for p in per_rank[0]["seconds"][m]}
        for m in MANAGERS
    }
    dests = statistics.mean(r["dests_per_token"] for r in per_rank)
    for m in MANAGERS:
        row = {
            "where": where,
            "layout": kind,
            "manager": m,
            "tokens_per_rank": tokens,
            "compiled": compiled,
            "dests_per_token": round(dests, 3),
            "bytes_per_token": bytes_per_token(m, n, config.hidden, elem, config.top_k, dests),
            "max_abs_error": max(r["errors"][m] for r in per_rank),
        }
        row["ok"] = row["max_abs_error"] <= MAX_ERROR[elem]
        for part, seconds in slowest[m].items():
            row[f"{part}_ms"] = seconds * 1e3
            row[f"{part}_ratio_to_agrs"] = seconds / slowest["agrs"][part]
        rows.append(row)
    return rows


def _gpu(args) -> tuple[list[dict], list[str]]:
    from compile_ops.cli.check import run_jobs
    from compile_ops.cli.check_moe import moe_jobs
    from compile_ops.cli.tables import Progress
    from compile_ops.cli.world import SpawnedWorld, default_backend, device_for

    if not torch.accelerator.is_available():
        raise SystemExit("--device gpu: no accelerator found")
    backend = default_backend()
    n = args.world_size
    if n > torch.accelerator.device_count():
        raise SystemExit(f"-n {n}: only {torch.accelerator.device_count()} devices (one per rank)")
    config = MoEConfig(
        hidden=args.hidden,
        intermediate=args.intermediate,
        experts=args.experts,
        top_k=args.top_k,
        shared_intermediate=args.shared_intermediate,
    )
    tokens, reps = (256, 5) if args.quick else (args.tokens, 30)
    kinds = ["ep"] if n == 1 else ["tp", "ep"]
    results, lines = [], []
    with SpawnedWorld(n, backend) as world:
        checks = run_jobs(world, moe_jobs(n, device_for(backend)), Progress(0, "moe check"))
        for r in checks:
            results.append(
                {
                    "check": r.name,
                    "eager_ok": r.eager_ok,
                    "compiled_ok": r.compiled_ok,
                    "graph_breaks": r.graph_breaks,
                    "error": r.error,
                    "ok": r.ok,
                }
            )
        for kind in kinds:
            for compiled in (False, True):
                per_rank = world.run(
                    time_managers, kind, config, tokens, torch.bfloat16, reps, compiled
                )
                results += _rows(kind, per_rank, n, config, 2, backend, tokens, compiled)
    failed = [r.name for r in checks if not r.ok]
    lines.append(
        f"MoE model check (world {n}, {backend}, eager + Inductor vs reference): "
        f"{len(checks) - len(failed)}/{len(checks)} ok" + (f"; FAILED {failed}" if failed else "")
    )
    lines.append(
        f"timing: world {n} ({backend}), {tokens} tokens per rank, hidden {config.hidden}, "
        f"intermediate {config.intermediate}, bfloat16, {config.experts} experts, "
        f"top-{config.top_k}"
    )
    return results, lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    gpu = parser.add_argument_group("--device gpu")
    gpu.add_argument("--world-size", "-n", type=int, default=1, help="ranks, one device each")
    gpu.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    gpu.add_argument("--hidden", type=int, default=2048)
    gpu.add_argument("--intermediate", type=int, default=1024)
    gpu.add_argument("--shared-intermediate", type=int, default=1024, help="0: no shared expert")
    gpu.add_argument("--experts", type=int, default=16)
    gpu.add_argument("--top-k", type=int, default=4)
    args = parser.parse_args(argv)
    results, lines = _gpu(args) if args.device == "gpu" else _cpu(args)
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "moe_managers.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": results, "notes": lines}, indent=1))
        lines.append(f"full results: {path}")
    _print_table([r for r in results if "manager" in r])
    for line in lines:
        print(line)
    return 0 if all(r.get("ok", True) for r in results) else 1


def _print_table(rows: list[dict]) -> None:
    header = (
        "layout",
        "manager",
        "mode",
        "move ms",
        "ratio",
        "block ms",
        "ratio",
        "B/token",
        "vs ref",
    )
    body = [
        (
            r["layout"],
            r["manager"],
            "compiled" if r["compiled"] else "eager",
            f"{r['move_ms']:.2f}" if "move_ms" in r else "-",
            f"{r['move_ratio_to_agrs']:.2f}" if "move_ms" in r else "-",
            f"{r['block_ms']:.2f}",
            f"{r['block_ratio_to_agrs']:.2f}",
            f"{r['bytes_per_token']:.0f}",
            f"{'ok' if r['ok'] else 'FAIL'} {r['max_abs_error']:.1e}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
