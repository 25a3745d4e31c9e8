"""Rank-side functions for the Inductor patch tests (module level, so they pickle by reference)."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import compile_ops
import inductor_patches
from compile_ops.testing import codegen, realize_panel
from inductor_patches.realize_on_reuse import decisions


def _shard(w: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    return w.chunk(world, dim)[rank].contiguous()


def tp_stack_with_patch(layers: int, tokens: int) -> dict:
    """A tensor-parallel vLLM-style stack (row-parallel projections end in compile_ops.all_reduce),
    eager and compiled with realize_on_reuse on: the patch must compose with the reinplacing of
    all_reduce into all_reduce_ that compile_ops teaches Inductor."""
    rank, world = dist.get_rank(), dist.get_world_size()
    s = realize_panel.TINY
    heads, kv_heads, d = s.heads // world, s.kv_heads // world, s.head_dim
    torch.manual_seed(0)  # the same full weights everywhere; each rank keeps its shard
    params = []
    for _ in range(layers):
        q, k, v = (
            torch.randn(n * d, s.hidden) * s.hidden**-0.5 for n in (s.heads, s.kv_heads, s.kv_heads)
        )
        gate, up = (torch.randn(s.mlp, s.hidden) * s.hidden**-0.5 for _ in range(2))
        params.append(
            {
                "ln1": 1 + 0.1 * torch.randn(s.hidden),
                "ln2": 1 + 0.1 * torch.randn(s.hidden),
                "qkv": torch.cat([_shard(w, 0, rank, world) for w in (q, k, v)]),
                "o": _shard(torch.randn(s.hidden, s.heads * d) * s.hidden**-0.5, 1, rank, world),
                "gate_up": torch.cat([_shard(w, 0, rank, world) for w in (gate, up)]),
                "down": _shard(torch.randn(s.hidden, s.mlp) * s.mlp**-0.5, 1, rank, world),
            }
        )
    params = [{k: v.to(s.dtype) for k, v in p.items()} for p in params]
    final = (1 + 0.1 * torch.randn(s.hidden)).to(s.dtype)
    x = torch.randn(tokens, s.hidden).to(s.dtype)

    def forward(h):
        residual = None
        for p in params:
            h, residual = realize_panel.add_rms_norm(h, residual, p["ln1"])
            h = realize_panel.attention(F.linear(h, p["qkv"]), heads, kv_heads)
            h = compile_ops.all_reduce(F.linear(h, p["o"]))
            h, residual = realize_panel.add_rms_norm(h, residual, p["ln2"])
            gate, up = F.linear(h, p["gate_up"]).chunk(2, -1)
            h = compile_ops.all_reduce(F.linear(F.silu(gate) * up, p["down"]))
        return realize_panel.add_rms_norm(h, residual, final)[0]

    patch = inductor_patches.get("realize_on_reuse")
    was_applied = patch.is_applied()
    patch.apply()
    decisions.reset()
    try:
        with torch._inductor.config.patch(fx_graph_cache=False):
            torch._dynamo.reset()
            compiled, codes = run_and_get_code(torch.compile(forward, fullgraph=True), x)
    finally:
        if not was_applied:
            patch.revert()
    return {
        "eager": forward(x),
        "compiled": compiled,
        "decisions": decisions.counts(),
        "norm_loads": codegen.norm_loads(codes),
        "inplace_all_reduces": sum(c.count("compile_ops.all_reduce_.default(") for c in codes),
    }
