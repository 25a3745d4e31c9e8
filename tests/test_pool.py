"""The worker pool answers every job with that job's results, whatever went wrong before it.

Each test breaks one exchange in a different way (a job that does not pickle, an exception or a
result the parent cannot load, a dead rank, a timeout, a caller that stops waiting) and then checks
that the next jobs each get their own, distinct answers from every rank.
"""

import pickle
import signal
import time

import pytest
from helpers import pool_workers as pw

from compile_ops.testing.pool import ExchangeError, WorkerError, WorkerPool, WorkerTimeout

WORLD = 2


@pytest.fixture(scope="module")
def pool():
    """A pool of its own: these tests restart it, which other tests need not pay for."""
    pool = WorkerPool(WORLD)
    yield pool
    pool.close()


def assert_jobs_get_their_own_answers(pool, jobs=10):
    answers = [pool.run(pw.echo, f"job {i}") for i in range(jobs)]
    assert answers == [[(f"job {i}", rank) for rank in range(WORLD)] for i in range(jobs)]


def test_a_job_that_does_not_pickle_for_one_rank_sends_nothing(pool):
    pool.run(pw.echo, "A")
    with pytest.raises(pickle.PicklingError, match="the job for rank 1 does not pickle"):
        pool.map(pw.echo, [("B",), (lambda: 0,)])
    assert pool.run(pw.echo, "C") == [("C", 0), ("C", 1)]
    assert pool.run(pw.echo, "D") == [("D", 0), ("D", 1)]
    assert_jobs_get_their_own_answers(pool)


def test_an_exception_the_parent_cannot_load_arrives_as_its_traceback(pool):
    with pytest.raises(WorkerError, match="NeedsTwoArguments: left and right") as failed:
        pool.run(pw.on_rank, 1, "raise unloadable")
    assert sorted(failed.value.failures) == [1] and failed.value.exceptions == {}
    assert "cannot be sent back" in failed.value.failures[1]
    assert_jobs_get_their_own_answers(pool)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("return unloadable", "rank 1's answer does not unpickle here: RuntimeError"),
        ("return unpicklable", "the result does not pickle"),
    ],
)
def test_a_result_that_cannot_cross_is_an_error_for_its_job_only(pool, action, message):
    with pytest.raises(WorkerError, match=message) as failed:
        pool.run(pw.on_rank, 1, action)
    assert sorted(failed.value.failures) == [1]
    assert_jobs_get_their_own_answers(pool)


def test_a_dead_rank_restarts_the_world(pool):
    with pytest.raises(ExchangeError, match=r"rank 1 died \(exit code 3\)"):
        pool.run(pw.on_rank, 1, "exit")
    assert_jobs_get_their_own_answers(pool)


def test_a_rank_past_the_timeout_restarts_the_world(pool):
    with pytest.raises(WorkerTimeout, match="rank 1 gave no answer within 1s"):
        pool.run(pw.on_rank, 1, "sleep", timeout=1)
    assert_jobs_get_their_own_answers(pool)


class Interrupted(Exception):
    pass


def test_a_caller_that_stops_waiting_does_not_leave_its_answers_to_the_next_job(pool):
    """As Ctrl-C or a test timeout does: the ranks still answer the abandoned job later."""

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            pool.run(time.sleep, 2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert_jobs_get_their_own_answers(pool)
