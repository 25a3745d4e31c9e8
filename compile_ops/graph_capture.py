"""Graph capture and replay on whichever accelerator torch runs on.

A captured graph replays a whole step -- compiled kernels and the collectives between them -- as
one launch, which is what makes small decode batches fast. The device, its streams and its
synchronisation come from ``torch.accelerator``. The one piece it does not offer on every torch we
support, a graph type with a shareable memory pool, comes from a small per-device table looked up
at run time: ``torch.cuda.CUDAGraph`` on CUDA, ``torch.xpu.XPUGraph`` where torch provides it.

Collectives are captured with the rest only if their backend records its work into the graph:
NCCL does; gloo runs on the host and waits for the device, which a graph cannot hold. The groups a
capture will use are checked before anything is recorded.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils import _pytree as pytree

from .groups import GroupLike, registered_groups, resolve_group

__all__ = [
    "CAPTURABLE_BACKENDS",
    "CaptureContext",
    "CapturedGraph",
    "GraphBackend",
    "GraphCaptureError",
    "capture",
    "capture_sizes",
    "check_capturable",
    "graph_backend",
    "graph_capture",
    "is_capturing",
]

# Collective backends whose work on a device type can be recorded into that device's graphs.
# NCCL's kernels join the capture through the stream they wait on. XCCL captures with a recent
# oneCCL and raises by itself where its oneCCL cannot. Every other backend is refused.
CAPTURABLE_BACKENDS: Mapping[str, frozenset[str]] = {
    "cuda": frozenset({"nccl"}),
    "xpu": frozenset({"xccl"}),
}
_WHY_NOT = {
    "gloo": "gloo copies device tensors through host memory and waits for the device on the CPU",
}


class GraphCaptureError(RuntimeError):
    """Capture cannot work here: no graph type for the device, or a group it cannot record."""


@dataclass(frozen=True)
class GraphBackend:
    """What torch offers one device type for capture."""

    name: str  # the graph type, for messages
    new_graph: Callable[[], Any]  # an empty graph: capture_begin(pool=), capture_end(), replay()
    new_pool: Callable[[], Any]  # a fresh memory-pool handle that several graphs can share
    is_capturing: Callable[[], bool]  # is the current stream of the current device recording


def _cuda_graphs() -> GraphBackend | None:
    # CUDA-only by nature: the one place this module names torch.cuda.
    cuda = torch.cuda
    return GraphBackend(
        "torch.cuda.CUDAGraph",
        cuda.CUDAGraph,
        cuda.graph_pool_handle,
        cuda.is_current_stream_capturing,
    )


def _xpu_graphs() -> GraphBackend | None:
    # XPU graphs are recent: present in torch 2.11 and 2.14 builds with XPU, absent before.
    xpu = getattr(torch, "xpu", None)
    needed = ("XPUGraph", "graph_pool_handle", "is_current_stream_capturing")
    if xpu is None or not all(hasattr(xpu, name) for name in needed):
        return None
    return GraphBackend(
        "torch.xpu.XPUGraph",
        xpu.XPUGraph,
        xpu.graph_pool_handle,
        xpu.is_current_stream_capturing,
    )


_GRAPH_TYPES: Mapping[str, Callable[[], GraphBackend | None]] = {
    "cuda": _cuda_graphs,
    "xpu": _xpu_graphs,
}


def _available_accelerator() -> torch.device | None:
    # check_available: a CUDA build on a machine without GPUs still *names* cuda as its accelerator.
    return torch.accelerator.current_accelerator(check_available=True)


def _capture_device(device: torch.device | str | int | None) -> torch.device:
    """The accelerator device to capture on, with its index; a clear error where there is none."""
    accelerator = _available_accelerator()
    if device is None:
        if accelerator is None:
            raise GraphCaptureError(
                "compile_ops.graph_capture: no accelerator is available, so the device is 'cpu', "
                "which has no graphs; capture needs a CUDA or XPU device"
            )
        return torch.device(accelerator.type, torch.accelerator.current_device_index())
    if isinstance(device, int):
        if accelerator is None:
            raise GraphCaptureError(
                f"compile_ops.graph_capture: device={device} names an accelerator index, but no "
                "accelerator is available (the device is 'cpu', which has no graphs)"
            )
        device = torch.device(accelerator.type, device)
    device = torch.device(device)
    if accelerator is None or device.type != accelerator.type:
        have = (
            "none is available" if accelerator is None else f"this process has {accelerator.type}"
        )
        raise GraphCaptureError(
            f"compile_ops.graph_capture: device '{device}' has no graphs to capture into; capture "
            f"needs the accelerator's device (cuda or xpu) and {have}"
        )
    index = torch.accelerator.current_device_index() if device.index is None else device.index
    return torch.device(device.type, index)


@functools.cache
def _graph_backend_for(device_type: str) -> GraphBackend | None:
    factory = _GRAPH_TYPES.get(device_type)
    return factory() if factory is not None else None


def graph_backend(device: torch.device | str) -> GraphBackend:
    """The graph type torch provides for ``device``'s type, or a GraphCaptureError naming it."""
    device_type = torch.device(device).type
    backend = _graph_backend_for(device_type)
    if backend is None:
        raise GraphCaptureError(
            f"compile_ops.graph_capture: torch {torch.__version__} provides no graph type for "
            f"device '{device_type}' (graphs exist for: cuda, and xpu where torch.xpu.XPUGraph "
            "exists)"
        )
    return backend


def is_capturing(device: torch.device | str | None = None) -> bool:
    """Whether work on the current stream of ``device`` is being recorded into a graph.

    False where the device has no graphs (CPU, or no accelerator): nothing can be recording there.
    """
    accelerator = _available_accelerator()
    if accelerator is None:
        return False
    device_type = accelerator.type if device is None else torch.device(device).type
    backend = _graph_backend_for(device_type) if device_type == accelerator.type else None
    return backend is not None and backend.is_capturing()


def check_capturable(group: GroupLike = None, device: torch.device | str = "cuda") -> None:
    """Raise GraphCaptureError unless ``group``'s collectives on ``device`` can be captured.

    A collective whose backend goes through the host (gloo) would fail half-way through a capture
    with a device error, or record nothing; refusing up front names the group and the backend.
    """
    pg = resolve_group(group, "graph_capture")
    device_type = torch.device(device).type
    if group is None:
        label = f"the default group ({pg.group_name!r})"
    else:
        label = f"group {group if isinstance(group, str) else pg.group_name!r}"
    served = sorted({d.type for d in pg._device_types})
    if device_type not in served:
        raise GraphCaptureError(
            f"compile_ops.graph_capture: {label} has no backend for {device_type} tensors "
            f"(it serves {served}), so its collectives cannot run in a {device_type} graph"
        )
    backend = pg._get_backend(torch.device(device_type)).name()
    capturable = CAPTURABLE_BACKENDS.get(device_type, frozenset())
    if backend not in capturable:
        raise GraphCaptureError(
            f"compile_ops.graph_capture: {label} runs {device_type} collectives on {backend}, "
            f"which cannot be captured into a graph "
            f"({_WHY_NOT.get(backend, f'{backend} is not known to record into graphs')}); "
            f"capturable backends for {device_type}: {sorted(capturable)}"
        )


@functools.cache
def _default_capture_stream(device: torch.device) -> torch.Stream:
    # One side stream per device, reused by every capture: graphs that share a pool share its
    # freed blocks only when they were captured on the same stream.
    return torch.Stream(device)


def _groups_to_check(groups: Iterable[GroupLike] | GroupLike | None) -> list[GroupLike]:
    if groups is None:
        # Every group our ops can reach without a ProcessGroup object: the default group and the
        # registered names.
        if not (dist.is_available() and dist.is_initialized()):
            return []
        return [None, *registered_groups()]
    if isinstance(groups, (str, dist.ProcessGroup)):
        return [groups]
    return list(groups)


class CapturedGraph:
    """One recorded call of a function, replayed on new inputs with one launch.

    Calling it copies the tensor arguments into the static buffers it was captured with (same
    shapes and dtypes required), replays on the current stream and returns the static output.
    That output is overwritten by this graph's next replay, and by replays of other graphs in the
    same pool (their intermediates may occupy its blocks): clone what you keep.
    """

    def __init__(self, graph: Any, args: tuple, kwargs: dict, output: Any):
        self.graph = graph
        self.args = args
        self.kwargs = kwargs
        self.output = output
        self._static, self._spec = pytree.tree_flatten_with_path((args, kwargs))
        # Replay is the hot path of a decode step: plain tensor arguments skip pytree.
        self._flat = not kwargs and all(isinstance(a, torch.Tensor) for a in args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Copy new inputs into the static buffers, replay, return the static output."""
        if self._flat and not kwargs and len(args) == len(self.args):
            for (path, static), new in zip(self._static, args, strict=True):
                _copy_in(path, static, new)
            return self.replay()
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self._spec:
            raise ValueError(
                f"compile_ops.graph_capture: the graph was captured with {len(self.args)} "
                f"positional arguments and keywords {sorted(self.kwargs)}, nested alike; got "
                f"{len(args)} and {sorted(kwargs)} (or a different nesting)"
            )
        for (path, static), new in zip(self._static, leaves, strict=True):
            _copy_in(path, static, new)
        return self.replay()

    def replay(self) -> Any:
        """Replay on the inputs already in the static buffers; return the static output."""
        self.graph.replay()
        return self.output


def _argument_name(path: tuple) -> str:
    where, rest = path[0].idx, path[1:]
    return ("args" if where == 0 else "kwargs") + pytree.keystr(rest)


def _copy_in(path: tuple, static: Any, new: Any) -> None:
    if isinstance(static, torch.Tensor):
        if not isinstance(new, torch.Tensor):
            raise ValueError(
                f"compile_ops.graph_capture: {_argument_name(path)} was a tensor at capture, got "
                f"{type(new)}"
            )
        if new.shape != static.shape or new.dtype != static.dtype:
            raise ValueError(
                f"compile_ops.graph_capture: {_argument_name(path)} has shape {tuple(new.shape)} and dtype "
                f"{new.dtype}, but the graph was captured with {tuple(static.shape)} and "
                f"{static.dtype}; capture one graph per shape"
            )
        if new is not static:
            static.copy_(new)
    elif new != static:
        raise ValueError(
            f"compile_ops.graph_capture: {_argument_name(path)} was {static!r} at capture, got {new!r}; a graph "
            "replays the captured value"
        )


@dataclass
class CaptureContext:
    """What ``graph_capture`` yields: the device, the side stream captures run on, the shared pool."""

    device: torch.device
    stream: torch.Stream
    pool: Any
    backend: GraphBackend
    _active: bool = field(default=True, repr=False)

    def capture(
        self, fn: Callable[..., Any], *args: Any, warmup: int = 2, **kwargs: Any
    ) -> CapturedGraph:
        """Record one call of ``fn(*args, **kwargs)`` into a graph in this context's pool.

        ``fn`` first runs ``warmup`` times on the capture stream, so compilation, autotuning,
        communicator set-up and lazy allocations happen before recording. The tensors in
        ``args``/``kwargs`` become the graph's static input buffers. Runs under ``no_grad``.
        """
        if not self._active:
            raise GraphCaptureError(
                "compile_ops.graph_capture: capture() called after its graph_capture() block ended"
            )
        if warmup < 0:
            raise ValueError(f"compile_ops.graph_capture: warmup={warmup} must be >= 0")
        with torch.no_grad(), self.stream:
            for _ in range(warmup):
                fn(*args, **kwargs)
            torch.accelerator.synchronize(self.device)
            graph = self.backend.new_graph()
            graph.capture_begin(pool=self.pool)
            try:
                output = fn(*args, **kwargs)
            finally:
                graph.capture_end()
        return CapturedGraph(graph, args, kwargs, output)


@contextlib.contextmanager
def graph_capture(
    device: torch.device | str | int | None = None,
    *,
    groups: Iterable[GroupLike] | GroupLike | None = None,
    pool: Any = None,
    stream: torch.Stream | None = None,
) -> Iterator[CaptureContext]:
    """Make a side stream current on the accelerator and yield a context that captures on it.

    ``device``: the accelerator device (default: the current one). ``groups``: the process groups
    whose collectives the captured code runs, each checked with ``check_capturable`` (default: the
    default group and every name given to ``compile_ops.register_group``). ``pool``: a memory-pool
    handle to share with earlier captures (default: a fresh one, shared by every graph captured in
    this block). ``stream``: the capture stream (default: a new side stream).

    The side stream first waits for the work already issued on the current stream, and on exit the
    current stream waits for everything issued on the side stream.
    """
    device = _capture_device(device)
    backend = graph_backend(device)
    for group in _groups_to_check(groups):
        check_capturable(group, device)
    with torch.accelerator.device_index(device.index):
        current = torch.accelerator.current_stream(device)
        side = _default_capture_stream(device) if stream is None else stream
        side.wait_stream(current)
        ctx = CaptureContext(device, side, backend.new_pool() if pool is None else pool, backend)
        try:
            with side:
                yield ctx
        finally:
            ctx._active = False
            current.wait_stream(side)


def capture(
    fn: Callable[..., Any],
    *args: Any,
    groups: Iterable[GroupLike] | GroupLike | None = None,
    warmup: int = 2,
    device: torch.device | str | int | None = None,
) -> CapturedGraph:
    """Capture one call of ``fn(*args)`` (any module or function) in a pool of its own."""
    with graph_capture(device, groups=groups) as ctx:
        return ctx.capture(fn, *args, warmup=warmup)


def capture_sizes(
    fn: Callable[..., Any],
    sizes: Iterable[int],
    make_args: Callable[[int], tuple],
    *,
    groups: Iterable[GroupLike] | GroupLike | None = None,
    warmup: int = 2,
    device: torch.device | str | int | None = None,
) -> dict[int, CapturedGraph]:
    """One graph of ``fn(*make_args(n))`` per size ``n``, all in one memory pool.

    The largest size is captured first: later, smaller captures then reuse the blocks it freed,
    so the pool grows to about the largest graph's needs instead of the sum of all of them.
    ``make_args(n)`` allocates the static inputs for size ``n``, before any capture starts.
    """
    order = sorted(set(sizes), reverse=True)
    static_args = {n: tuple(make_args(n)) for n in order}
    with graph_capture(device, groups=groups) as ctx:
        return {n: ctx.capture(fn, *static_args[n], warmup=warmup) for n in order}
