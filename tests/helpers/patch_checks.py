"""Checks every Inductor patch's tests make of it."""

from __future__ import annotations

import pytest
import torch

import inductor_patches


def check_inactive_elsewhere(patch: inductor_patches.Patch) -> None:
    """On a torch outside the patch's range: applying it does nothing, every method it would
    replace is torch's own, and the status row says why."""
    if patch.matches_torch():
        pytest.skip(f"torch {torch.__version__} is the patch's target")
    assert patch.apply() is False and not patch.is_applied()
    for r in patch.replacements:
        method = getattr(r.resolve_owner(), r.attribute)
        assert method.__module__ == r.module, f"{r.target} is {method.__module__}'s"
    (row,) = [r for r in inductor_patches.status() if r.name == patch.name]
    assert row.state == "other torch version" and torch.__version__ in row.reason
