"""A persistent pool of worker processes that form one torch.distributed world.

Starting a world costs seconds (interpreter, torch import, rendezvous); running a function on it costs
milliseconds. So a pool is started once per world size and backend and reused: ``pool.run(fn, ...)``
ships ``fn`` (a picklable, module-level function) to every rank and returns the per-rank results.

Every job carries an id and every answer names the job it answers, so a result can only ever come
from its own job. A rank that raises becomes a ``WorkerError``; an exchange that breaks (a rank dies,
hangs past the timeout, closes its pipe, answers another job, or the caller stops waiting halfway)
becomes an ``ExchangeError`` and the world is torn down and started afresh for the next job, because
its ranks may be stuck inside a collective or still working on the abandoned job.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import itertools
import multiprocessing as mp
import multiprocessing.util
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, NoReturn

import torch

DEFAULT_TIMEOUT_S = float(os.environ.get("COMPILE_OPS_WORKER_TIMEOUT", "300"))
# Once one rank has failed, how long the others get to finish before the pool is declared stuck.
_GRACE_S = 20.0


class WorkerError(RuntimeError):
    """One or more ranks failed; ``failures`` maps rank -> formatted traceback (or what went
    wrong), ``exceptions`` rank -> the exception raised there, where it could be sent back."""

    def __init__(
        self, fn_name: str, failures: dict[int, str], exceptions: dict[int, BaseException]
    ):
        self.failures = failures
        self.exceptions = exceptions
        detail = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(failures.items()))
        super().__init__(f"{fn_name} failed on ranks {sorted(failures)}:\n{detail}")


class ExchangeError(WorkerError):
    """The exchange with some ranks broke (a rank died, closed its pipe, answered another job,
    or could not be sent its job); the world was torn down and the next job starts a fresh one."""


class WorkerTimeout(ExchangeError):
    """Some ranks did not answer in time (a deadlock or a crash); the world was torn down."""


@dataclass(frozen=True)
class _Failure:
    traceback: str
    exception: BaseException | None


def _dumps(obj: Any) -> bytes:
    # The pickler multiprocessing itself uses: torch registers reductions with it that pass
    # tensors through shared memory instead of copying them through the pipe.
    return bytes(ForkingPickler.dumps(obj))


def _to_cpu(value: Any) -> Any:
    # Accelerator tensors cannot cross a pipe cheaply and portably; results come back on the CPU.
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().cpu(), value)


def _failure(e: BaseException) -> _Failure:
    """The failure to send back: the exception itself only if it survives a round trip through
    pickle (one that needs other constructor arguments, say, does not)."""
    tb = traceback.format_exc()
    try:
        pickle.loads(_dumps(e))
    except Exception as why:
        note = f"(the exception itself cannot be sent back: {type(why).__name__}: {why})"
        return _Failure(f"{tb}{note}", None)
    return _Failure(tb, e)


def _answer(job: int, kind: str, value: Any) -> bytes:
    """One message: (job id, "ok" | "err", pickled value). The value is pickled on its own so that
    the receiver can always read which job an answer belongs to, even if the value will not load."""
    try:
        payload = _dumps(value)
    except Exception as e:
        kind = "err"
        payload = _dumps(_Failure(f"the result does not pickle: {type(e).__name__}: {e}", None))
    return _dumps((job, kind, payload))


def _join_world(rank, world_size, backend, store_port) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if backend != "gloo":
        accelerator = torch.accelerator.current_accelerator()
        torch.accelerator.set_device_index(rank % torch.accelerator.device_count())
        device_id = torch.device(accelerator.type, torch.accelerator.current_device_index())
    else:
        device_id = None
    store = dist.TCPStore("127.0.0.1", store_port, world_size + 1, is_master=False)
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=DEFAULT_TIMEOUT_S),
        device_id=device_id,
    )
    import compile_ops  # noqa: F401  (registers the ops in every rank)


_incarnations = itertools.count(1)


def restart_world(timeout_s: float) -> None:
    """In a rank: destroy every process group and start a new world of the same ranks and backend
    over the same rendezvous store (under a fresh prefix, so its keys never meet the old world's).
    Group names restart from '0', which is what tests of stale groups need."""
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    rank, n, backend = dist.get_rank(), dist.get_world_size(), dist.get_backend()
    dist.destroy_process_group()
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"incarnation{next(_incarnations)}", store),
        rank=rank,
        world_size=n,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _worker_main(rank, world_size, backend, store_port, conn, env, ready_job):
    os.environ.update(env)
    try:
        _join_world(rank, world_size, backend, store_port)
    except BaseException as e:
        conn.send_bytes(_answer(ready_job, "err", _failure(e)))
        return
    conn.send_bytes(_answer(ready_job, "ok", rank))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        job, payload = msg
        try:
            fn, args = pickle.loads(payload)
            kind, value = "ok", _to_cpu(fn(*args))
        except BaseException as e:
            kind, value = "err", _failure(e)
        conn.send_bytes(_answer(job, kind, value))
    # Every answer is sent and nothing else is kept. The interpreter's own exit would also take
    # seconds per rank, which ``close`` would wait for at every pool shutdown.
    leave_rank(0)


def leave_rank(code: int) -> NoReturn:
    """End a rank's process with ``code`` at once, without the interpreter's teardown.

    A gloo worker thread may still be releasing the tensors of the last collective after its
    ``wait()`` has returned, and that takes the GIL; once Python has begun to finalize, such a
    thread is made to exit in the middle of a C++ destructor, which aborts the process
    ("terminate called without an active exception", torch 2.11, 1 exit in about 8 on 2
    cores; pytorch/pytorch#190489). What must not outlive the rank is released first:
    Inductor's compile workers, multiprocessing's finalizers (which unlink the named semaphores
    a rank created, e.g. tqdm's lock; the stdlib has no public name for the function a process
    runs for them at its normal exit), and the output streams."""
    compiling = sys.modules.get("torch._inductor.async_compile")
    if compiling is not None:
        compiling.shutdown_compile_workers()
    multiprocessing.util._exit_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class WorkerPool:
    """``world_size`` processes joined in one process group over loopback."""

    def __init__(self, world_size: int, backend: str = "gloo", env: dict[str, str] | None = None):
        self.world_size = world_size
        self.backend = backend
        self.env = {"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1", **(env or {})}
        self._procs: list[mp.Process] = []
        self._conns: list[Any] = []
        self._store = None
        self._ids = itertools.count()
        # False from the moment a job is sent until all its answers are in: a world left in that
        # state (the caller stopped waiting) is busy with a job nobody will read, so it is replaced.
        self._in_step = True

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> WorkerPool:
        """Start the world, or replace one left busy with a job nobody waits for any more."""
        if self._procs and self._in_step:
            return self
        self._kill()
        import torch.distributed as dist

        # The parent hosts the rendezvous store on a port the OS picks: no fixed or guessed ports.
        self._store = dist.TCPStore(
            "127.0.0.1", 0, self.world_size + 1, is_master=True, wait_for_workers=False
        )
        ctx = mp.get_context("spawn")
        ready_job = next(self._ids)
        for rank in range(self.world_size):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(
                    rank,
                    self.world_size,
                    self.backend,
                    self._store.port,
                    child,
                    self.env,
                    ready_job,
                ),
                daemon=True,
                name=f"compile-ops-rank{rank}",
            )
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        self._in_step = False
        try:
            self._collect(ready_job, "starting the world", DEFAULT_TIMEOUT_S)
        except WorkerError:
            self._kill()  # a world some ranks did not join is of no use
            raise
        return self

    def close(self) -> None:
        if not self._in_step:  # its ranks are busy with an abandoned job: no clean way out
            self._kill()
            return
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for p in self._procs:
            p.join(timeout=5)
        self._kill()

    def _kill(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._store = [], [], None
        self._in_step = True

    # -- running -------------------------------------------------------------------------------

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> list[Any]:
        """Run ``fn(*args)`` on every rank; return the results indexed by rank."""
        return self.map(fn, [args] * self.world_size, timeout=timeout)

    def map(
        self,
        fn: Callable[..., Any],
        per_rank_args: Sequence[Sequence[Any]],
        timeout: float | None = None,
    ) -> list[Any]:
        """Run ``fn(*per_rank_args[r])`` on rank r; return the results indexed by rank.

        Raises ``pickle.PicklingError`` (having sent nothing) if a rank's job does not pickle,
        ``WorkerError`` if ranks raised, ``ExchangeError``/``WorkerTimeout`` if the exchange broke.
        """
        if len(per_rank_args) != self.world_size:
            raise ValueError(f"need {self.world_size} argument tuples, got {len(per_rank_args)}")
        fn_name = getattr(fn, "__qualname__", repr(fn))
        payloads = [_pickle_job(fn_name, rank, fn, args) for rank, args in enumerate(per_rank_args)]
        self.start()
        job = next(self._ids)
        self._in_step = False
        unsent = {}
        for rank, (conn, payload) in enumerate(zip(self._conns, payloads, strict=True)):
            try:
                conn.send((job, payload))
            except OSError as e:
                unsent[rank] = f"could not be sent its job: {type(e).__name__}: {e}"
        if unsent:
            self._kill()
            raise ExchangeError(fn_name, unsent, {})
        return self._collect(job, fn_name, timeout or DEFAULT_TIMEOUT_S)

    def _collect(self, job: int, fn_name: str, timeout: float) -> list[Any]:
        """Every rank's answer to ``job``; on success or plain failures the world is in step."""
        deadline = time.monotonic() + timeout
        results: dict[int, Any] = {}
        failures: dict[int, _Failure] = {}
        broken: dict[int, str] = {}
        pending = set(range(self.world_size))
        while pending:
            if failures:
                deadline = min(deadline, time.monotonic() + _GRACE_S)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiting = [self._conns[r] for r in pending] + [self._procs[r].sentinel for r in pending]
            wait(waiting, timeout=remaining)
            for rank in sorted(pending):
                outcome = self._read(rank, job)
                if outcome is None:
                    continue
                pending.discard(rank)
                kind, value = outcome
                if kind == "ok":
                    results[rank] = value
                elif kind == "err":
                    failures[rank] = value
                else:
                    broken[rank] = value
        for rank in pending:
            broken[rank] = f"rank {rank} gave no answer within {timeout:.0f}s (deadlock or crash?)"
        tracebacks = {r: f.traceback for r, f in failures.items()}
        exceptions = {r: f.exception for r, f in failures.items() if f.exception is not None}
        if broken:
            self._kill()
            error = WorkerTimeout if pending else ExchangeError
            raise error(fn_name, {**tracebacks, **broken}, exceptions)
        self._in_step = True
        if failures:
            raise WorkerError(fn_name, tracebacks, exceptions)
        return [results[r] for r in range(self.world_size)]

    def _read(self, rank: int, job: int) -> tuple[str, Any] | None:
        """("ok", result), ("err", _Failure) or ("broken", why) for ``rank``; None: no answer yet."""
        conn, proc = self._conns[rank], self._procs[rank]
        if not conn.poll(0):
            if proc.is_alive():
                return None
            return "broken", f"rank {rank} died (exit code {proc.exitcode})"
        try:
            answered, kind, payload = pickle.loads(conn.recv_bytes())
        except EOFError:
            proc.join(timeout=1)  # a rank that dies closes its pipe first
            if proc.exitcode is not None:
                return "broken", f"rank {rank} died (exit code {proc.exitcode})"
            return "broken", f"rank {rank} closed its pipe"
        if answered != job:
            return "broken", f"rank {rank} answered job {answered} while job {job} was waited for"
        try:
            return kind, pickle.loads(payload)
        except Exception as e:
            # The rank is in step (it answered this job); only its answer cannot be read here.
            why = f"rank {rank}'s answer does not unpickle here: {type(e).__name__}: {e}"
            return "err", _Failure(why, None)


def _pickle_job(fn_name: str, rank: int, fn: Callable[..., Any], args: Sequence[Any]) -> bytes:
    # Every rank's job is pickled before any is sent: a job that fails to pickle sends nothing.
    try:
        return _dumps((fn, tuple(args)))
    except Exception as e:
        raise pickle.PicklingError(
            f"{fn_name}: the job for rank {rank} does not pickle (nothing was sent to any rank): "
            f"{type(e).__name__}: {e}"
        ) from e


_pools: dict[tuple[int, str], WorkerPool] = {}


def get_pool(world_size: int, backend: str = "gloo") -> WorkerPool:
    """The shared pool for this world size and backend, started on first use."""
    key = (world_size, backend)
    if key not in _pools:
        _pools[key] = WorkerPool(world_size, backend)
    return _pools[key]


@atexit.register
def close_all_pools() -> None:
    for pool in _pools.values():
        pool.close()
    _pools.clear()
