"""Grouped expert compute on one GPU: ``ShardedMoEBlock`` (world 1, every expert local, agrs
manager) for each ``experts_impl``, against a plain sort + ``torch._grouped_mm`` reference and
``transformers``' ``MixtralSparseMoeBlock`` with its ``grouped_mm`` experts, all compiled
(``fullgraph=True``) and timed in the same run (CUDA events, median, L2 flushed).

    python3 benchmarks/moe_experts.py                  # three shapes x 16 / 512 / 4096 tokens
    python3 benchmarks/moe_experts.py --sweep          # Triton tile sweep first; table with winners
    python3 benchmarks/moe_experts.py --quick          # one small shape (a smoke run)
    python3 benchmarks/moe_experts.py --rounds 3       # every candidate timed 3x, interleaved
    python3 benchmarks/moe_experts.py --graphs         # device time: CUDA graph replays
    python3 benchmarks/moe_experts.py --no-stage       # blocks only: skip the expert stages
    python3 benchmarks/moe_experts.py --shapes DeepSeek-V2-Lite --tokens 4096   # one case
    python3 benchmarks/moe_experts.py --from RUN.json --plot moe.png   # a saved run, drawn

Routing is Mixtral's (softmax, top-k, renormalised) for every shape, bfloat16. "Useful" counts
only routed work: ``2 * T * k * 3 * H * I`` flops. Activation memory is the peak allocated during
one call minus what was allocated before it (weights, input), against the bound
``T * k * (2I + H) * 2`` bytes. Each output is checked against the reference's (relative error).
The ``dense ceiling`` row is two cuBLAS products with the useful flops of the experts (every pair
against the first expert's weights), and nothing else: a grouped GEMM runs no faster than a
dense one, so no block can beat it. With ``--rounds N`` every candidate is timed N times,
round-robin, and the row gives the median and the spread of the rounds. A compiled block launches
its kernels from Python; where that takes longer than the kernels run (few tokens, and up to about
1 ms of device time per call on the machine of docs/benchmarks.md), a launched call times the host.
``--graphs`` times replays of a CUDA graph of the calls instead (``do_bench_cudagraph``, no L2
flush): the device time alone, as a served model that captures its steps sees it.
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
import torch.nn.functional as F

import inductor_patches
from compile_ops.moe import (
    EXPERTS_IMPLS,
    Layout,
    MoEConfig,
    MoEWeights,
    ShardedMoEBlock,
    compute,
    mark_token_dim,
    resolve_experts_impl,
)

SHAPES = {  # hidden, intermediate, experts, top-k
    "Mixtral-8x7B": (4096, 14336, 8, 2),
    "Qwen1.5-MoE-A2.7B": (2048, 1408, 60, 4),
    "DeepSeek-V2-Lite": (2048, 1408, 64, 6),
}
QUICK = {"small": (1024, 768, 16, 4)}
TOKENS = (16, 512, 4096)
IMPLS = [i for i in EXPERTS_IMPLS if i != "auto"]


def random_weights(config: MoEConfig, device, dtype=torch.bfloat16) -> MoEWeights:
    """Drawn on the device (the CPU generator is too slow for billions of elements)."""
    g = torch.Generator(device).manual_seed(0)
    h, i, e = config.hidden, config.intermediate, config.experts

    def randn(*shape, fan_in):
        return (torch.randn(shape, generator=g, device=device) / fan_in**0.5).to(dtype)

    return MoEWeights(
        router=randn(e, h, fan_in=h),
        gate=randn(e, i, h, fan_in=h),
        up=randn(e, i, h, fan_in=h),
        down=randn(e, h, i, fan_in=i),
    )


class SortGroupedMM(torch.nn.Module):
    """The reference: route, stable sort of the (token, expert) pairs, ``torch._grouped_mm``
    for gate_up and down, weighted ``index_add`` in float32."""

    def __init__(self, config: MoEConfig, w: MoEWeights, gate_up: torch.Tensor) -> None:
        super().__init__()
        self.config, self.router, self.gate_up, self.down = config, w.router, gate_up, w.down

    def forward(self, x):
        c = self.config
        weights, ids = compute.route(x, self.router, c)
        sorted_ids, order = torch.sort(ids.reshape(-1), stable=True)
        counts = torch.histc(sorted_ids.float(), bins=c.experts, min=0, max=c.experts - 1)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        token = order // c.top_k
        h = torch._grouped_mm(x[token], self.gate_up.transpose(1, 2), offs=offs)
        a = F.silu(h[:, : c.intermediate]) * h[:, c.intermediate :]
        y = torch._grouped_mm(a, self.down.transpose(1, 2), offs=offs)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        out.index_add_(0, token, y.float() * weights.reshape(-1)[order].unsqueeze(-1))
        return out.to(x.dtype)


class ExpertStage(torch.nn.Module):
    """Routing and the grouped experts of a block, without its manager: the same work as the
    reference, to tell the expert compute from the block's token movement."""

    def __init__(self, block: ShardedMoEBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x):
        b = self.block
        weights, ids = compute.route(x, b.router, b.config)
        y, _ = compute.local_experts(
            x, ids, weights, b.expert_ids, b.gate_up, b.down, b.experts_impl
        )
        return y.to(x.dtype)


def transformers_block(config: MoEConfig, w: MoEWeights, gate_up: torch.Tensor):
    """transformers' Mixtral block with the same weights and its grouped_mm experts."""
    import transformers
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    hf = transformers.MixtralConfig(
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_local_experts=config.experts,
        num_experts_per_tok=config.top_k,
        num_attention_heads=32,
    )
    hf._experts_implementation = "grouped_mm"
    with torch.device("meta"):
        block = MixtralSparseMoeBlock(hf)
    block.gate.weight = torch.nn.Parameter(w.router, requires_grad=False)
    block.experts.gate_up_proj = torch.nn.Parameter(gate_up, requires_grad=False)
    block.experts.down_proj = torch.nn.Parameter(w.down, requires_grad=False)
    block.experts.config = hf
    return block.eval()


def bench(fn, x, device, graphs: bool = False) -> float:
    """Median milliseconds of ``fn(x)``, launched or (``graphs``) replayed from a CUDA graph."""
    if device.type == "cuda":
        import triton

        if graphs:
            return triton.testing.do_bench_cudagraph(lambda: fn(x), rep=100, return_mode="median")
        return triton.testing.do_bench(lambda: fn(x), warmup=25, rep=100, return_mode="median")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def activation_bytes(fn, x, device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn(x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak


def candidates(config, w, device, impls, stage=True):
    """name -> (compiled callable taking x [T, H]); failures are reported, not fatal."""
    gate_up = torch.cat([w.gate, w.up], dim=1)
    # Each candidate marks its own alias of x, never x itself (mark_token_dim and _dynamic return
    # one): the marks are attributes of the tensor object, and a mark left on x by one candidate
    # would compile the next with it (the block's unbacked token dim gave the reference kernels
    # sized for an unknown count).
    out = {}
    for impl in impls:
        block = ShardedMoEBlock(config, w, Layout.ep(None), "agrs", experts_impl=impl)
        compiled = torch.compile(block, fullgraph=True)
        out[f"block[{impl}]"] = lambda x, f=compiled: f(mark_token_dim(x))
        if stage:
            experts = torch.compile(ExpertStage(block), fullgraph=True)
            out[f"experts[{impl}]"] = lambda x, f=experts: f(mark_token_dim(x))
    reference = torch.compile(SortGroupedMM(config, w, gate_up), fullgraph=True)
    out["sort+_grouped_mm"] = lambda x: reference(_dynamic(x, 0))
    try:
        hf = torch.compile(transformers_block(config, w, gate_up), fullgraph=True)
        out["transformers"] = lambda x: hf(_dynamic(x.unsqueeze(0), 1)).squeeze(0)
    except Exception as e:  # transformers missing or too old: say so in the table
        print(f"transformers block unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def dense_ceiling(config: MoEConfig, w: MoEWeights, gate_up: torch.Tensor):
    """Two dense products with the experts' useful flops: ``[T k, H] @ [H, 2I]``, then
    ``[T k, I] @ [I, H]``; the pairs' rows are drawn once per token count."""
    k, inputs = config.top_k, {}

    def run(x):
        pairs = x.shape[0] * k
        if pairs not in inputs:
            inputs.clear()
            inputs[pairs] = (
                torch.randn(pairs, config.hidden, device=x.device, dtype=x.dtype),
                torch.randn(pairs, config.intermediate, device=x.device, dtype=x.dtype),
            )
        rows, act = inputs[pairs]
        return rows @ gate_up[0].T, act @ w.down[0].T

    return run


def _dynamic(x, dim):
    """A view of ``x`` with ``dim`` marked dynamic; ``x`` itself stays unmarked."""
    # Backed, without hint_override: on torch 2.11 a hint on a backed dim makes the guards that
    # Inductor adds (pad_mm's) fail on the frame that created them (transformers' Qwen block).
    marked = x.view_as(x)
    torch._dynamo.mark_dynamic(marked, dim)
    return marked


def profile(fns: dict, x, where: str, out_path: str) -> None:
    """The device kernels of each candidate over 5 calls (after the timed ones), appended to
    ``out_path``: where the time of a block goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with open(out_path, "a") as f:
        for label, fn in fns.items():
            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fn(x)
                torch.cuda.synchronize()
            table = prof.key_averages().table(
                sort_by="self_device_time_total", row_limit=16, max_name_column_width=100
            )
            f.write(f"\n=== {where} {label} (5 calls)\n{table}\n")


def measure_shape(
    name,
    shape,
    tokens_list,
    device,
    impls,
    profile_at=(),
    profile_out=None,
    rounds=1,
    graphs=False,
    stage=True,
):
    hidden, inter, experts, k = shape
    config = MoEConfig(hidden=hidden, intermediate=inter, experts=experts, top_k=k)
    w = random_weights(config, device)
    fns = candidates(config, w, device, impls, stage)
    if device.type == "cuda":
        fns["dense ceiling"] = dense_ceiling(config, w, torch.cat([w.gate, w.up], dim=1))
    compiled_at = torch.randn(max(tokens_list), hidden, device=device, dtype=torch.bfloat16)
    for label, fn in fns.items():
        # Compiled first at the largest count: a backed dynamic dim (the reference's,
        # transformers') gets kernels chosen for the count its graph is compiled at, and the
        # reference compiled at 16 tokens ran 6% slower at 4096 than compiled at 512 or 4096
        # (docs/benchmarks.md). The block's unbacked dim has its own hint (mark_token_dim).
        try:
            with torch._dynamo.config.patch(capture_scalar_outputs=True):
                fn(compiled_at)
        except Exception as e:  # the timed loop below runs it again and records the error
            print(f"{name}: compiling {label} failed: {type(e).__name__}", file=sys.stderr)
    rows = []
    for tokens in tokens_list:
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
        flops = 2 * tokens * k * 3 * hidden * inter
        bound = tokens * k * (2 * inter + hidden) * 2
        want = fns["sort+_grouped_mm"](x.clone()).float()
        here = {}
        for label, fn in fns.items():
            row = here[label] = {"shape": name, "tokens": tokens, "impl": label}
            if label == "dense ceiling":
                continue
            try:
                with torch._dynamo.config.patch(capture_scalar_outputs=True):
                    out = fn(x.clone())
                    row["rel_err"] = ((out.float() - want).norm() / want.norm()).item()
                    row["act_bytes"] = activation_bytes(fn, x, device)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        for _ in range(rounds):  # round-robin: a slow spell of the card hits every candidate
            for label, fn in fns.items():
                if "error" not in here[label]:
                    try:
                        with torch._dynamo.config.patch(capture_scalar_outputs=True):
                            ms = bench(fn, x, device, graphs)
                        here[label].setdefault("ms_rounds", []).append(ms)
                    except Exception as e:  # e.g. a host read that a graph cannot capture
                        here[label]["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        for row in here.values():
            if "ms_rounds" in row:
                row["ms"] = statistics.median(row["ms_rounds"])
                row["tflops"] = flops / row["ms"] / 1e9
            if "act_bytes" in row:
                row["act_ratio"] = row["act_bytes"] / bound
            rows.append(row)
            print(json.dumps(row), flush=True)
        if f"{name}:{tokens}" in profile_at and profile_out:
            with torch._dynamo.config.patch(capture_scalar_outputs=True):
                profile(fns, x, f"{name} {tokens} tokens", profile_out)
    del fns, w
    torch._dynamo.reset()
    return rows


def add_ratios(rows: list[dict]) -> None:
    by = {(r["shape"], r["tokens"], r["impl"]): r.get("ms") for r in rows}
    for r in rows:
        ref = by.get((r["shape"], r["tokens"], "sort+_grouped_mm"))
        hf = by.get((r["shape"], r["tokens"], "transformers"))
        if r.get("ms") and ref:
            r["vs_ref"] = r["ms"] / ref
        if r.get("ms") and hf:
            r["vs_hf"] = r["ms"] / hf


def table(rows: list[dict]) -> str:
    head = (
        "| shape (H, I, E, k) | tokens | impl | ms | useful TFLOP/s | vs sort+_grouped_mm "
        "| vs transformers | activation MB (x bound) | rel. err |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['tokens']} | {r['impl']} | {r['error']} |||||||")
            continue
        spread, rounds = "", r.get("ms_rounds", [])
        if len(rounds) > 1:
            spread = f" ({min(rounds):.3f}-{max(rounds):.3f})"
        memory = "-"
        if "act_bytes" in r:
            memory = f"{r['act_bytes'] / 2**20:.0f} ({r['act_ratio']:.2f})"
        error = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        lines.append(
            f"| {r['shape']} | {r['tokens']} | {r['impl']} | {r['ms']:.3f}{spread} "
            f"| {r['tflops']:.0f} | {_fmt(r, 'vs_ref')} | {_fmt(r, 'vs_hf')} | {memory} | {error} |"
        )
    return "\n".join(lines)


def _fmt(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def plot(rows: list[dict], env: dict, path: str) -> None:
    """One panel per shape: each candidate's time over the reference's at each token count (below
    1 is faster), the dense ceiling among them."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "moe_experts.py --plot needs matplotlib: pip install 'compile-ops[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if "vs_ref" in r and r["impl"] != "sort+_grouped_mm"]
    shapes = list(dict.fromkeys(r["shape"] for r in timed))
    impls = list(dict.fromkeys(r["impl"] for r in timed))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.2), squeeze=False)
    width = 0.8 / len(impls)
    for ax, shape in zip(axes[0], shapes, strict=True):
        tokens = sorted({r["tokens"] for r in timed if r["shape"] == shape})
        for i, impl in enumerate(impls):
            by = {
                r["tokens"]: r["vs_ref"] for r in timed if (r["shape"], r["impl"]) == (shape, impl)
            }
            xs = [t + (i - (len(impls) - 1) / 2) * width for t in range(len(tokens))]
            ax.bar(xs, [by.get(t, 0.0) for t in tokens], width, label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(tokens)), [str(t) for t in tokens])
        ax.set_xlabel("tokens")
        ax.set_title(shape)
    axes[0][0].set_ylabel("time / sort + _grouped_mm (log; lower is faster)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(impls), fontsize=8)
    about = ", ".join(str(env[k]) for k in ("gpu", "torch", "timing", "date") if env.get(k))
    fig.suptitle(f"MoE expert compute ({about})", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def matmul_ceiling(device) -> float:
    """bf16 TFLOP/s of one 8192^3 product on random data (the roof the useful rate is read
    against)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    return 2 * 8192**3 / bench(lambda _: a @ b, None, device) / 1e9


def environment(device) -> dict:
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__}
    # Which Inductor patches compiled the blocks (COMPILE_OPS_PATCHES switches them per run).
    env["inductor_patches"] = {r.name: r.state for r in inductor_patches.status()}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["bf16_matmul_tflops"] = round(matmul_ceiling(device))
        env["auto"] = {
            str(dt): resolve_experts_impl(device, dt) for dt in (torch.bfloat16, torch.float32)
        }
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small shape")
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}"
    )
    parser.add_argument("--sweep", action="store_true", help="tune the Triton tiles first")
    parser.add_argument("--impls", default=",".join(IMPLS), help="experts_impl values to time")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts")
    parser.add_argument("--json", help="write the rows (and the environment) here")
    parser.add_argument("--rounds", type=int, default=1, help="timings per candidate (median)")
    parser.add_argument("--graphs", action="store_true", help="time CUDA graph replays")
    parser.add_argument(
        "--stage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time each impl's expert stage without the manager (--no-stage: blocks only)",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="SHAPE:TOKENS,... to profile (kernel tables appended to --profile-out)",
    )
    parser.add_argument("--profile-out", default="moe_experts_profile.txt")
    parser.add_argument("--plot", metavar="FILE", help="draw the ratios to FILE.png")
    parser.add_argument("--from", dest="saved", metavar="JSON", help="a saved run (--json)")
    args = parser.parse_args(argv)
    if args.saved:
        with open(args.saved) as f:
            saved = json.load(f)
        print(table(saved["rows"]))
        if args.plot:
            plot(saved["rows"], saved["environment"], args.plot)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        parser.error(f"--shapes: unknown {sorted(unknown)}; known: {', '.join(SHAPES)}")
    shapes = QUICK if args.quick else {n: SHAPES[n] for n in args.shapes.split(",")}
    impls = [i for i in args.impls.split(",") if i]
    tokens = [int(t) for t in args.tokens.split(",")]
    if device.type != "cuda":
        impls = [i for i in impls if i != "triton"]
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
    )
    env = environment(device) | {"timing": "graph replays" if args.graphs else "launched"}
    env["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    print(json.dumps(env), flush=True)
    sweep = None
    if args.sweep and "triton" in impls:
        from moe_experts_sweep import apply_best, sweep_configs

        sweep = sweep_configs(shapes, tokens, device)
        env["triton_configs"] = apply_best(sweep)
        print(json.dumps({"chosen": env["triton_configs"]}), flush=True)
    rows = []
    for name, shape in shapes.items():
        rows += measure_shape(
            name,
            shape,
            tokens,
            device,
            impls,
            args.profile.split(","),
            args.profile_out,
            args.rounds,
            args.graphs,
            args.stage,
        )
    add_ratios(rows)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows, "sweep": sweep}, f, indent=1)
    if args.plot:
        plot(rows, env, args.plot)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    torch.set_float32_matmul_precision("highest")
    sys.exit(main())
