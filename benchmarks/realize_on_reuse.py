"""Benchmark the realize_on_reuse patch on the module panel, three ways side by side.

* ``whole``        the module compiled as one graph by stock Inductor (patch off)
* ``whole+patch``  the same with the patch on
* ``split``        the decoder stack cut at every attention op, each piece compiled on its own
                   (patch off), as vLLM's piecewise compilation does

Where the patch leaves the generated code of a module unchanged (compared, not assumed), there
is nothing to time and the row says "same code". Elsewhere every way is timed by paired,
interleaved samples of CUDA-graph replays until the 95% confidence interval of each median ratio
is narrower than 1% (or the budget runs out, and the interval says so); the spread of the samples
is reported beside them. Also reported: kernel launches per forward, the loads of each RMSNorm
kernel, Inductor's estimate of bytes accessed, kernel time per category (torch.profiler), cold
compile time and the patch's decision counts. Sizes are Llama-3.1-8B's (hidden 4096, MLP 14336,
32/8 heads) in bf16; the token dimension is dynamic, so each module compiles once per way.

From the repository root, on one GPU (torch 2.11), each run within 10 minutes:

    python3 -m benchmarks.realize_on_reuse --modules blocks,stack8
    python3 -m benchmarks.realize_on_reuse --modules stack32

``--quick`` runs tiny sizes on CPU to check the script itself. Results go to ``$OUT``
(realize_on_reuse.json and realize_on_reuse.md); the summary table is printed last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from unittest import mock

import torch

import inductor_patches
from benchmarks import realize_timing
from compile_ops.testing import codegen, realize_panel
from inductor_patches.realize_on_reuse import decisions

PATCH = inductor_patches.get("realize_on_reuse")
BLOCKS = ("rmsnorm_residual", "silu_mlp", "broadcast_scale", "moe_router", "chain_reductions")


# ---------------------------------------------------------------- the three ways to compile


class Recorder:
    """What one way's compilation produced: wrapper code, bytes estimate, decisions, time."""

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.bytes_accessed = 0
        self.decisions: dict[str, int] = {}
        self.inductor_s = 0.0

    @contextmanager
    def compiling(self):
        from torch._inductor.graph import GraphLowering
        from torch._inductor.virtualized import V

        def save_output_code(code: str) -> None:  # called once per graph, after scheduling
            self.codes.append(code)
            self.bytes_accessed += V.graph.count_bytes()[0]  # Inductor's own estimate

        decisions.reset()
        start = time.perf_counter()
        with mock.patch.object(GraphLowering, "save_output_code", save_output_code):
            yield
        self.inductor_s += time.perf_counter() - start
        for key, n in decisions.counts().items():
            self.decisions[key] = self.decisions.get(key, 0) + n


def whole_backend(patch_on: bool, rec: Recorder) -> Callable:
    from torch._inductor.compile_fx import compile_fx

    def backend(gm, example_inputs):
        with PATCH.switched(patch_on), rec.compiling():
            return compile_fx(gm, example_inputs)

    return backend


def split_backend(rec: Recorder) -> Callable:
    """Cut the graph at each attention op and compile every other piece on its own."""
    from torch._dispatch.python import enable_python_dispatcher
    from torch._guards import detect_fake_mode
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.passes.split_module import split_module

    def is_attention(node: torch.fx.Node) -> bool:
        return node.op == "call_function" and node.target in (
            realize_panel.ATTENTION,
            torch.ops.realize_panel.attention,
        )

    class Compiled(torch.nn.Module):
        def __init__(self, fn: Callable) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, *args):
            return self.fn(*args)

    class CompilePieces(torch.fx.Interpreter):
        """Runs the split graph on fake inputs; compiles each piece with its (symbolic) inputs."""

        def call_module(self, target, args, kwargs):
            sub = self.fetch_attr(target)
            out = super().call_module(target, args, kwargs)
            if not any(is_attention(n) for n in sub.graph.nodes):
                with PATCH.switched(False), rec.compiling():
                    setattr(self.module, target, Compiled(compile_fx(sub, list(args))))
            return out

    def backend(gm, example_inputs):
        piece, ids = 0, {}
        for node in gm.graph.nodes:
            if is_attention(node):
                ids[node] = piece + 1
                piece += 2
            else:
                ids[node] = piece
        split = split_module(gm, None, lambda n: ids[n], keep_original_order=True)
        # Dynamo's fake mode keeps the token dimension symbolic, so each piece does too.
        fake_mode = detect_fake_mode()
        fakes = [
            fake_mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in example_inputs
        ]
        with fake_mode, enable_python_dispatcher():
            CompilePieces(split).run(*fakes)
        return split

    return backend


WAYS = {
    "whole": lambda rec: whole_backend(False, rec),
    "whole+patch": lambda rec: whole_backend(True, rec),
    "split": split_backend,
}


# ---------------------------------------------------------------- profiling


def synchronize(device: str) -> None:
    if device != "cpu":
        torch.accelerator.synchronize()


def category(kernel: str) -> str:
    name = kernel.lower()
    if "rsqrt" in name:  # Inductor names kernels after their ops; only RMSNorms use rsqrt here
        return "norm"
    if any(k in name for k in ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul")):
        return "gemm"
    if any(k in name for k in ("flash", "fmha", "attention", "sdpa")):
        return "attention"
    if name.startswith(("triton_", "cpp_fused")):
        return "other_fused"
    if "copy" in name or "memcpy" in name or "memset" in name:
        return "copy"
    return "other"


def kernel_table(run: Callable[[], object], forwards: int, device: str) -> dict:
    """Per device kernel name: (calls, ms) per forward, from torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU]
    if device != "cpu":
        activities.append(getattr(ProfilerActivity, device.upper(), ProfilerActivity.CUDA))
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(forwards):
            run()
        synchronize(device)
    table: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == DeviceType.CPU:
            continue
        calls_ms = table.setdefault(event.name, [0, 0.0])
        calls_ms[0] += 1 / forwards
        calls_ms[1] += event.time_range.elapsed_us() / 1e3 / forwards
    return {name: tuple(v) for name, v in sorted(table.items())}


def by_category(table: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, (_, ms) in table.items():
        out[category(name)] = out.get(category(name), 0.0) + ms
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- one module, all ways


def compile_ways(name, sizes, tokens, ways) -> tuple[dict, dict, dict]:
    """Each way's compiled module (token dimension dynamic), recorder and cold compile time."""
    case = realize_panel.PANEL[name]
    module = case.module(sizes)
    compiled, recorders, compile_s = {}, {}, {}
    first_inputs = case.inputs(sizes, tokens)
    for way in ways:
        rec = recorders[way] = Recorder()
        fn = torch.compile(module, backend=WAYS[way](rec), fullgraph=True)
        for x in first_inputs:
            torch._dynamo.mark_dynamic(x, 0)
        start = time.perf_counter()
        with torch.no_grad():
            fn(*first_inputs)
            synchronize(sizes.device)
        compile_s[way] = time.perf_counter() - start
        compiled[way] = fn
    return compiled, recorders, compile_s


def code_hash(rec: Recorder) -> str:
    text = "\n".join(codegen.comparable(code) for code in rec.codes)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def time_ways(compiled: dict, inputs: tuple, device: str, args) -> dict:
    """Paired interleaved samples (graph replays on an accelerator) and a kernel table per way."""
    pairs = [(way, "whole") for way in compiled if way != "whole"]
    if "split" in compiled:
        pairs.append(("whole+patch", "split"))
    with torch.no_grad():
        runs = {way: realize_timing.runner(fn, inputs, device) for way, fn in compiled.items()}
        comparisons, samples, inner = realize_timing.compare(
            runs,
            pairs,
            device,
            target_sample_ms=args.sample_ms,
            max_reps=args.max_reps,
            budget_s=args.budget_s,
        )
        tables = {
            way: kernel_table(run, args.profile_forwards, device) for way, run in runs.items()
        }
    return {"comparisons": comparisons, "samples": samples, "inner": inner, "tables": tables}


def run_module(name, sizes, tokens_list, ways, args) -> list[dict]:
    case = realize_panel.PANEL[name]
    module = case.module(sizes)
    compiled, recorders, compile_s = compile_ways(name, sizes, tokens_list[0], ways)
    hashes = {way: code_hash(rec) for way, rec in recorders.items()}
    same_code = hashes["whole"] == hashes["whole+patch"]
    rows = []
    for tokens in tokens_list:
        inputs = case.inputs(sizes, tokens)
        with torch.no_grad():
            outs = {way: fn(*inputs) for way, fn in compiled.items()}
            eager = module(*inputs) if tokens <= args.eager_max_tokens else None
        timed = None if same_code else time_ways(compiled, inputs, sizes.device, args)
        for way in ways:
            rec = recorders[way]
            launches = [k for c in rec.codes for k in codegen.kernel_launches(c)]
            row = {
                "module": name,
                "layers": sizes.layers if name == "decoder_stack" else None,
                "tokens": tokens,
                "way": way,
                "same_code_as_whole": hashes[way] == hashes["whole"],
                "generated_kernel_launches": len(launches),
                "norm_loads": [k.loads for k in launches if k.is_norm],
                "bytes_accessed": rec.bytes_accessed,
                "compile_s": compile_s[way],
                "code_hash": hashes[way],
                "decisions": rec.decisions,
                "max_diff_vs_whole": _max_diff(outs[way], outs["whole"]),
                "max_diff_vs_eager": None if eager is None else _max_diff(outs[way], eager),
            }
            if timed is not None:
                row.update(_timing_fields(timed, way))
            rows.append(row)
    return rows


def _timing_fields(timed: dict, way: str) -> dict:
    samples, table = timed["samples"][way], timed["tables"][way]
    fields = {
        "min_ms": min(samples),
        "median_ms": statistics.median(samples),
        "spread": realize_timing.spread(samples),
        "samples_ms": samples,
        "inner": timed["inner"],
        "kernel_ms": by_category(table),
        "kernels": {k: list(v) for k, v in table.items()},
        "launches_per_forward": sum(calls for calls, _ in table.values()),
    }
    for c in timed["comparisons"]:
        if c.way == way:
            lo, hi = c.ci
            fields[f"vs_{c.reference}"] = {
                "ratio": c.ratio,
                "ci": [lo, hi],
                "reps": len(c.ratios),
                "verdict": c.verdict(),
            }
    return fields


def _max_diff(a, b) -> float:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- report


def _label(row: dict) -> str:
    if row["module"] == "decoder_stack":
        return f"stack{row['layers']}"
    return row["module"]


def _short_decisions(d: dict) -> str:
    return " ".join(
        f"{k.replace(':realize', '+').replace(':inline', '-')}{v}" for k, v in d.items()
    )


def _norm_loads(row: dict) -> str:
    loads = row["norm_loads"]
    return f"{min(loads)}-{max(loads)}" if loads else "-"


def _vs_whole(row: dict) -> str:
    if "vs_whole" not in row:
        return "same code" if row["same_code_as_whole"] and row["way"] != "whole" else "-"
    v = row["vs_whole"]
    return f"{v['ratio']:.3f} [{v['ci'][0]:.3f},{v['ci'][1]:.3f}]"


def _ms(key: str) -> Callable[[dict], str]:
    return lambda r: f"{r[key]:.3f}" if key in r else "-"


COLUMNS = {
    "module": _label,
    "tokens": lambda r: str(r["tokens"]),
    "way": lambda r: r["way"],
    "kernels": lambda r: str(r["generated_kernel_launches"]),  # Inductor kernels per forward
    "launches": lambda r: f"{r['launches_per_forward']:.0f}" if "kernels" in r else "-",
    "norm loads": _norm_loads,
    "MB est": lambda r: f"{r['bytes_accessed'] / 1e6:.1f}",
    "min ms": _ms("min_ms"),
    "med ms": _ms("median_ms"),
    "spread": lambda r: f"{r['spread']:.1%}" if "spread" in r else "-",
    "/ whole [95% CI]": _vs_whole,
    "norm ms": lambda r: f"{r['kernel_ms'].get('norm', 0.0):.3f}" if "kernel_ms" in r else "-",
    "compile s": lambda r: f"{r['compile_s']:.1f}",
    "decisions": lambda r: _short_decisions(r["decisions"]) or "-",
}


def summary_table(rows: list[dict]) -> str:
    table = [list(COLUMNS)] + [[fmt(r) for fmt in COLUMNS.values()] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """What the rows show, per module and token count: same code, or the timed ratios."""
    by = {(_label(r), r["tokens"], r["way"]): r for r in rows}
    out = []
    for (label, tokens, way), r in sorted(by.items()):
        if way != "whole+patch":
            continue
        if "vs_whole" not in r:
            out.append(f"{label} {tokens}: same generated code with and without the patch")
            continue
        line = f"{label} {tokens}: " + _ratio_text(r["vs_whole"], "whole")
        split = by.get((label, tokens, "split"))
        if "vs_split" in r and split is not None:
            line += "; " + _ratio_text(r["vs_split"], "split")
            norm, split_norm = r["kernel_ms"].get("norm"), split["kernel_ms"].get("norm")
            if norm and split_norm:
                line += f"; norm kernel time {norm / split_norm:.2f}x split's"
        out.append(line)
    return out


def _ratio_text(v: dict, reference: str) -> str:
    lo, hi = v["ci"]
    return (
        f"whole+patch / {reference} = {v['ratio']:.4f} (95% CI {lo:.4f}-{hi:.4f}, "
        f"{v['reps']} paired reps): {v['verdict']}"
    )


def cold_caches(prefix: str) -> None:
    """A cold, private cache: every way is lowered (decisions counted), nothing stale is served."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix=prefix)
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False


def run_meta(sizes: realize_panel.Sizes, /, **fields) -> dict:
    """A run's record: date, device, torch, ``fields``, then the command that ran it."""
    device_name = (
        torch.cuda.get_device_name() if sizes.device == "cuda" else sizes.device
    )  # CUDA-only by nature: the GPU's name for the record
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device_name,
        "torch": torch.__version__,
        **fields,
        "command": " ".join(sys.argv),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modules",
        default="blocks,stack8,stack32",
        help="comma list of panel modules, 'blocks', 'stack<N>' (default: all)",
    )
    parser.add_argument("--tokens", default="1024,8192")
    parser.add_argument(
        "--max-reps", type=int, default=400, help="most paired repetitions per module and size"
    )
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="timing budget per module and size"
    )
    parser.add_argument("--sample-ms", type=float, default=20.0, help="target time per sample")
    parser.add_argument("--profile-forwards", type=int, default=3)
    parser.add_argument("--eager-max-tokens", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on CPU, few reps")
    args = parser.parse_args(argv)

    cold_caches("realize_on_reuse_")
    torch._dynamo.config.cache_size_limit = 64

    if args.quick:
        sizes = replace(realize_panel.TINY, device="cpu")
        tokens = [32, 64]
        args.max_reps, args.budget_s, args.sample_ms, args.profile_forwards = 12, 5.0, 2.0, 1
    else:
        if not torch.accelerator.is_available():
            raise SystemExit(
                "realize_on_reuse benchmark: no accelerator found (use --quick on CPU)"
            )
        sizes = realize_panel.Sizes(device=torch.accelerator.current_accelerator().type)
        tokens = [int(t) for t in args.tokens.split(",")]
    if not PATCH.matches_torch():
        raise SystemExit(
            f"realize_on_reuse is for torch {PATCH.torch_versions}, not {torch.__version__}"
        )

    modules: list[tuple[str, int]] = []
    for item in args.modules.split(","):
        if item == "blocks":
            modules += [(b, sizes.layers) for b in BLOCKS]
        elif item.startswith("stack"):
            modules.append(("decoder_stack", int(item[5:] or sizes.layers)))
        else:
            modules.append((item, sizes.layers))

    meta = run_meta(sizes, sizes={k: str(v) for k, v in vars(sizes).items()})
    started = time.perf_counter()
    rows: list[dict] = []
    for name, layers in modules:
        ways = list(WAYS) if name == "decoder_stack" else ["whole", "whole+patch"]
        t0 = time.perf_counter()
        rows += run_module(name, replace(sizes, layers=layers), tokens, ways, args)
        print(f"# {name} (layers={layers}) done in {time.perf_counter() - t0:.0f}s", flush=True)
        torch._dynamo.reset()
        meta["seconds"] = time.perf_counter() - started
        report(meta, rows, final=False)  # partial results survive a run that is cut short
    report(meta, rows, final=True)
    return 0


NOTES = (
    "kernels: Inductor kernels launched per forward (generated code); launches: all device "
    "kernels per forward (profiler); norm loads: buffers read by each RMSNorm kernel; MB est: "
    "Inductor's bytes estimate at the first token count (the compile-time size hint); min/med "
    "ms: per call, over interleaved samples (graph replays on an accelerator); spread: "
    "interquartile range / median of those samples; / whole: median of paired ratios with its "
    "95% confidence interval ('same code': generated code equal to whole's, not timed); norm "
    "ms: RMSNorm kernel time per forward (profiler); compile s: first call, cold caches; "
    "decisions: realize_on_reuse counts per rule, + stored, - recomputed"
)


def report(meta: dict, rows: list[dict], final: bool) -> None:
    table, checks = summary_table(rows), verdicts(rows)
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "realize_on_reuse.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows, "verdicts": checks}, f, indent=1)
        with open(os.path.join(out_dir, "realize_on_reuse.md"), "w") as f:
            f.write(f"{meta['date']}, {meta['device']}, torch {meta['torch']}: {meta['command']}")
            f.write(f"\n\n{table}\n\n{NOTES}\n\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    if final:
        print(f"\n{meta['date']}  {meta['device']}  torch {meta['torch']}  {meta['seconds']:.0f}s")
        print("\n".join(checks))
        print(NOTES)
        print(table)


if __name__ == "__main__":
    sys.exit(main())
