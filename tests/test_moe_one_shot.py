"""The capacity all_to_all manager's one-shot exchange over symmetric memory (moe/one_shot.py).

It runs only on one host's CUDA GPUs; on a CPU the tests check what it refuses and its fake.
"""

import pytest
import torch
from conftest import gpu_worlds
from helpers.one_shot_workers import exchanges, manager_choice

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
def test_capacity_all_to_all_manager_uses_it_on_one_host(world, world_size):
    for choice in world(world_size, "nccl").run(manager_choice):
        assert choice == {"default": True, "off": False}
