"""The Triton grouped GEMM ops alone at a prefill shape, for candidate 128-row tiles (stages,
k-block, width): where the committed tiles stand against their neighbours, on one GPU.

    python3 benchmarks/moe_prefill_tiles.py            # Mixtral-8x7B, 4096 tokens, bf16
    python3 benchmarks/moe_prefill_tiles.py --json     # the rows as JSON

Each op launches both of its tiles, as in a block (the 64-row one returns at once at this row
count), so a row's time includes that idle launch. Rows are gathered at random, 1024 per expert;
``triton.testing.do_bench`` medians with the L2 flushed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compile_ops.moe import triton_grouped_gemm as tg

CANDIDATES = {
    "gate_up": [(128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (128, 128, 32, 8, 8, 5),
                (128, 64, 64, 8, 4, 4)],
    "down": [(128, 256, 64, 8, 8, 3), (128, 256, 64, 8, 8, 4), (128, 128, 64, 8, 8, 4),
             (128, 256, 32, 8, 8, 5)],
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    experts, hidden, inter, tokens, k = 8, 4096, 14336, 4096, 2
    pairs = tokens * k
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(tokens, hidden, device="cuda", generator=g).bfloat16()
    gate_up = (torch.randn(experts, 2 * inter, hidden, device="cuda", generator=g) / 64).bfloat16()
    down = (torch.randn(experts, hidden, inter, device="cuda", generator=g) / 120).bfloat16()
    act = torch.randn(pairs, inter, device="cuda", generator=g).bfloat16()
    rows = torch.randint(0, tokens, (pairs,), device="cuda", generator=g)
    ends = torch.arange(1, experts + 1, device="cuda", dtype=torch.int32) * (pairs // experts)
    dest = torch.randperm(pairs, device="cuda", generator=g)
    scale = torch.rand(pairs, device="cuda", generator=g)
    calls = {
        "gate_up": (lambda: tg.gate_up_silu(x, rows, gate_up, ends), 2 * pairs * 2 * inter * hidden),
        "down": (lambda: tg.down_scatter(act, down, ends, dest, scale), 2 * pairs * hidden * inter),
    }  # fmt: skip
    committed = dict(tg.CONFIGS)
    out = []
    for kernel, candidates in CANDIDATES.items():
        fn, flops = calls[kernel]
        for cfg in map(tg.TileConfig._make, candidates):
            tg.CONFIGS[(kernel, 2)] = (committed[(kernel, 2)][0], cfg)
            ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
            row = {"kernel": kernel, "tile": cfg._asdict(), "ms": ms, "tflops": flops / ms / 1e9}
            row["committed"] = cfg == committed[(kernel, 2)][1]
            out.append(row)
            if not args.json:
                mark = "  (committed)" if row["committed"] else ""
                print(f"{kernel:8} {tuple(cfg)}  {ms:.3f} ms  {row['tflops']:.0f} TFLOP/s{mark}")
        tg.CONFIGS[(kernel, 2)] = committed[(kernel, 2)]
    if args.json:
        print(
            json.dumps(
                {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": out}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
