"""Graph-capture functions that run inside the worker ranks (module level, so they pickle)."""

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F

import compile_ops
from compile_ops.graph_capture import (
    capture,
    capture_sizes,
    check_capturable,
    graph_capture,
    is_capturing,
)

from .workers import raises


def _device() -> torch.device:
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def full_weights(hidden: int, ffn: int, device, seed: int = 0):
    """The unsharded up and down projections, the same on every rank."""
    g = torch.Generator(device).manual_seed(seed)
    up = torch.randn(ffn, hidden, generator=g, device=device) / hidden**0.5
    down = torch.randn(hidden, ffn, generator=g, device=device) / ffn**0.5
    return up, down


def reference_mlp(x, up, down):
    return F.silu(x @ up.T) @ down.T


class TPMLP(torch.nn.Module):
    """Column-parallel up projection, row-parallel down projection, one all_reduce."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor, group=None):
        super().__init__()
        pg = compile_ops.resolve_group(group)
        n, rank = pg.size(), pg.rank()
        self.up = torch.nn.Parameter(up.chunk(n, 0)[rank].clone(), requires_grad=False)
        self.down = torch.nn.Parameter(down.chunk(n, 1)[rank].clone(), requires_grad=False)
        self.group = group

    def forward(self, x):
        return compile_ops.all_reduce(F.silu(x @ self.up.T) @ self.down.T, group=self.group)


def _inputs(n: int, hidden: int, device, seed: int) -> torch.Tensor:
    # Seeded, so every rank of a tensor-parallel group feeds the same tokens.
    return torch.randn(
        n, hidden, generator=torch.Generator(device).manual_seed(seed), device=device
    )


def replay_matches_eager(hidden: int, ffn: int, sizes: list[int], rounds: int):
    """Capture a compiled TP MLP per size, replay each ``rounds`` times on fresh inputs.

    Returns per replay (size, replay output, eager output, single-device reference) and the
    number of distinct memory pools the graphs use. Each output is read before the next replay:
    graphs sharing a pool may overwrite each other's outputs (see docs/graph_capture.md).
    """
    torch._dynamo.reset()
    device = _device()
    up, down = full_weights(hidden, ffn, device)
    model = TPMLP(up, down)
    compiled = torch.compile(model, fullgraph=True)
    graphs = capture_sizes(
        compiled, sizes, lambda n: (_inputs(n, hidden, device, seed=-n),), groups=[None]
    )
    replays = []
    for r in range(rounds):
        order = sizes[r % len(sizes) :] + sizes[: r % len(sizes)]  # interleave the graphs
        for n in order:
            x = _inputs(n, hidden, device, seed=1000 * r + n)
            out = graphs[n](x)
            with torch.no_grad():
                replays.append((n, out.clone(), model(x), reference_mlp(x, up, down)))
    pools = {graph.graph.pool() for graph in graphs.values()}
    return {"replays": replays, "pools": len(pools)}


def pool_bytes(hidden: int, ffn: int, sizes: list[int]):
    """Memory reserved for graphs of every size: in one shared pool, then in a pool each."""
    torch._dynamo.reset()
    device = _device()
    compiled = torch.compile(TPMLP(*full_weights(hidden, ffn, device)), fullgraph=True)

    def make(n):
        return (_inputs(n, hidden, device, seed=n),)

    def reserved() -> int:
        torch.accelerator.synchronize()
        gc.collect()
        torch.accelerator.empty_cache()
        return torch.accelerator.memory_reserved()

    # Compile every size and set up the capture stream (cuBLAS workspace etc.) beforehand, so
    # that the two measurements differ only in how the graphs' pools are laid out.
    capture_sizes(compiled, sizes, make, groups=[None])
    base = reserved()
    shared = capture_sizes(compiled, sizes, make, groups=[None], warmup=1)
    shared_bytes = reserved() - base
    del shared
    base = reserved()
    separate = [capture(compiled, *make(n), groups=[None], warmup=1) for n in sorted(sizes)[::-1]]
    separate_bytes = reserved() - base
    del separate
    return shared_bytes, separate_bytes


def stream_and_status():
    """What graph_capture does to the current stream, and what is_capturing reports."""
    device = _device()
    before = torch.accelerator.current_stream(device)
    seen = []

    def double(x):
        seen.append(is_capturing())
        return x * 2

    x = torch.randn(4, device=device)
    with graph_capture(groups=[None]) as ctx:
        inside = torch.accelerator.current_stream(device) == ctx.stream
        graph = ctx.capture(double, x, warmup=1)
    restored = torch.accelerator.current_stream(device) == before
    late = raises(ctx.capture, double, x)
    new = torch.randn(4, device=device)
    out = graph(new).clone()
    return {
        "side_stream": ctx.stream.stream_id != before.stream_id,
        "inside": inside,
        "restored": restored,
        "seen": seen,
        "outside": is_capturing(),
        "device": str(ctx.device),
        "late": late,
        "out": out,
        "expected": new * 2,
    }


def gloo_refusals():
    """check_capturable and graph_capture on gloo groups (the default one and two others)."""
    ranks = list(range(dist.get_world_size()))
    cpu_only = dist.new_group(ranks, backend="cpu:gloo")
    cuda_gloo = dist.new_group(ranks, backend="cuda:gloo")
    try:
        return {
            "default": raises(check_capturable, None, "cuda"),
            "cpu_only": raises(check_capturable, cpu_only, "cuda"),
            "cuda_gloo": raises(check_capturable, cuda_gloo, "cuda"),
            "xpu": raises(check_capturable, None, "xpu"),
            "context": raises(_enter_graph_capture, [None]),
            "capturing": is_capturing(),
        }
    finally:
        dist.destroy_process_group(cpu_only)
        dist.destroy_process_group(cuda_gloo)


def _enter_graph_capture(groups):
    with graph_capture(groups=groups):
        pass


def moe_replay_matches_eager(manager: str, sizes: list[int], rounds: int):
    """Capture the compiled expert-parallel MoE block (world 1, bf16) per size and replay it on
    fresh tokens; per replay (size, replay output, eager output, single-device reference).

    Only managers that never read a count back to the host can be captured; at world 1 those
    are naive and agrs (see docs/graph_capture.md).
    """
    from .moe_workers import CONFIG, _block

    torch._dynamo.reset()
    device = _device()
    block, reference = _block(manager, "ep", torch.bfloat16, CONFIG, debug=False, device=device)
    compiled = torch.compile(block, fullgraph=True)

    def make(n, seed):
        return (_inputs(n, CONFIG.hidden, device, seed).to(torch.bfloat16),)

    graphs = capture_sizes(compiled, sizes, lambda n: make(n, -n), groups=[None])
    replays = []
    for r in range(rounds):
        for n in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
            (x,) = make(n, 1000 * r + n)
            out = graphs[n](x).clone()
            with torch.no_grad():
                replays.append((n, out, block(x), reference(x)))
    return replays


def _capacity_block(manager: str, kind: str, capacity: int, per_peer=None):
    """A compiled capacity-mode block (bf16) on this rank's device, its eager self, the
    reference and the layout."""
    from compile_ops.moe import MoEBlock, MoEWeights, ShardedMoEBlock

    from .moe_workers import CONFIG, layout

    torch._dynamo.reset()
    lay = layout(kind)
    weights = MoEWeights.random(CONFIG, seed=7, dtype=torch.bfloat16, device=_device())
    block = ShardedMoEBlock(
        CONFIG, weights, lay, manager, max_tokens_per_rank=capacity, max_tokens_per_peer=per_peer
    )
    return torch.compile(block, fullgraph=True), block, MoEBlock(CONFIG, weights), lay


def _bf16_tokens(size: int, seed: int) -> tuple[torch.Tensor]:
    from .moe_workers import CONFIG

    return (_inputs(size, CONFIG.hidden, _device(), seed).to(torch.bfloat16),)


def moe_capacity_replays(manager: str, kind: str, sizes: list[int], rounds: int):
    """The compiled capacity-mode block (bf16, max_tokens_per_rank = the largest size) captured
    per size on every rank, then replayed with fresh tokens, ranks replaying *different* sizes
    in the same step (the collectives move capacity-sized buffers, whatever the token count).

    Returns per replay (size, replay output, eager output, single-device reference rows), and
    the all_to_all manager's ``dropped`` counter after the replays (0 for the others).
    """
    rank, n = dist.get_rank(), dist.get_world_size()
    compiled, block, reference, lay = _capacity_block(manager, kind, max(sizes))
    graphs = capture_sizes(compiled, sizes, lambda s: _bf16_tokens(s, -s), groups=[lay.group])
    replays = []
    for r in range(rounds):
        for i in range(len(sizes)):
            # Rank q replays size sizes[(i + q) % len]: every rank a different one.
            counts = [sizes[(i + q) % len(sizes)] for q in range(n)]
            xs = [_bf16_tokens(counts[q], 10_000 * r + 100 * i + q)[0] for q in range(n)]
            out = graphs[counts[rank]](xs[rank]).clone()
            with torch.no_grad():
                eager = block(xs[rank])
                start = sum(counts[:rank])
                want = reference(torch.cat(xs))[start : start + counts[rank]]
            replays.append((counts[rank], out, eager, want))
    return replays


def moe_capacity_dropped(capacity: int, per_peer: int, rounds: int):
    """The all_to_all block (EP) with a tight ``max_tokens_per_peer``, captured for
    ``capacity`` tokens and replayed on fresh tokens: (the manager's ``dropped`` counter after
    the replays, the sends past the per-peer buffers counted from the routing)."""
    from compile_ops.moe import compute

    from .moe_workers import CONFIG

    compiled, block, _, lay = _capacity_block("all_to_all", "ep", capacity, per_peer)
    graph = capture_sizes(compiled, [capacity], lambda s: _bf16_tokens(s, -s), groups=[lay.group])
    block.manager.reset_dropped()  # the warm-up calls ran and counted too
    lost = 0
    for r in range(rounds):
        (x,) = _bf16_tokens(capacity, 1000 * r + dist.get_rank())
        graph[capacity](x)
        _, ids = compute.route(x, block.router, CONFIG)
        wanted = block.manager.owners[ids].any(1)
        lost += int((wanted.sum(0) - per_peer).clamp(min=0).sum())
    return int(block.manager.dropped), lost
