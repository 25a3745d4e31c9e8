"""The wire row: a token's hidden state and its routing in one tensor, so one collective moves both.

A wire row of ``x`` (dtype ``d``, ``H`` columns) with top-k routing is ``[x | ids | weights]``:
the k expert ids and k weights as float32 (ids are exact below 2**24) whose bits are
reinterpreted as ``d``, never converted: ``H + 2k`` columns in float32, ``H + 4k`` in a 16-bit
dtype. A padding row (zeros, ids -1, weights 0) reaches no expert anywhere.
"""

from __future__ import annotations

import torch


def pack_routing(ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[T, 2k]`` float32: the ids, then the weights."""
    return torch.cat([ids.to(torch.float32), weights.to(torch.float32)], dim=-1)


def to_wire(x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
    """Rows and their float32 routing as one tensor of ``x``'s dtype."""
    return torch.cat([x, routing.view(x.dtype)], dim=1)


def from_wire(wire: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, routing)`` of wire rows with ``hidden`` columns of ``x``."""
    return wire[:, :hidden], wire[:, hidden:].contiguous().view(torch.float32)


def padding_rows(rows, x: torch.Tensor, k: int) -> torch.Tensor:
    """``rows`` wire rows that reach no expert anywhere: zeros, expert ids -1, weights 0."""
    ids = torch.full((rows, k), -1, dtype=torch.int64, device=x.device)
    weights = torch.zeros((rows, k), dtype=torch.float32, device=x.device)
    return to_wire(x.new_zeros((rows, x.shape[1])), pack_routing(ids, weights))
