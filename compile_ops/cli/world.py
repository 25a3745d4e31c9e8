"""The world a command runs in: its backend, its ranks, and how results come back from them.

A command either starts its own ranks (a pool of processes on this machine) or, under ``torchrun``
(the env:// variables are set), joins the job's world, so the same command checks a multi-node
job. Either way it calls ``world.run(fn, *args)`` and gets one result per rank.

Under ``torchrun`` results travel as fixed-size byte tensors through ``all_gather``, never as
pickled objects: ``all_gather_object`` needs NumPy, which torch does not install.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "BACKENDS",
    "JoinedWorld",
    "Packed",
    "SpawnedWorld",
    "World",
    "WorldPlan",
    "add_world_arguments",
    "backend_for",
    "default_backend",
    "device_for",
    "is_lead_process",
    "parse_choices",
    "plan_world",
    "rank_device",
    "under_torchrun",
    "usable_cores",
    "world_size_for",
]

BACKENDS = ("gloo", "nccl", "xccl")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def backend_for(device_type: str) -> str:
    """The collective backend torch itself picks for ``device_type`` (cpu: gloo, cuda: nccl)."""
    return dist.Backend.default_device_backend_map.get(device_type, "gloo")


def default_backend() -> str:
    """The accelerator's backend when one is present, else gloo."""
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    return "gloo" if accelerator is None else backend_for(accelerator.type)


def device_for(backend: str, command: str = "compile-ops") -> str:
    """The device type whose tensors ``backend`` moves: cpu for gloo, else the accelerator's."""
    if backend == "gloo":
        return "cpu"
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        raise SystemExit(f"{command}: --backend {backend} needs an accelerator; none found")
    if backend_for(accelerator.type) != backend:
        raise SystemExit(
            f"{command}: --backend {backend} does not serve this machine's accelerator "
            f"({accelerator.type}, whose backend is {backend_for(accelerator.type)})"
        )
    return accelerator.type


def rank_device(backend: str) -> torch.device:
    """This rank's device once its process group is up: the CPU, or its current accelerator."""
    if backend == "gloo":
        return torch.device("cpu")
    return torch.device(device_for(backend), torch.accelerator.current_device_index())


def under_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_VARIABLES)


def is_lead_process() -> bool:
    """Whether this process prints: the launcher, or rank 0 of a torchrun job."""
    return not under_torchrun() or os.environ["RANK"] == "0"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_world_arguments(parser: argparse.ArgumentParser, default_size: str) -> None:
    """``--world-size``, ``--backend`` and ``--oversubscribe``, the same for every command."""
    parser.add_argument(
        "--world-size", "-n", type=int, default=None, help=f"ranks to start ({default_size})"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="default: nccl/xccl when an accelerator is present, else gloo",
    )
    parser.add_argument(
        "--oversubscribe",
        action="store_true",
        help="allow more gloo ranks than CPU cores (each rank is a process that compiles)",
    )


def world_size_for(
    requested: int | None, default: int, backend: str, oversubscribe: bool, command: str
) -> int:
    """The number of ranks to start: ``requested`` or ``default``, refused where it cannot fit.

    An accelerator backend needs one device per rank. Over gloo every rank is a process that
    compiles with its own Inductor; more of them than cores (at least 2 are always allowed)
    only thrashes and can exhaust memory, so that needs ``--oversubscribe``.
    """
    size = default if requested is None else requested
    if size < 1:
        raise SystemExit(f"{command}: --world-size must be at least 1, got {size}")
    if backend != "gloo":
        devices = torch.accelerator.device_count()
        if size > devices:
            raise SystemExit(
                f"{command}: {backend} needs one device per rank; --world-size {size} but "
                f"{devices} devices (use a smaller --world-size, or --backend gloo)"
            )
        return size
    cores = usable_cores()
    if size > max(2, cores) and not oversubscribe:
        raise SystemExit(
            f"{command}: --world-size {size} would start {size} processes on {cores} CPU "
            f"cores; each compiles on its own, so use --world-size {max(2, cores)} or less, "
            "or --oversubscribe to start them anyway"
        )
    return size


def parse_choices(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, each one of ``allowed``; else a clear error naming ``flag``."""
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"compile-ops: {flag} takes a subset of {','.join(allowed)}, got {text!r}")
    return chosen


class Packed(Protocol):
    """A per-rank result that travels as a fixed-size uint8 tensor (same size on every rank)."""

    def pack(self) -> torch.Tensor: ...

    @classmethod
    def unpack(cls, data: torch.Tensor) -> Packed: ...


R = TypeVar("R")


class World:
    """Ranks to run a command's work on, with the answer of every rank."""

    backend: str
    size: int
    is_lead: bool  # this process prints (the launcher, or rank 0 under torchrun)

    def run(self, fn: Callable[..., R], *args: Any) -> list[R]:
        """``fn(*args)`` on every rank; every rank's result, indexed by rank."""
        raise NotImplementedError

    def run_first(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on every rank; rank 0's result, where the lead prints it."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpawnedWorld(World):
    """Ranks started by this process: a worker pool; results come back through its pipes."""

    def __init__(self, size: int, backend: str):
        from compile_ops.testing.pool import WorkerPool

        self.size, self.backend, self.is_lead = size, backend, True
        self._pool = WorkerPool(size, backend).start()

    def run(self, fn: Callable[..., R], *args: Any) -> list[R]:
        return self._pool.run(fn, *args)

    def run_first(self, fn: Callable[..., R], *args: Any) -> R:
        return self._pool.run(fn, *args)[0]

    def close(self) -> None:
        self._pool.close()


class JoinedWorld(World):
    """This process is one rank of a ``torchrun`` job; every rank runs the same command."""

    def __init__(self, backend: str):
        if backend != "gloo":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.accelerator.set_device_index(local % torch.accelerator.device_count())
        dist.init_process_group(backend)
        self.backend, self.size = backend, dist.get_world_size()
        self.is_lead = dist.get_rank() == 0

    def run(self, fn: Callable[..., R], *args: Any) -> list[R]:
        """``fn`` here, then every rank's result; results must be :class:`Packed`."""
        mine = fn(*args)
        data = mine.pack().to(rank_device(self.backend))  # type: ignore[attr-defined]
        gathered = [torch.empty_like(data) for _ in range(self.size)]
        dist.all_gather(gathered, data)
        return [type(mine).unpack(t.cpu()) for t in gathered]  # type: ignore[attr-defined]

    def run_first(self, fn: Callable[..., R], *args: Any) -> R:
        return fn(*args)  # each rank keeps its own; only rank 0 (the lead) prints

    def close(self) -> None:
        dist.destroy_process_group()


@dataclass(frozen=True)
class WorldPlan:
    """The world a command will run in, checked before any process starts."""

    backend: str
    size: int | None  # None: torchrun's world, whatever its size

    def start(self) -> World:
        return (
            JoinedWorld(self.backend)
            if self.size is None
            else SpawnedWorld(self.size, self.backend)
        )


def plan_world(
    args: argparse.Namespace, command: str, default_size: int | None = None
) -> WorldPlan:
    """Join torchrun's world if this process is one of its ranks, else start ``--world-size``
    ranks; a clear error (before anything starts) where that cannot work here."""
    backend = args.backend or default_backend()
    if under_torchrun():
        return WorldPlan(backend, None)
    device_for(backend, command)
    if default_size is None:
        default_size = 2 if backend == "gloo" else min(2, torch.accelerator.device_count())
    size = world_size_for(args.world_size, default_size, backend, args.oversubscribe, command)
    return WorldPlan(backend, size)
