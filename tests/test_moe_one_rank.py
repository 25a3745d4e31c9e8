"""The sharded MoE block on a one-rank group (gloo, CPU), where every collective of the layer is
the identity: none is traced or run, the block still equals the reference with its reduce-contract
check on, and what the ops refuse about their size lists is refused there too. On two ranks the
same block still runs its collectives."""

import pytest
import torch
from helpers.moe_one_rank_workers import (
    compiled_block,
    compiled_refusals,
    eager_collectives,
    one_rank_refusals,
)
from helpers.moe_workers import CAPACITY, TOL

from compile_ops.moe import MANAGERS

MODES = {"dynamic": None, "capacity": CAPACITY}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("manager", list(MANAGERS))
@pytest.mark.parametrize("kind", ["tp", "ep", "tp_ep"])
def test_compiled_block_traces_no_collective(world, kind, manager, mode):
    """fullgraph=True, debug=True: no collective op in the ATen graph, one frame for every
    count (none included), the reference's output, and the in-graph reduce check passes."""
    capacity = MODES[mode]
    counts = [3, 0, capacity or 17]
    (result,) = world(1).run(compiled_block, manager, kind, capacity, counts)
    assert result["collectives"] == [], result["collectives"]
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


def test_one_rank_refuses_what_the_ops_refuse(world):
    """Each bad size list, dimensionless x or unserved device: the same error type and message
    as the public op at one rank; where the op leaves it to the backend, a clear ValueError."""
    (cases,) = world(1).run(one_rank_refusals)
    for case, (ours, theirs) in cases.items():
        assert ours is not None, f"{case}: not refused"
        if theirs is not None:
            assert ours == theirs, case
    kind, message = cases["all_reduce_device"][0]
    assert kind == "GroupError", message
    assert message.startswith("compile_ops.all_reduce: x is on meta but group '0' (gloo) serves")
    assert cases["all_to_all_output_rows"][0] == (
        "ValueError",
        "compile_ops.all_to_all: x.shape[0]=3 on rank 0 but output_split_sizes[0]=5",
    )


def test_compiled_refusals(world):
    """Compiled: a size list provably not [x.shape[0]] is refused while tracing (ValueError,
    naming op and argument); one read from data fails at run time, never returning rows of
    another count."""
    (result,) = world(1).run(compiled_refusals)
    assert result["good"]
    kind, message = result["data"]
    assert kind == "RuntimeError" and "Runtime assertion failed" in message, result["data"]
    kind, message = result["static"]
    assert kind == "ValueError", message
    assert message.startswith(
        "compile_ops.all_gatherv: sizes is not [x.shape[0]], as a one-rank group needs"
    )
