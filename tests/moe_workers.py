"""MoE functions that run inside the worker ranks (module level, so they pickle by reference)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from compile_ops.moe import (
    MANAGERS,
    Layout,
    MoEBlock,
    MoEConfig,
    MoEWeights,
    ReduceContractError,
    ShardedMoEBlock,
    mark_token_dim,
)

CONFIG = MoEConfig(hidden=16, intermediate=32, experts=8, top_k=2, shared_intermediate=16)
SIGMOID = MoEConfig(
    hidden=16, intermediate=32, experts=8, top_k=3, scoring="sigmoid", renormalize=False
)
# The TP x EP grid of a 4-rank world: TP pairs {0,1},{2,3}; EP pairs {0,2},{1,3}.
GRID = {"moe_tp": [[0, 1], [2, 3]], "moe_ep": [[0, 2], [1, 3]]}
_grid_groups: dict[str, dist.ProcessGroup] = {}


def layout(kind: str) -> Layout:
    if kind == "tp":
        return Layout.tp(None)
    if kind == "ep":
        return Layout.ep(None)
    if not _grid_groups:  # once per process: every rank creates the subgroups in the same order
        import compile_ops

        for name, ranks in GRID.items():
            _grid_groups[name] = dist.new_subgroups_by_enumeration(ranks)[0]
            compile_ops.register_group(name, _grid_groups[name])
    return Layout.tp_ep(None, tp="moe_tp", ep="moe_ep")


def tokens(counts: list[int], dtype: torch.dtype, step: int = 0, hidden: int = 16):
    """Every rank's tokens (the same on every rank, so each can compute the reference)."""
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(c, hidden, generator=g).to(dtype) for c in counts]


def _own(t: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
    start = sum(counts[:rank])
    return t[start : start + counts[rank]]


def flipped(name: str) -> type:
    """The manager ``name`` with its reduce statement inverted (a double or missing reduce)."""
    base = MANAGERS[name]
    return type(
        f"Flipped{base.__name__}", (base,), {"output_is_reduced": not base.output_is_reduced}
    )


def _block(manager, kind, dtype, config, debug, flip=False, device="cpu"):
    weights = MoEWeights.random(config, seed=7, dtype=dtype, device=device)
    lay = layout(kind)
    if flip:
        manager = flipped(manager)(lay, config.experts, device)
    return ShardedMoEBlock(config, weights, lay, manager, debug=debug), MoEBlock(config, weights)


def run_block(
    manager: str,
    kind: str,
    dtype: torch.dtype,
    steps: list[list[int]],
    backend: str | None = None,
    debug: bool = True,
    config: MoEConfig = CONFIG,
    device: str = "cpu",
):
    """Run the sharded block on ``steps`` (per-rank token counts, one list per call).

    Returns per step ``(out, reference rows)`` for this rank, and the number of compiled frames
    (``backend=None``: eager). The token dimension is unbacked, so one frame serves every count.
    """
    from torch._dynamo.testing import CompileCounterWithBackend

    rank = dist.get_rank()
    block, ref = _block(manager, kind, dtype, config, debug, device=device)
    counter = CompileCounterWithBackend(backend) if backend else None
    if counter:
        torch._dynamo.reset()
        fn = torch.compile(block, backend=counter, fullgraph=True)
    else:
        fn = block
    results = []
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        for step, counts in enumerate(steps):
            xs = [x.to(device) for x in tokens(counts, dtype, step, config.hidden)]
            x = mark_token_dim(xs[rank].clone()) if counter else xs[rank]
            results.append((fn(x), _own(ref(torch.cat(xs)), counts, rank)))
    return results, counter.frame_count if counter else 0


def run_flipped(manager: str, kind: str, counts: list[int], backend: str | None = None):
    """A manager whose ``output_is_reduced`` is inverted (same token count on every rank, so the
    extra all_reduce of a flipped reducing manager is well-formed).

    Returns this rank's (output without debug, reference rows, the error debug mode raised).
    """
    rank = dist.get_rank()
    xs = tokens(counts, torch.float32)
    outputs = []
    for debug in (False, True):
        block, ref = _block(manager, kind, torch.float32, CONFIG, debug, flip=True)
        if backend:
            torch._dynamo.reset()
            block = torch.compile(block, backend=backend, fullgraph=True)
        try:
            with torch._dynamo.config.patch(capture_scalar_outputs=True):
                outputs.append(block(xs[rank]))
        except (ReduceContractError, RuntimeError) as e:
            outputs.append(f"{type(e).__name__}: {e}")
    return outputs[0], _own(ref(torch.cat(xs)), counts, rank), outputs[1]


def run_block_on_accelerator(manager: str, kind: str, dtype: torch.dtype, steps: list[list[int]]):
    """The block on this rank's accelerator, compiled with Inductor."""
    device = torch.accelerator.current_accelerator().type
    return run_block(manager, kind, dtype, steps, "inductor", True, CONFIG, device)


def raises(fn, *args):
    """``(exception type name, message)`` of ``fn(*args)``, or None if it did not raise."""
    try:
        fn(*args)
    except Exception as e:
        return type(e).__name__, str(e)
    return None


def bad_inputs():
    """The error of each misuse (runs on every rank of a 4-rank world)."""
    from compile_ops.moe import make_manager

    weights = MoEWeights.random(CONFIG)
    six = MoEConfig(hidden=16, intermediate=32, experts=6, top_k=2)
    odd = MoEConfig(hidden=16, intermediate=30, experts=8, top_k=2)
    wide = MoEConfig(hidden=24, intermediate=32, experts=8, top_k=2)
    block = ShardedMoEBlock(CONFIG, weights, Layout.ep(None))
    return {
        "experts": raises(ShardedMoEBlock, six, MoEWeights.random(six), Layout.ep(None)),
        "intermediate": raises(ShardedMoEBlock, odd, MoEWeights.random(odd), Layout.tp(None)),
        "weights_hidden": raises(ShardedMoEBlock, CONFIG, MoEWeights.random(wide), layout("tp")),
        "x_hidden": raises(block, torch.randn(3, 24)),
        "x_dtype": raises(block, torch.randn(3, 16, dtype=torch.bfloat16)),
        "manager": raises(make_manager, "deepep", Layout.ep(None), 8),
        "device": raises(make_manager, "agrs", Layout.ep(None), 8, "meta"),
        "other_layout": raises(
            ShardedMoEBlock, CONFIG, weights, Layout.tp(None), make_manager("agrs", layout("ep"), 8)
        ),
        "grid": raises(Layout.tp_ep, None, "moe_ep", "moe_tp"),
    }
