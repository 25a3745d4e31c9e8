"""The contracts every op keeps: opcheck, never aliasing its input, no copies in compiled code."""

import pytest
import torch
from helpers import collective_workers as cw
from helpers import workers

from compile_ops.ops import SPECS
from compile_ops.testing.cases import OPS, Case
from compile_ops.testing.pool import WorkerError


@pytest.mark.parametrize("n", [1, 2, 3])
def test_opcheck_passes_for_every_overload(world, n):
    pool = world(n)
    defined = pool.run(workers.namespace_overloads)[0]
    for rank, results in enumerate(pool.run(workers.opcheck_all)):
        assert set(results) == defined, "an overload without samples, or samples of no overload"
        failures = {op: [f for f in fs if f] for op, fs in results.items()}
        assert {op: fs for op, fs in failures.items() if fs} == {}, f"rank {rank}"


@pytest.mark.parametrize("op", OPS)
def test_out_of_place_ops_never_return_their_input(world, op):
    case = Case(op, 2, uneven=SPECS[op].uneven)
    assert world(2).run(cw.storage_shared, case) == [False, False]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("op", ["all_reduce", "broadcast"])
def test_result_never_aliases_input(world, op, compiled):
    for pairs in world(2).run(workers.aliasing_pattern, op, compiled):
        for got, want in pairs:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_alias_check_catches_an_aliasing_op(world, compiled):
    """The same programs with an op that reduces in place and returns its input must go wrong.

    Compiled, torch's own aliasing check may reject the op first (it runs on some compilations,
    not all); either way the bug does not pass unnoticed.
    """
    try:
        results = world(2).run(workers.aliasing_pattern, "buggy", compiled)
    except WorkerError as e:
        assert compiled and "may not alias any inputs" in str(e), e
        return
    assert not all(workers.matches(pairs) for pairs in results)


@pytest.mark.parametrize("op", ["all_reduce", "broadcast"])
def test_dead_input_reinplaces_without_copy(world, op):
    for code, out, expected in world(2).run(workers.generated_code, op, False):
        torch.testing.assert_close(out, expected)
        assert f"torch.ops.compile_ops.{op}_.default(" in code
        assert f"torch.ops.compile_ops.{op}.default(" not in code
        assert not workers.copy_kernels(code), workers.copy_kernels(code)


@pytest.mark.parametrize("op", ["all_reduce", "broadcast"])
def test_live_input_gets_one_separate_result(world, op):
    for code, out, expected in world(2).run(workers.generated_code, op, True):
        torch.testing.assert_close(out, expected)
        assert code.count(f"torch.ops.compile_ops.{op}.default(") == 1
        assert f"torch.ops.compile_ops.{op}_.default(" not in code
        assert not workers.copy_kernels(code), workers.copy_kernels(code)


def test_compiled_code_keeps_every_op_whose_result_is_unused(world):
    """Inductor must never delete a collective (e.g. one whose result this rank discards): the
    other ranks would wait for it forever. Holds on every torch only while the ``.out`` twins
    do not carry ``torch.Tag.out`` (torch 2.14 lowers tagged ops to a node it treats as pure)."""
    for rank, kept in enumerate(world(2).run(workers.ops_kept_when_unused)):
        assert kept == dict.fromkeys(OPS, True), f"rank {rank}"
