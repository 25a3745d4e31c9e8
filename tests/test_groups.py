"""Group identity: a ProcessGroup passed is that group, an alias never shadows a torch group name,
a destroyed group raises on every rank (eager, and in code compiled before it was destroyed), and
group= accepts what functional collectives accept."""

import pytest
import torch
from helpers import group_workers

from compile_ops.testing.pool import WorkerPool


def is_group_error(result) -> bool:
    return isinstance(result, tuple) and result[0] == "GroupError"


@pytest.mark.parametrize("n", [2, 3])
def test_alias_may_not_shadow_a_torch_group_name(world, n):
    for rank, results in enumerate(world(n).run(group_workers.alias_refusals)):
        for what in ("world name", "own name", "future counter", "hashed name", "reserved #"):
            assert results[what] is not None, f"rank {rank}: alias {what} was accepted"
            assert "register_group" in results[what]
        assert results["empty"] is not None
        # dist.group.WORLD and torch's name for it mean the whole world, on every rank
        assert results["world"] == results["world compiled"] == results["'0'"] == n
        if rank < n - 1:
            assert results["alias"] == results["alias compiled"] == n - 1


@pytest.mark.parametrize("n", [2, 3])
def test_compiled_code_raises_once_its_group_is_destroyed(world, n):
    for rank, (before, after) in enumerate(world(n).run(group_workers.compiled_then_destroyed)):
        assert before == (n, 2 * n)
        for what, result in after.items():
            assert is_group_error(result), f"rank {rank}, {what}: {result}"
            assert "destroyed" in result[1]


def test_code_compiled_before_a_reinit_never_runs_on_the_new_group_of_that_name():
    """Every group destroyed and a new world started: torch names the new groups '0', '1' again.
    Old group objects, and code compiled for them, must raise on every rank instead of reducing
    over whichever new group now carries their name."""
    pool = WorkerPool(3).start()  # its world is re-initialised: not the shared pool
    try:
        per_rank = pool.run(group_workers.stale_groups_after_reinit)
    finally:
        pool.close()
    for rank, (before, after) in enumerate(per_rank):
        assert before["world"] == before["default"] == 3
        assert before.get("sub", 2) == 2
        old_world, old_sub, new_sub = after.pop("names")
        assert old_world == "0"
        if rank == 1:  # the new sub-group took the old one's name (else this test shows nothing)
            assert old_sub == new_sub == "1"
        assert after.pop("compiled new world") == after.pop("compiled default") == 3
        if rank != 2:
            assert after.pop("compiled new sub") == 2
        for what, result in after.items():
            assert is_group_error(result), f"rank {rank}, {what}: {result}"


def test_device_mesh_and_ranks_as_group(world):
    results = world(2).run(group_workers.mesh_groups)
    for rank, per_form in enumerate(results):
        for what in ("mesh", "(mesh, 1)", "mesh['tp']", "ranks"):
            reduced, gathered, reduced_compiled, gathered_compiled = per_form[what]
            assert reduced == reduced_compiled == [3.0, 3.0], what
            assert gathered == gathered_compiled == [1.0, 1.0, 2.0, 2.0], what
        own = float(rank + 1)
        assert per_form["(mesh, 0)"] == [[own] * 2, [own] * 2, [own] * 2, [own] * 2]
        assert is_group_error(per_form["2-D mesh"]) and "(mesh, dim)" in per_form["2-D mesh"][1]
        assert is_group_error(per_form["unknown ranks"])
        assert per_form["bad tuple"][0] == "TypeError"


def test_constant_marking_matches_torch():
    """groups.py marks its lookups constant for Dynamo the way torch.compiler does, without
    importing Dynamo; if torch changes how it marks them, this says so."""
    from compile_ops import groups

    marked = torch.compiler.assume_constant_result(lambda: None)
    assert {k for k in vars(marked)} == {"_dynamo_marked_constant"}
    assert groups._bind._dynamo_marked_constant is True
