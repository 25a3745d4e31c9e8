"""Decoder stacks of real model families, built by ``transformers`` with tiny configs.

Each family's own modelling code (attention, rotary embedding, RMSNorm, MLP or MoE experts) runs
with random weights drawn here, so no checkpoint is needed: what a compiler pass may change is the
structure of the graph (shared residuals, norms, casts, routing), not the weights' values. Used
to check Inductor patches against eager and unpatched compilation. Needs ``transformers`` (in the
``test`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# Small enough to compile on a CPU in seconds, large enough that every dimension differs.
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 128, 4, 2, 16, 128


@dataclass(frozen=True)
class Family:
    name: str
    config: str  # the transformers config class
    model: str  # the transformers base model class (decoder stack without the LM head)
    extra: dict = field(default_factory=dict)


FAMILIES = {
    f.name: f
    for f in (
        Family("llama", "LlamaConfig", "LlamaModel"),
        Family("qwen2", "Qwen2Config", "Qwen2Model"),
        Family(
            "mixtral",
            "MixtralConfig",
            "MixtralModel",
            {"num_local_experts": 4, "num_experts_per_tok": 2},
        ),
        # Routed experts beside a shared expert behind a sigmoid gate.
        Family(
            "qwen2_moe",
            "Qwen2MoeConfig",
            "Qwen2MoeModel",
            {
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 32,
                "shared_expert_intermediate_size": 64,
                "decoder_sparse_step": 1,
                "mlp_only_layers": [],
            },
        ),
    )
}


class DecoderStack(nn.Module):
    """A family's base model as a function of token ids: ids -> last hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).last_hidden_state


def build(family: str, dtype: torch.dtype, layers: int = 2, seed: int = 0) -> DecoderStack:
    """The family's decoder stack with random weights, in eval mode, on the CPU."""
    import transformers

    spec = FAMILIES[family]
    config = getattr(transformers, spec.config)(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        **spec.extra,
    )
    config._attn_implementation = "sdpa"
    model = getattr(transformers, spec.model)(config)
    _randomize(model, seed)
    return DecoderStack(model).to(dtype).eval()


def _randomize(model: nn.Module, seed: int) -> None:
    """Unit-scale activations: matrices ~ N(0, 1/fan_in), norm scales 1 +- 0.1, biases ~ 0.1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if p.dim() > 1:
                p.copy_(noise * p.shape[-1] ** -0.5)
            else:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * noise)


def input_ids(tokens: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, tokens), generator=g)
