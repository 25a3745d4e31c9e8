"""The sharded MoE block on a one-rank group (gloo, CPU), where every collective of the layer is
the identity: none is traced or run, and the block still equals the reference with its
reduce-contract check on. On two ranks the same block still runs its collectives."""

import pytest
import torch
from helpers.moe_one_rank_workers import compiled_block, eager_collectives
from helpers.moe_workers import CAPACITY, TOL

from compile_ops.moe import MANAGERS

MODES = {"dynamic": None, "capacity": CAPACITY}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("manager", list(MANAGERS))
@pytest.mark.parametrize("kind", ["tp", "ep", "tp_ep"])
def test_compiled_block_traces_no_collective(world, kind, manager, mode):
    """fullgraph=True, debug=True: no collective op and no host read in the graphs (every
    manager can be captured at one rank, dynamic mode included), one frame for every count
    (none included), the reference's output, and the in-graph reduce check passes."""
    capacity = MODES[mode]
    counts = [3, 0, capacity or 17]
    (result,) = world(1).run(compiled_block, manager, kind, capacity, counts)
    assert result["collectives"] == [], result["collectives"]
    assert result["host_reads"] == [], result["host_reads"]
    assert result["frames"] == 1
    for step, (out, want) in enumerate(result["steps"]):
        assert out.shape == want.shape == (counts[step], want.shape[1])
        torch.testing.assert_close(out, want, **TOL[torch.float32], msg=f"step {step}")


@pytest.mark.parametrize("world_size", [1, 2])
def test_eager_block_runs_collectives_only_with_more_than_one_rank(world, world_size):
    """Every manager in both modes (EP): no collective runs on one rank, some on two; the
    output equals the reference either way."""
    per_rank = world(world_size).run(eager_collectives, list(MANAGERS), list(MODES.values()))
    for rank, cells in enumerate(per_rank):
        for (manager, capacity), (called, out, want) in cells.items():
            where = f"rank {rank} of {world_size}: {manager}, max_tokens_per_rank={capacity}"
            torch.testing.assert_close(out, want, **TOL[torch.float32], msg=where)
            assert (called == []) == (world_size == 1), f"{where}: {called}"


def test_one_rank_block_adds_no_op_to_its_expert_stage(world):
    """At one rank the agrs manager moves nothing, so the compiled block is its expert stage:
    the same ATen ops, none added (packing the routing for a move that never happens added a
    cat and casts, two more kernels a call)."""
    from helpers.moe_one_rank_workers import block_and_stage_ops

    (found,) = world(1).run(block_and_stage_ops, "portable")
    extra = {op: n - found["stage"].get(op, 0) for op, n in found["block"].items()}
    assert {op: n for op, n in extra.items() if n > 0} == {}, found
