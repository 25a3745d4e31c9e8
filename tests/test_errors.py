"""Bad input fails the same way on every rank, names the op and the argument, and moves no data."""

import re

import pytest
from helpers import workers

from compile_ops.testing.cases import OPS

EXPECTED = {
    # case: (exception type, words the message must contain)
    "indivisible": ("ValueError", ["reduce_scatter", "x.shape[0]", "not divisible"]),
    "sizes_sum": ("ValueError", ["reduce_scatterv", "sizes", "sum to"]),
    "sizes_count": ("GroupError", ["reduce_scatterv", "len(sizes)"]),
    "gatherv_count": ("GroupError", ["all_gatherv", "len(sizes)"]),
    "gatherv_own": ("ValueError", ["all_gatherv", "sizes[", "x.shape[0]"]),
    "splits_sum": ("ValueError", ["all_to_all", "input_split_sizes", "sum to"]),
    "splits_count": ("GroupError", ["all_to_all", "len(output_split_sizes)"]),
    "unknown_group": ("GroupError", ["all_reduce", "no-such-group"]),
    "bad_op": ("ValueError", ["all_reduce", "op='xor'"]),
    "bad_dtype": ("ValueError", ["all_reduce", "torch.bool"]),
    "avg_int": ("ValueError", ["all_reduce", "op='avg'", "torch.int32"]),
    "bad_dim": ("ValueError", ["all_gather", "dim=2"]),
    "scalar": ("ValueError", ["all_gather", "at least one dimension"]),
    "bad_src": ("GroupError", ["broadcast", "src="]),
    "gather_dst": ("GroupError", ["gather", "dst=", "not a member"]),
    "gather_dim": ("ValueError", ["gather", "dim=-3"]),
    "out_shape": ("ValueError", ["all_gather", "out.shape"]),
    "group_size": ("GroupError", ["all_gather", "group_size"]),
}


@pytest.mark.parametrize("n", [2, 3])
def test_bad_calls_raise_clear_errors_on_every_rank(world, n):
    pool = world(n)
    per_rank = pool.run(workers.bad_calls)
    for case, (kind, words) in EXPECTED.items():
        for rank, rank_result in enumerate(per_rank):
            got = rank_result[case]
            assert got is not None, f"{case}: nothing was raised on rank {rank}"
            assert got[0] == kind, f"{case} on rank {rank}: {got}"
            for word in words:
                assert word in got[1], f"{case}: {word!r} missing from {got[1]!r}"
    # no rank was left inside a collective
    assert pool.run(workers.healthy) == [2.0 * n] * n


def test_wrong_device_and_destroyed_group(world):
    pool = world(2)
    for wrong_device, destroyed, destroyed_alias in pool.run(
        workers.wrong_device_and_destroyed_group
    ):
        assert wrong_device[0] == "GroupError" and "serves only ['cuda']" in wrong_device[1]
        assert destroyed[0] == "GroupError" and "no live process group" in destroyed[1]
        assert destroyed_alias[0] == "GroupError" and "destroyed" in destroyed_alias[1]
    assert pool.run(workers.healthy) == [4.0, 4.0]


COMPILED = {
    # case: (exception type, words the first line must contain)
    "indivisible": ("ValueError", ["reduce_scatter", "x.shape[0]=", "not divisible by"]),
    "indivisible_dynamic": ("ValueError", ["reduce_scatter", "x.shape[0]=", "not divisible by"]),
    "bad_dim": ("ValueError", ["all_gather", "dim=2"]),
    "bad_op": ("ValueError", ["all_reduce", "op='xor'"]),
    "avg_int": ("ValueError", ["all_reduce", "op='avg'", "torch.int32"]),
    "gatherv_count": ("GroupError", ["all_gatherv", "len(sizes)"]),
    "splits_from_tensor": ("ValueError", ["all_to_all", "input_split_sizes sum to"]),
    "sizes_from_tensor": ("ValueError", ["reduce_scatterv", "sizes sum to"]),
}


@pytest.mark.parametrize("n", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_compiled_errors_lead_with_our_message(world, n):
    """Under torch.compile(fullgraph=True) the first line is ours, with the values the call was
    traced with (not symbols such as s77), in the class eager raises; sizes read from a tensor
    (.tolist()) are checked when the op runs, with the same message, before any communication."""
    pool = world(n)
    for rank, results in enumerate(pool.run(workers.compiled_bad_calls)):
        for case, (kind, words) in COMPILED.items():
            got = results[case]
            assert got is not None, f"{case}: nothing was raised on rank {rank}"
            first_line = got[1].splitlines()[0]
            assert got[0] == kind, f"{case} on rank {rank}: {got}"
            assert first_line.startswith("compile_ops."), f"{case}: {first_line!r}"
            for word in words:
                assert word in first_line, f"{case}: {word!r} missing from {first_line!r}"
            assert not re.search(r"\b[su]\d+\b", first_line), f"{case}: symbolic {first_line!r}"
        kind, message, plain = results["graph_break"]
        assert plain and message.startswith("compile_ops.reduce_scatter: x.shape[0]="), message
    assert pool.run(workers.healthy) == [2.0 * n] * n


def test_meta_tensors_are_refused(world):
    """A meta tensor holds no data: outside fake mode every op refuses it instead of returning
    a tensor while nothing was sent (FakeTensorMode and torch.compile use the fakes instead)."""
    pool = world(2)
    for results in pool.run(workers.meta_inputs):
        assert set(results) == set(OPS)
        for op, got in results.items():
            assert got is not None, f"{op} took a meta tensor"
            assert got[0] == "ValueError", got
            assert f"compile_ops.{op}: x is on the meta device" in got[1], got
    assert pool.run(workers.healthy) == [4.0, 4.0]
