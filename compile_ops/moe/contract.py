"""Debug check of the reduce contract: is every token's output summed over the group exactly once?

In debug mode each rank appends one column to its partial expert outputs: the routing mass it
covered for that row (the top-k weights of its local experts, times its TP share). The column
travels through the same dispatch, combine and reduce as the outputs, so after the block it holds
``sum_k topk_weight`` for every token if and only if the contributions of all ranks were summed
exactly once. A reduce done twice makes it ``group size`` times too large; a missing reduce leaves
only this rank's share.
"""

from __future__ import annotations

import torch


class ReduceContractError(RuntimeError):
    """A block's output was reduced twice, or not at all: a manager misstated output_is_reduced."""


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2


def with_mass_column(y: torch.Tensor, mass: torch.Tensor, share: float) -> torch.Tensor:
    """``y`` ``[R, H]`` with this rank's routing mass ``[R]`` times ``share`` appended."""
    return torch.cat([y, (mass * share).unsqueeze(-1).to(y.dtype)], dim=-1)


def describe(manager) -> str:
    """Who is checked; a plain string, built outside of compiled code."""
    return f"compile_ops.moe: manager {manager.name!r} on layout {manager.layout}"


def strip_and_verify(
    out: torch.Tensor, expected: torch.Tensor, manager, where: str
) -> torch.Tensor:
    """``out`` ``[T, H + 1]`` without its mass column, once the column equals ``expected``.

    Eager: raises :class:`ReduceContractError` with the measured factor. Compiled: the check is a
    graph op (``_assert_async``) with a fixed message, so it costs no graph break.
    """
    ratio = out[:, -1].float() / expected
    ok = (ratio - 1).abs() <= _tolerance(out.dtype)
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), _COMPILED_MESSAGE)
    elif not bool(ok.all()):
        raise ReduceContractError(_diagnose(where, ratio[~ok], ratio.numel(), manager))
    return out[:, :-1]


_COMPILED_MESSAGE = (
    "compile_ops.moe: the MoE outputs are not reduced exactly once over the group (double or "
    "missing reduce): a manager's output_is_reduced does not match what its combine() does; "
    "run the block eagerly with debug=True for the factor"
)


def _diagnose(where: str, bad: torch.Tensor, total: int, manager) -> str:
    factor = bad.median().item()
    n = manager.comm.size
    if abs(factor - n) <= 0.1 * n:
        why = f"about the group size ({n}): reduced twice"
    elif factor < 1:
        why = "below 1: the sum over ranks is missing"
    else:
        why = "the contributions were not summed exactly once"
    return (
        f"{where}: {bad.numel()} of {total} tokens carry {factor:.3g}x their routing mass, {why}. "
        f"The manager states output_is_reduced={manager.output_is_reduced}; the block reduces "
        "exactly when that is False, so the statement does not match what combine() does."
    )
