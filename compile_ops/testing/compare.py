"""``assert_compiled_matches_eager``: one function, every rank, three ways of running it.

``fn`` runs eagerly and under ``torch.compile(fullgraph=True)`` on every rank of a worker pool;
the compiled results must match the eager ones, and the eager ones must match a single-process
``reference`` when one is given. A failure names the rank, the output, the worst element and how
to reproduce it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

from fake_impls.register import leaf_pairs

from .pool import WorkerError, WorkerPool, get_pool


class MismatchError(AssertionError):
    """Compiled, eager and reference results disagree (or compilation failed)."""


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol): compiled code may fuse and reassociate, so looser than bitwise."""
    if dtype.is_floating_point and dtype.itemsize == 1:  # float8: assert_close compares bitwise
        return 0.0, 0.0
    if dtype in (torch.bfloat16, torch.float16):
        return 2e-2, 2e-2
    if dtype.is_floating_point:
        return 1e-4, 1e-5
    return 0.0, 0.0


def to_device_keeping_layout(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``t`` on ``device`` with its strides and offset: a sliced or permuted input stays one there
    (``Tensor.to`` would make a sliced one contiguous, and the layout is part of what is tested)."""
    whole_storage = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())
    return whole_storage.to(device).as_strided(t.shape, t.stride(), t.storage_offset())


def run_eager_and_compiled(
    fn: Callable, inputs: Sequence[Any], dynamic: bool, backend: str | None, device: str = "cpu"
):
    """On one rank: eager, fake and compiled outputs, frames compiled, inputs intact.

    Runs inside a worker; the inputs arrive on the CPU and move to ``device`` first.
    ``backend=None`` skips compilation. The fake run (FakeTensorMode) checks the fake kernels
    against the real ones whatever the backend.
    """
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._subclasses.fake_tensor import FakeTensorMode

    inputs = pytree.tree_map_only(
        torch.Tensor, lambda t: to_device_keeping_layout(t, device), inputs
    )
    before = pytree.tree_map_only(torch.Tensor, torch.clone, inputs)
    eager = fn(*inputs)
    intact = all(
        torch.equal(a, b)
        for a, b in zip(pytree.tree_leaves(inputs), pytree.tree_leaves(before), strict=True)
        if isinstance(a, torch.Tensor)
    )
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = fn(*pytree.tree_map_only(torch.Tensor, mode.from_tensor, inputs))
    fake_meta = pytree.tree_map_only(torch.Tensor, lambda t: (tuple(t.shape), t.dtype), fake)
    compiled, frames = None, 1
    if backend is not None:
        torch._dynamo.reset()
        counter = CompileCounterWithBackend(backend)
        compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=dynamic)(*inputs)
        frames = counter.frame_count
    return eager, fake_meta, compiled, frames, intact


def assert_compiled_matches_eager(
    fn: Callable,
    per_rank_inputs: Sequence[Sequence[Any]],
    world_size: int,
    *,
    reference: Callable[[Sequence[Sequence[Any]]], Sequence[Any]] | None = None,
    dynamic: bool = False,
    backend: str | None = "inductor",
    device: str = "cpu",
    rtol: float | None = None,
    atol: float | None = None,
    pool: WorkerPool | None = None,
    timeout: float | None = None,
    reproducer: str | None = None,
) -> list[Any]:
    """Check ``fn`` compiled == eager (== ``reference``) on every rank; return the eager outputs.

    ``fn`` must pickle (a module-level function or a picklable callable object).
    ``per_rank_inputs[r]`` is the argument tuple for rank r. ``reference(per_rank_inputs)``, run in
    this process, returns every rank's expected output. ``backend=None`` checks eager against
    the reference and the fake kernels only. ``reproducer`` is printed on failure (for example the
    source of a generated program). ``device`` is where ``fn`` runs: the inputs are given on the
    CPU, and the default pool uses that device's backend (gloo for the CPU, NCCL for CUDA, XCCL for
    XPU), one device per rank. Also checked: ``fn`` leaves its inputs unchanged, and its
    fake-tensor run gives the shapes and dtypes of the real one.
    """
    if len(per_rank_inputs) != world_size:
        raise ValueError(f"need {world_size} input tuples, got {len(per_rank_inputs)}")
    if pool is None:
        device_type = torch.device(device).type
        pool = get_pool(world_size, dist.Backend.default_device_backend_map[device_type])
    context = _describe(fn, per_rank_inputs, dynamic, backend, device, reproducer)
    try:
        results = pool.map(
            run_eager_and_compiled,
            [(fn, tuple(inputs), dynamic, backend, device) for inputs in per_rank_inputs],
            timeout=timeout,
        )
    except WorkerError as e:
        raise MismatchError(f"{context}\n{e}") from None
    expected = reference(per_rank_inputs) if reference is not None else None
    for rank, (eager, fake_meta, compiled, frames, intact) in enumerate(results):
        where = f"{context}\nrank {rank}"
        if not intact:
            raise MismatchError(f"{where}: the function modified its input")
        real_meta = pytree.tree_map_only(torch.Tensor, lambda t: (tuple(t.shape), t.dtype), eager)
        if fake_meta != real_meta:
            raise MismatchError(f"{where}: fake kernels give {fake_meta}, real ones {real_meta}")
        if frames != 1:
            raise MismatchError(f"{where}: compiled into {frames} frames, want 1")
        if backend is not None:
            _compare(compiled, eager, "compiled", "eager", rank, context, rtol, atol)
        if expected is not None:
            _compare(eager, expected[rank], "eager", "reference", rank, context, rtol, atol)
    return [result[0] for result in results]


def _compare(got, want, got_name, want_name, rank, context, rtol, atol) -> None:
    pairs = leaf_pairs(got, want)
    if pairs is None:
        got_spec, want_spec = pytree.tree_structure(got), pytree.tree_structure(want)
        raise MismatchError(
            f"{context}\nrank {rank}: {got_name} returned {got_spec}, {want_name} {want_spec}"
        )
    for i, (g, w) in enumerate(pairs):
        if not isinstance(g, torch.Tensor):
            if g != w:
                raise MismatchError(f"{context}\nrank {rank} output {i}: {got_name} {g!r} != {w!r}")
            continue
        r, a = default_tolerance(w.dtype)
        try:
            torch.testing.assert_close(
                g, w, rtol=r if rtol is None else rtol, atol=a if atol is None else atol
            )
        except AssertionError as e:
            raise MismatchError(
                f"{context}\nrank {rank} output {i}: {got_name} differs from {want_name}: {e}"
            ) from None


def _describe(fn, per_rank_inputs, dynamic, backend, device, reproducer) -> str:
    def meta(t):
        if isinstance(t, torch.Tensor):
            return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)} stride={t.stride()}"
        return repr(t)

    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    world = len(per_rank_inputs)
    lines = [f"{name} (world {world} on {device}, backend={backend}, dynamic={dynamic})"]
    lines += [
        f"  rank {r} inputs: {', '.join(meta(t) for t in inputs)}"
        for r, inputs in enumerate(per_rank_inputs)
    ]
    if reproducer:
        lines += ["reproducer:", reproducer]
    return "\n".join(lines)
