"""Hypothesis fuzzing: every op, and programs mixing ops with math, compiled vs eager vs reference.

Two profiles, chosen by COMPILE_OPS_FUZZ:
* ``ci`` (default): derandomised (the same examples on every run), 200 examples per op, each
  checked eagerly against the reference and against its fake kernels; one in four also compiled
  (aot_eager, dynamic shapes); 40 programs compiled with Inductor.
* ``long``: random, 650 examples per op, every one also compiled (aot_eager, dynamic shapes),
  and 1000 programs compiled with Inductor (5,550 cases in all).
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compile_ops.testing.cases import OPS
from compile_ops.testing.compare import assert_compiled_matches_eager
from compile_ops.testing.strategies import cases, programs

LONG = os.environ.get("COMPILE_OPS_FUZZ", "ci") == "long"
PER_OP, PROGRAMS = (650, 1000) if LONG else (200, 40)


def fuzz_settings(max_examples):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=not LONG,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def run_counted(check, ran: list, wanted: int, record_property) -> None:
    """Run a hypothesis check whose body appends to ``ran``; fail if it drew fewer examples than
    the profile promises (a strategy whose space ran dry would otherwise pass quietly)."""
    check()
    record_property("examples", len(ran))
    assert len(ran) >= wanted, f"hypothesis ran {len(ran)} examples, the profile promises {wanted}"


@pytest.mark.parametrize("op", OPS)
def test_every_op_matches_reference(op, record_property):
    ran = []

    @fuzz_settings(PER_OP)
    @given(
        case=cases(op),
        compile_it=st.just(True) if LONG else st.sampled_from([True, False, False, False]),
    )
    def check(case, compile_it):
        ran.append(1)
        inputs = [(case.input(r),) for r in range(case.world_size)]
        assert_compiled_matches_eager(
            case,
            inputs,
            case.world_size,
            reference=lambda per_rank: case.reference([x for (x,) in per_rank]),
            dynamic=True,
            backend="aot_eager" if compile_it else None,
            reproducer=f"compile_ops.testing.cases.{case!r}",
        )

    run_counted(check, ran, PER_OP, record_property)


def test_programs_match_reference(record_property):
    ran = []

    @fuzz_settings(PROGRAMS)
    @given(program=programs(), dynamic=st.booleans())
    def check(program, dynamic):
        ran.append(1)
        assert_compiled_matches_eager(
            program.function(),
            [program.inputs(r) for r in range(program.world_size)],
            program.world_size,
            reference=program.reference,
            dynamic=dynamic,
            reproducer=program.source(),
        )

    run_counted(check, ran, PROGRAMS, record_property)
