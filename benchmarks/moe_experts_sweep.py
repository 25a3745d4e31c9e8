"""Tile sweep of the Triton grouped GEMMs (compile_ops/moe/triton_grouped_gemm.py), run by
``benchmarks/moe_experts.py --sweep``: each candidate tile for each kernel on every shape x token
count, next to ``torch._grouped_mm`` doing the same product (with its gather and SiLU kernels
for gate_up). Cases fall in two regimes by routed rows per expert (below or from
``LARGE_FROM_ROWS_PER_EXPERT``); the winner of a regime is the candidate with the lowest
geometric mean of (time / best time of the case) over its cases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compile_ops.moe import MoEConfig, compute
from compile_ops.moe import triton_grouped_gemm as tg
from compile_ops.moe.experts import group_pairs

T = tg.TileConfig
CANDIDATES = {
    # block_m, block_n, block_k, group_m, warps, stages; gate_up holds two accumulators
    "gate_up": [
        T(64, 128, 64, 8, 4, 3),
        T(64, 128, 64, 8, 4, 4),
        T(128, 128, 64, 8, 8, 3),
        T(64, 256, 64, 8, 8, 3),
    ],
    "down": [
        T(64, 128, 64, 8, 4, 4),
        T(128, 128, 64, 8, 8, 3),
        T(128, 256, 64, 8, 8, 3),
        T(64, 256, 64, 8, 8, 3),
    ],
}


def _problem(shape, tokens, device):
    from moe_experts import random_weights

    hidden, inter, experts, k = shape
    config = MoEConfig(hidden=hidden, intermediate=inter, experts=experts, top_k=k)
    w = random_weights(config, device)
    gate_up, down = compute.pack_local_experts(w.gate, w.up, w.down)
    x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
    weights, ids = compute.route(x, w.router, config)
    g = group_pairs(ids, torch.zeros((), dtype=torch.int64, device=device), experts)
    rows = g.order // k
    scale = weights.reshape(-1).float()[g.order]
    act = tg.gate_up_silu(x, rows, gate_up, g.ends)
    return {
        "gate_up": lambda: tg.gate_up_silu(x, rows, gate_up, g.ends),
        "down": lambda: tg.down_scatter(act, down, g.ends, g.order, scale),
        "grouped_mm gate_up": lambda: _gmm_gate_up(x[rows], gate_up, g.ends, inter),
        "grouped_mm down": lambda: torch._grouped_mm(act, down.transpose(1, 2), offs=g.ends),
    }


def _gmm_gate_up(xs, gate_up, ends, inter):
    h = torch._grouped_mm(xs, gate_up.transpose(1, 2), offs=ends)
    return F.silu(h[:, :inter]) * h[:, inter:]


def sweep_configs(shapes: dict, tokens_list, device) -> list[dict]:
    from moe_experts import bench

    rows = []
    saved = dict((kernel, tg.CONFIGS[(kernel, 2)]) for kernel in CANDIDATES)
    for name, shape in shapes.items():
        for tokens in tokens_list:
            problem = _problem(shape, tokens, device)
            for kernel, candidates in CANDIDATES.items():
                for cand in candidates:
                    tg.CONFIGS[(kernel, 2)] = (cand,)
                    try:
                        ms = bench(lambda _, f=problem[kernel]: f(), None, device)
                    except Exception as e:  # e.g. out of shared memory
                        ms, error = None, f"{type(e).__name__}: {str(e)[:120]}"
                    else:
                        error = None
                    rows.append(_row(name, shape, tokens, kernel, cand._asdict(), ms, error))
                tg.CONFIGS[(kernel, 2)] = saved[kernel]
                ms = bench(lambda _, f=problem[f"grouped_mm {kernel}"]: f(), None, device)
                rows.append(_row(name, shape, tokens, kernel, "torch._grouped_mm", ms, None))
            del problem
    return rows


def _row(name, shape, tokens, kernel, config, ms, error):
    experts, k = shape[2:]
    row = {"shape": name, "tokens": tokens, "kernel": kernel, "config": config, "ms": ms}
    row["large"] = tokens * k >= tg.LARGE_FROM_ROWS_PER_EXPERT * experts
    if error:
        row["error"] = error
    print(row, flush=True)
    return row


def apply_best(rows: list[dict]) -> dict:
    """Set each kernel's (few rows, many rows) tiles to the sweep's winners; returns them."""
    chosen = {}
    for kernel, candidates in CANDIDATES.items():
        tiles = list(tg.CONFIGS[(kernel, 2)])
        for large in (False, True):
            mine = [r for r in rows if r["kernel"] == kernel and r["large"] == large]
            if not mine:  # no case in this regime: keep the tile
                continue
            winner, score = _winner(mine, candidates)
            tiles[int(large)] = winner
            chosen[f"{kernel} {'many' if large else 'few'} rows"] = {
                "config": winner._asdict(),
                "geomean_vs_best": score,
            }
        tg.CONFIGS[(kernel, 2)] = tuple(tiles)
    return chosen


def _winner(rows: list[dict], candidates):
    cases = {(r["shape"], r["tokens"]) for r in rows}
    timed = [r for r in rows if r["config"] != "torch._grouped_mm"]
    best = {
        c: min(r["ms"] for r in timed if (r["shape"], r["tokens"]) == c and r["ms"]) for c in cases
    }

    def score(cand):
        logs = [
            math.log(r["ms"] / best[(r["shape"], r["tokens"])]) if r["ms"] else math.inf
            for r in timed
            if r["config"] == cand._asdict()
        ]
        return math.exp(sum(logs) / len(logs))

    winner = min(candidates, key=score)
    return winner, score(winner)
