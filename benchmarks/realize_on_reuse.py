"""Benchmark the realize_on_reuse patch on the module panel, three ways side by side.

* ``whole``        the module compiled as one graph by stock Inductor (patch off)
* ``whole+patch``  the same with the patch on
* ``split``        the decoder stack cut at every attention op, each piece compiled on its own
                   (patch off), as vLLM's piecewise compilation does

For each module and token count it reports kernel launches per forward, the loads of each
RMSNorm kernel, Inductor's estimate of bytes accessed, min and median latency over interleaved
repetitions, kernel time per category from torch.profiler (norm kernels above all), cold compile
time, and the patch's decision counts. Sizes are Llama-3.1-8B's (hidden 4096, MLP 14336, 32/8
heads) in bf16; the token dimension is dynamic, so each module compiles once per way.

On one H100 (torch 2.11), each run fits in 8 minutes:

    python3 benchmarks/realize_on_reuse.py --modules blocks,stack8
    python3 benchmarks/realize_on_reuse.py --modules stack32

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
from compile_ops.testing import codegen, realize_panel
from inductor_patches.realize_on_reuse import decisions

PATCH = inductor_patches.get("realize_on_reuse")
BLOCKS = ("rmsnorm_residual", "silu_mlp", "broadcast_scale", "moe_router", "chain_reductions")


# ---------------------------------------------------------------- the three ways to compile


@contextmanager
def patch_state(on: bool):
    was = PATCH.is_applied()
    PATCH.apply() if on else PATCH.revert()
    try:
        yield
    finally:
        PATCH.apply() if was else PATCH.revert()


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
        with patch_state(patch_on), rec.compiling():
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
                with patch_state(False), rec.compiling():
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


# ---------------------------------------------------------------- timing and profiling


def synchronize(device: str) -> None:
    if device != "cpu":
        torch.accelerator.synchronize()


def time_ms(fn: Callable, args: tuple, inner: int, device: str) -> float:
    """Mean time of ``inner`` back-to-back calls, in ms (device events on an accelerator)."""
    if device == "cpu":
        start = time.perf_counter()
        for _ in range(inner):
            fn(*args)
        return (time.perf_counter() - start) * 1e3 / inner
    begin, end = torch.Event(enable_timing=True), torch.Event(enable_timing=True)
    begin.record()
    for _ in range(inner):
        fn(*args)
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / inner


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


def profile(fn: Callable, args: tuple, forwards: int, device: str) -> dict:
    """Kernel time per category and kernel launches, per forward."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU]
    if device != "cpu":
        activities.append(getattr(ProfilerActivity, device.upper(), ProfilerActivity.CUDA))
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(forwards):
            fn(*args)
        synchronize(device)
    per_category: dict[str, float] = {}
    launches = 0
    for event in prof.events():
        if event.device_type == DeviceType.CPU:
            continue
        launches += 1
        cat = category(event.name)
        per_category[cat] = per_category.get(cat, 0.0) + event.time_range.elapsed_us() / 1e3
    return {
        "kernel_ms": {k: v / forwards for k, v in sorted(per_category.items())},
        "launches": launches / forwards,
    }


# ---------------------------------------------------------------- one module, all ways


def run_module(name, sizes, tokens_list, ways, args) -> list[dict]:
    case = realize_panel.PANEL[name]
    module = case.module(sizes)
    compiled, recorders, compile_s = {}, {}, {}
    first_inputs = case.inputs(sizes, tokens_list[0])
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

    rows = []
    for tokens in tokens_list:
        inputs = case.inputs(sizes, tokens)
        with torch.no_grad():
            outs = {way: fn(*inputs) for way, fn in compiled.items()}
            eager = module(*inputs) if tokens <= args.eager_max_tokens else None
            for fn in compiled.values():  # warm up at this size
                fn(*inputs)
            synchronize(sizes.device)
            one = min(time_ms(fn, inputs, 1, sizes.device) for fn in compiled.values())
            inner = max(1, int(args.sample_ms / max(one, 1e-3)))
            samples: dict[str, list[float]] = {way: [] for way in ways}
            for rep in range(args.reps):  # interleaved, rotating the order
                order = ways[rep % len(ways) :] + ways[: rep % len(ways)]
                for way in order:
                    samples[way].append(time_ms(compiled[way], inputs, inner, sizes.device))
            profiles = {
                way: profile(fn, inputs, args.profile_forwards, sizes.device)
                for way, fn in compiled.items()
            }
        ref = outs[ways[0]]
        for way in ways:
            rec = recorders[way]
            launches = [k for c in rec.codes for k in codegen.kernel_launches(c)]
            rows.append(
                {
                    "module": name,
                    "layers": sizes.layers if name == "decoder_stack" else None,
                    "tokens": tokens,
                    "way": way,
                    "min_ms": min(samples[way]),
                    "median_ms": statistics.median(samples[way]),
                    "samples_ms": samples[way],
                    "inner": inner,
                    "kernel_ms": profiles[way]["kernel_ms"],
                    "launches_per_forward": profiles[way]["launches"],
                    "generated_kernel_launches": len(launches),
                    "norm_loads": [k.loads for k in launches if k.is_norm],
                    "bytes_accessed": rec.bytes_accessed,
                    "compile_s": compile_s[way],
                    "code_hash": hashlib.sha256("\n".join(rec.codes).encode()).hexdigest()[:16],
                    "decisions": rec.decisions,
                    "max_diff_vs_whole": _max_diff(outs[way], ref),
                    "max_diff_vs_eager": None if eager is None else _max_diff(outs[way], eager),
                }
            )
    return rows


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


COLUMNS = {
    "module": _label,
    "tokens": lambda r: str(r["tokens"]),
    "way": lambda r: r["way"],
    "kernels": lambda r: str(r["generated_kernel_launches"]),  # Inductor kernels per forward
    "launches": lambda r: f"{r['launches_per_forward']:.0f}",  # all device kernels (profiler)
    "norm loads": _norm_loads,
    "MB est": lambda r: f"{r['bytes_accessed'] / 1e6:.1f}",
    "min ms": lambda r: f"{r['min_ms']:.3f}",
    "med ms": lambda r: f"{r['median_ms']:.3f}",
    "norm ms": lambda r: f"{r['kernel_ms'].get('norm', 0.0):.3f}",
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


def verdicts(rows: list[dict], noise: float) -> list[str]:
    """The bar for shipping the patch on by default (docs/patches.md), checked on these rows."""
    by = {(_label(r), r["tokens"], r["way"]): r for r in rows}
    out = []
    for (label, tokens, way), r in sorted(by.items()):
        if way != "whole+patch":
            continue
        base = by[(label, tokens, "whole")]
        gain = 1 - r["median_ms"] / base["median_ms"]
        line = f"{label} {tokens}: whole+patch vs whole {gain:+.2%} (median)"
        if not label.startswith("stack"):
            if r.get("code_hash") == base.get("code_hash"):
                line += " ok: identical generated code, so the difference is noise"
            else:
                line += " ok" if gain >= -noise else f" SLOWER beyond {noise:.0%} noise"
        else:
            split = by.get((label, tokens, "split"))
            if split:
                norm, split_norm = r["kernel_ms"].get("norm"), split["kernel_ms"].get("norm")
                vs_split = 1 - r["median_ms"] / split["median_ms"]
                if norm and split_norm:
                    ratio = norm / split_norm
                    verdict = "ok" if ratio <= 1.10 else "over 1.10x"
                    line += f"; norm time {ratio:.2f}x split's ({verdict})"
                line += f"; vs split {vs_split:+.2%} ({'ok' if vs_split > 0 else 'not faster'})"
            if label == "stack32" and tokens == max(t for (_, t, _) in by):
                line += f"; needs >= +1.5% vs whole: {'ok' if gain >= 0.015 else 'NOT MET'}"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modules",
        default="blocks,stack8,stack32",
        help="comma list of panel modules, 'blocks', 'stack<N>' (default: all)",
    )
    parser.add_argument("--tokens", default="1024,8192")
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions")
    parser.add_argument("--sample-ms", type=float, default=30.0, help="target time per sample")
    parser.add_argument("--profile-forwards", type=int, default=3)
    parser.add_argument("--eager-max-tokens", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on CPU, few reps")
    args = parser.parse_args(argv)

    # A cold, private cache: every way is lowered (decisions counted), nothing stale is served.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="realize_on_reuse_")
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    torch._dynamo.config.cache_size_limit = 64

    if args.quick:
        sizes = replace(realize_panel.TINY, device="cpu")
        tokens = [32, 64]
        args.reps, args.sample_ms, args.profile_forwards = 3, 5.0, 1
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

    device_name = (
        torch.cuda.get_device_name() if sizes.device == "cuda" else sizes.device
    )  # CUDA-only by nature: the GPU's name for the record
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device_name,
        "torch": torch.__version__,
        "sizes": {k: str(v) for k, v in vars(sizes).items()},
        "command": " ".join(sys.argv),
    }
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
    "Inductor's bytes estimate at the first token count (the compile-time size hint); norm ms: "
    "RMSNorm kernel time per forward (profiler); compile s: first call, cold caches; "
    "decisions: realize_on_reuse counts per rule, + stored, - recomputed"
)


def report(meta: dict, rows: list[dict], final: bool) -> None:
    table, checks = summary_table(rows), verdicts(rows, noise=0.01)
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
