"""The Triton grouped GEMM ops alone at the prefill shapes: the persistent TMA tile's candidates
(the committed one marked) against the 128-row pointer tile and ``torch._grouped_mm``, on one GPU;
with ``--gather``, the row gather that feeds the persistent gate_up against ``x[rows]``.

    python3 benchmarks/moe_prefill_tiles.py                  # three shapes, 4096 tokens, bf16
    python3 benchmarks/moe_prefill_tiles.py --shapes Mixtral-8x7B --json
    python3 benchmarks/moe_prefill_tiles.py --gather

Each op launches all of its tiles, as in a block (those not meant for the row count return at
once), so a row's time includes those idle launches and, for gate_up on the persistent tile,
the gather of ``x[rows]`` it needs. ``_grouped_mm`` gets its rows gathered beforehand and
computes the bare products (no SiLU, no weight, no scatter): a floor for what its path costs.
A dense cuBLAS product with the same flops (every row against the first expert's weights) is the
ceiling a grouped GEMM is read against.
Tokens are routed to ``top_k`` uniformly random experts, or with ``--routing balanced`` pair ``p``
to expert ``p mod E``: every expert gets the same rows, and where that count is a multiple of
128 (DeepSeek-V2-Lite: 384) no row tile is padded. ``triton.testing.do_bench`` medians with
the L2 flushed.
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
from compile_ops.moe import triton_tma_gemm as ttg
from compile_ops.moe.experts import group_pairs

SHAPES = {  # experts, hidden, intermediate, top-k
    "Mixtral-8x7B": (8, 4096, 14336, 2),
    "Qwen1.5-MoE-A2.7B": (60, 2048, 1408, 4),
    "DeepSeek-V2-Lite": (64, 2048, 1408, 6),
}
# (block_m, block_n, block_k, group_m, warps, stages), flatten; group_m 0: expert by expert
CANDIDATES = {
    "gate_up": [((128, 128, 64, 0, 8, 4), False), ((128, 128, 64, 8, 8, 4), False),
                ((128, 128, 64, 16, 8, 4), False),
                ((128, 128, 32, 8, 8, 6), False), ((128, 128, 64, 8, 8, 3), False),
                ((64, 128, 64, 8, 4, 4), False), ((64, 256, 64, 8, 8, 3), False),
                ((64, 128, 64, 8, 4, 5), False)],
    "down": [((128, 256, 64, 0, 8, 4), True), ((128, 256, 64, 8, 8, 4), True),
             ((128, 256, 64, 8, 8, 4), False),
             ((128, 256, 64, 16, 8, 4), True), ((128, 256, 32, 8, 8, 6), True),
             ((64, 256, 64, 8, 4, 4), True), ((64, 256, 64, 8, 8, 4), True),
             ((64, 128, 64, 8, 4, 6), True)],
}  # fmt: skip
# gather_rows_kernel's (rows, columns) per program; (1, 1024) is the former one row a program
GATHER_TILES = [(1, 1024), (4, 1024), (8, 512), (8, 1024), (16, 256), (16, 512)]


def _case(experts: int, hidden: int, inter: int, k: int, tokens: int, routing: str = "random"):
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(tokens, hidden, device="cuda", generator=g).bfloat16()
    gate_up = (torch.randn(experts, 2 * inter, hidden, device="cuda", generator=g) / 64).bfloat16()
    down = (torch.randn(experts, hidden, inter, device="cuda", generator=g) / 120).bfloat16()
    if routing == "balanced":  # k consecutive experts a token: distinct while k <= experts
        ids = (torch.arange(tokens * k, device="cuda") % experts).view(tokens, k)
    else:
        ids = torch.rand(tokens, experts, device="cuda", generator=g).topk(k, -1).indices
    grouping = group_pairs(ids, torch.zeros((), dtype=torch.long, device="cuda"), experts)
    act = torch.randn(tokens * k, inter, device="cuda", generator=g).bfloat16()
    scale = torch.rand(tokens * k, device="cuda", generator=g)
    return x, gate_up, down, grouping.order // k, grouping.ends, grouping.order, act, scale


def _time(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def shape_rows(name: str, tokens: int, routing: str = "random") -> list[dict]:
    experts, hidden, inter, k = SHAPES[name]
    x, gate_up, down, rows, ends, dest, act, scale = _case(
        experts, hidden, inter, k, tokens, routing
    )
    pairs = tokens * k
    ops = {
        "gate_up": lambda: tg.gate_up_silu(x, rows, gate_up, ends),
        "down": lambda: tg.down_scatter(act, down, ends, dest, scale),
    }
    gathered = x[rows]
    floors = {
        "gate_up": lambda: torch._grouped_mm(gathered, gate_up.transpose(-2, -1), offs=ends),
        "down": lambda: torch._grouped_mm(act, down.transpose(-2, -1), offs=ends),
    }
    flops = {"gate_up": 2 * pairs * 2 * inter * hidden, "down": 2 * pairs * hidden * inter}
    # [pairs, K] @ [K, n]: the grouped products' flops as one dense product
    ceilings = {"gate_up": lambda: gathered @ gate_up[0].T, "down": lambda: act @ down[0].T}
    committed, persistent_for = dict(tg.PERSISTENT_CONFIGS), tg.persistent_for
    out = []

    def row(kernel: str, tile: str, fn, **extra) -> None:
        ms = _time(fn)
        out.append({"shape": name, "tokens": tokens, "routing": routing, "kernel": kernel,
                    "tile": tile, "ms": ms, "tflops": flops[kernel] / ms / 1e9, **extra})  # fmt: skip

    for kernel, candidates in CANDIDATES.items():
        row(kernel, "_grouped_mm (bare products)", floors[kernel])
        row(kernel, "dense cuBLAS, same flops", ceilings[kernel])
        tg.persistent_for = lambda _x: None
        row(kernel, "pointer 128-row", ops[kernel])
        want = ops[kernel]().float()  # every row is routed, so every row is written
        tg.persistent_for = persistent_for
        for cfg, flatten in candidates:
            tg.PERSISTENT_CONFIGS[kernel] = (tg.TileConfig(*cfg), flatten)
            group = f"g{cfg[3]}" if cfg[3] else "by expert"
            tile = "persistent " + "x".join(map(str, cfg[:3])) + f" {group} w{cfg[4]} s{cfg[5]}"
            tile += " flat" * flatten
            # against the pointer tile: a candidate that skips or misplaces rows shows here
            diff = (ops[kernel]().float() - want).abs().max().item() / want.abs().max().item()
            row(
                kernel,
                tile,
                ops[kernel],
                committed=tg.PERSISTENT_CONFIGS[kernel] == committed[kernel],
                rel_diff=diff,
            )
        tg.PERSISTENT_CONFIGS[kernel] = committed[kernel]
    return out


def gather_rows(name: str, tokens: int) -> list[dict]:
    """gather_rows' tiles against ``x[rows]`` (aten's index, eager), bytes read and written."""
    experts, hidden, inter, k = SHAPES[name]
    x, _, _, rows, ends, *_ = _case(experts, hidden, inter, k, tokens)
    moved = 2 * (rows.shape[0] + 1) * hidden * x.element_size()
    out = []

    def row(tile: str, fn, **extra) -> None:
        ms = _time(fn)
        out.append({"shape": name, "tokens": tokens, "kernel": "gather", "tile": tile, "ms": ms,
                    "tb_per_s": moved / ms / 1e9, **extra})  # fmt: skip

    row("x[rows] (aten)", lambda: x[rows])
    committed, want = ttg.GATHER_TILE, x[rows]
    for tile in GATHER_TILES:
        ttg.GATHER_TILE = tile
        got = ttg.gather_rows(ttg.gather_rows_kernel, x, rows, ends, tg.LARGE_FROM_ROWS_PER_EXPERT)
        assert torch.equal(got[:-1], want) and not got[-1].any(), tile
        fn = lambda: ttg.gather_rows(  # noqa: E731
            ttg.gather_rows_kernel, x, rows, ends, tg.LARGE_FROM_ROWS_PER_EXPERT
        )
        row(f"gather_rows {tile[0]}x{tile[1]}", fn, committed=tile == committed)
    ttg.GATHER_TILE = committed
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--gather", action="store_true", help="time the row gather's tiles")
    parser.add_argument(
        "--routing", choices=("random", "balanced"), default="random", help="see the docstring"
    )
    args = parser.parse_args(argv)
    rows = []
    for name in args.shapes.split(","):
        if args.gather:
            shape = gather_rows(name, args.tokens)
        else:
            shape = shape_rows(name, args.tokens, args.routing)
        for r in shape:
            rows.append(r)
            if not args.json:
                mark = "  (committed)" if r.get("committed") else ""
                rate = (
                    f"{r['tflops']:4.0f} TFLOP/s" if "tflops" in r else f"{r['tb_per_s']:.2f} TB/s"
                )
                diff = f"  diff {r['rel_diff']:.1e}" if "rel_diff" in r else ""
                print(f"{name:18} {r['kernel']:8} {r['tile']:34} {r['ms']:.3f} ms  "
                      f"{rate}{diff}{mark}", flush=True)  # fmt: skip
    if args.json:
        info = {"torch": torch.__version__, "triton": triton.__version__}
        print(json.dumps(info | {"gpu": torch.cuda.get_device_name(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
