"""Bad input fails the same way on every rank, names the op and the argument, and moves no data."""

import pytest
import workers

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
