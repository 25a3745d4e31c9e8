"""The safety panel of realize_on_reuse (torch 2.11): patch on vs off vs eager.

* Decoder stacks of real model families (``transformers``: Llama, Qwen2, Mixtral, Qwen2-MoE), tiny
  and random, compiled with ``fullgraph=True`` in fp32 and bf16: the patched output is within the
  test kit's tolerance of eager and of the unpatched compile, no further from eager than the
  unpatched one, and has no more kernels.
* The test kit's Inductor program fuzzer, run with the patch on in every rank.
* A tensor-parallel stack on compile_ops collectives: still reinplaced with the patch on
  (``test_tensor_parallel_stack_with_patch_matches_eager`` in test_inductor_patches_realize.py).

CI runs one dtype per family (both dtypes, dense and MoE, are covered); the other half is
``slow``. Every case compiles each way once, shared by the tests that read it.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch._inductor.utils import run_and_get_code

import inductor_patches
from compile_ops.testing import codegen, hf_decoders
from compile_ops.testing.compare import assert_compiled_matches_eager, default_tolerance
from compile_ops.testing.pool import get_pool
from compile_ops.testing.strategies import programs
from inductor_patches.realize_on_reuse import decisions

PATCH = inductor_patches.get("realize_on_reuse")
pytestmark = pytest.mark.skipif(
    not PATCH.matches_torch(),
    reason=f"realize_on_reuse is for torch {PATCH.torch_versions}; running {torch.__version__}",
)

fp32, bf16 = torch.float32, torch.bfloat16
TOKENS = 16
# (family, dtype, layers). One layer already shares its residual between a norm and the next
# add; CI compiles each family once, in one of the two dtypes, nightly all of them at 2 layers.
CI_CASES = [("llama", fp32, 1), ("qwen2", bf16, 1), ("mixtral", bf16, 1), ("qwen2_moe", fp32, 1)]
SLOW_CASES = [(f, d, 2) for f in ("llama", "qwen2", "mixtral", "qwen2_moe") for d in (fp32, bf16)]
CASES = [pytest.param(*c, id=f"{c[0]}-{str(c[1])[6:]}-{c[2]}l") for c in CI_CASES] + [
    pytest.param(*c, id=f"{c[0]}-{str(c[1])[6:]}-{c[2]}l", marks=pytest.mark.slow)
    for c in SLOW_CASES
]

_results: dict = {}


def compiled_ways(family: str, dtype: torch.dtype, layers: int) -> dict:
    """Eager output, and (output, generated code, decisions) compiled with the patch off and on."""
    key = (family, dtype, layers)
    if key in _results:
        return _results[key]
    pytest.importorskip("transformers")  # in the test extra
    model, ids = hf_decoders.build(family, dtype, layers), hf_decoders.input_ids(TOKENS)
    was_applied = PATCH.is_applied()
    ways = {}
    try:
        with torch.no_grad():
            ways["eager"] = model(ids)
            for name, on in (("off", False), ("on", True)):
                PATCH.apply() if on else PATCH.revert()
                decisions.reset()
                torch._dynamo.reset()  # the same module again: compile it afresh
                with (
                    torch._inductor.config.patch(fx_graph_cache=False, compile_threads=1),
                    torch._functorch.config.patch(enable_autograd_cache=False),
                ):
                    out, codes = run_and_get_code(torch.compile(model, fullgraph=True), ids)
                ways[name] = (out, codes, decisions.counts())
    finally:
        PATCH.apply() if was_applied else PATCH.revert()
    _results[key] = ways
    return ways


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


def tolerance(expected: torch.Tensor) -> dict:
    """fp32: the test kit's. bf16: 8 units in the last place of the largest output element.

    Eager rounds to bf16 after every op, a compiled kernel keeps fp32 inside it; through a
    stack the two differ by a few bf16 ulps at the outputs' scale (up to 4 measured here), and
    elementwise relative error means nothing for outputs near 0.
    """
    if expected.dtype != torch.bfloat16:
        rtol, atol = default_tolerance(expected.dtype)
        return {"rtol": rtol, "atol": atol}
    scale = 2.0 ** torch.floor(torch.log2(expected.float().abs().max())).item()
    return {"rtol": 0.0, "atol": 8 * torch.finfo(torch.bfloat16).eps * scale}


@pytest.mark.parametrize(("family", "dtype", "layers"), CASES)
def test_family_with_patch_matches_eager_and_unpatched(family, dtype, layers):
    ways = compiled_ways(family, dtype, layers)
    eager, (on, *_), (off, *_) = ways["eager"], ways["on"], ways["off"]
    torch.testing.assert_close(on, eager, **tolerance(eager))
    torch.testing.assert_close(off, eager, **tolerance(eager))
    torch.testing.assert_close(on, off, **tolerance(off))
    # A stored value is rounded to its dtype, as eager rounds it: no further from eager.
    assert rms(on, eager) <= 1.25 * rms(off, eager) + 1e-6


@pytest.mark.parametrize(("family", "dtype", "layers"), CASES)
def test_family_with_patch_has_no_more_kernels(family, dtype, layers):
    ways = compiled_ways(family, dtype, layers)
    (_, codes_on, decided), (_, codes_off, _) = ways["on"], ways["off"]
    kernels_on = [k for c in codes_on for k in codegen.kernel_launches(c)]
    kernels_off = [k for c in codes_off for k in codegen.kernel_launches(c)]
    assert len(kernels_on) <= len(kernels_off)
    assert sum(k.loads for k in kernels_on) <= sum(k.loads for k in kernels_off)
    # The residual stream is shared by a norm and the next add: the patch stores it.
    assert decided.get("bytes:realize", 0) >= layers


# ---------------------------------------------------------------- the program fuzzer


PROGRAMS = 4


def test_program_fuzzer_with_patch_on_every_rank(record_property):
    """Programs from the test kit's fuzzer, compiled by Inductor with the patch on in each rank.

    The fuzz suite's own Inductor programs (tests/test_fuzz.py, 40 in CI, 1000 in its long
    profile) run on the same pools, so with the patches ``import compile_ops`` applied there:
    the default, checked here. A few programs here show that they reach the patched rule.
    """
    from helpers import patch_workers

    names = [p.name for p in inductor_patches.patches()]
    switches = inductor_patches.parse_switches(os.environ.get(inductor_patches.ENV_VAR, ""), names)
    if not switches.get(PATCH.name, PATCH.default):
        pytest.skip(f"realize_on_reuse is off here ({inductor_patches.ENV_VAR})")
    worlds = (1, 2)
    for n in worlds:
        for state in get_pool(n).run(patch_workers.realize_state, True):
            assert state["applied"], state
    ran = []

    @settings(
        max_examples=PROGRAMS,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(program=programs(world_sizes=worlds))
    def check(program):
        ran.append(program.world_size)
        assert_compiled_matches_eager(
            program.function(),
            [program.inputs(r) for r in range(program.world_size)],
            program.world_size,
            reference=program.reference,
            reproducer=program.source(),
        )

    previous = {n: get_pool(n).run(patch_workers.set_fx_graph_cache, False) for n in worlds}
    try:
        check()
    finally:
        for n in worlds:
            get_pool(n).run(patch_workers.set_fx_graph_cache, previous[n][0])
    decided = sum(
        sum(state["decisions"].values())
        for n in worlds
        for state in get_pool(n).run(patch_workers.realize_state, False)
    )
    record_property("examples", len(ran))
    assert len(ran) == PROGRAMS and decided > 0  # the programs did reach the patched rule
