"""The collective suite over NCCL, one GPU per rank: world 1, and world 2 where two GPUs are
present. Skipped where no GPU is present."""

import pytest
import torch
import workers
from conftest import gpu_worlds

from compile_ops.testing.cases import OPS, Case, assert_case_results, run_case

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("world_size", gpu_worlds(1, 2))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_nccl_eager_and_compiled_match_reference(world, op, dtype, world_size):
    uneven = op in ("all_gatherv", "reduce_scatterv", "all_to_all")
    case = Case(op, world_size, dtype=dtype, device="cuda", uneven=uneven)
    assert_case_results(case, world(world_size, "nccl").run(run_case, case))


def test_nccl_opcheck(world):
    (failures,) = world(1, "nccl").run(workers.opcheck_all, "cuda")
    assert {k: v for k, v in failures.items() if v} == {}


@pytest.mark.parametrize("op", ["all_reduce", "broadcast"])
def test_nccl_dead_input_reinplaces_without_copy(world, op):
    ((code, out, expected),) = world(1, "nccl").run(workers.generated_code, op, False, "cuda")
    torch.testing.assert_close(out, expected)
    assert f"torch.ops.compile_ops.{op}_.default(" in code
    assert not workers.copy_kernels(code)
