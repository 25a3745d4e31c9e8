"""The testing kit must catch each classic collective bug when it is swapped into our ops, and
must test the layout it was given on every device."""

import pytest
import torch
from helpers import mutants
from hypothesis import HealthCheck, given, settings

from compile_ops.testing.cases import Case
from compile_ops.testing.compare import (
    MismatchError,
    assert_compiled_matches_eager,
    to_device_keeping_layout,
)
from compile_ops.testing.pool import WorkerPool
from compile_ops.testing.strategies import cases


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Pools of their own, with a fresh compile cache: mutated code must not leak into others."""
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("mutant-cache"))}
    pools = {n: WorkerPool(n, env=env) for n in (1, 2, 3, 4)}
    yield pools
    for pool in pools.values():
        pool.close()


@pytest.mark.parametrize("mutant", list(mutants.MUTANTS))
def test_kit_catches(worlds, mutant):
    op = mutants.MUTANTS[mutant][0]
    for pool in worlds.values():
        pool.run(mutants.install, mutant)
    caught = []
    try:

        @settings(
            max_examples=40,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases(op))
        def check(case):
            try:
                assert_compiled_matches_eager(
                    case,
                    [(case.input(r),) for r in range(case.world_size)],
                    case.world_size,
                    reference=lambda per_rank: case.reference([x for (x,) in per_rank]),
                    backend=None,  # eager vs reference, fakes and inputs: enough to catch all
                    pool=worlds[case.world_size],
                )
            except MismatchError as e:
                caught.append(str(e))

        check()
    finally:
        for pool in worlds.values():
            pool.run(mutants.restore)
    assert caught, f"{mutant}: 40 examples and not one mismatch"


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_inputs_keep_their_layout_on_another_device(layout):
    # The kit ships inputs on the CPU and each rank moves them to its device; a sliced input
    # moved with Tensor.to would arrive contiguous, and the layout would go untested there.
    x = Case("all_reduce", 1, layout=layout).input(0)
    assert not x.is_contiguous()
    moved = to_device_keeping_layout(x, "meta")
    assert moved.device.type == "meta"
    assert (moved.shape, moved.stride(), moved.storage_offset()) == (
        x.shape,
        x.stride(),
        x.storage_offset(),
    )
    torch.testing.assert_close(to_device_keeping_layout(x, "cpu"), x, rtol=0, atol=0)
