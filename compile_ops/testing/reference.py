"""Single-process references: what each collective must return on each rank.

``expected(collective, inputs, **kwargs)`` takes every rank's input (index = group rank) and the
keyword arguments given to ``compile_ops.<collective>`` and returns every rank's result, computed
with plain tensor ops in one process (each op's reference sits beside its wrapper, in its spec
row).
Reductions run in float64 (int64 for integers) and are cast back, so the reference is at least as
accurate as any backend.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from compile_ops.ops import SPECS


def expected(
    collective: str,
    inputs: Sequence[torch.Tensor],
    /,
    calls: Sequence[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> list[torch.Tensor]:
    """Every rank's result of ``compile_ops.<collective>``.

    ``kwargs`` are the wrapper's keyword arguments, the same on every rank; where they differ by
    rank (``all_to_all``'s splits), give ``calls`` instead: rank r's keyword arguments at ``r``.
    Arguments left out take the wrapper's defaults.
    """
    spec = SPECS[collective]
    parameters = inspect.signature(spec.wrapper).parameters
    defaults = {
        name: parameters[name].default
        for name in spec.params
        if parameters[name].default is not inspect.Parameter.empty
    }
    calls = [kwargs] * len(inputs) if calls is None else calls
    return spec.reference(list(inputs), [{**defaults, **call} for call in calls])
