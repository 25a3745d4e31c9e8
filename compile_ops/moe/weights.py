"""One full set of MoE weights; sharded blocks take slices of it, so they equal the reference."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from .config import MoEConfig
from .layout import Layout


@dataclass(frozen=True)
class MoEWeights:
    """Router ``[E, H]``; experts ``gate``/``up`` ``[E, I, H]`` and ``down`` ``[E, H, I]``;
    the shared expert (or None): ``shared_gate``/``shared_up`` ``[Is, H]``, ``shared_down``
    ``[H, Is]``.
    """

    router: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    shared_gate: torch.Tensor | None = None
    shared_up: torch.Tensor | None = None
    shared_down: torch.Tensor | None = None

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
        for f in fields(self):
            t = getattr(self, f.name)
            if f.name not in want:
                if t is not None:
                    raise ValueError(
                        f"compile_ops.moe: weights have {f.name} but the config has no shared "
                        "expert (shared_intermediate=0)"
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
            getattr(self, f.name).dtype for f in fields(self) if getattr(self, f.name) is not None
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
