"""The shape and routing choices of an MoE block, validated once so later code can trust them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCORINGS = ("softmax", "sigmoid")
GROUP_SCORES = ("max", "top2_sum")


@dataclass(frozen=True)
class MoEConfig:
    """Sizes and routing of one MoE block.

    Every routed expert is a SiLU-gated MLP ``down(silu(gate(x)) * up(x))``. Routing, in float32:
    scores are the softmax or sigmoid of the router logits; ``router_bias`` adds a learned bias
    [E] to the scores for *choosing* experts only (DeepSeek-V3); with ``expert_groups > 1`` a
    token may only pick experts of its ``topk_groups`` best groups, a group scoring its best
    expert (``group_score="max"``, DeepSeek-V2) or the sum of its best two (``"top2_sum"``,
    DeepSeek-V3); the ``top_k`` chosen experts are weighted by their (unbiased) scores,
    optionally renormalised to sum to 1, times ``routed_scaling``.

    ``shared_intermediate=0`` means no shared expert; ``shared_expert_gate`` scales the shared
    expert's output by ``sigmoid(x @ shared_expert_gate.T)`` per token (Qwen2-MoE).
    :meth:`from_transformers` reads these from a ``transformers`` config.
    """

    hidden: int
    intermediate: int
    experts: int
    top_k: int
    scoring: str = "softmax"
    renormalize: bool = True
    shared_intermediate: int = 0
    shared_expert_gate: bool = False
    router_bias: bool = False
    expert_groups: int = 1
    topk_groups: int = 1
    group_score: str = "max"
    routed_scaling: float = 1.0

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "experts", "top_k", "expert_groups", "topk_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"compile_ops.moe: {name}={value!r} must be a positive int")
        if self.top_k > self.experts:
            raise ValueError(
                f"compile_ops.moe: top_k={self.top_k} is larger than experts={self.experts}; "
                "a token cannot be routed to more experts than exist"
            )
        if self.scoring not in SCORINGS:
            raise ValueError(f"compile_ops.moe: scoring={self.scoring!r} is not one of {SCORINGS}")
        if not isinstance(self.shared_intermediate, int) or self.shared_intermediate < 0:
            raise ValueError(
                f"compile_ops.moe: shared_intermediate={self.shared_intermediate!r} must be an "
                "int >= 0 (0: no shared expert)"
            )
        if self.shared_expert_gate and not self.shared_intermediate:
            raise ValueError(
                "compile_ops.moe: shared_expert_gate=True needs a shared expert "
                "(shared_intermediate > 0)"
            )
        self._check_groups()

    def _check_groups(self) -> None:
        groups, picked = self.expert_groups, self.topk_groups
        if self.experts % groups:
            raise ValueError(
                f"compile_ops.moe: experts={self.experts} is not divisible by "
                f"expert_groups={groups}"
            )
        if picked > groups:
            raise ValueError(
                f"compile_ops.moe: topk_groups={picked} is larger than expert_groups={groups}"
            )
        if self.top_k > picked * (self.experts // groups):
            raise ValueError(
                f"compile_ops.moe: top_k={self.top_k} is larger than the {picked} allowed "
                f"groups of {self.experts // groups} experts hold (topk_groups={picked})"
            )
        if self.group_score not in GROUP_SCORES:
            raise ValueError(
                f"compile_ops.moe: group_score={self.group_score!r} is not one of {GROUP_SCORES}"
            )
        if groups > 1 and self.group_score == "top2_sum" and self.experts // groups < 2:
            raise ValueError(
                "compile_ops.moe: group_score='top2_sum' needs at least 2 experts per group"
            )

    @classmethod
    def from_transformers(cls, config: Any) -> MoEConfig:
        """The block of a ``transformers`` Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2 or
        DeepSeek-V3 config (its MoE layers). Anything this block does not compute the same way
        raises, naming the config field."""
        model_type = getattr(config, "model_type", None)
        if model_type not in _FAMILIES:
            raise ValueError(
                f"compile_ops.moe: model_type={model_type!r} is not supported; supported: "
                f"{sorted(_FAMILIES)}"
            )
        _require(config, "hidden_act", "silu")
        return cls(hidden=config.hidden_size, **_FAMILIES[model_type](config))


def _require(config: Any, field: str, *allowed: Any) -> None:
    got = getattr(config, field, allowed[0])
    if got not in allowed:
        only = " or ".join(f"{field}={v!r}" for v in allowed)
        raise ValueError(
            f"compile_ops.moe: {config.model_type} config with {field}={got!r} is not supported "
            f"(only {only})"
        )


def _mixtral(c: Any) -> dict[str, Any]:
    # router_jitter_noise only acts in training; the block is for inference.
    return {
        "intermediate": c.intermediate_size,
        "experts": c.num_local_experts,
        "top_k": c.num_experts_per_tok,
    }


def _qwen_moe(c: Any) -> dict[str, Any]:
    shared = getattr(c, "shared_expert_intermediate_size", 0) or 0
    return {
        "intermediate": c.moe_intermediate_size,
        "experts": c.num_experts,
        "top_k": c.num_experts_per_tok,
        "renormalize": bool(c.norm_topk_prob),
        "shared_intermediate": shared,
        "shared_expert_gate": bool(shared),
    }


def _deepseek_shared(c: Any) -> int:
    return c.moe_intermediate_size * (c.n_shared_experts or 0)


def _deepseek_v2(c: Any) -> dict[str, Any]:
    _require(c, "mlp_bias", False)
    # transformers' DeepseekV2 router never renormalises; the original code does when this is
    # set, so a config that sets it has no single meaning.
    _require(c, "norm_topk_prob", False)
    _require(c, "topk_method", "greedy", "group_limited_greedy")
    grouped = c.topk_method == "group_limited_greedy"
    return {
        "intermediate": c.moe_intermediate_size,
        "experts": c.n_routed_experts,
        "top_k": c.num_experts_per_tok,
        "renormalize": False,
        "shared_intermediate": _deepseek_shared(c),
        "expert_groups": c.n_group if grouped else 1,
        "topk_groups": c.topk_group if grouped else 1,
        "routed_scaling": float(c.routed_scaling_factor),
    }


def _deepseek_v3(c: Any) -> dict[str, Any]:
    return {
        "intermediate": c.moe_intermediate_size,
        "experts": c.n_routed_experts,
        "top_k": c.num_experts_per_tok,
        "scoring": "sigmoid",
        "renormalize": bool(c.norm_topk_prob),
        "shared_intermediate": _deepseek_shared(c),
        "router_bias": True,
        "expert_groups": c.n_group or 1,
        "topk_groups": c.topk_group or 1,
        "group_score": "top2_sum",
        "routed_scaling": float(c.routed_scaling_factor),
    }


_FAMILIES = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
}
