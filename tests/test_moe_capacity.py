"""Capacity mode of the sharded MoE block (``max_tokens_per_rank``): every manager x layout on
gloo worlds 2 and 4 against the single-device reference, eager and compiled, float32 and
bfloat16; no host read in the compiled graphs; buffers and splits fixed by the capacity; the
errors past the capacity; the per-peer bound; the reduce contract."""

import pytest
import torch
from helpers.moe_workers import (
    CAPACITY,
    LAYOUTS,
    TOL,
    benchmark_script,
    capacity_argument_errors,
    capacity_cell,
    dropped_rows,
    dynamic_host_reads,
    over_capacity,
    over_capacity_compiled,
    run_benchmark,
    run_capacity,
    run_capacity_flipped,
)

from compile_ops.moe import CAPACITY_MANAGERS, MANAGERS

N = CAPACITY
# Uneven counts, a rank with no token, ranks with exactly N tokens; one compiled frame for all.
STEPS = {
    2: [[3, 5], [0, N], [N, N], [1, 0]],
    4: [[3, 5, 1, 2], [0, N, 2, 0], [N, N, N, N]],
}


def _cells():
    for world, kind in LAYOUTS:
        for manager in CAPACITY_MANAGERS:
            yield pytest.param(world, kind, manager, id=f"w{world}-{kind}-{manager}")


def _expected_collectives(manager: str, n: int, debug_columns: int = 1):
    """What each manager's compiled graph must run, by op: the row count of its input (a plain
    int: the buffer is sized by the capacity, not by the tokens) and its split sizes."""
    if manager == "all_to_all":
        return {"all_to_all": (n * N, ((N,) * n, (N,) * n))}
    combine = "all_reduce" if manager == "naive" else "reduce_scatter"
    return {"all_gather": (N, ()), combine: (n * N, ())}


@pytest.mark.parametrize(("world_size", "kind", "manager"), list(_cells()))
def test_matches_reference_with_no_host_read(world, world_size, kind, manager):
    """Eager and compiled, float32 and bfloat16, against the reference; the compiled graph
    (Dynamo's and ATen's) has no host read and no data-dependent size; its collectives move
    buffers sized by the capacity with static splits; one frame serves every count."""
    per_rank = world(world_size).run(capacity_cell, manager, kind, STEPS[world_size])
    expected = _expected_collectives(manager, world_size)
    for rank, cells in enumerate(per_rank):
        for (dtype, mode), result in cells.items():
            where = f"rank {rank} {dtype} {mode}"
            for step, (out, want) in enumerate(result["steps"]):
                assert out.dtype == dtype and out.shape == want.shape, where
                torch.testing.assert_close(out, want, **TOL[dtype], msg=f"{where} step {step}")
                if mode == "compiled":
                    eager = cells[(dtype, "eager")]["steps"][step][0]
                    torch.testing.assert_close(out, eager, **TOL[dtype], msg=f"{where} vs eager")
            if mode == "eager":
                continue
            assert result["frames"] == 1, f"{where}: graph breaks or recompiles"
            assert result["host_reads"] == [], where
            ops = {op for op, _, _ in result["collectives"]}
            assert ops == set(expected), f"{where}: {result['collectives']}"
            for op, shape, splits in result["collectives"]:
                rows, want_splits = expected[op]
                assert shape[0] == rows and splits == want_splits, f"{where}: {op} {shape}"


@pytest.mark.parametrize("manager", list(MANAGERS))
def test_graph_check_finds_the_dynamic_modes_reads(world, manager):
    """The check above is not vacuous: it finds the count reads of the dynamic managers."""
    for found in world(2).run(dynamic_host_reads, manager, "ep"):
        assert any("_local_scalar_dense" in f for f in found), found


def test_dynamic_mode_stays_the_default():
    import inspect

    from compile_ops.moe import ShardedMoEBlock, make_manager

    for fn in (ShardedMoEBlock, make_manager):
        assert inspect.signature(fn).parameters["max_tokens_per_rank"].default is None


# ---- more tokens than the capacity ---------------------------------------------------------


@pytest.mark.parametrize("manager", list(CAPACITY_MANAGERS))
def test_too_many_tokens_raises_on_every_rank_before_any_token_moves(world, manager):
    """Eager: one rank over capacity; every rank raises the same error after exchanging counts
    only (one all_gather of int64 counts: no token, no routing has moved)."""
    counts = [3, N + 1]
    per_rank = world(2).run(over_capacity, manager, counts)
    errors = {error for error, _ in per_rank}
    assert len(errors) == 1, errors
    kind, message = errors.pop()
    assert kind == "ValueError"
    assert "rank 1 of group" in message and f"has {N + 1} tokens" in message
    assert f"more than max_tokens_per_rank={N}; no token was moved" in message
    width = 1 + (2 if manager == "all_to_all" else 0)  # the count, and rows per peer
    for _, calls in per_rank:
        assert calls == [("all_gather", (1, width), "torch.int64")], calls


def test_too_many_tokens_compiled(world):
    """Compiled: the bound on the token count is a guard of the frame, so a call past it never
    enters the graph; the error quotes the check, naming max_tokens_per_rank."""
    for error in world(2).run(over_capacity_compiled, "agrs"):
        assert error is not None and "max_tokens_per_rank" in error[1], error


# ---- the tighter per-peer bound of all_to_all ----------------------------------------------


def test_per_peer_overflow_raises_eagerly(world):
    per_peer = 2
    per_rank = world(2).run(over_capacity, "all_to_all", [N, 1], per_peer)
    errors = {error for error, _ in per_rank}
    assert len(errors) == 1, errors
    kind, message = errors.pop()
    assert kind == "ValueError" and "rank 0 of group" in message
    assert f"more than max_tokens_per_peer={per_peer} (max_tokens_per_rank={N} always fits)" in (
        message
    )
    assert all(calls == [("all_gather", (1, 3), "torch.int64")] for _, calls in per_rank)


def test_per_peer_overflow_is_counted_when_compiled(world):
    """Compiled (and so replayed) nothing can raise: rows past a peer's buffer are dropped and
    counted on the device. Within the bound the output is exact; past it, exactly the tokens
    with a dropped send differ, and ``dropped`` is the number of sends lost."""
    per_peer = 2
    steps = [[2, 2], [N, N], [1, 0]]
    per_rank = world(2).run(dropped_rows, per_peer, steps)
    for rank, results in enumerate(per_rank):
        lost_so_far = 0
        for step, (out, want, lost, lost_sends, dropped) in enumerate(results):
            where = f"rank {rank} step {step}"
            torch.testing.assert_close(out[~lost], want[~lost], **TOL[torch.float32], msg=where)
            for row in lost.nonzero().flatten().tolist():
                assert not torch.allclose(out[row], want[row], atol=1e-4), f"{where} row {row}"
            lost_so_far += lost_sends
            assert dropped == lost_so_far, f"{where}: the counter accumulates over steps"
        assert lost_so_far > 0, f"rank {rank}: no step overflowed, the test would see no drop"


def test_per_peer_bound_within_it_matches_reference(world):
    steps, per_peer = [[2, 2], [0, 1]], 2
    results = world(2).run(run_capacity, "all_to_all", "ep", torch.float32, steps, None, per_peer)
    for rank, result in enumerate(results):
        assert result["dropped"] == 0
        for out, want in result["steps"]:
            torch.testing.assert_close(out, want, **TOL[torch.float32], msg=f"rank {rank}")


# ---- the reduce contract -------------------------------------------------------------------


def test_managers_state_whether_combine_reduces():
    assert {name: m.output_is_reduced for name, m in CAPACITY_MANAGERS.items()} == {
        name: m.output_is_reduced for name, m in MANAGERS.items()
    }


@pytest.mark.parametrize(("world_size", "kind", "manager"), list(_cells()))
def test_flipped_flag_is_caught(world, world_size, kind, manager):
    n = world_size
    results = world(n).run(run_capacity_flipped, manager, kind, [6] * n)
    for rank, (out, want, error) in enumerate(results):
        assert not torch.allclose(out, want, **TOL[torch.float32]), f"rank {rank}"
        assert error.startswith("ReduceContractError"), error
        reducing = CAPACITY_MANAGERS[manager].output_is_reduced
        assert (f"about the group size ({n}): reduced twice" if reducing else "is missing") in error


# ---- arguments -----------------------------------------------------------------------------


def test_capacity_arguments_are_checked(world):
    per_rank = world(2).run(capacity_argument_errors)
    expected = {
        "zero": "max_tokens_per_rank=0 must be a positive int",
        "float": "max_tokens_per_rank=8.0 must be a positive int",
        "peer_alone": "max_tokens_per_peer belongs to capacity mode; give max_tokens_per_rank",
        "peer_for_agrs": "max_tokens_per_peer applies to the all_to_all manager only",
        "peer_above_rank": "max_tokens_per_peer=8 is larger than max_tokens_per_rank=4",
        "ranks_disagree": "were given different capacities, [max_tokens_per_rank, "
        "max_tokens_per_peer] by rank: [[8, 8], [9, 9]]",
        "block_vs_manager": "max_tokens_per_rank=4 but the manager given was built with "
        "max_tokens_per_rank=8",
        "one_shot_alone": "one_shot belongs to capacity mode; give max_tokens_per_rank",
        "one_shot_for_agrs": "one_shot applies to the all_to_all manager only, not 'agrs'",
        "one_shot_on_gloo": "one_shot=True, but group",
    }
    for errors in per_rank:
        for what, text in expected.items():
            assert errors[what] is not None, f"{what}: no error"
            assert errors[what][0] == "ValueError" and text in errors[what][1], errors[what]
        assert errors["default_is_dynamic"] is True
        assert errors["one_shot_default_off_gloo"] is True
        assert "(gloo, 2 ranks) on cpu cannot use it" in errors["one_shot_on_gloo"][1]
        assert errors["given_manager_kept"] is True
    assert per_rank[0]["ranks_disagree"] == per_rank[1]["ranks_disagree"]


# ---- Inductor ------------------------------------------------------------------------------


def test_inductor(world):
    """The all_to_all manager's slot arithmetic (cumsum, searchsorted, gathers) through
    Inductor's code generation, once (C++ compiles cost seconds)."""
    steps = STEPS[2]
    for result in world(2).run(run_capacity, "all_to_all", "ep", torch.float32, steps, "inductor"):
        assert result["frames"] == 1
        for out, want in result["steps"]:
            torch.testing.assert_close(out, want, **TOL[torch.float32])


# ---- the decode benchmark, as a smoke run on gloo ------------------------------------------


def test_decode_benchmark_runs_on_cpu(world, tmp_path, capsys):
    """benchmarks/moe_decode.py end to end on 2 gloo ranks (the shared pool, Dynamo only):
    every manager's block in both modes checked against the reference, the movement rows, the
    JSON. No timing is judged here."""
    import json

    bench = benchmark_script("moe_decode")
    pool = world(2)

    def run(fn, *args):
        return pool.run(run_benchmark, "moe_decode", fn.__name__, *args)

    argv = ["--device", "cpu", "--world-size", "2", "--quick", "--backend", "eager"]
    assert bench.main([*argv, "--json", str(tmp_path / "decode.json")], run=run) == 0
    result = json.loads((tmp_path / "decode.json").read_text())
    blocks = {(r["manager"], r["mode"]) for r in result["rows"] if r["part"] == "block"}
    assert blocks == {(m, mode) for m in MANAGERS for mode in ("dynamic", "capacity")}
    assert all(r["ok"] for r in result["rows"] if r["part"] == "block")
    moved = {r["manager"]: r["bytes_sent"] for r in result["rows"] if r["part"] == "movement"}
    assert moved["agrs"] == moved["all_to_all"] > 0  # equal buffers at max_tokens_per_peer = N
    assert "movement launched: all_to_all / agrs" in capsys.readouterr().out
