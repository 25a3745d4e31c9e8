"""Rank-side code of the collective tests: test_collectives.py, test_gpu_collectives.py, the
op contracts (test_op_contracts.py) and the audit on every rank (test_fake_impls.py)."""

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.testing.cases import Case, run_case
from fake_impls import audit

from . import workers

REDUCE_OP_VALUES = ("SUM", "AVG", "PRODUCT", "MIN", "MAX")


def run_eager(cases):
    """Each case eagerly, in order."""
    return [run_case(case, ("eager",)) for case in cases]


def tokens_changing(op, counts):
    """Compile once (dynamic), then call with a different token count per step."""
    from torch._dynamo.testing import CompileCounterWithBackend

    rank, n = dist.get_rank(), dist.get_world_size()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")

    def fn(x, sizes):
        if op == "all_gatherv":
            return compile_ops.all_gatherv(x * 2, sizes) + 1
        return compile_ops.reduce_scatterv(x * 2, sizes) + 1

    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=True)
    outs = []
    for step, count in enumerate(counts):
        # per-rank token counts differ within a step and across steps
        sizes = [count + r for r in range(n)]
        extent = sizes[rank] if op == "all_gatherv" else sum(sizes)
        x = torch.full((extent, 8), float(rank + step))
        outs.append((compiled(x, sizes), fn(x, sizes)))
    return counter.frame_count, outs


def all_to_all_changing(counts):
    from torch._dynamo.testing import CompileCounterWithBackend

    rank, n = dist.get_rank(), dist.get_world_size()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")

    def fn(x, out_splits, in_splits):
        return compile_ops.all_to_all(x * 2, out_splits, in_splits) + 1

    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=True)
    outs = []
    for step, count in enumerate(counts):
        # rank s sends count + s + r rows to rank r: uneven in both directions
        in_splits = [count + rank + r for r in range(n)]
        out_splits = [count + s + rank for s in range(n)]
        x = torch.arange(sum(in_splits) * 4, dtype=torch.float32).view(-1, 4) + 100 * rank + step
        outs.append((compiled(x, out_splits, in_splits), fn(x, out_splits, in_splits)))
    return counter.frame_count, outs


def subgroups():
    """TP = {0,1},{2,3}; EP = {0,2},{1,3}: both used inside one compiled function."""
    rank = dist.get_rank()
    tp = dist.new_subgroups_by_enumeration([[0, 1], [2, 3]])[0]
    ep = dist.new_subgroups_by_enumeration([[0, 2], [1, 3]])[0]
    compile_ops.register_group("tp", tp)
    compile_ops.register_group("ep", ep)
    try:

        def fn(x):
            summed = compile_ops.all_reduce(x, group="tp")
            return compile_ops.all_gather(summed, dim=0, group="ep")

        x = torch.full((2,), float(rank))
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True)(x)
        return compiled, fn(x)
    finally:
        compile_ops.unregister_group("tp")
        compile_ops.unregister_group("ep")
        dist.destroy_process_group(tp)
        dist.destroy_process_group(ep)


def reduce_op_values():
    """Each reduction given as a torch.distributed.ReduceOp, eager and compiled, next to the
    same reduction given as a string; then the ReduceOps the ops do not support."""
    n, rank = dist.get_world_size(), dist.get_rank()
    x = torch.arange(2.0 * n * 3).view(2 * n, 3) / 4 + rank
    calls = {
        "all_reduce": lambda t, op: compile_ops.all_reduce(t, op),
        "reduce_scatter": lambda t, op: compile_ops.reduce_scatter(t, 0, op),
        "reduce_scatterv": lambda t, op: compile_ops.reduce_scatterv(t, [2] * n, op=op),
    }
    ops = [getattr(dist.ReduceOp, name) for name in REDUCE_OP_VALUES]
    ops.append(dist.ReduceOp(dist.ReduceOp.MAX))  # a ReduceOp object, not the enum value

    def every(t, ops):
        return [call(t, op) for call in calls.values() for op in ops]

    strings = every(x, [str(getattr(op, "op", op).name).lower() for op in ops])
    eager = every(x, ops)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: every(t, ops), backend="aot_eager", fullgraph=True)(x)
    refused = [
        workers.raises(compile_ops.all_reduce, x, dist.ReduceOp.BAND),
        workers.raises(compile_ops.reduce_scatter, x, 0, dist.ReduceOp.PREMUL_SUM),
        workers.raises(compile_ops.all_reduce, x, 3),
    ]
    return strings, eager, compiled, refused


def all_to_all_default_splits():
    """all_to_all(x) and all_to_all(x, group=...) split dim 0 equally, eager and compiled."""
    rank = dist.get_rank()
    x = torch.arange(12.0).view(6, 2) + 100 * rank

    def fn(t):
        return compile_ops.all_to_all(t), compile_ops.all_to_all(t, group=dist.group.WORLD)

    torch._dynamo.reset()
    return x, fn(x), torch.compile(fn, backend="aot_eager", fullgraph=True)(x)


def storage_shared(case: Case) -> bool:
    """Whether the op's result shares its input's storage (it must not)."""
    rank = dist.get_rank()
    x = case.input(rank)
    out = case.call(x, rank)
    return out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def audit_rows():
    """``compile-ops audit compile_ops`` on this rank: (op, status, opcheck, problems) per op."""
    return [(r.op, r.status, r.opcheck, r.problems) for r in audit("compile_ops")]
