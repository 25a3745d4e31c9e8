"""The capacity all_to_all manager's one-shot exchange over symmetric memory (moe/one_shot.py).

It runs only on one host's CUDA GPUs; on a CPU the tests check what it refuses and its fake.
"""

import pytest
import torch
from conftest import gpu_worlds
from helpers.one_shot_workers import back_to_back, exchanges, manager_choice, mismatched_sizes

import compile_ops  # noqa: F401  (defines the ops)
from compile_ops.moe.one_shot import one_shot_all_to_all


def test_refuses_a_cpu_tensor_naming_the_op():
    with pytest.raises(ValueError, match=r"one_shot_all_to_all: x is on cpu; .* CUDA devices only"):
        one_shot_all_to_all(torch.zeros(4, 2), "any")


def test_fake_keeps_the_shape_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = one_shot_all_to_all(torch.empty(6, 5, dtype=torch.bfloat16), "any")
    assert out.shape == (6, 5) and out.dtype == torch.bfloat16


def test_kernel_compiles_for_hopper_with_system_scope_flags():
    """No GPU needed: the kernel lowers for sm_90, and its flags are set with a release and taken
    with an acquire at system scope (another GPU's writes must be visible once a flag is)."""
    pytest.importorskip("triton")
    from helpers.moe_workers import benchmark_script

    for ranks in (2, 8):
        row = benchmark_script("moe_kernel_resources").one_shot_resources(90, ranks)
        assert row["spill_stores"] == 0, row
        assert row["release_sys_cas"] == 1 and row["acquire_sys_cas"] == 1, row


def test_op_is_never_dead_code():
    op = torch.ops.compile_ops_moe.one_shot_all_to_all.default
    assert op in torch.fx.node._side_effectful_functions


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", gpu_worlds(2))
def test_exchange_equals_nccl_eager_compiled_and_replayed(world, world_size):
    """Bit for bit NCCL's all_to_all_single over rounds of interleaved sizes (each buffer's flags
    reused many times), compiled, and replayed from a CUDA graph with fresh inputs; a size first
    seen while capturing is refused (its buffer needs a collective) instead of hanging."""
    for result in world(world_size, "nccl").run(exchanges, 4):
        assert result["mismatches"] == []
        assert result["first_in_capture"][0] == "RuntimeError"
        assert "while a graph is being captured" in result["first_in_capture"][1]
        assert all(v == "SUCCESS" for v in result["opcheck"].values()), result["opcheck"]


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", gpu_worlds(2))
def test_back_to_back_calls_of_drifting_ranks_stay_exact(world, world_size):
    """100 calls queued at once, the ranks drifting apart (random sleeps, a competing matrix
    product): a rank that runs ahead writes the other half of a slower peer's buffer, never the
    one being read."""
    assert world(world_size, "nccl").run(back_to_back, 100) == [0] * world_size


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", gpu_worlds(2))
def test_ranks_passing_different_sizes_all_raise(world, world_size):
    """A peer's smaller buffer would be written past its end: refused on every rank instead."""
    for error in world(world_size, "nccl").run(mismatched_sizes):
        assert error[0] == "ValueError", error
        assert "passed different sizes, bytes by rank: [128, 192]" in error[1], error


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", gpu_worlds(2))
def test_capacity_all_to_all_manager_uses_it_on_one_host(world, world_size):
    for choice in world(world_size, "nccl").run(manager_choice):
        assert choice == {"default": True, "off": False}
