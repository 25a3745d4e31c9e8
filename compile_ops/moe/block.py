"""The MoE block: a single-device reference and the same block sharded over a group."""

from __future__ import annotations

from dataclasses import fields

import torch

from . import compute
from .config import MoEConfig
from .contract import describe, strip_and_verify, with_mass_column
from .experts import check_experts_impl
from .layout import Layout
from .managers import All2AllManager, make_manager
from .weights import MoEWeights

# What Inductor assumes for a size it cannot know (torch._inductor.config.unbacked_symint_fallback):
# as a token count, a prefill-sized batch.
TOKEN_HINT = 8192


def mark_token_dim(x: torch.Tensor, hint: int = TOKEN_HINT) -> torch.Tensor:
    """A view of ``x`` with dim 0 (tokens) marked unbacked, for a compiled MoE block: one graph
    then serves every count. Pass the view (``compiled(mark_token_dim(x))``).

    A backed dynamic dim would be specialised by Dynamo at 0 and 1 (a recompile for a batch of
    one token); an unbacked one never is. The other ranks' counts and the all_to_all splits are
    unbacked anyway (they are data), so nothing about token counts ends up in a guard.

    ``hint`` is the token count Inductor's heuristics assume; it is never a guard and any count
    runs. Without one Inductor counts every token-sized buffer as zero bytes and fuses none of
    them (torch 2.12 and newer, and 2.11 with the ``hinted_unbacked_fusion`` patch, count the
    hinted ones; docs/patches.md).

    The mark is an attribute of the tensor object that Dynamo reads at every compile it enters.
    ``x`` itself stays unmarked: set on ``x``, the mark would follow it into any other compiled
    function it is passed to, which would then compile for an unknown token count.
    """
    if hint < 1:
        raise ValueError(f"compile_ops.moe.mark_token_dim: hint={hint} must be at least 1")
    marked = x.view_as(x)  # same storage and strides; autograd sees a view
    torch._dynamo.decorators.mark_unbacked(marked, 0, hint_override=hint)
    return marked


class _WeightsModule(torch.nn.Module):
    """Weights as buffers (so ``.to()`` and torch.compile see them) and the input checks."""

    def _hold(self, weights: MoEWeights) -> None:
        # Same names as MoEWeights: the module itself can be passed where weights are taken.
        for f in fields(weights):
            self.register_buffer(f.name, getattr(weights, f.name))

    def _check_input(self, x: torch.Tensor) -> None:
        hidden = self.config.hidden
        if x.dim() != 2 or x.shape[-1] != hidden:
            raise ValueError(
                f"compile_ops.moe: x has shape {tuple(x.shape)} but the block takes "
                f"[tokens, hidden={hidden}]"
            )
        if x.dtype != self.down.dtype:
            raise ValueError(
                f"compile_ops.moe: x.dtype={x.dtype} but the block's weights are {self.down.dtype}"
            )


class MoEBlock(_WeightsModule):
    """The whole block on one device, computed expert by expert (the reference)."""

    def __init__(self, config: MoEConfig, weights: MoEWeights) -> None:
        super().__init__()
        weights.check(config)
        self.config = config
        self._hold(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        topk_weights, topk_ids = compute.route(x, self.router, self.config, self.router_bias)
        out = compute.reference_experts(x, topk_ids, topk_weights, self).to(x.dtype)
        shared = compute.shared_expert(x, self)
        return out if shared is None else out + shared


class ShardedMoEBlock(_WeightsModule):
    """The block over a group: this rank holds its ``layout`` shard of the experts and a manager
    moves tokens to the shards and outputs back.

    The routed outputs are reduced exactly once: by ``combine`` if the manager states
    ``output_is_reduced``, else here. ``debug=True`` checks that at run time (see contract.py).
    The router and the shared expert are whole on every rank; the shared expert runs on this
    rank's own tokens and needs no communication.

    ``experts_impl`` picks the grouped expert compute (experts.py): "triton", "grouped_mm",
    "portable", or "auto" (by device and dtype); ``self.experts_impl`` is the resolved name.

    ``max_tokens_per_rank=N`` selects capacity mode: every rank brings at most N tokens, the
    managers move fixed-size buffers and nothing is read back to the host, so the compiled block
    can be captured in a device graph. ``max_tokens_per_peer`` (all_to_all only) is a tighter
    per-peer buffer. Both must be the same on every rank; see docs/moe.md.
    """

    def __init__(
        self,
        config: MoEConfig,
        weights: MoEWeights,
        layout: Layout,
        manager: str | All2AllManager = "agrs",
        debug: bool = False,
        experts_impl: str = "auto",
        *,
        max_tokens_per_rank: int | None = None,
        max_tokens_per_peer: int | None = None,
    ) -> None:
        super().__init__()
        shard = weights.shard(config, layout)
        device = weights.down.device
        self.experts_impl = check_experts_impl(experts_impl, device, weights.down.dtype)
        if isinstance(manager, str):
            manager = make_manager(
                manager,
                layout,
                config.experts,
                device,
                max_tokens_per_rank=max_tokens_per_rank,
                max_tokens_per_peer=max_tokens_per_peer,
            )
        else:
            _check_given_manager(manager, layout, max_tokens_per_rank, max_tokens_per_peer)
        self.config = config
        self.layout = layout
        self.manager = manager
        self.debug = debug
        self._where = describe(manager)
        gate_up, down = compute.pack_local_experts(shard.gate, shard.up, shard.down)
        experts = layout.local_experts(config.experts)
        for name, t in (
            ("router", shard.router),
            ("expert_ids", torch.arange(experts.start, experts.stop, device=device)),
            ("gate_up", gate_up),
            ("down", down),
            ("shared_gate", shard.shared_gate),
            ("shared_up", shard.shared_up),
            ("shared_down", shard.shared_down),
            ("shared_expert_gate", shard.shared_expert_gate),
            ("router_bias", shard.router_bias),
        ):
            self.register_buffer(name, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        manager = self.manager
        topk_weights, topk_ids = compute.route(x, self.router, self.config, self.router_bias)
        d = manager.dispatch(x, topk_ids, topk_weights)
        y, mass = compute.local_experts(
            d.x,
            d.topk_ids,
            d.topk_weights,
            self.expert_ids,
            self.gate_up,
            self.down,
            self.experts_impl,
        )
        if self.debug:
            y = with_mass_column(y, mass, 1.0 / self.layout.tp_size)
        out = manager.combine(y.to(x.dtype), d)
        if not manager.output_is_reduced:
            out = manager.comm.all_reduce(out)
        out = manager.home_rows(out, d)
        if self.debug:
            out = strip_and_verify(out, topk_weights.sum(-1), manager, self._where)
        shared = compute.shared_expert(x, self)
        return out if shared is None else out + shared


def _check_given_manager(manager: All2AllManager, layout: Layout, per_rank, per_peer) -> None:
    """A manager built elsewhere must match the block's layout and any capacity given here."""
    if manager.layout != layout:
        raise ValueError(
            f"compile_ops.moe: the manager was built for layout {manager.layout} on group "
            f"{manager.layout.group!r}, the block for {layout} on {layout.group!r}"
        )
    have = manager.capacity
    for arg, given, held in (
        ("max_tokens_per_rank", per_rank, have and have.per_rank),
        ("max_tokens_per_peer", per_peer, have and have.per_peer),
    ):
        if given is not None and given != held:
            raise ValueError(
                f"compile_ops.moe: {arg}={given} but the manager given was built with "
                f"{arg}={held}; build the manager with it (make_manager(..., {arg}=...))"
            )
