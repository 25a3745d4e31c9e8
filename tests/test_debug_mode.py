"""Debug mode: ranks that disagree on a collective's arguments all raise, naming the difference."""

import os
import subprocess
import sys

import pytest
from helpers import debug_workers as dw
from helpers import workers

# case: words every rank's message must contain ({last} is the last rank)
EXPECTED = {
    "split_sizes": [
        "compile_ops.all_to_all:",
        "rank 0 sends 1 row(s) to rank {last} (input_split_sizes[{last}]=1)",
        "but rank {last} expects 2 from rank 0 (output_split_sizes[0]=2)",
    ],
    "reduce_op": ["compile_ops.all_reduce: ranks disagree on op", "rank {last}: 'max'", "'sum'"],
    "dim": ["compile_ops.all_gather: ranks disagree on dim", "rank 0: 0", "rank {last}: 1"],
    "shape": [
        "compile_ops.all_reduce: ranks disagree on x.shape",
        "rank 0: [2, 3]",
        "rank {last}: [3, 3]",
    ],
    "dtype": ["ranks disagree on x.dtype", "rank 0: torch.float32", "rank {last}: torch.int32"],
    "collective": [
        "compile_ops: ranks disagree on the collective",
        "rank 0: all_reduce",
        "rank {last}: all_gather",
    ],
    "gatherv_sizes": [
        "compile_ops.all_gatherv: ranks disagree on sizes",
        "rank 0: [1, 2",
        "rank {last}: [2, 1",
    ],
    "gatherv_extent": ["compile_ops.all_gatherv: x.shape[0]=2 on rank {last} but sizes[{last}]=1"],
    "scatterv_sizes": [
        "compile_ops.reduce_scatterv: ranks disagree on sizes",
        "rank {last}: [2, 1",
    ],
    "src": ["compile_ops.broadcast: ranks disagree on src", "rank 0: 0", "rank {last}: 1"],
    "a2a_row_shape": [
        "compile_ops.all_to_all: ranks disagree on x.shape outside dim 0",
        "rank {last}: [{n}, 3]",
    ],
    "scatter_dim": ["compile_ops.reduce_scatter: ranks disagree on dim", "rank {last}: 1"],
}


def _check_every_rank(results, case, n):
    words = [w.format(last=n - 1, n=n) for w in EXPECTED[case]]
    messages = set()
    for rank, got in enumerate(results):
        assert got is not None, f"{case}: rank {rank} raised nothing"
        assert got[0] == "RankMismatchError", (case, rank, got)
        assert "(debug mode)" in got[1]
        for word in words:
            assert word in got[1], f"{case} rank {rank}: {word!r} missing from {got[1]!r}"
        messages.add(got[1])
    assert len(messages) == 1, f"{case}: the ranks raised different messages: {messages}"


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_mismatch_raises_the_same_clear_error_on_every_rank_eager(world, n, case):
    _check_every_rank(world(n).run(dw.mismatch, case, False, timeout=60), case, n)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "case", ["split_sizes", "reduce_op", "dim", "shape", "dtype", "gatherv_extent"]
)
def test_mismatch_raises_the_same_clear_error_on_every_rank_compiled(world, n, case):
    _check_every_rank(world(n).run(dw.mismatch, case, True, timeout=120), case, n)


@pytest.mark.parametrize("n", [2, 3])
def test_a_rank_whose_own_check_fails_does_not_leave_the_others_waiting(world, n):
    pool = world(n)
    first, *others = pool.run(dw.mismatch, "local_error_on_rank0", False, timeout=60)
    assert first[0] == "ValueError" and "input_split_sizes sum to" in first[1], first
    for got in others:
        assert got[0] == "RankMismatchError" and "rank(s) [0]" in got[1], got
    assert pool.run(workers.healthy) == [2.0 * n] * n


def test_mismatch_in_a_subgroup_names_global_ranks(world):
    pool = world(3)
    _, one, two = pool.run(dw.subgroup_mismatch, timeout=60)
    assert one == two and one[0] == "RankMismatchError", (one, two)
    assert "rank 1: torch.float32; rank 2: torch.float64" in one[1]
    assert pool.run(workers.healthy) == [6.0] * 3


@pytest.mark.parametrize("n", [2, 3])
def test_matching_calls_pass_in_debug_mode(world, n):
    for on, grad in world(n).run(dw.every_op_passes_in_debug_mode):
        # d/dx of sum(broadcast(all_gather(x), src=0)) summed over ranks: n on every rank
        assert on and grad == [float(n)] * 3


def test_off_by_default_and_scoped(world):
    assert world(2).run(dw.debug_mode_is_off_by_default_and_scoped) == [(False, True, False)] * 2


@pytest.mark.parametrize("value, expected", [("1", "True"), ("maybe", "ValueError")])
def test_environment_variable(value, expected):
    code = "import compile_ops\nprint(compile_ops.is_debug_mode())\n"
    env = {**os.environ, "COMPILE_OPS_DEBUG": value, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert expected in out.stdout + out.stderr
