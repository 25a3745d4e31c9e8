"""Every collective, eager and compiled, against the single-process reference on gloo worlds 1-4."""

import pytest
import torch
import torch.distributed as dist
import workers

import compile_ops
from compile_ops.ops import SPECS
from compile_ops.testing.cases import (
    OPS,
    Case,
    assert_case_results,
    dtype_cases,
    run_case,
)

WORLDS = (1, 2, 3, 4)
REDUCING = tuple(op for op in OPS if SPECS[op].reduces)
WITH_DIM = tuple(op for op in OPS if "dim" in SPECS[op].params)
WITH_UNEVEN = tuple(op for op in OPS if SPECS[op].uneven)


def eager_cases():
    for world in WORLDS:
        for op in OPS:
            base = Case(op, world)
            yield base
            yield base.with_(dtype=torch.bfloat16, seed=1)
            yield base.with_(dtype=torch.int32, seed=2)
            yield base.with_(layout="transposed", seed=3)
            yield base.with_(layout="sliced", seed=8)
            if op in WITH_UNEVEN:
                yield base.with_(uneven=True, seed=4)
                yield base.with_(uneven=True, layout="transposed", seed=5)
            if op in WITH_DIM:
                for dim in (1, -1):
                    yield base.with_(dim=dim, uneven=op in WITH_UNEVEN, seed=6)
            if op in REDUCING:
                for reduce_op in ("avg", "product", "min", "max"):
                    yield base.with_(reduce_op=reduce_op, seed=7)


def _run_cases(cases):
    return [run_case(case, ("eager",)) for case in cases]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("op", OPS)
def test_every_documented_dtype(world, op, n):
    """int16, the unsigned ints, float8, bool and complex too: sent as bytes where a backend
    lacks the dtype, reduced in a wider dtype where it cannot reduce it."""
    cases = [case for case in dtype_cases(n) if case.op == op]
    per_rank = world(n).run(_run_cases, cases)
    for i, case in enumerate(cases):
        assert_case_results(case, [rank_results[i] for rank_results in per_rank], ("eager",))


def compiled_cases():
    for world in (2, 3):
        for op in OPS:
            yield Case(op, world, uneven=op in WITH_UNEVEN)
            if op in WITH_DIM:
                yield Case(op, world, dim=1, uneven=op in WITH_UNEVEN, dtype=torch.bfloat16)


@pytest.mark.parametrize("case", list(eager_cases()), ids=str)
def test_eager_matches_reference(world, case):
    assert_case_results(case, world(case.world_size).run(run_case, case, ("eager",)), ("eager",))


@pytest.mark.parametrize("case", list(compiled_cases()), ids=str)
def test_compiled_matches_eager_and_reference(world, case):
    modes = ("eager", "compiled", "dynamic")
    assert_case_results(case, world(case.world_size).run(run_case, case, modes), modes)


def _tokens_changing(op, counts):
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


@pytest.mark.parametrize("op", ["all_gatherv", "reduce_scatterv"])
def test_dynamic_token_count_does_not_recompile(world, op):
    results = world(3).run(_tokens_changing, op, [5, 9, 17, 2, 64])
    for frames, outs in results:
        assert frames == 1
        for compiled, eager in outs:
            torch.testing.assert_close(compiled, eager)


def _all_to_all_changing(counts):
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


def test_dynamic_all_to_all_splits_do_not_recompile(world):
    for frames, outs in world(3).run(_all_to_all_changing, [2, 7, 1, 30]):
        assert frames == 1
        for compiled, eager in outs:
            torch.testing.assert_close(compiled, eager)


def _subgroups():
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


def test_tp_and_ep_subgroups_in_one_world():
    from compile_ops.testing.pool import get_pool

    results = get_pool(4).run(_subgroups)
    # tp sums: ranks 0,1 -> 1; ranks 2,3 -> 5. ep gathers {0,2} -> [1,1,5,5]; {1,3} the same.
    expected = torch.tensor([1.0, 1.0, 5.0, 5.0])
    for compiled, eager in results:
        torch.testing.assert_close(eager, expected)
        torch.testing.assert_close(compiled, expected)


# -- arguments as torch.distributed and funcol spell them ----------------------------------------

REDUCE_OP_VALUES = ("SUM", "AVG", "PRODUCT", "MIN", "MAX")


def _reduce_op_values():
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


def test_reduce_op_values_are_accepted(world):
    for strings, eager, compiled, refused in world(2).run(_reduce_op_values):
        for want, got_eager, got_compiled in zip(strings, eager, compiled, strict=True):
            torch.testing.assert_close(got_eager, want, rtol=0, atol=0)
            torch.testing.assert_close(got_compiled, want, rtol=0, atol=0)
        band, premul, integer = refused
        assert band[0] == "ValueError" and "compile_ops.all_reduce: op='ReduceOp.BAND'" in band[1]
        assert premul[0] == "ValueError" and "reduce_scatter: op='ReduceOp.PREMUL_SUM'" in premul[1]
        assert integer[0] == "TypeError" and "compile_ops.all_reduce: op must be" in integer[1]


def _all_to_all_default_splits():
    """all_to_all(x) and all_to_all(x, group=...) split dim 0 equally, eager and compiled."""
    rank = dist.get_rank()
    x = torch.arange(12.0).view(6, 2) + 100 * rank

    def fn(t):
        return compile_ops.all_to_all(t), compile_ops.all_to_all(t, group=dist.group.WORLD)

    torch._dynamo.reset()
    return x, fn(x), torch.compile(fn, backend="aot_eager", fullgraph=True)(x)


def test_all_to_all_splits_default_to_equal(world):
    from compile_ops.testing.reference import expected

    results = world(3).run(_all_to_all_default_splits)
    want = expected("all_to_all", [x for x, _, _ in results])
    for rank, (_, eager, compiled) in enumerate(results):
        for got in (*eager, *compiled):
            torch.testing.assert_close(got, want[rank], rtol=0, atol=0)
