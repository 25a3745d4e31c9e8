"""``compile-ops check``'s MoE section: the MoE model for every manager x layout, eager and
compiled, against the single-device reference. Uses only ``compile_ops.moe``'s public names."""

from __future__ import annotations

import torch
import torch.distributed as dist

from compile_ops.moe import (
    MANAGERS,
    Layout,
    ModelWeights,
    MoEConfig,
    mark_token_dim,
    reference_model,
    sharded_model,
)

from .outcome import Job, Outcome, measure

__all__ = ["check_moe_case", "grid_shape", "layout", "layout_kinds", "moe_jobs"]

CONFIG = MoEConfig(hidden=32, intermediate=64, experts=8, top_k=2, shared_intermediate=32)
LAYERS = 2
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # float32, two layers
_grids: dict[int, Layout] = {}


def grid_shape(world_size: int) -> tuple[int, int] | None:
    """``(tp, ep)`` for the TP x EP layout: the smallest TP size >= 2 that leaves EP >= 2."""
    for tp in range(2, world_size):
        if world_size % tp == 0 and world_size // tp >= 2:
            return tp, world_size // tp
    return None


def layout_kinds(world_size: int) -> list[str]:
    return ["tp", "ep"] + (["tp_ep"] if grid_shape(world_size) else [])


def layout(kind: str) -> Layout:
    """The layout ``kind`` names over the default group (run on every rank, in the same order:
    the TP x EP grid's subgroups are created once per world size)."""
    if kind != "tp_ep":
        return Layout.tp(None) if kind == "tp" else Layout.ep(None)
    n = dist.get_world_size()
    if n not in _grids:
        tp, ep = grid_shape(n)
        rows = [[s * tp + t for t in range(tp)] for s in range(ep)]
        cols = [[s * tp + t for s in range(ep)] for t in range(tp)]
        tp_pg = dist.new_subgroups_by_enumeration(rows)[0]
        ep_pg = dist.new_subgroups_by_enumeration(cols)[0]
        _grids[n] = Layout.tp_ep(None, tp_pg, ep_pg)
    return _grids[n]


def _tokens(counts: list[int], step: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return [torch.randn(c, CONFIG.hidden, generator=g).to(device) for c in counts]


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(got, want, **TOLERANCE)


def check_moe_case(manager: str, kind: str, device: str, compile_backend: str) -> Outcome:
    """On one rank: the sharded model eager and compiled vs the reference (runs in a worker)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    rank, n = dist.get_rank(), dist.get_world_size()
    # Uneven token counts, one of them a single token; one compiled graph must serve all.
    steps = [[2 * r + 3 for r in range(n)], [1 + 6 * (r % 2) for r in range(n)]]
    with measure() as out:
        weights = ModelWeights.random(CONFIG, LAYERS, seed=3, device=device)
        model = sharded_model(CONFIG, weights, layout(kind), manager, debug=True)
        reference = reference_model(CONFIG, weights)
        wants, inputs = [], []
        for step, counts in enumerate(steps):
            xs = _tokens(counts, step, device)
            begin = sum(counts[:rank])
            wants.append(reference(torch.cat(xs))[begin : begin + counts[rank]])
            inputs.append(xs[rank])
        out.eager_ok = all(_close(model(x), w) for x, w in zip(inputs, wants, strict=True))
        # Token counts and all_to_all splits are read with .tolist(): data-dependent ints.
        with torch._dynamo.config.patch(capture_scalar_outputs=True):
            torch._dynamo.reset()
            out.graph_breaks = torch._dynamo.explain(model)(inputs[0]).graph_break_count
            torch._dynamo.reset()
            counter = CompileCounterWithBackend(compile_backend)
            compiled = torch.compile(model, backend=counter, fullgraph=True)
            ok = [
                _close(compiled(mark_token_dim(x.clone())), w)
                for x, w in zip(inputs, wants, strict=True)
            ]
        out.compiled_ok = all(ok) and counter.frame_count == 1
    return out


def moe_jobs(world_size: int, device: str, compile_backend: str = "inductor") -> list[Job]:
    """One row per manager x layout: the MoE model (RMSNorm -> MoE -> residual, twice)."""
    jobs = []
    for kind in layout_kinds(world_size):
        label = kind if kind != "tp_ep" else "tp{}xep{}".format(*grid_shape(world_size))
        for manager in MANAGERS:
            args = (manager, kind, device, compile_backend)
            jobs.append(Job("moe", f"{manager}/{label}", check_moe_case, args))
    return jobs
