"""Every collective, eager and compiled, against the single-process reference on gloo worlds 1-4."""

import pytest
import torch
from helpers import collective_workers as cw

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


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("op", OPS)
def test_every_documented_dtype(world, op, n):
    """int16, the unsigned ints, float8, bool and complex too: sent as bytes where a backend
    lacks the dtype, reduced in a wider dtype where it cannot reduce it."""
    cases = [case for case in dtype_cases(n) if case.op == op]
    per_rank = world(n).run(cw.run_eager, cases)
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


def _nightly_beyond_two(cases):
    """Compiled cases at world 3 run nightly: each compiles twice on every rank, and world 2
    already compiles every op and layout (world 3's extents are covered eagerly and fuzzed)."""
    return [
        pytest.param(c, marks=pytest.mark.slow) if c.world_size > 2 else pytest.param(c)
        for c in cases
    ]


@pytest.mark.parametrize("case", _nightly_beyond_two(compiled_cases()), ids=str)
def test_compiled_matches_eager_and_reference(world, case):
    modes = ("eager", "compiled", "dynamic")
    assert_case_results(case, world(case.world_size).run(run_case, case, modes), modes)


@pytest.mark.parametrize("op", ["all_gatherv", "reduce_scatterv"])
def test_dynamic_token_count_does_not_recompile(world, op):
    results = world(3).run(cw.tokens_changing, op, [5, 9, 17, 2, 64])
    for frames, outs in results:
        assert frames == 1
        for compiled, eager in outs:
            torch.testing.assert_close(compiled, eager)


def test_dynamic_all_to_all_splits_do_not_recompile(world):
    for frames, outs in world(3).run(cw.all_to_all_changing, [2, 7, 1, 30]):
        assert frames == 1
        for compiled, eager in outs:
            torch.testing.assert_close(compiled, eager)


def test_tp_and_ep_subgroups_in_one_world():
    from compile_ops.testing.pool import get_pool

    results = get_pool(4).run(cw.subgroups)
    # tp sums: ranks 0,1 -> 1; ranks 2,3 -> 5. ep gathers {0,2} -> [1,1,5,5]; {1,3} the same.
    expected = torch.tensor([1.0, 1.0, 5.0, 5.0])
    for compiled, eager in results:
        torch.testing.assert_close(eager, expected)
        torch.testing.assert_close(compiled, expected)


# -- arguments as torch.distributed and funcol spell them ----------------------------------------


def test_reduce_op_values_are_accepted(world):
    for strings, eager, compiled, refused in world(2).run(cw.reduce_op_values):
        for want, got_eager, got_compiled in zip(strings, eager, compiled, strict=True):
            torch.testing.assert_close(got_eager, want, rtol=0, atol=0)
            torch.testing.assert_close(got_compiled, want, rtol=0, atol=0)
        band, premul, integer = refused
        assert band[0] == "ValueError" and "compile_ops.all_reduce: op='ReduceOp.BAND'" in band[1]
        assert premul[0] == "ValueError" and "reduce_scatter: op='ReduceOp.PREMUL_SUM'" in premul[1]
        assert integer[0] == "TypeError" and "compile_ops.all_reduce: op must be" in integer[1]


def test_all_to_all_splits_default_to_equal(world):
    from compile_ops.testing.reference import expected

    results = world(3).run(cw.all_to_all_default_splits)
    want = expected("all_to_all", [x for x, _, _ in results])
    for rank, (_, eager, compiled) in enumerate(results):
        for got in (*eager, *compiled):
            torch.testing.assert_close(got, want[rank], rtol=0, atol=0)
