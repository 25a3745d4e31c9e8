"""Rank-side functions for the Inductor patch tests (module level, so they pickle by reference)."""

import contextlib
import os

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
    patch.resolve_pending()  # a patch waiting for Inductor's import is applied, and restored so
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


def realize_state(reset: bool) -> dict:
    """Whether this rank compiles with realize_on_reuse, and its decisions since the last reset."""
    (row,) = [r for r in inductor_patches.status() if r.name == "realize_on_reuse"]
    state = {"applied": row.state == "applied", "row": tuple(row), "decisions": decisions.counts()}
    if reset:
        decisions.reset()
    return state


def set_fx_graph_cache(enabled: bool) -> bool:
    """Turn Inductor's FX graph cache on or off in this rank; returns the previous setting. Off,
    every program is lowered again, so the patched rule is consulted even for a graph that an
    earlier run left in the cache."""
    previous = torch._inductor.config.fx_graph_cache
    torch._inductor.config.fx_graph_cache = enabled
    return previous


# ---------------------------------------------------------------- sequence parallelism, async TP

SP_FUSED_OPS = ("fused_all_gather_matmul", "fused_matmul_reduce_scatter")
SP_COLLECTIVES = (
    "_c10d_functional.all_gather_into_tensor",
    "_c10d_functional.reduce_scatter_tensor",
    "compile_ops.all_gather",
    "compile_ops.reduce_scatter",
)


def _sp_params(hidden: int, ffn: int, layers: int, device: str) -> list[dict]:
    """The same full weights on every rank; each keeps its column / row shard."""
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    params = []
    for _ in range(2 * layers):  # an attention-like and an MLP-like sublayer per layer
        up = torch.randn(hidden, ffn, generator=g) * hidden**-0.5
        down = torch.randn(ffn, hidden, generator=g) * ffn**-0.5
        params.append(
            {
                "norm": 1 + 0.1 * torch.randn(hidden, generator=g),
                "up": _shard(up, 1, rank, world),  # column-parallel
                "down": _shard(down, 0, rank, world),  # row-parallel
            }
        )
    final = 1 + 0.1 * torch.randn(hidden, generator=g)
    return [{k: v.to(device, torch.bfloat16) for k, v in p.items()} for p in params] + [
        {"norm": final.to(device, torch.bfloat16)}
    ]


def _sp_forward(collectives: str, params: list[dict]):
    """Sequence-parallel stack: reduce_scatter -> add+RMSNorm -> all_gather around matmuls."""
    import torch.distributed._functional_collectives as funcol

    group = dist.group.WORLD
    if collectives == "funcol":  # what Inductor's async-TP pass matches

        def all_gather(x):
            return funcol.all_gather_tensor(x, 0, group)

        def reduce_scatter(x):
            return funcol.reduce_scatter_tensor(x, "sum", 0, group)
    else:
        all_gather = compile_ops.all_gather  # dim 0, default group
        reduce_scatter = compile_ops.reduce_scatter

    def forward(x_shard):
        h, residual = x_shard, None
        for p in params[:-1]:
            h, residual = realize_panel.add_rms_norm(h, residual, p["norm"])
            full = all_gather(h)  # [T, H]
            act = F.silu(torch.matmul(full, p["up"]))  # column-parallel: [T, F/n]
            h = reduce_scatter(torch.matmul(act, p["down"]))  # row-parallel, then [T/n, H]
        return realize_panel.add_rms_norm(h, residual, params[-1]["norm"])[0]

    return forward


def _fused_and_collective_counts(codes: list[str]) -> dict:
    text = "\n".join(codes)
    return {name: text.count(f"{name}.default(") for name in SP_FUSED_OPS + SP_COLLECTIVES}


def sequence_parallel_patch_on_off(
    collectives: str, async_tp: bool, tokens: int, hidden: int, ffn: int, layers: int
) -> dict:
    """Eager, and compiled with realize_on_reuse off and on (``async_tp``: Inductor's
    micro-pipeline TP pass on, symmetric memory enabled for the group; on the CPU, torch's
    test mode of symmetric memory, whose fused ops run as all_gather/reduce_scatter + matmul).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    device = _rank_device()
    symmetric_memory = contextlib.nullcontext  # a fresh context for each compilation
    if async_tp and device.type == "cpu":
        symmetric_memory = _symmetric_memory_test_mode_on_cpu
    elif async_tp:
        from torch.distributed._symmetric_memory import enable_symm_mem_for_group

        _refuse_multicast(device)
        enable_symm_mem_for_group(dist.group.WORLD.group_name)
    forward = _sp_forward(collectives, _sp_params(hidden, ffn, layers, device))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
    x_shard = _shard(x, 0, rank, world).to(device)
    patch = inductor_patches.get("realize_on_reuse")
    result = {"eager": forward(x_shard)}
    for way, on in (("off", False), ("on", True)):
        decisions.reset()
        torch._dynamo.reset()
        with (
            patch.switched(on),
            symmetric_memory(),
            torch._inductor.config.patch(fx_graph_cache=False, _micro_pipeline_tp=async_tp),
        ):
            out, codes = run_and_get_code(torch.compile(forward, fullgraph=True), x_shard)
        result[way] = out
        result[f"{way}_counts"] = _fused_and_collective_counts(codes)
        result[f"{way}_decisions"] = decisions.counts()
    return result


def symmetric_memory_probe(rows: int, hidden: int) -> dict:
    """Run the fused all_gather + matmul op eagerly on a small problem; report what failed."""
    from torch.distributed._symmetric_memory import enable_symm_mem_for_group

    group_name = dist.group.WORLD.group_name
    device = _rank_device()
    _refuse_multicast(device)
    g = torch.Generator().manual_seed(dist.get_rank())
    a = torch.randn(rows, hidden, generator=g).to(device, torch.bfloat16)
    b = torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(7))
    b = b.to(device, torch.bfloat16)
    enable_symm_mem_for_group(group_name)
    _, (fused,) = torch.ops.symm_mem.fused_all_gather_matmul(a, [b], 0, group_name)
    full = torch.empty(rows * dist.get_world_size(), hidden, device=device, dtype=a.dtype)
    dist.all_gather_into_tensor(full, a)
    return {"max_diff": (fused.float() - (full @ b).float()).abs().max().item()}


def _rank_device() -> torch.device:
    if dist.get_backend() == "gloo":
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator()
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
MULTICAST_OFF["NVSHMEM_DISABLE_NVLS"] = "1"


def _refuse_multicast(device: torch.device) -> None:
    """NVLink multicast must stay off (a program using it can take a shared host's GPUs down)."""
    from torch._C._autograd import DeviceType
    from torch.distributed._symmetric_memory import _SymmetricMemory

    wrong = {k: os.environ.get(k) for k, v in MULTICAST_OFF.items() if os.environ.get(k) != v}
    if wrong or _SymmetricMemory.has_multicast_support(DeviceType.CUDA, device.index):
        raise RuntimeError(f"NVLink multicast is not off here ({wrong or 'supported'}); not run")


_cpu_symm_mem_lib = None


def _symmetric_memory_test_mode_on_cpu():
    """The async-TP pass matches and rewrites the graph as on a GPU; the fused ops run through
    torch's own reference implementations (its test mode), registered here for the CPU."""
    global _cpu_symm_mem_lib
    import torch.distributed._symmetric_memory as symm_mem

    if _cpu_symm_mem_lib is None:
        _cpu_symm_mem_lib = torch.library.Library("symm_mem", "IMPL")
        for op, fn in (
            ("fused_all_gather_matmul", symm_mem._fused_all_gather_matmul_fallback),
            ("fused_matmul_reduce_scatter", symm_mem._fused_matmul_reduce_scatter_fallback),
        ):
            _cpu_symm_mem_lib.impl(op, fn, "CPU")
    return symm_mem._test_mode()
