"""The module panel for the realize-on-reuse patch: blocks where Inductor must choose between
storing a reused value and recomputing it, and a decoder stack where that choice compounds.

Used by ``benchmarks/realize_on_reuse.py`` (LLM sizes on a GPU) and by the tests (tiny sizes on
CPU: the patch's decisions depend on byte ratios, not on absolute sizes). Importing this module
defines the ``realize_panel::attention`` custom op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("realize_panel::attention", mutates_args=())
def attention(qkv: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Causal attention over packed q|k|v rows; opaque to Inductor like a vLLM attention op."""
    tokens = qkv.shape[0]
    head_dim = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
    q, k, v = qkv.split(
        [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1
    )
    group = num_heads // num_kv_heads  # KV heads repeated: every SDPA backend takes it
    # 4-D (batch 1) inputs, so SDPA can pick its flash kernel rather than the O(n^2) math path.
    q = q.reshape(1, tokens, num_heads, head_dim).transpose(1, 2)
    k = k.reshape(1, tokens, num_kv_heads, head_dim).transpose(1, 2).repeat_interleave(group, 1)
    v = v.reshape(1, tokens, num_kv_heads, head_dim).transpose(1, 2).repeat_interleave(group, 1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(tokens, num_heads * head_dim)


@attention.register_fake
def _(qkv: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    head_dim = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
    return qkv.new_empty(qkv.shape[0], num_heads * head_dim)


ATTENTION = torch.ops.realize_panel.attention.default


@dataclass(frozen=True)
class Sizes:
    hidden: int = 4096
    mlp: int = 14336
    heads: int = 32
    kv_heads: int = 8
    experts: int = 128
    top_k: int = 8
    layers: int = 8
    dtype: torch.dtype = torch.bfloat16
    device: str = "cpu"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


TINY = Sizes(hidden=64, mlp=128, heads=4, kv_heads=2, experts=16, top_k=4, layers=8)


def _weight(sizes: Sizes, *shape: int) -> nn.Parameter:
    w = torch.randn(*shape, device=sizes.device) * shape[-1] ** -0.5  # made on the device: fast
    return nn.Parameter(w.to(sizes.dtype), requires_grad=False)


def _norm_weight(sizes: Sizes) -> nn.Parameter:
    w = 1 + 0.1 * torch.randn(sizes.hidden, device=sizes.device)
    return nn.Parameter(w.to(sizes.dtype), requires_grad=False)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's native fused-add RMSNorm: fp32 add, residual kept in the model dtype.

    The add promotes ``residual`` itself: an explicit ``.to(float32)`` would let Inductor fold
    the bf16 round trip of the residual away and change the numerics.
    """
    orig_dtype = x.dtype
    x = x.to(torch.float32)
    if residual is not None:
        x = x + residual
    residual = x.to(orig_dtype)
    variance = x.pow(2).mean(dim=-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return x.to(orig_dtype) * weight, residual


class RMSNormResidual(nn.Module):
    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.weight = _norm_weight(sizes)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor):
        return add_rms_norm(hidden, residual, self.weight)


class SiluMLP(nn.Module):
    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.gate_up = _weight(sizes, 2 * sizes.mlp, sizes.hidden)
        self.down = _weight(sizes, sizes.hidden, sizes.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down)


class BroadcastScale(nn.Module):
    """A per-channel scale computed once and broadcast into several consumers."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.gate = _norm_weight(sizes)
        self.bias = _norm_weight(sizes)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        scale = torch.sigmoid(self.gate.float()) * self.bias.float()
        return (x * scale).to(x.dtype), (y * scale).to(x.dtype), ((x - y) * scale).to(x.dtype)


class MoERouter(nn.Module):
    """Router logits, softmax, top-k, renormalised weights (Mixtral/Qwen-MoE style)."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.gate = _weight(sizes, sizes.experts, sizes.hidden)
        self.top_k = sizes.top_k

    def forward(self, x: torch.Tensor):
        probs = torch.softmax(F.linear(x, self.gate), dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), ids


class ChainReductions(nn.Module):
    """One pointwise chain read by reductions along both axes (row stats, per-channel absmax)."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.scale, self.shift = _norm_weight(sizes), _norm_weight(sizes)

    def forward(self, x: torch.Tensor, z: torch.Tensor):
        y = F.gelu(x.float() * self.scale + z.float() + self.shift)
        return y.sum(-1), y.amax(-1), y.pow(2).mean(-1), y.abs().amax(0)


class DecoderLayer(nn.Module):
    """vLLM-style layer: takes and returns (hidden, residual); attention is an opaque op."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        qkv_out = (sizes.heads + 2 * sizes.kv_heads) * sizes.head_dim
        self.input_norm = _norm_weight(sizes)
        self.qkv = _weight(sizes, qkv_out, sizes.hidden)
        self.o = _weight(sizes, sizes.hidden, sizes.heads * sizes.head_dim)
        self.post_norm = _norm_weight(sizes)
        self.mlp = SiluMLP(sizes)
        self.heads, self.kv_heads = sizes.heads, sizes.kv_heads

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None):
        hidden, residual = add_rms_norm(hidden, residual, self.input_norm)
        hidden = attention(F.linear(hidden, self.qkv), self.heads, self.kv_heads)
        hidden, residual = add_rms_norm(F.linear(hidden, self.o), residual, self.post_norm)
        return self.mlp(hidden), residual


class DecoderStack(nn.Module):
    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(sizes) for _ in range(sizes.layers))
        self.norm = _norm_weight(sizes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        return add_rms_norm(hidden, residual, self.norm)[0]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Sizes], nn.Module]
    num_inputs: int

    def module(self, sizes: Sizes, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build(sizes).eval()

    def inputs(self, sizes: Sizes, tokens: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        return tuple(
            torch.randn(tokens, sizes.hidden, generator=g).to(sizes.device, sizes.dtype)
            for _ in range(self.num_inputs)
        )


PANEL = {
    c.name: c
    for c in (
        Case("rmsnorm_residual", RMSNormResidual, 2),
        Case("silu_mlp", SiluMLP, 1),
        Case("broadcast_scale", BroadcastScale, 2),
        Case("moe_router", MoERouter, 1),
        Case("chain_reductions", ChainReductions, 2),
        Case("decoder_stack", DecoderStack, 1),
    )
}
