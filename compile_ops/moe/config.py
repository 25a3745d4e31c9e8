"""The shape and routing choices of an MoE block, validated once so later code can trust them."""

from __future__ import annotations

from dataclasses import dataclass

SCORINGS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class MoEConfig:
    """Sizes and routing of one MoE block.

    ``shared_intermediate=0`` means no shared expert. Every routed expert is a SiLU-gated MLP
    ``down(silu(gate(x)) * up(x))``; each token goes to its ``top_k`` best-scoring experts and the
    outputs are weighted by the (optionally renormalised) scores.
    """

    hidden: int
    intermediate: int
    experts: int
    top_k: int
    scoring: str = "softmax"
    renormalize: bool = True
    shared_intermediate: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "experts", "top_k"):
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
