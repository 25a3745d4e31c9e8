"""The sharded MoE block on a one-rank group, run inside the worker ranks: which collectives it
traces and calls, its output against the reference."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from compile_ops.moe import Layout, MoEBlock, MoEWeights, ShardedMoEBlock, mark_token_dim

from .moe_workers import CONFIG, GraphRecorder, tokens

# The namespaces of the collective ops a graph could hold: ours, and torch's functional
# collectives (what ours become under compile_ops.use_functional_collectives).
COLLECTIVE_NAMESPACES = ("compile_ops::", "_c10d_functional::")


def _is_collective(op) -> bool:
    schema = getattr(op, "_schema", None)
    return schema is not None and schema.name.startswith(COLLECTIVE_NAMESPACES)


def one_rank_layout(kind: str) -> Layout:
    """The layouts a one-rank group has: tp, ep and the 1 x 1 grid (the group for both axes)."""
    if kind == "tp_ep":
        return Layout.tp_ep(None, tp=None, ep=None)
    return Layout.tp(None) if kind == "tp" else Layout.ep(None)


def _block(manager: str, kind: str, capacity: int | None):
    weights = MoEWeights.random(CONFIG, seed=7)
    block = ShardedMoEBlock(
        CONFIG, weights, one_rank_layout(kind), manager, debug=True, max_tokens_per_rank=capacity
    )
    return block, MoEBlock(CONFIG, weights)


def compiled_block(manager: str, kind: str, capacity: int | None, counts: list[int]):
    """The block with ``debug=True`` (the reduce-contract check in the graph) compiled with
    ``fullgraph=True`` and the token dim unbacked: per call of ``counts`` tokens, (output,
    reference); the collective ops of every ATen graph; its host reads; the number of frames
    compiled."""
    from torch._dynamo.testing import CompileCounterWithBackend

    block, ref = _block(manager, kind, capacity)
    recorder = GraphRecorder()
    counter = CompileCounterWithBackend(recorder)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    steps = []
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        for step, n in enumerate(counts):
            (x,) = tokens([n], torch.float32, step)
            steps.append((compiled(mark_token_dim(x.clone())), ref(x)))
    found = [
        node.format_node()
        for gm in recorder.aten
        for node in gm.graph.nodes
        if _is_collective(node.target)
    ]
    reads = recorder.host_reads()
    return {
        "steps": steps,
        "collectives": found,
        "host_reads": reads,
        "frames": counter.frame_count,
    }


class _CollectivesCalled(TorchDispatchMode):
    """Records the name of every collective op that runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.called: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_collective(func):
            self.called.append(func._schema.name.split("::")[1])
        return func(*args, **(kwargs or {}))


def eager_collectives(managers: list[str], capacities: list[int | None]):
    """Per (manager, capacity): the collective ops one eager EP block call runs (construction
    excluded), its output and the reference rows of this rank."""
    rank, n = dist.get_rank(), dist.get_world_size()
    counts = [3 + r for r in range(n)]
    xs = tokens(counts, torch.float32)
    results = {}
    for manager in managers:
        for capacity in capacities:
            block, ref = _block(manager, "ep", capacity)
            with _CollectivesCalled() as mode:
                out = block(xs[rank])
            start = sum(counts[:rank])
            want = ref(torch.cat(xs))[start : start + counts[rank]]
            results[(manager, capacity)] = (sorted(set(mode.called)), out, want)
    return results


def block_and_stage_ops(impl: str) -> dict:
    """The ATen ops (name -> count) of the compiled one-rank block (EP, agrs) and of what it
    computes without a manager: routing, ``local_experts`` (as benchmarks/moe_experts.py times
    it) and the shared expert."""
    from collections import Counter

    from compile_ops.moe import compute

    block = ShardedMoEBlock(
        CONFIG, MoEWeights.random(CONFIG, seed=7), one_rank_layout("ep"), "agrs", experts_impl=impl
    )

    def stage(x):
        weights, ids = compute.route(x, block.router, block.config)
        y, _ = compute.local_experts(
            x, ids, weights, block.expert_ids, block.gate_up, block.down, block.experts_impl
        )
        shared = compute.shared_expert(x, block)
        return y.to(x.dtype) if shared is None else y.to(x.dtype) + shared

    found = {}
    for name, fn in (("block", block), ("stage", stage)):
        recorder = GraphRecorder()
        torch._dynamo.reset()
        with torch._dynamo.config.patch(capture_scalar_outputs=True):
            (x,) = tokens([9], torch.float32, 0)
            torch.compile(fn, backend=recorder, fullgraph=True)(mark_token_dim(x))
        ops = Counter(
            str(node.target)
            for gm in recorder.aten
            for node in gm.graph.nodes
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
        )
        found[name] = dict(ops)
    return found
