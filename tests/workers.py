"""Functions that run inside the worker ranks (module level, so they pickle by reference)."""

import torch
import torch.distributed as dist

import compile_ops


def raises(fn, *args, **kwargs):
    """Run ``fn`` and return ``(exception type name, message)``, or None if it did not raise."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)
    return None


def rank() -> int:
    return dist.get_rank()


def healthy() -> float:
    """A real collective: proves no rank was left half-way inside an earlier one."""
    return compile_ops.all_reduce(torch.ones(2)).sum().item()
