"""The capacity all_to_all manager's send buffer: each token's wire row in every peer's block.

``peer_pack(x, topk_ids, topk_weights, owners, per_peer, per_rank)`` returns

* ``wire`` ``[n * per_peer, W]``: block ``r`` (rows ``r * per_peer ..``) holds, in token order,
  the wire rows (wire.py) of the tokens with an expert on rank ``r``, then padding rows (zeros,
  ids -1, weights 0) that reach no expert; a block holds at most ``per_peer`` tokens;
* ``back`` ``[T, n]`` int64: the row of ``wire`` that token ``t`` went to on rank ``r``;
  ``not_sent(n, per_peer)`` (``n * per_peer``) where it did not go there, and
  ``dropped(n, per_peer)`` (``n * per_peer + 1``) where it should have but the block was full.

Two implementations, equal bit for bit (tested): one Triton launch on CUDA (triton_peer_pack.py;
a decode step replays it, so launches count), and torch ops elsewhere. Shapes depend on
``per_peer`` and ``per_rank`` alone, never on the routing, and nothing is read on the host.
"""

from __future__ import annotations

import torch

from .experts import triton_available
from .wire import pack_routing, padding_rows, to_wire


def not_sent(n_ranks: int, per_peer: int) -> int:
    """``back``'s value for a token that does not go to that rank."""
    return n_ranks * per_peer


def dropped(n_ranks: int, per_peer: int) -> int:
    """``back``'s value for a token that was not sent because the peer's block was full."""
    return n_ranks * per_peer + 1


def peer_pack(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    owners: torch.Tensor,
    per_peer: int,
    per_rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wire, back)`` as the module docstring says; ``owners`` ``[E, n]`` bool: rank r holds
    (a shard of) expert e."""
    if x.device.type == "cuda" and triton_available():
        from . import triton_peer_pack  # needs triton; imported where it is used

        return triton_peer_pack.peer_pack(x, topk_ids, topk_weights, owners, per_peer, per_rank)
    return peer_pack_torch(x, topk_ids, topk_weights, owners, per_peer)


def peer_pack_torch(x, topk_ids, topk_weights, owners, per_peer: int):
    """The same with torch ops: an owner lookup, a running count, the inverse of ``back`` by a
    scatter, and one gather of the wire rows."""
    n_tokens, n = x.shape[0], owners.shape[1]
    wanted = owners[topk_ids].any(dim=1)  # [T, n]: rank r gets token t
    running = wanted.cumsum(0)  # [T, n]: tokens for rank r among rows 0..t
    kept = wanted & (running <= per_peer)
    offsets = torch.arange(n, device=x.device) * per_peer
    skipped = torch.where(wanted, dropped(n, per_peer), not_sent(n, per_peer))
    back = torch.where(kept, running - 1 + offsets, skipped)
    # Its inverse: the token that fills each slot, token T (a padding row) where none does.
    # Each kept pair has a slot of its own; only the two markers' rows, cut off after, are
    # written more than once. (A scatter, not a searchsorted: Inductor's Triton searchsorted
    # failed to compile for one row per peer, docs/known-issues.md.)
    token = torch.arange(n_tokens, device=x.device).unsqueeze(1).expand_as(back)
    rows = torch.full((n * per_peer + 2,), n_tokens, dtype=back.dtype, device=x.device)
    rows = rows.scatter(0, back.reshape(-1), token.reshape(-1))[: n * per_peer]
    wire = to_wire(x, pack_routing(topk_ids, topk_weights))
    wire = torch.cat([wire, padding_rows(1, x, topk_ids.shape[1])])
    return wire[rows], back
