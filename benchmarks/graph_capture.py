"""Replay of a captured decode step against eager and compiled runs, one device, world 1.

The step is a stack of tensor-parallel MLPs (column-parallel up, row-parallel down, one
compile_ops.all_reduce each) over a decode-sized batch of 1-8 tokens: little arithmetic, many
launches, so launch overhead decides its speed. Each variant runs side by side in one process:

    eager     the module as written (every op and the collective launched from Python)
    compiled  torch.compile(fullgraph=True, dynamic=True), no graph
    graph     the compiled module captured per batch size (one shared pool) and replayed,
              copying each new input into the static buffer first

Times come from device events around ``--calls`` back-to-back calls (inputs rotate among four
sets), taken ``--repeats`` times with the variants interleaved; the table shows medians.

    python3 benchmarks/graph_capture.py            # GPU (NCCL): the full table, under 3 minutes
    python3 benchmarks/graph_capture.py --quick    # small shapes; on a CPU, without the graph

Full results go to $OUT/graph_capture.json when OUT is set.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

# A benchmark measures the checkout it lives in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import compile_ops
from compile_ops.cli.world import backend_for
from compile_ops.graph_capture import GraphCaptureError, capture, capture_sizes


class TPMLP(torch.nn.Module):
    """Column-parallel up projection, SiLU, row-parallel down projection, one all_reduce."""

    def __init__(self, hidden: int, ffn: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        pg = compile_ops.resolve_group(None)
        shard = ffn // pg.size()
        self.up = torch.nn.Parameter(
            torch.randn(shard, hidden, dtype=dtype, device=device) / hidden**0.5,
            requires_grad=False,
        )
        self.down = torch.nn.Parameter(
            torch.randn(hidden, shard, dtype=dtype, device=device) / ffn**0.5,
            requires_grad=False,
        )

    def forward(self, x):
        return compile_ops.all_reduce(F.silu(x @ self.up.T) @ self.down.T)


class DecodeStack(torch.nn.Module):
    """``layers`` residual TP MLPs: the communicating part of a decode step."""

    def __init__(self, layers: int, hidden: int, ffn: int, dtype, device):
        super().__init__()
        self.mlps = torch.nn.ModuleList(TPMLP(hidden, ffn, dtype, device) for _ in range(layers))

    def forward(self, x):
        for mlp in self.mlps:
            x = x + mlp(x)
        return x


def per_call_us(fn, inputs, calls: int, device: torch.device) -> float:
    """Microseconds per call over ``calls`` back-to-back calls, starting from an idle device."""
    if device.type == "cpu":
        start = time.perf_counter()
        for k in range(calls):
            fn(inputs[k % len(inputs)])
        return (time.perf_counter() - start) / calls * 1e6
    torch.accelerator.synchronize(device)
    begin, end = torch.Event(enable_timing=True), torch.Event(enable_timing=True)
    begin.record()
    for k in range(calls):
        fn(inputs[k % len(inputs)])
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / calls * 1e3


def copy_bandwidth(device: torch.device) -> float | None:
    """Device-to-device copy rate in bytes/s (bytes read plus written), the floor's denominator."""
    if device.type == "cpu":
        return None
    src = torch.randn(64 * 2**20, device=device)  # 256 MiB
    dst = torch.empty_like(src)
    times = [per_call_us(lambda _: dst.copy_(src), [None], 10, device) for _ in range(5)]
    return 2 * src.nbytes / (statistics.median(times) * 1e-6)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def pool_bytes(compiled, sizes, make) -> dict[str, int]:
    """Memory reserved for graphs of every size: in one shared pool, then in a pool each."""

    def reserved() -> int:
        torch.accelerator.synchronize()
        gc.collect()
        torch.accelerator.empty_cache()
        return torch.accelerator.memory_reserved()

    base = reserved()
    shared = capture_sizes(compiled, sizes, make, warmup=1)
    shared_bytes = reserved() - base
    del shared
    base = reserved()
    separate = [capture(compiled, *make(n), warmup=1) for n in sorted(sizes, reverse=True)]
    separate_bytes = reserved() - base
    del separate
    return {"shared": shared_bytes, "separate": separate_bytes}


def bench_config(args, ffn: int, device: torch.device, bandwidth: float | None) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(ffn)
    model = DecodeStack(args.layers, args.hidden, ffn, dtype, device).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)

    def make(n):
        return (torch.randn(n, args.hidden, dtype=dtype, device=device),)

    graphs, why_no_graph = {}, None
    try:
        graphs = capture_sizes(compiled, args.sizes, make)
    except GraphCaptureError as e:
        why_no_graph = str(e)

    floor_us = None
    if bandwidth:
        floor_us = sum(p.nbytes for p in model.parameters()) / bandwidth * 1e6
    rows = [bench_size(args, n, model, compiled, graphs.get(n), make, device) for n in args.sizes]
    for row in rows:
        row.update(ffn=ffn, floor_us=floor_us, no_graph=why_no_graph)
    if graphs:
        del graphs
        rows[-1]["pool_bytes"] = pool_bytes(compiled, args.sizes, make)
    return rows


def bench_size(args, n, model, compiled, graph, make, device) -> dict:
    """Check the variants against eager on fresh inputs, then time them interleaved."""
    inputs = [make(n)[0] for _ in range(4)]
    variants = {"eager": model, "compiled": compiled}
    if graph is not None:
        variants["graph"] = graph
    with torch.no_grad():
        want = model(inputs[0])
        errors = {"compiled": relative_error(compiled(inputs[0]), want)}
        if graph is not None:
            graph.output.fill_(float("nan"))  # replay must write every element
            errors["graph"] = relative_error(graph(inputs[0]), want)
        for fn in variants.values():  # warm: compiled sizes, library handles, allocator
            for x in inputs:
                fn(x)
        samples = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                samples[name].append(per_call_us(fn, inputs, args.calls, device))
    return {
        "tokens": n,
        "median_us": {name: statistics.median(s) for name, s in samples.items()},
        "spread": {name: (max(s) - min(s)) / statistics.median(s) for name, s in samples.items()},
        "samples_us": samples,
        "rel_error_vs_eager": errors,
    }


def print_table(args, rows, device, bandwidth) -> None:
    name = str(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)  # CUDA-only: the card's name for the header
    rate = f"{bandwidth / 1e12:.2f} TB/s copy" if bandwidth else "no device"
    print(
        f"\ngraph capture, decode step of {args.layers} TP MLP layers: hidden {args.hidden}, "
        f"{args.dtype}, world 1 ({backend_for(device.type)}) on {name}; {rate}"
    )
    head = (
        f"{'ffn':>6} {'tokens':>6} {'floor_us':>9} {'eager_us':>9} {'compiled_us':>11} "
        f"{'graph_us':>9} {'graph/eager':>11} {'graph/comp':>10} {'rel_err':>8}"
    )
    print(head)
    for r in rows:
        m = r["median_us"]
        graph = m.get("graph")
        floor = f"{r['floor_us']:9.1f}" if r["floor_us"] else f"{'-':>9}"
        cells = (
            (f"{graph:9.1f}", f"{m['eager'] / graph:10.2f}x", f"{m['compiled'] / graph:9.2f}x")
            if graph
            else (f"{'n/a':>9}", f"{'-':>11}", f"{'-':>10}")
        )
        err = max(r["rel_error_vs_eager"].values())
        print(
            f"{r['ffn']:6d} {r['tokens']:6d} {floor} {m['eager']:9.1f} {m['compiled']:11.1f} "
            f"{cells[0]} {cells[1]} {cells[2]} {err:8.1e}"
        )
    worst = {
        name: max(r["spread"][name] for r in rows if name in r["spread"])
        for name in ("eager", "compiled", "graph")
        if any(name in r["spread"] for r in rows)
    }
    print(
        "spread (max-min)/median over repeats, worst row: "
        + ", ".join(f"{k} {v:.0%}" for k, v in worst.items())
    )
    for r in rows:
        if "pool_bytes" in r:
            p = r["pool_bytes"]
            print(
                f"pool, ffn {r['ffn']}, {len(args.sizes)} sizes: one shared pool "
                f"{p['shared'] / 2**20:.1f} MiB, a pool per size {p['separate'] / 2**20:.1f} MiB"
            )
    if rows and rows[0]["no_graph"]:
        print(f"no graph: {rows[0]['no_graph']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, nargs="+", default=[1792, 14336])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.ffn, args.layers, args.sizes = 256, [512], 2, [1, 4]
        args.calls, args.repeats = 5, 3

    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        device, backend = torch.device("cpu"), "gloo"
        args.dtype = "float32" if args.quick else args.dtype
    else:
        device = torch.device(accelerator.type, torch.accelerator.current_device_index())
        backend = backend_for(accelerator.type)
    dist.init_process_group(
        backend,
        store=dist.HashStore(),
        rank=0,
        world_size=1,
        device_id=device if device.type != "cpu" else None,
    )
    try:
        bandwidth = copy_bandwidth(device)
        rows = [row for ffn in args.ffn for row in bench_config(args, ffn, device, bandwidth)]
    finally:
        dist.destroy_process_group()

    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "graph_capture.json").write_text(
            json.dumps({"args": vars(args), "device": str(device), "rows": rows}, indent=1)
        )
    print_table(args, rows, device, bandwidth)
    bad = [r for r in rows for e in r["rel_error_vs_eager"].values() if not e <= 2e-2]
    if bad:
        print(f"FAILED: {len(bad)} rows differ from eager by more than 2e-2", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
