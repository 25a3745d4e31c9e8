"""Single-process references: what each collective must return on each rank.

Each function takes every rank's input (index = group rank) and returns every rank's expected
output, computed with plain tensor ops in one process. Reductions run in float64 (int64 for
integers) and are cast back, so the reference is at least as accurate as any backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensors = Sequence[torch.Tensor]


def _reduce(inputs: Tensors, op: str) -> torch.Tensor:
    dtype = inputs[0].dtype
    wide = torch.float64 if dtype.is_floating_point else torch.int64
    stacked = torch.stack([t.to(wide) for t in inputs])
    if op == "sum":
        out = stacked.sum(0)
    elif op == "avg":
        out = stacked.mean(0)
    elif op == "product":
        out = stacked.prod(0)
    elif op == "max":
        out = stacked.amax(0)
    elif op == "min":
        out = stacked.amin(0)
    else:
        raise ValueError(f"unknown reduce op {op!r}")
    return out.to(dtype)


def all_reduce(inputs: Tensors, op: str = "sum") -> list[torch.Tensor]:
    out = _reduce(inputs, op)
    return [out.clone() for _ in inputs]


def broadcast(inputs: Tensors, src: int = 0) -> list[torch.Tensor]:
    return [inputs[src].clone() for _ in inputs]


def all_gather(inputs: Tensors, dim: int = 0) -> list[torch.Tensor]:
    out = torch.cat(list(inputs), dim=dim)
    return [out.clone() for _ in inputs]


all_gatherv = all_gather  # uneven extents are just a concatenation too


def reduce_scatterv(inputs: Tensors, sizes: Sequence[int], dim: int = 0, op: str = "sum"):
    return [p.clone() for p in _reduce(inputs, op).split(list(sizes), dim=dim)]


def reduce_scatter(inputs: Tensors, dim: int = 0, op: str = "sum") -> list[torch.Tensor]:
    n = len(inputs)
    extent = inputs[0].shape[dim]
    if extent % n:
        raise ValueError(f"extent {extent} is not divisible by {n} ranks")
    return reduce_scatterv(inputs, [extent // n] * n, dim, op)


def all_to_all(inputs: Tensors, input_split_sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``input_split_sizes[s][r]`` rows go from rank s to rank r (output splits follow)."""
    pieces = [
        list(t.split(list(splits))) for t, splits in zip(inputs, input_split_sizes, strict=True)
    ]
    return [torch.cat([pieces[s][r] for s in range(len(inputs))]) for r in range(len(inputs))]
