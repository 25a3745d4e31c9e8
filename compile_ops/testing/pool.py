"""A persistent pool of worker processes that form one torch.distributed world.

Starting a world costs seconds (interpreter, torch import, rendezvous); running a function on it costs
milliseconds. So a pool is started once per world size and backend and reused: ``pool.run(fn, ...)``
ships ``fn`` (a picklable, module-level function) to every rank and returns the per-rank results.

A rank that raises, hangs or dies becomes a clear exception in the caller within a timeout; a pool
whose ranks may be stuck inside a collective is torn down and started afresh on the next call.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_TIMEOUT_S = float(os.environ.get("COMPILE_OPS_WORKER_TIMEOUT", "300"))
# Once one rank has failed, how long the others get to finish before the pool is declared stuck.
_GRACE_S = 20.0


class WorkerError(RuntimeError):
    """One or more ranks raised; ``failures`` maps rank -> formatted traceback."""

    def __init__(
        self, fn_name: str, failures: dict[int, str], exceptions: dict[int, BaseException]
    ):
        self.failures = failures
        self.exceptions = exceptions
        detail = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(failures.items()))
        super().__init__(f"{fn_name} failed on ranks {sorted(failures)}:\n{detail}")


class WorkerTimeout(WorkerError):
    """Some ranks did not answer in time (a deadlock or a crash); the pool was restarted."""


@dataclass(frozen=True)
class _Failure:
    traceback: str
    exception: BaseException | None


def _to_cpu(value: Any) -> Any:
    # Accelerator tensors cannot cross a pipe cheaply and portably; results come back on the CPU.
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().cpu(), value)


def _worker_main(rank, world_size, backend, store_port, conn, env):
    os.environ.update(env)
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

    conn.send(("ready", rank))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        fn, args = msg
        try:
            conn.send(("ok", _to_cpu(fn(*args))))
        except BaseException as e:
            tb = traceback.format_exc()
            try:
                conn.send(("err", _Failure(tb, e)))
            except Exception:  # the exception itself may not pickle
                conn.send(("err", _Failure(tb, None)))
    dist.destroy_process_group()


class WorkerPool:
    """``world_size`` processes joined in one process group over loopback."""

    def __init__(self, world_size: int, backend: str = "gloo", env: dict[str, str] | None = None):
        self.world_size = world_size
        self.backend = backend
        self.env = {"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1", **(env or {})}
        self._procs: list[mp.Process] = []
        self._conns: list[Any] = []
        self._store = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> WorkerPool:
        if self._procs:
            return self
        import torch.distributed as dist

        # The parent hosts the rendezvous store on a port the OS picks: no fixed or guessed ports.
        self._store = dist.TCPStore(
            "127.0.0.1", 0, self.world_size + 1, is_master=True, wait_for_workers=False
        )
        ctx = mp.get_context("spawn")
        for rank in range(self.world_size):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(rank, self.world_size, self.backend, self._store.port, child, self.env),
                daemon=True,
                name=f"compile-ops-rank{rank}",
            )
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        results = self._collect("start", DEFAULT_TIMEOUT_S)
        assert sorted(r for r in results) == list(range(self.world_size))
        return self

    def close(self) -> None:
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
        """Run ``fn(*per_rank_args[r])`` on rank r; return the results indexed by rank."""
        if len(per_rank_args) != self.world_size:
            raise ValueError(f"need {self.world_size} argument tuples, got {len(per_rank_args)}")
        self.start()
        for conn, args in zip(self._conns, per_rank_args, strict=True):
            conn.send((fn, tuple(args)))
        return self._collect(getattr(fn, "__qualname__", repr(fn)), timeout or DEFAULT_TIMEOUT_S)

    def _collect(self, fn_name: str, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        results: dict[int, Any] = {}
        failures: dict[int, _Failure] = {}
        pending = dict(enumerate(self._conns))
        while pending:
            now = time.monotonic()
            if failures:
                deadline = min(deadline, now + _GRACE_S)
            if now >= deadline:
                break
            for rank, conn in list(pending.items()):
                if not conn.poll(0.01):
                    if not self._procs[rank].is_alive():
                        failures[rank] = _Failure(
                            f"rank {rank} died (exit code {self._procs[rank].exitcode})", None
                        )
                        del pending[rank]
                    continue
                try:
                    kind, value = conn.recv()
                except EOFError:
                    failures[rank] = _Failure(f"rank {rank} closed its pipe", None)
                else:
                    if kind == "err":
                        failures[rank] = value
                    else:
                        results[rank] = value
                del pending[rank]
        if pending or any(f.exception is None for f in failures.values()):
            # Ranks may be stuck inside a collective or dead: this world is unusable.
            for rank in pending:
                failures[rank] = _Failure(
                    f"rank {rank} gave no answer within {timeout:.0f}s (deadlock or crash?)", None
                )
            self._kill()
            raise WorkerTimeout(
                fn_name,
                {r: f.traceback for r, f in failures.items()},
                {r: f.exception for r, f in failures.items() if f.exception is not None},
            )
        if failures:
            raise WorkerError(
                fn_name,
                {r: f.traceback for r, f in failures.items()},
                {r: f.exception for r, f in failures.items() if f.exception is not None},
            )
        return [results[r] for r in range(self.world_size)]


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
