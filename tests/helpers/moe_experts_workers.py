"""Functions for the worker ranks of the expert-compute and routing-family tests (module level,
so they pickle by reference)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from compile_ops.moe import (
    Layout,
    MoEBlock,
    MoEConfig,
    MoEWeights,
    ShardedMoEBlock,
    mark_token_dim,
)


def _share(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    rows = x.shape[0] // world
    return x.narrow(0, rank * rows, rows)


def _compiled(block: torch.nn.Module, backend: str | None):
    from torch._dynamo.testing import CompileCounterWithBackend

    if backend is None:
        return block, None
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    return torch.compile(block, backend=counter, fullgraph=True), counter


def run_sharded(
    config: MoEConfig,
    weights: MoEWeights,
    xs: list[torch.Tensor],
    kind: str = "ep",
    manager: str = "all_to_all",
    backend: str | None = None,
    experts_impl: str = "auto",
    device: str = "cpu",
):
    """The sharded block on this rank's share of each ``xs[i]`` ``[world * T_i, H]``.

    Returns (outputs for this rank's rows, resolved experts_impl, compiled frames or 0).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    layout = Layout.tp(None) if kind == "tp" else Layout.ep(None)
    block = ShardedMoEBlock(config, weights.to(device), layout, manager, experts_impl=experts_impl)
    fn, counter = _compiled(block, backend)
    outs = []
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        for x in xs:
            mine = _share(x, rank, world).to(device).clone()
            outs.append(fn(mark_token_dim(mine) if counter else mine))
    return outs, block.experts_impl, counter.frame_count if counter else 0


def run_sharded_vs_reference(
    config: MoEConfig,
    dtype: torch.dtype,
    counts: list[int],
    experts_impl: str,
    backend: str | None,
    device: str,
):
    """The sharded block (world-size EP, all_to_all) against the single-device reference on
    ``counts`` tokens per rank; returns per step (out, reference rows), experts_impl, frames."""
    rank, world = dist.get_rank(), dist.get_world_size()
    weights = MoEWeights.random(config, seed=3, dtype=dtype)
    g = torch.Generator().manual_seed(11)
    xs = [torch.randn(world * c, config.hidden, generator=g).to(dtype) for c in counts]
    outs, impl, frames = run_sharded(
        config, weights, xs, "ep", "all_to_all", backend, experts_impl, device
    )
    ref = MoEBlock(config, weights)
    wants = [_share(ref(x), rank, world) for x in xs]
    return list(zip(outs, wants, strict=True)), impl, frames
