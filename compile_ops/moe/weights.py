"""One full set of MoE weights; sharded blocks take slices of it, so they equal the reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

from .config import MoEConfig
from .layout import Layout


@dataclass(frozen=True)
class MoEWeights:
    """Router ``[E, H]``; experts ``gate``/``up`` ``[E, I, H]`` and ``down`` ``[E, H, I]``;
    the shared expert (or None): ``shared_gate``/``shared_up`` ``[Is, H]``, ``shared_down``
    ``[H, Is]``; its sigmoid gate ``shared_expert_gate`` ``[1, H]`` (Qwen2-MoE); the router's
    score correction ``router_bias`` ``[E]`` (DeepSeek-V3).

    Expert and shared-expert weights share one dtype; ``router`` and ``router_bias`` may be
    float32 in a 16-bit model (checkpoints keep them so; routing is computed in float32).
    :meth:`from_transformers` takes them from a ``transformers`` MoE block or its state dict.
    """

    router: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    shared_gate: torch.Tensor | None = None
    shared_up: torch.Tensor | None = None
    shared_down: torch.Tensor | None = None
    shared_expert_gate: torch.Tensor | None = None
    router_bias: torch.Tensor | None = None

    @classmethod
    def random(
        cls,
        config: MoEConfig,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> MoEWeights:
        """Weights scaled so activations stay O(1) whatever the sizes."""
        g = torch.Generator().manual_seed(seed)
        h, i, e, s = config.hidden, config.intermediate, config.experts, config.shared_intermediate

        def randn(*shape: int, fan_in: int) -> torch.Tensor:
            w = torch.randn(shape, generator=g) / fan_in**0.5
            return w.to(dtype=dtype, device=device)

        shared = (
            {
                "shared_gate": randn(s, h, fan_in=h),
                "shared_up": randn(s, h, fan_in=h),
                "shared_down": randn(h, s, fan_in=s),
            }
            if s
            else {}
        )
        if config.shared_expert_gate:
            shared["shared_expert_gate"] = randn(1, h, fan_in=h)
        if config.router_bias:
            shared["router_bias"] = (0.1 * torch.randn(e, generator=g)).to(device=device)
        return cls(
            router=randn(e, h, fan_in=h),
            gate=randn(e, i, h, fan_in=h),
            up=randn(e, i, h, fan_in=h),
            down=randn(e, h, i, fan_in=i),
            **shared,
        )

    def check(self, config: MoEConfig) -> None:
        """Raise if any shape disagrees with ``config`` (e.g. weights of another hidden size)."""
        h, i, e, s = config.hidden, config.intermediate, config.experts, config.shared_intermediate
        want = {"router": (e, h), "gate": (e, i, h), "up": (e, i, h), "down": (e, h, i)}
        if s:
            want |= {"shared_gate": (s, h), "shared_up": (s, h), "shared_down": (h, s)}
        if config.shared_expert_gate:
            want["shared_expert_gate"] = (1, h)
        if config.router_bias:
            want["router_bias"] = (e,)
        for f in fields(self):
            t = getattr(self, f.name)
            if f.name not in want:
                if t is not None:
                    raise ValueError(
                        f"compile_ops.moe: weights have {f.name} but the config does not use it "
                        f"({_USED_WHEN[f.name]})"
                    )
                continue
            if t is None:
                raise ValueError(f"compile_ops.moe: weights lack {f.name} {want[f.name]}")
            if tuple(t.shape) != want[f.name]:
                raise ValueError(
                    f"compile_ops.moe: {f.name} has shape {tuple(t.shape)} but the config "
                    f"(hidden={h}, intermediate={i}, experts={e}, shared_intermediate={s}) "
                    f"needs {want[f.name]}"
                )
        dtypes = {
            getattr(self, f.name).dtype
            for f in fields(self)
            if getattr(self, f.name) is not None and f.name not in _ROUTING
        }
        if len(dtypes) != 1:
            raise ValueError(f"compile_ops.moe: weights mix dtypes {sorted(map(str, dtypes))}")

    def to(self, *args, **kwargs) -> MoEWeights:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(*args, **kwargs)
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def shard(self, config: MoEConfig, layout: Layout) -> MoEWeights:
        """This rank's slice: its EP slot's experts, its TP slice of their intermediate rows.

        Router and shared expert are small and stay whole on every rank.
        """
        self.check(config)
        layout.check_experts(config.experts)
        layout.check_intermediate(config.intermediate)
        experts = layout.local_experts(config.experts)
        rows = layout.local_rows(config.intermediate)
        picked = slice(experts.start, experts.stop)
        return replace(
            self,
            gate=self.gate[picked, rows].contiguous(),
            up=self.up[picked, rows].contiguous(),
            down=self.down[picked, :, rows].contiguous(),
        )

    @classmethod
    def from_transformers(
        cls,
        source: torch.nn.Module | Mapping[str, torch.Tensor],
        config: MoEConfig,
        prefix: str = "",
    ) -> MoEWeights:
        """The weights of a ``transformers`` MoE block (``MixtralSparseMoeBlock``,
        ``Qwen2MoeSparseMoeBlock``, ``Qwen3MoeSparseMoeBlock``, ``DeepseekV2Moe``,
        ``DeepseekV3MoE``) or of a state dict holding one under ``prefix`` (e.g.
        ``"model.layers.3.mlp."``), checked against ``config``.

        Experts may be stored fused (``experts.gate_up_proj`` ``[E, 2I, H]`` and
        ``experts.down_proj``, as transformers 5 keeps them) or one by one, as checkpoints on
        the Hub are (``experts.{e}.gate_proj/up_proj/down_proj.weight``, or Mixtral's
        ``experts.{e}.w1/w3/w2.weight``). Tensors are taken as they are (no copy where none is
        needed); move them with :meth:`to`.
        """
        state = source.state_dict() if isinstance(source, torch.nn.Module) else source
        found = _HfKeys(state, prefix)
        gate, up, down = found.experts(config)
        weights = {"router": found["gate.weight"], "gate": gate, "up": up, "down": down}
        if config.shared_intermediate:
            shared = found.first_prefix("shared_expert.", "shared_experts.")
            for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
                weights[f"shared_{ours}"] = found[f"{shared}{theirs}.weight"]
        if config.shared_expert_gate:
            weights["shared_expert_gate"] = found["shared_expert_gate.weight"]
        if config.router_bias:
            weights["router_bias"] = found["gate.e_score_correction_bias"]
        result = cls(**weights)
        result.check(config)
        return result


# Routing parameters: any float dtype (they are used in float32).
_ROUTING = ("router", "router_bias")
_USED_WHEN = {
    "shared_gate": "shared_intermediate=0",
    "shared_up": "shared_intermediate=0",
    "shared_down": "shared_intermediate=0",
    "shared_expert_gate": "shared_expert_gate=False",
    "router_bias": "router_bias=False",
}
# Per-expert names on the Hub: (gate, up, down).
_PER_EXPERT_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


class _HfKeys:
    """Look-ups in a transformers state dict under a prefix, raising with the missing key."""

    def __init__(self, state: Mapping[str, torch.Tensor], prefix: str) -> None:
        self.state, self.prefix = state, prefix

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.state

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self:
            raise KeyError(
                f"compile_ops.moe: MoEWeights.from_transformers: no {self.prefix + key!r} in the "
                f"state dict (prefix={self.prefix!r})"
            )
        return self.state[self.prefix + key]

    def first_prefix(self, *candidates: str) -> str:
        for candidate in candidates:
            if any(k.startswith(self.prefix + candidate) for k in self.state):
                return candidate
        return candidates[0]  # the look-up that follows names the missing key

    def experts(self, config: MoEConfig):
        if "experts.gate_up_proj" in self:
            gate_up = self["experts.gate_up_proj"]
            i = gate_up.shape[1] // 2
            return gate_up[:, :i], gate_up[:, i:], self["experts.down_proj"]
        for names in _PER_EXPERT_NAMES:
            if f"experts.0.{names[0]}.weight" in self:
                return tuple(
                    torch.stack([self[f"experts.{e}.{name}.weight"] for e in range(config.experts)])
                    for name in names
                )
        raise KeyError(
            f"compile_ops.moe: MoEWeights.from_transformers: no experts under prefix "
            f"{self.prefix!r}: expected 'experts.gate_up_proj' and 'experts.down_proj', or "
            "'experts.{e}.gate_proj.weight' (or Mixtral's 'experts.{e}.w1.weight') per expert"
        )
