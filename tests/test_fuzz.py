"""Hypothesis fuzzing: every op, and programs mixing ops with math, compiled vs eager vs reference.

Two profiles, chosen by COMPILE_OPS_FUZZ:
* ``ci`` (default): derandomised (the same examples on every run), 200 examples per op, each
  checked eagerly against the reference and against its fake kernels; one in four also compiled
  (aot_eager, dynamic shapes); 40 programs compiled with Inductor.
* ``long``: random, 650 examples per op, every one also compiled (aot_eager, dynamic shapes),
  and 1000 programs compiled with Inductor (5,550 cases in all).

Each runs on the CPU over gloo (worlds 1-4), and over NCCL with one GPU per rank (worlds up to the
number of GPUs) where GPUs are present.
"""

import os

import pytest
from conftest import accelerator_count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compile_ops.testing.cases import OPS
from compile_ops.testing.compare import assert_compiled_matches_eager
from compile_ops.testing.strategies import cases, programs

LONG = os.environ.get("COMPILE_OPS_FUZZ", "ci") == "long"
PER_OP, PROGRAMS = (650, 1000) if LONG else (200, 40)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def world_sizes(device: str) -> tuple[int, ...]:
    return (1, 2, 3, 4) if device == "cpu" else tuple(range(1, min(4, accelerator_count()) + 1))


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_every_op_matches_reference(op, device, record_property):
    ran = []

    @fuzz_settings(PER_OP)
    @given(
        case=cases(op, world_sizes=world_sizes(device)),
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
            device=device,
            reproducer=f"compile_ops.testing.cases.{case!r}",
        )

    run_counted(check, ran, PER_OP, record_property)


@pytest.mark.parametrize("device", DEVICES)
def test_programs_match_reference(device, record_property):
    ran = []

    @fuzz_settings(PROGRAMS)
    @given(program=programs(world_sizes=world_sizes(device)), dynamic=st.booleans())
    def check(program, dynamic):
        ran.append(1)
        assert_compiled_matches_eager(
            program.function(device),
            [program.inputs(r) for r in range(program.world_size)],
            program.world_size,
            reference=program.reference,
            dynamic=dynamic,
            device=device,
            reproducer=program.source(device),
        )

    run_counted(check, ran, PROGRAMS, record_property)
