"""MoE decode step across ranks: launched from the host vs replayed from a device graph.

    python3 benchmarks/moe_decode.py                    # 2 GPUs (NCCL), DeepSeek-V2-Lite shape, EP
    python3 benchmarks/moe_decode.py --json decode.json # every row as JSON too ($OUT/moe_decode.json
                                                        # is written as well when OUT is set)
    python3 benchmarks/moe_decode.py --device cpu --world-size 2 --quick   # smoke run on gloo

Per tokens-per-rank T and manager, one MoE block (router, top-k experts, shared expert):

  dynamic   launched   today's default mode, compiled: counts and splits read back to the host
  capacity  launched   compiled with max_tokens_per_rank = T (or --capacity), called from the host
  capacity  replayed   the same compiled block captured with compile_ops.graph_capture and
                       replayed on inputs already in its buffers (as inside a captured model)

and the token movement alone in capacity mode (dispatch, combine and the block's reduce with the
experts replaced by the identity; --movement managers), launched and replayed, so that the
all_to_all manager's movement can be set against AgRs's: with its one-shot exchange where every
rank can use it (one host's CUDA GPUs), and with NCCL's all_to_all as ``all_to_all/nccl``.

A timing covers --steps consecutive steps (10), as a serving engine runs decode, started on idle
ranks (a device barrier, then the host waits for the device), with device events (torch.Event)
on an accelerator and the host clock on a CPU; a configuration's time per step is the median over
--reps timings on the slowest rank. --profile FILE appends each replay's kernel table there. Every block's output
is checked against the single-device reference (exit code 1 if one is off). A CPU has no device
graphs: there the replayed rows are left out, and the run only shows that everything works.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compile_ops
from compile_ops.graph_capture import capture
from compile_ops.moe import (
    MANAGERS,
    Layout,
    MoEBlock,
    MoEConfig,
    MoEWeights,
    ShardedMoEBlock,
    compute,
    make_manager,
    mark_token_dim,
)

# Largest difference from the reference accepted, by dtype (outputs are O(1)).
MAX_ERROR = {"float32": 1e-3, "bfloat16": 1e-1}
ROUTING_BYTES_PER_K = 8  # expert id and weight, float32 each, travel with every row


class Movement(torch.nn.Module):
    """A manager's dispatch, combine and the block's reduce, with identity experts."""

    def __init__(self, manager) -> None:
        super().__init__()
        self.manager = manager

    def forward(self, x, topk_ids, topk_weights):
        m = self.manager
        d = m.dispatch(x, topk_ids, topk_weights)
        out = m.combine(d.x.contiguous(), d)  # experts return fresh contiguous rows
        if not m.output_is_reduced:
            out = m.comm.all_reduce(out)
        return m.home_rows(out, d)


def capacity_bytes(manager: str, n: int, capacity: int, hidden: int, elem: int, k: int) -> int:
    """Bytes one rank sends per step in capacity mode (ring all_reduce/reduce_scatter), whatever
    the tokens: naive (n-1)N(Hb+8k) + 2(n-1)NHb; agrs (n-1)N(Hb+8k) + (n-1)NHb; all_to_all the
    same as agrs with N the per-peer buffer (max_tokens_per_peer, here N)."""
    row, meta = hidden * elem, ROUTING_BYTES_PER_K * k
    combine = 2 if manager == "naive" else 1
    return (n - 1) * capacity * (row + meta) + combine * (n - 1) * capacity * row


def _device(opts: dict) -> torch.device:
    if opts["device"] == "cpu":
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator()
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def _barrier(device: torch.device) -> None:
    compile_ops.all_reduce(torch.zeros(1, device=device))
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def _median_step(fn, opts: dict, device: torch.device) -> tuple[float, object]:
    """Median seconds per step of ``fn()``, and its last output.

    A timing starts on idle ranks (a device barrier, then the host waits for the device) and
    covers ``opts["steps"]`` consecutive steps, as a serving engine runs decode: the ranks' host
    skew after the barrier (tens of microseconds, paid once by whichever rank starts first) is
    spread over the steps instead of being charged to each. The median is over ``opts["reps"]``
    such timings, after ``opts["warmup"]``.
    """
    times, out, steps = [], None, opts["steps"]
    timed = device.type != "cpu"
    begin, end = (
        (torch.Event(enable_timing=True), torch.Event(enable_timing=True))
        if timed
        else (None, None)
    )
    for i in range(opts["warmup"] + opts["reps"]):
        _barrier(device)
        if timed:
            begin.record()
            for _ in range(steps):
                out = fn()
            end.record()
            end.synchronize()
            seconds = begin.elapsed_time(end) * 1e-3
        else:
            start = time.perf_counter()
            for _ in range(steps):
                out = fn()
            seconds = time.perf_counter() - start
        if i >= opts["warmup"]:
            times.append(seconds / steps)
    return statistics.median(times), out


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        return float("inf")
    return (got.float() - want.float()).abs().max().item() if got.numel() else 0.0


def _row(part, manager, mode, how, tokens, capacity, seconds, out=None, want=None) -> dict:
    row = {"part": part, "manager": manager, "mode": mode, "how": how, "tokens": tokens,
           "capacity": capacity, "seconds": seconds}  # fmt: skip
    if want is not None:
        row["max_abs_error"] = _error(out, want)
    return row


def _timed_runs(opts, fn, args, layout, device, label: str):
    """``{"launched": (s, out), "replayed": (s, out)}``: ``fn(*args)`` called from the host,
    then captured and replayed (where the device has graphs). With ``--profile``, rank 0 also
    appends the replay's kernels to that file under ``label``."""
    results = {"launched": _median_step(lambda: fn(*args), opts, device)}
    if device.type != "cpu":  # compiled by now: the capture's warm-up reuses the frame
        graph = capture(fn, *(a.clone() for a in args), groups=[layout.group])
        # A layer inside a captured model finds its inputs in place: the copy-in happens once,
        # so the timings hold the replays alone (graph launch and device work).
        graph(*args)
        replay = graph.replay
        results["replayed"] = _median_step(replay, opts, device)
        if opts["profile"]:
            _profile(replay, device, opts, label)
    return results


def _profile(fn, device: torch.device, opts: dict, label: str, steps: int = 20) -> None:
    """Device time per kernel over ``steps`` consecutive replays (torch.profiler), on rank 0."""
    from torch.profiler import ProfilerActivity, profile

    _barrier(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.accelerator.synchronize(device)
    if dist.get_rank() == 0:
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=30)
        with open(opts["profile"], "a") as f:
            f.write(f"\n=== {label}: {steps} replayed steps, rank 0\n{table}\n")


def _block_rows(opts, config, weights, layout, tokens, x, want, dynamic, device) -> list[dict]:
    """Per manager: dynamic mode launched (one compiled frame for every T, given in
    ``dynamic``); capacity mode launched and replayed (compiled for this T)."""
    rows = []
    capacity = opts["capacity"] or tokens
    marked = mark_token_dim(x.clone())
    for manager in opts["managers"]:
        with torch._dynamo.config.patch(capture_scalar_outputs=True):
            seconds, out = _median_step(lambda m=manager: dynamic[m](marked), opts, device)
        rows.append(_row("block", manager, "dynamic", "launched", tokens, None, seconds, out, want))
        block = ShardedMoEBlock(config, weights, layout, manager, max_tokens_per_rank=capacity)
        compiled = torch.compile(block, backend=opts["backend"], fullgraph=True, dynamic=False)
        label = f"block {manager} T={tokens}"
        for how, (seconds, out) in _timed_runs(opts, compiled, (x,), layout, device, label).items():
            rows.append(
                _row("block", manager, "capacity", how, tokens, capacity, seconds, out, want)
            )
    return rows


def _movement_rows(opts, config, weights, layout, tokens, x, device) -> list[dict]:
    """Capacity mode's token movement alone, launched and replayed, per manager."""
    rows = []
    capacity = opts["capacity"] or tokens
    topk_weights, topk_ids = compute.route(x, weights.router, config)
    capacity_of = {"max_tokens_per_rank": capacity}
    managers = []
    for name in opts["movement"]:
        managers.append((name, make_manager(name, layout, config.experts, device, **capacity_of)))
        if getattr(managers[-1][1], "one_shot", False):  # NCCL's all_to_all, in the same run
            nccl = make_manager(name, layout, config.experts, device, **capacity_of, one_shot=False)
            managers.append((f"{name}/nccl", nccl))
    for label_name, manager in managers:
        compiled = torch.compile(
            Movement(manager), backend=opts["backend"], fullgraph=True, dynamic=False
        )
        args = (x, topk_ids, topk_weights)
        label = f"movement {label_name} T={tokens}"
        for how, (seconds, _) in _timed_runs(opts, compiled, args, layout, device, label).items():
            rows.append(_row("movement", label_name, "capacity", how, tokens, capacity, seconds))
    return rows


def decode_rank(opts: dict) -> list[dict]:
    """On every rank: the rows of every tokens-per-rank count (module level: runs in workers).

    Inference only (no autograd). Every block is its own configuration, compiled on purpose:
    the same ``forward`` is compiled once per block, so the recompile limit is raised to fit.
    """
    limits = {"recompile_limit": 256, "accumulated_recompile_limit": 1024}
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(**limits):
        return _decode_rows(opts)


def _decode_rows(opts: dict) -> list[dict]:
    device = _device(opts)
    rank, n = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, opts["dtype"])
    config = MoEConfig(**opts["config"])
    weights = MoEWeights.random(config, seed=0, dtype=dtype, device=device)
    layout = Layout.ep(None) if opts["layout"] == "ep" else Layout.tp(None)
    reference = MoEBlock(config, weights)
    dynamic = {
        m: torch.compile(
            ShardedMoEBlock(config, weights, layout, m), backend=opts["backend"], fullgraph=True
        )
        for m in opts["managers"]
    }
    rows = []
    for tokens in opts["tokens"]:
        g = torch.Generator().manual_seed(tokens)
        xs = [torch.randn(tokens, config.hidden, generator=g).to(device, dtype) for _ in range(n)]
        with torch.no_grad():
            want = reference(torch.cat(xs))[rank * tokens : (rank + 1) * tokens]
        x = xs[rank]
        rows += _block_rows(opts, config, weights, layout, tokens, x, want, dynamic, device)
        rows += _movement_rows(opts, config, weights, layout, tokens, x, device)
    return rows


def slowest_rank(per_rank: list[list[dict]], opts: dict, n: int) -> list[dict]:
    """One row per configuration: the slowest rank's median, the worst error, the bytes sent."""
    config = opts["config"]
    elem = torch.empty((), dtype=getattr(torch, opts["dtype"])).element_size()
    rows = []
    for same in zip(*per_rank, strict=True):
        row = dict(same[0])
        row["ms"] = max(r["seconds"] for r in same) * 1e3
        del row["seconds"]
        if "max_abs_error" in row:
            row["max_abs_error"] = max(r["max_abs_error"] for r in same)
            row["ok"] = row["max_abs_error"] <= MAX_ERROR[opts["dtype"]]
        if row["mode"] == "capacity" and n > 1:
            row["bytes_sent"] = capacity_bytes(
                row["manager"], n, row["capacity"], config["hidden"], elem, config["top_k"]
            )
        rows.append(row)
    return rows


def print_report(rows: list[dict], meta: dict) -> None:
    print(
        f"MoE decode step, world {meta['world_size']} ({meta['backend']}), {meta['layout']}, "
        f"{meta['dtype']}, hidden {meta['config']['hidden']}, intermediate "
        f"{meta['config']['intermediate']}, {meta['config']['experts']} experts, top-"
        f"{meta['config']['top_k']}, shared {meta['config']['shared_intermediate']}; "
        f"torch {meta['torch']}, {meta['device_name']}, {meta['date']}"
    )
    print(
        f"{'part':9} {'manager':15} {'mode':9} {'how':9} {'T':>4} {'N':>4} {'ms':>8} {'KiB sent':>9}  vs ref"
    )
    for r in rows:
        sent = f"{r['bytes_sent'] / 1024:9.1f}" if "bytes_sent" in r else f"{'-':>9}"
        check = f"{'ok' if r['ok'] else 'FAIL'} {r['max_abs_error']:.1e}" if "ok" in r else "-"
        print(
            f"{r['part']:9} {r['manager']:15} {r['mode']:9} {r['how']:9} {r['tokens']:4d} "
            f"{r['capacity'] or '-':>4} {r['ms']:8.3f} {sent}  {check}"
        )
    for line in ratios(rows):
        print(line)


def ratios(rows: list[dict]) -> list[str]:
    """Replayed / launched per block, and all_to_all / agrs movement, per token count."""
    ms = {(r["part"], r["manager"], r["mode"], r["how"], r["tokens"]): r["ms"] for r in rows}
    lines = []
    for (part, manager, mode, how, tokens), t in ms.items():
        launched = ms.get((part, manager, mode, "launched", tokens))
        if part == "block" and how == "replayed" and launched:
            dynamic = ms.get((part, manager, "dynamic", "launched", tokens))
            lines.append(
                f"T={tokens} {manager}: replayed / launched {t / launched:.2f}"
                + (f", replayed / dynamic launched {t / dynamic:.2f}" if dynamic else "")
            )
        if part == "movement" and manager.startswith("all_to_all"):
            agrs = ms.get((part, "agrs", mode, how, tokens))
            if agrs:
                lines.append(f"T={tokens} movement {how}: {manager} / agrs {t / agrs:.2f}")
    return lines


def _options(args) -> dict:
    quick = args.quick
    config = {
        "hidden": 64 if quick else args.hidden,
        "intermediate": 32 if quick else args.intermediate,
        "experts": 8 if quick else args.experts,
        "top_k": 2 if quick else args.top_k,
        "shared_intermediate": 32 if quick else args.shared_intermediate,
    }
    backend = args.backend or ("aot_eager" if args.device == "cpu" else "inductor")
    return {
        "device": args.device, "dtype": args.dtype, "layout": args.layout, "config": config,
        "tokens": args.tokens or ([2] if quick else [1, 8, 64]), "capacity": args.capacity,
        "managers": args.managers, "movement": args.movement, "backend": backend,
        "reps": args.reps or (3 if quick else 100), "warmup": 2 if quick else 10,
        "steps": args.steps, "profile": args.profile,
    }  # fmt: skip


def _meta(opts: dict, n: int, backend: str) -> dict:
    device_name = "cpu"
    if opts["device"] != "cpu" and torch.accelerator.current_accelerator().type == "cuda":
        device_name = torch.cuda.get_device_name()  # CUDA-only: the card's name for the header
    return {
        **{k: opts[k] for k in ("layout", "dtype", "config", "backend", "reps", "steps")},
        "compile_backend": opts["backend"], "backend": backend, "world_size": n,
        "torch": torch.__version__, "device_name": device_name,
        "date": datetime.date.today().isoformat(),
    }  # fmt: skip


def main(argv=None, run=None) -> int:
    """``run(decode_rank, opts)`` runs on every rank and returns their results; by default on a
    fresh pool of --world-size ranks (a test passes its own)."""
    from compile_ops.cli.world import default_backend
    from compile_ops.testing.pool import WorkerPool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--world-size", "-n", type=int, default=2, help="ranks, one device each")
    parser.add_argument("--layout", choices=("ep", "tp"), default="ep")
    parser.add_argument("--tokens", type=int, nargs="+", help="tokens per rank (1 8 64)")
    parser.add_argument("--capacity", type=int, help="max_tokens_per_rank (default: T)")
    parser.add_argument("--managers", nargs="+", default=list(MANAGERS), choices=list(MANAGERS))
    parser.add_argument(
        "--movement", nargs="*", default=["agrs", "all_to_all"], choices=list(MANAGERS)
    )
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--backend", help="torch.compile backend (inductor; aot_eager on cpu)")
    parser.add_argument("--reps", type=int, help="timings per configuration (100)")
    parser.add_argument("--steps", type=int, default=10, help="consecutive steps per timing (10)")
    parser.add_argument("--profile", help="append each replay's kernel table to this file")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 tokens, 3 timings")
    parser.add_argument("--json", type=Path, help="write every row and the set-up here")
    shape = parser.add_argument_group("shape (default: DeepSeek-V2-Lite)")
    shape.add_argument("--hidden", type=int, default=2048)
    shape.add_argument("--intermediate", type=int, default=1408)
    shape.add_argument("--experts", type=int, default=64)
    shape.add_argument("--top-k", type=int, default=6)
    shape.add_argument("--shared-intermediate", type=int, default=2816, help="0: none")
    args = parser.parse_args(argv)
    opts = _options(args)
    n = args.world_size
    backend = "gloo" if args.device == "cpu" else default_backend()
    if backend != "gloo" and n > torch.accelerator.device_count():
        raise SystemExit(f"--world-size {n}: only {torch.accelerator.device_count()} devices")
    pool = None if run else WorkerPool(n, backend).start()
    try:
        per_rank = run(decode_rank, opts) if run else pool.run(decode_rank, opts, timeout=3600)
    finally:
        if pool:
            pool.close()
    rows = slowest_rank(per_rank, opts, n)
    meta = _meta(opts, n, backend)
    print_report(rows, meta)
    out = {"meta": meta, "rows": rows, "ratios": ratios(rows)}
    paths = [args.json] if args.json else []
    if os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / "moe_decode.json")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(f"rows: {path}")
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
