"""Rank functions for tests/test_debug_mode.py (module level, so they pickle by reference)."""

import torch
import torch.distributed as dist

import compile_ops

from .workers import op_samples, raises


def _mismatches(r: int, n: int) -> dict:
    """name -> (fn, args) for this rank; the last rank (or rank 0) disagrees with the others."""
    last = r == n - 1
    ones = [1] * n
    expects = [2, *ones[1:]] if last else ones  # the last rank expects 2 rows from rank 0
    sizes = [2, 1, *ones[2:]] if last else [1, 2, *ones[2:]]
    extent = 2 if last else 1  # all_gatherv: the last rank holds 2 rows where sizes says 1
    return {
        "split_sizes": (
            lambda x: compile_ops.all_to_all(x, expects, ones),
            (torch.ones(n, 2),),
        ),
        "reduce_op": (
            lambda x: compile_ops.all_reduce(x, op="max" if last else "sum"),
            (torch.ones(4),),
        ),
        "dim": (lambda x: compile_ops.all_gather(x, dim=1 if last else 0), (torch.ones(2, 2),)),
        "shape": (lambda x: compile_ops.all_reduce(x), (torch.ones(3 if last else 2, 3),)),
        "dtype": (
            lambda x: compile_ops.all_reduce(x),
            (torch.ones(4, dtype=torch.int32 if last else torch.float32),),
        ),
        "collective": (
            lambda x: compile_ops.all_gather(x) if last else compile_ops.all_reduce(x),
            (torch.ones(4),),
        ),
        "gatherv_sizes": (lambda x: compile_ops.all_gatherv(x, sizes), (torch.ones(sizes[r], 2),)),
        "gatherv_extent": (lambda x: compile_ops.all_gatherv(x, ones), (torch.ones(extent, 2),)),
        "scatterv_sizes": (
            lambda x: compile_ops.reduce_scatterv(x, sizes),
            (torch.ones(n + 1, 2),),
        ),
        "src": (lambda x: compile_ops.broadcast(x, src=1 if last else 0), (torch.ones(4),)),
        "a2a_row_shape": (
            lambda x: compile_ops.all_to_all(x, None, None),
            (torch.ones(n, 3 if last else 2),),
        ),
        "scatter_dim": (
            lambda x: compile_ops.reduce_scatter(x, dim=1 if last else 0),
            (torch.ones(2 * n, 2 * n),),
        ),
        # The splits fit together, but rank 0's x has a row more than its splits send: it
        # raises its own error, and the others must not wait for it in the collective.
        "local_error_on_rank0": (
            lambda x: compile_ops.all_to_all(x, ones, ones),
            (torch.ones(n + (r == 0), 2),),
        ),
    }


def mismatch(name: str, compiled: bool):
    """Run one mismatched call in debug mode; return (exception type, message) or None."""
    fn, args = _mismatches(dist.get_rank(), dist.get_world_size())[name]
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True, dynamic=False)
    with compile_ops.debug_mode():
        return raises(fn, *args)


def every_op_passes_in_debug_mode():
    """Matching calls of every overload, the gradient ops included, raise nothing."""
    with compile_ops.debug_mode():
        for op, args, kwargs in op_samples():
            torch.manual_seed(0)
            op(*args, **kwargs)
        x = torch.ones(3, requires_grad=True)
        compile_ops.broadcast(compile_ops.all_gather(x), src=0).sum().backward()
        return compile_ops.is_debug_mode(), x.grad.tolist()


def subgroup_mismatch():
    """Ranks 1 and 2 of a world of 3 disagree on the dtype in their own group."""
    group = dist.new_group([1, 2])
    if dist.get_rank() == 0:
        return None
    dtype = torch.float64 if dist.get_rank() == 2 else torch.float32
    with compile_ops.debug_mode():
        return raises(compile_ops.all_reduce, torch.ones(2, dtype=dtype), group=group)


def debug_mode_is_off_by_default_and_scoped():
    before = compile_ops.is_debug_mode()
    with compile_ops.debug_mode():
        inside = compile_ops.is_debug_mode()
    return before, inside, compile_ops.is_debug_mode()
