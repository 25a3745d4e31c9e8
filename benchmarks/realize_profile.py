"""Where does the whole graph with realize_on_reuse differ in time from split compilation?

Compiles the decoder stack (default 32 layers x 8192 tokens, Llama-3.1-8B sizes, bf16) three
ways (``whole``, ``whole+patch``, ``split``; see realize_on_reuse.py), then in one run:

1. times them by paired, interleaved CUDA-graph replays (median ratio, 95% confidence interval);
2. profiles each (torch.profiler, plain calls) and diffs the per-kernel tables of whole+patch and
   split: calls and device time per forward for each kernel, Inductor's kernels grouped by name
   without their per-graph index, largest differences first;
3. splits the gap into kernel time and idle time (wall time per forward minus the sum of its
   kernels), so a host-side cost shows up as such.

From the repository root, on one GPU (torch 2.11), within 10 minutes:

    python3 -m benchmarks.realize_profile
    python3 -m benchmarks.realize_profile --quick      # tiny sizes on CPU: checks the script

Results go to ``$OUT`` (realize_profile.json and realize_profile.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace

import torch

from benchmarks import realize_timing
from benchmarks.realize_on_reuse import (
    PATCH,
    category,
    cold_caches,
    compile_ways,
    kernel_table,
    run_meta,
    synchronize,
)
from compile_ops.testing import realize_panel

WAYS = ["whole", "whole+patch", "split"]


def family(kernel: str) -> str:
    """Inductor numbers its kernels per graph (``triton_per_fused_..._3``): drop the number."""
    return re.sub(r"_\d+$", "", kernel) if kernel.startswith(("triton_", "cpp_")) else kernel


def grouped(table: dict) -> dict[str, tuple[float, float]]:
    out: dict[str, list[float]] = {}
    for name, (calls, ms) in table.items():
        entry = out.setdefault(family(name), [0.0, 0.0])
        entry[0] += calls
        entry[1] += ms
    return {k: (v[0], v[1]) for k, v in out.items()}


def wall_ms(fn, inputs, forwards: int, device: str) -> float:
    """Wall time per plain (not replayed) forward, the host included."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(forwards):
        fn(*inputs)
    synchronize(device)
    return (time.perf_counter() - start) * 1e3 / forwards


def kernel_diff(a: dict, b: dict) -> list[dict]:
    """Rows for every kernel family in a or b: calls and ms per forward, a minus b."""
    rows = []
    for name in sorted(set(a) | set(b)):
        (ca, ma), (cb, mb) = a.get(name, (0.0, 0.0)), b.get(name, (0.0, 0.0))
        rows.append(
            {
                "kernel": name,
                "category": category(name),
                "calls": [ca, cb],
                "ms": [ma, mb],
                "diff_ms": ma - mb,
            }
        )
    return sorted(rows, key=lambda r: -abs(r["diff_ms"]))


def run(sizes, tokens: int, args) -> dict:
    compiled, recorders, compile_s = compile_ways("decoder_stack", sizes, tokens, WAYS)
    inputs = realize_panel.PANEL["decoder_stack"].inputs(sizes, tokens)
    device = sizes.device
    with torch.no_grad():
        for fn in compiled.values():
            fn(*inputs)
        runs = {way: realize_timing.runner(fn, inputs, device) for way, fn in compiled.items()}
        pairs = [("whole+patch", "split"), ("whole+patch", "whole"), ("split", "whole")]
        comparisons, samples, inner = realize_timing.compare(
            runs, pairs, device, max_reps=args.max_reps, budget_s=args.budget_s
        )
        plain = {
            way: kernel_table(lambda f=fn: f(*inputs), args.forwards, device)
            for way, fn in compiled.items()
        }
        walls = {way: wall_ms(fn, inputs, args.forwards, device) for way, fn in compiled.items()}
    tables = {way: grouped(t) for way, t in plain.items()}
    busy = {way: sum(ms for _, ms in t.values()) for way, t in tables.items()}
    return {
        "compile_s": compile_s,
        "graph_replay_ms": {way: sorted(s)[len(s) // 2] for way, s in samples.items()},
        "spread": {way: realize_timing.spread(s) for way, s in samples.items()},
        "inner": inner,
        "comparisons": [
            {
                "pair": [c.way, c.reference],
                "ratio": c.ratio,
                "ci": list(c.ci),
                "reps": len(c.ratios),
                "verdict": c.verdict(),
            }
            for c in comparisons
        ],
        "plain_wall_ms": walls,
        "kernel_busy_ms": busy,
        "idle_ms": {way: walls[way] - busy[way] for way in walls},
        "kernels": {way: {k: list(v) for k, v in t.items()} for way, t in tables.items()},
        "diff_patch_minus_split": kernel_diff(tables["whole+patch"], tables["split"]),
        "generated_kernels": {
            way: sum(c.count("async_compile.") for c in rec.codes) for way, rec in recorders.items()
        },
    }


def render(meta: dict, result: dict, top: int) -> str:
    lines = [f"{meta['date']}, {meta['device']}, torch {meta['torch']}: {meta['command']}", ""]
    for c in result["comparisons"]:
        lo, hi = c["ci"]
        lines.append(
            f"- {c['pair'][0]} / {c['pair'][1]} = {c['ratio']:.4f} (95% CI {lo:.4f}-{hi:.4f}, "
            f"{c['reps']} paired graph replays of {result['inner']} forwards): {c['verdict']}"
        )
    lines.append("")
    lines.append("| way | replay ms | spread | plain wall ms | kernel busy ms | idle ms |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for way in WAYS:
        lines.append(
            f"| {way} | {result['graph_replay_ms'][way]:.3f} | {result['spread'][way]:.1%} "
            f"| {result['plain_wall_ms'][way]:.3f} | {result['kernel_busy_ms'][way]:.3f} "
            f"| {result['idle_ms'][way]:.3f} |"
        )
    lines += ["", f"Kernels, whole+patch minus split (ms per forward, top {top}):", ""]
    lines.append("| kernel | category | calls patch / split | ms patch / split | diff ms |")
    lines.append("| --- | --- | --- | --- | --- |")
    for r in result["diff_patch_minus_split"][:top]:
        lines.append(
            f"| {r['kernel'][:90]} | {r['category']} | {r['calls'][0]:.0f} / {r['calls'][1]:.0f} "
            f"| {r['ms'][0]:.3f} / {r['ms'][1]:.3f} | {r['diff_ms']:+.3f} |"
        )
    by_category: dict[str, float] = {}
    for r in result["diff_patch_minus_split"]:
        by_category[r["category"]] = by_category.get(r["category"], 0.0) + r["diff_ms"]
    lines += [
        "",
        "By category (ms per forward, whole+patch minus split): "
        + ", ".join(
            f"{k} {v:+.3f}" for k, v in sorted(by_category.items(), key=lambda kv: -abs(kv[1]))
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--forwards", type=int, default=3, help="profiled forwards per way")
    parser.add_argument("--max-reps", type=int, default=200)
    parser.add_argument("--budget-s", type=float, default=120.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on CPU")
    args = parser.parse_args(argv)

    cold_caches("realize_profile_")
    if not PATCH.matches_torch():
        raise SystemExit(f"realize_on_reuse is for torch {PATCH.torch_versions}")
    if args.quick:
        sizes, tokens = replace(realize_panel.TINY, layers=4, device="cpu"), 64
        args.max_reps, args.budget_s, args.forwards = 12, 5.0, 1
    else:
        if not torch.accelerator.is_available():
            raise SystemExit("realize_profile: no accelerator found (use --quick on CPU)")
        accelerator = torch.accelerator.current_accelerator().type
        sizes, tokens = realize_panel.Sizes(layers=args.layers, device=accelerator), args.tokens
    meta = run_meta(sizes, layers=sizes.layers, tokens=tokens)
    result = run(sizes, tokens, args)
    text = render(meta, result, args.top)
    print(text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "realize_profile.json"), "w") as f:
            json.dump({"meta": meta, **result}, f, indent=1)
        with open(os.path.join(out_dir, "realize_profile.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
