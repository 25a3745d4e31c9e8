"""The sharded MoE block on a one-rank group, run inside the worker ranks: which collectives it
traces and calls, its output against the reference, and what GroupComm refuses there."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

import compile_ops
from compile_ops.moe import Layout, MoEBlock, MoEWeights, ShardedMoEBlock, mark_token_dim
from compile_ops.moe.comm import GroupComm

from .moe_workers import CONFIG, GraphRecorder, tokens
from .workers import raises

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
    reference); the collective ops of every ATen graph; the number of frames compiled."""
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
    return {"steps": steps, "collectives": found, "frames": counter.frame_count}


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


def one_rank_refusals():
    """Each bad argument at one rank: (GroupComm's error, the public op's error)."""
    comm = GroupComm(None, "test")
    x, counts = torch.randn(3, 4), torch.ones(3, dtype=torch.int64)
    ours_theirs = {
        "all_gatherv_entries": (
            lambda: comm.all_gatherv(x, [3, 0]),
            lambda: compile_ops.all_gatherv(x, [3, 0]),
        ),
        "all_gatherv_negative": (
            lambda: comm.all_gatherv(x, [-1]),
            lambda: compile_ops.all_gatherv(x, [-1]),
        ),
        "all_gatherv_rows": (
            lambda: comm.all_gatherv(x, [5]),
            lambda: compile_ops.all_gatherv(x, [5]),
        ),
        "reduce_scatterv_entries": (
            lambda: comm.reduce_scatterv(x, [3, 0]),
            lambda: compile_ops.reduce_scatterv(x, [3, 0]),
        ),
        "reduce_scatterv_rows": (
            lambda: comm.reduce_scatterv(x, [2]),
            lambda: compile_ops.reduce_scatterv(x, [2]),
        ),
        "all_to_all_entries": (
            lambda: comm.all_to_all(x, [3, 0], [3]),
            lambda: compile_ops.all_to_all(x, [3, 0], [3]),
        ),
        "all_to_all_input_rows": (
            lambda: comm.all_to_all(x, [3], [5]),
            lambda: compile_ops.all_to_all(x, [3], [5]),
        ),
        "all_to_all_output_negative": (
            lambda: comm.all_to_all(x, [-1], [3]),
            lambda: compile_ops.all_to_all(x, [-1], [3]),
        ),
        "exchange_counts_rows": (
            lambda: comm.exchange_counts(counts),
            lambda: compile_ops.all_to_all(counts, [1], [1]),
        ),
        "all_gather_scalar": (
            lambda: comm.all_gather(torch.tensor(1.0)),
            lambda: compile_ops.all_gather(torch.tensor(1.0)),
        ),
        "reduce_scatter_scalar": (
            lambda: comm.reduce_scatter(torch.tensor(1.0)),
            lambda: compile_ops.reduce_scatter(torch.tensor(1.0)),
        ),
        "all_reduce_device": (
            lambda: comm.all_reduce(torch.ones(2, device="meta")),
            None,  # the op refuses meta (no data) first; the one device gloo does not serve
        ),
        # The op leaves this one to the backend (gloo: "enforce fail ... alltoallv.cc").
        "all_to_all_output_rows": (lambda: comm.all_to_all(x, [5], [3]), None),
    }
    return {
        case: (raises(ours), theirs and raises(theirs))
        for case, (ours, theirs) in ours_theirs.items()
    }


def compiled_refusals():
    """Compiled at one rank: split sizes read from data that do not give x's rows fail at run
    time (never a silent result of the wrong shape); static ones are refused while tracing."""
    comm = GroupComm(None, "test")

    def exchange(x, counts):
        sent, received = counts.tolist()
        return comm.all_to_all(x, [received], [sent])

    def gather(x):
        return comm.all_gatherv(x, [x.shape[0] + 1])

    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(exchange, backend="aot_eager", fullgraph=True)
        x = torch.randn(3, 4)
        good = compiled(x, torch.tensor([3, 3]))
        return {
            "good": torch.equal(good, x),
            "data": raises(compiled, x, torch.tensor([3, 2])),
            "static": raises(torch.compile(gather, backend="aot_eager", fullgraph=True), x),
        }
