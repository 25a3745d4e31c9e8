"""compile_ops.use_functional_collectives: the public calls emit torch's functional collectives
(which Inductor's communication passes match) and give the same results as our ops."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import group_workers

FUNCOL_OPS = {
    "_c10d_functional.all_reduce",
    "_c10d_functional.all_gather_into_tensor",
    "_c10d_functional.reduce_scatter_tensor",
    "_c10d_functional.all_to_all_single",
    "_c10d_functional.broadcast",
    "_c10d_functional.wait_tensor",
}


@pytest.mark.parametrize(
    "n, compiler, uneven",
    [
        pytest.param(2, "aot_eager", True, id="w2"),
        # A third rank adds little here and ~35 s of compilation per rank: nightly
        pytest.param(3, "aot_eager", True, id="w3", marks=pytest.mark.slow),
        # Inductor's CPU kernels take ~30 s of C++ compilation per rank: nightly
        pytest.param(2, "inductor", False, id="w2-inductor", marks=pytest.mark.slow),
    ],
)
def test_functional_collectives_give_our_results_eager_and_compiled(world, n, compiler, uneven):
    per_rank = world(n).run(group_workers.functional_collectives_switch, compiler, uneven)
    for rank, got in enumerate(per_rank):
        assert got["enabled inside"] and not got["enabled after"]
        assert got["funcol graph"] == FUNCOL_OPS, f"rank {rank}: {got['funcol graph']}"
        assert got["graphs"] == 2 and all(op.startswith("compile_ops.") for op in got["ours graph"])
        ours, *others = got["results"]
        variants = ("funcol eager", "funcol compiled", "ours compiled")
        for variant, results in zip(variants, others, strict=True):
            for i, (want, have) in enumerate(zip(ours, results, strict=True)):
                torch.testing.assert_close(have, want, msg=f"rank {rank}, {variant}, output {i}")


def test_environment_variable_turns_the_switch_on():
    env = {**os.environ, "COMPILE_OPS_FUNCTIONAL_COLLECTIVES": "1"}
    code = "import compile_ops; print(compile_ops.functional_collectives_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
