"""Ranks of one machine share Inductor's FX graph cache: a rank-dependent shape must not leak."""

import pytest
from helpers import workers

from compile_ops.testing.pool import WorkerPool


@pytest.fixture(scope="module")
def fresh_cache_world(tmp_path_factory):
    cache = tmp_path_factory.mktemp("inductor-cache")
    pool = WorkerPool(3, env={"TORCHINDUCTOR_CACHE_DIR": str(cache)}).start()
    yield pool
    pool.close()


@pytest.mark.parametrize("op", ["reduce_scatterv", "gather"])
def test_rank_dependent_shape_is_right_on_every_rank_with_a_shared_cache(fresh_cache_world, op):
    for shapes, expected, hits, misses in fresh_cache_world.run(workers.compile_first_on, op, 1):
        assert shapes == [expected, expected]
        assert hits >= 1, "the second compilation should come from the FX graph cache"
        assert misses >= 1


def test_a_fake_reading_the_process_rank_is_caught(fresh_cache_world):
    """The known bug: rank 1 compiles first, ranks 0 and 2 are served its output shape."""
    results = fresh_cache_world.run(workers.compile_first_on, "naive", 1)
    wrong = [shapes for shapes, expected, _, _ in results if shapes != [expected, expected]]
    assert wrong, "sharing the cache across ranks should have broken the naive fake"
