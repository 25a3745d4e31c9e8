"""The collective suite over NCCL, one GPU per rank: world 1, and world 2 where two GPUs are
present. Skipped where no GPU is present."""

import pytest
import torch
from conftest import gpu_worlds
from helpers import collective_workers as cw
from helpers import workers

from compile_ops.ops import SPECS
from compile_ops.testing.cases import OPS, Case, assert_case_results, dtype_cases, run_case

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("world_size", gpu_worlds(1, 2))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_nccl_eager_and_compiled_match_reference(world, op, dtype, world_size):
    case = Case(op, world_size, dtype=dtype, device="cuda", uneven=SPECS[op].uneven)
    assert_case_results(case, world(world_size, "nccl").run(run_case, case))


@pytest.mark.parametrize("world_size", gpu_worlds(1, 2))
def test_nccl_every_documented_dtype(world, world_size):
    """int16 and the unsigned ints (which NCCL lacks) as bytes or widened, float8, bool, complex."""
    cases = [case.with_(device="cuda") for case in dtype_cases(world_size)]
    per_rank = world(world_size, "nccl").run(cw.run_eager, cases)
    for i, case in enumerate(cases):
        assert_case_results(case, [rank_results[i] for rank_results in per_rank], ("eager",))


def test_nccl_opcheck(world):
    (results,) = world(1, "nccl").run(workers.opcheck_all, "cuda")
    assert {op: fs for op, fs in results.items() if any(fs)} == {}


@pytest.mark.parametrize("op", ["all_reduce", "broadcast"])
def test_nccl_dead_input_reinplaces_without_copy(world, op):
    ((code, out, expected),) = world(1, "nccl").run(workers.generated_code, op, False, "cuda")
    torch.testing.assert_close(out, expected)
    assert f"torch.ops.compile_ops.{op}_.default(" in code
    assert not workers.copy_kernels(code)
