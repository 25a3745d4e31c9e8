"""The collective suite on one GPU over NCCL (world 1). Skipped where no GPU is present."""

import pytest
import torch
import workers
from conftest import requires_gpu

from compile_ops.testing.cases import OPS, Case, run_case

pytestmark = [requires_gpu, pytest.mark.gpu]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_nccl_eager_and_compiled_match_reference(world, op, dtype):
    case = Case(op, 1, dtype=dtype, device="cuda", uneven=op in ("all_gatherv", "all_to_all"))
    modes = ("eager", "compiled", "dynamic")
    (result,) = world(1, "nccl").run(run_case, case, modes)
    (want,) = case.expected()
    assert result["input_intact"]
    for mode in modes:
        torch.testing.assert_close(result[mode], want)
        if mode != "eager":
            assert result[f"{mode}_frames"] == 1


def test_nccl_opcheck(world):
    (failures,) = world(1, "nccl").run(workers.opcheck_all, "cuda")
    assert {k: v for k, v in failures.items() if v} == {}


@pytest.mark.parametrize("op", ["all_reduce", "broadcast"])
def test_nccl_dead_input_reinplaces_without_copy(world, op):
    ((code, out, expected),) = world(1, "nccl").run(workers.generated_code, op, False, "cuda")
    torch.testing.assert_close(out, expected)
    assert f"torch.ops.compile_ops.{op}_.default(" in code
    assert not workers.copy_kernels(code)
