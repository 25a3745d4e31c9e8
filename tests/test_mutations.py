"""The testing kit must catch each classic collective bug when it is swapped into our ops."""

import mutants
import pytest
from hypothesis import HealthCheck, given, settings

from compile_ops.testing.compare import MismatchError, assert_compiled_matches_eager
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
