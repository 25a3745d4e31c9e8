"""Collective ops: schemas, eager kernels over torch.distributed, and the public wrappers.

Every collective exists twice:

* an out-of-place op (``torch.ops.compile_ops.all_reduce``) with a purely functional schema. It
  always allocates its result; it never returns its input or a view of it, because a compiler that
  trusts the schema may reuse or drop a buffer it believes unchanged (the all-zeros bug of an
  in-place all_reduce hidden behind an out-of-place schema).
* a twin whose schema declares the write: ``all_reduce_`` / ``broadcast_`` mutate ``x`` in place;
  the others have an ``.out`` overload that writes into a caller's buffer. Inductor's reinplacing
  pass swaps the out-of-place op for the in-place twin where the input is dead (see reinplace.py).

The kernels are registered for CompositeExplicitAutograd, so they serve every device a backend can
reach (CPU over gloo, CUDA over NCCL, XPU over XCCL) without naming one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.distributed_c10d import (
    AllgatherOptions,
    AllreduceOptions,
    AllToAllOptions,
    BroadcastOptions,
    ReduceScatterOptions,
)

from fake_impls import collectives as shapes
from fake_impls.collectives import REDUCE_OPS

from .funcol import switchable
from .groups import GroupError, GroupLike, group_and_name, group_from_name

__all__ = [
    "REDUCE_OPS",
    "all_gather",
    "all_gatherv",
    "all_reduce",
    "all_to_all",
    "broadcast",
    "reduce_scatter",
    "reduce_scatterv",
]

SCHEMAS = {
    "all_reduce": "all_reduce(Tensor x, str op, str group_name) -> Tensor",
    "all_reduce_": "all_reduce_(Tensor(a!) x, str op, str group_name) -> Tensor(a!)",
    "broadcast": "broadcast(Tensor x, int src, str group_name) -> Tensor",
    "broadcast_": "broadcast_(Tensor(a!) x, int src, str group_name) -> Tensor(a!)",
    "all_gather": "all_gather(Tensor x, int dim, int group_size, str group_name) -> Tensor",
    "all_gather.out": "all_gather.out(Tensor x, int dim, int group_size, str group_name, *, "
    "Tensor(a!) out) -> Tensor(a!)",
    "all_gatherv": "all_gatherv(Tensor x, SymInt[] sizes, int dim, str group_name) -> Tensor",
    "all_gatherv.out": "all_gatherv.out(Tensor x, SymInt[] sizes, int dim, str group_name, *, "
    "Tensor(a!) out) -> Tensor(a!)",
    "reduce_scatter": "reduce_scatter(Tensor x, int dim, str op, int group_size, str group_name)"
    " -> Tensor",
    "reduce_scatter.out": "reduce_scatter.out(Tensor x, int dim, str op, int group_size, "
    "str group_name, *, Tensor(a!) out) -> Tensor(a!)",
    "reduce_scatterv": "reduce_scatterv(Tensor x, SymInt[] sizes, int dim, str op, int rank, "
    "str group_name) -> Tensor",
    "reduce_scatterv.out": "reduce_scatterv.out(Tensor x, SymInt[] sizes, int dim, str op, "
    "int rank, str group_name, *, Tensor(a!) out) -> Tensor(a!)",
    "all_to_all": "all_to_all(Tensor x, SymInt[] output_split_sizes, SymInt[] input_split_sizes,"
    " str group_name) -> Tensor",
    "all_to_all.out": "all_to_all.out(Tensor x, SymInt[] output_split_sizes, "
    "SymInt[] input_split_sizes, str group_name, *, Tensor(a!) out) -> Tensor(a!)",
}

_REDUCE_OP = {
    "sum": dist.ReduceOp.SUM,
    "avg": dist.ReduceOp.AVG,
    "product": dist.ReduceOp.PRODUCT,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
}
# Backends with a native AVG; elsewhere avg is a sum followed by a division.
_NATIVE_AVG = frozenset({"nccl", "gloo"})
# Backends whose list all_gather accepts uneven sizes (NCCL groups one broadcast per rank).
_UNEVEN_ALL_GATHER = frozenset({"nccl"})
# Data types a backend cannot carry; movement ops send them as raw bytes instead.
_BYTE_ONLY_DTYPES = frozenset(
    dt
    for name in (
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if (dt := getattr(torch, name, None)) is not None
)


# ----------------------------------------------------------------------------------------------
# Per-call cost. A small collective costs about 20 µs inside c10d, and whatever a kernel adds is
# paid on every call, eager and compiled alike (Inductor calls these same kernels). So the kernels
# call ProcessGroup methods directly (torch.distributed's Python wrappers re-check what is checked
# here and cost ~8 µs more), keep one options object per collective and reduction, remember what
# they learned about a group, and remember shape-rule verdicts (~1.5 µs per torch._check).


def _wait(work) -> None:
    # NCCL returns no Work for a synchronous call: it already sits on the current stream.
    if work is not None:
        work.wait()


def _options(cls, **fields):
    opts = cls()
    # The caller waits for the result, as torch.distributed does for async_op=False; NCCL then
    # runs the collective on the current stream instead of a side stream plus events.
    opts.asyncOp = False
    for name, value in fields.items():
        setattr(opts, name, value)
    return opts


_ALL_REDUCE_OPTS = {k: _options(AllreduceOptions, reduceOp=v) for k, v in _REDUCE_OP.items()}
_REDUCE_SCATTER_OPTS = {
    k: _options(ReduceScatterOptions, reduceOp=v) for k, v in _REDUCE_OP.items()
}
_ALL_GATHER_OPTS = _options(AllgatherOptions)
_ALL_TO_ALL_OPTS = _options(AllToAllOptions)

_SHAPES: dict[tuple, tuple[int, ...]] = {}
_SHAPES_MAX = 4096
# What a group serves, looked up once per group (weak: a destroyed group is not kept alive).
_DEVICE_TYPES: weakref.WeakKeyDictionary[ProcessGroup, frozenset[str]]
_DEVICE_TYPES = weakref.WeakKeyDictionary()


def _shape(rule: Callable[..., Sequence[int]], x: torch.Tensor, *args) -> tuple[int, ...]:
    """``rule(x, *args)``, remembered per (x's shape and dtype, args).

    Shape rules read nothing else, so a verdict holds for every call with the same key. Failures
    are not remembered: a bad argument raises the rule's own error on every call.
    """
    key = (rule, x.shape, x.dtype, *args)
    shape = _SHAPES.get(key)
    if shape is None:
        shape = tuple(rule(x, *args))
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[key] = shape
    return shape


def _group(op: str, group_name: str, x: torch.Tensor) -> ProcessGroup:
    pg = group_from_name(group_name, op)
    device_types = _DEVICE_TYPES.get(pg)
    if device_types is None:
        device_types = _DEVICE_TYPES[pg] = frozenset(d.type for d in pg._device_types)
    if x.device.type not in device_types:
        raise GroupError(
            f"compile_ops.{op}: x is on {x.device} but group {group_name!r} "
            f"({dist.get_backend(pg)}) serves only {sorted(device_types)} tensors"
        )
    return pg


def _check_group_size(op: str, pg: ProcessGroup, expected: int, what: str) -> None:
    if pg.size() != expected:
        raise GroupError(
            f"compile_ops.{op}: {what} is {expected} but the group has {pg.size()} ranks"
        )


def _wire(t: torch.Tensor) -> torch.Tensor:
    """``t`` as backends carry it: fp8 as raw bytes, complex as pairs of reals (same memory)."""
    if t.dtype in _BYTE_ONLY_DTYPES:
        return t.view(torch.uint8)
    if t.is_complex():
        return torch.view_as_real(t)
    return t


def _leading(t: torch.Tensor, dim: int) -> torch.Tensor | None:
    """``t`` with ``dim`` moved to the front as a contiguous *view*, or None if that needs a copy."""
    moved = t.movedim(dim, 0) if dim else t  # a new view costs ~1 µs; dim 0 is the usual case
    return moved if moved.is_contiguous() else None


def _reduction(op: str, pg: ProcessGroup) -> tuple[str, bool]:
    """The reduction to ask the backend for, and whether to divide by the group size after it."""
    if op == "avg" and dist.get_backend(pg) not in _NATIVE_AVG:
        return "sum", True
    return op, False


# ----------------------------------------------------------------------------------------------
# Eager kernels. Each validates everything before the first byte moves.


def _all_reduce_into(x: torch.Tensor, op: str, pg: ProcessGroup) -> None:
    buf = x if x.is_contiguous() else x.contiguous()
    op, divide = _reduction(op, pg)
    _wait(pg.allreduce([buf], _ALL_REDUCE_OPTS[op]))
    if divide:
        buf.div_(pg.size())
    if buf is not x:
        x.copy_(buf)


def _all_reduce_(x: torch.Tensor, op: str, group_name: str) -> torch.Tensor:
    _shape(shapes.all_reduce_shape, x, op)
    _all_reduce_into(x, op, _group("all_reduce_", group_name, x))
    return x


def _all_reduce(x: torch.Tensor, op: str, group_name: str) -> torch.Tensor:
    _shape(shapes.all_reduce_shape, x, op)
    pg = _group("all_reduce", group_name, x)
    out = x.clone(memory_format=torch.contiguous_format)
    _all_reduce_into(out, op, pg)
    return out


def _broadcast_into(x: torch.Tensor, src: int, pg: ProcessGroup, op: str) -> None:
    ranks = dist.get_process_group_ranks(pg)
    if src not in ranks:
        raise GroupError(f"compile_ops.{op}: src={src} is not a member of the group")
    buf = x if x.is_contiguous() else x.contiguous()
    opts = _options(BroadcastOptions, rootRank=ranks.index(src), rootTensor=0)
    _wait(pg.broadcast([_wire(buf)], opts))
    if buf is not x:
        x.copy_(buf)


def _broadcast_(x: torch.Tensor, src: int, group_name: str) -> torch.Tensor:
    _shape(shapes.broadcast_shape, x, src)
    _broadcast_into(x, src, _group("broadcast_", group_name, x), "broadcast_")
    return x


def _broadcast(x: torch.Tensor, src: int, group_name: str) -> torch.Tensor:
    _shape(shapes.broadcast_shape, x, src)
    pg = _group("broadcast", group_name, x)
    out = x.clone(memory_format=torch.contiguous_format)
    _broadcast_into(out, src, pg, "broadcast")
    return out


def _all_gather_base(pg: ProcessGroup, out: torch.Tensor, x: torch.Tensor) -> None:
    _wait(pg._allgather_base(_wire(out), _wire(x), _ALL_GATHER_OPTS))


def _gather_into(out: torch.Tensor, x: torch.Tensor, dim: int, sizes: Sequence[int], pg) -> None:
    """Concatenate every rank's ``x`` along ``dim`` into ``out``; sizes[r] is rank r's extent."""
    rows = _leading(out, dim)
    src = (x.movedim(dim, 0) if dim else x).contiguous()
    even = sizes.count(sizes[0]) == len(sizes)
    if even and rows is not None:
        _all_gather_base(pg, rows, src)
    elif even:
        stacked = src.new_empty((pg.size() * src.shape[0], *src.shape[1:]))
        _all_gather_base(pg, stacked, src)
        out.copy_(stacked.movedim(0, dim))
    elif rows is not None and dist.get_backend(pg) in _UNEVEN_ALL_GATHER:
        parts = [_wire(p) for p in rows.split(list(sizes))]
        _wait(pg.allgather([parts], [_wire(src)], _ALL_GATHER_OPTS))
    else:
        # Uneven sizes on a backend without an uneven gather: pad every rank to the largest
        # extent, gather with the tensor API, then compact.
        longest = max(sizes)
        padded = src.new_zeros((longest, *src.shape[1:]))
        padded[: src.shape[0]].copy_(src)
        stacked = src.new_empty((pg.size() * longest, *src.shape[1:]))
        _all_gather_base(pg, stacked, padded)
        chunks = [stacked[r * longest : r * longest + n] for r, n in enumerate(sizes)]
        if rows is not None:
            torch.cat(chunks, dim=0, out=rows)
        else:
            out.copy_(torch.cat(chunks, dim=0).movedim(0, dim))


def _all_gather_into(out, x, dim, group_size, group_name) -> torch.Tensor:
    pg = _group("all_gather", group_name, x)
    _check_group_size("all_gather", pg, group_size, "group_size")
    dim %= x.dim()
    _gather_into(out, x, dim, [x.shape[dim]] * group_size, pg)
    return out


def _all_gather_out(x, dim, group_size, group_name, *, out):
    shapes.check_out("all_gather", out, x, shapes.all_gather_shape(x, dim, group_size))
    return _all_gather_into(out, x, dim, group_size, group_name)


def _all_gather(x, dim, group_size, group_name):
    out = x.new_empty(_shape(shapes.all_gather_shape, x, dim, group_size))
    return _all_gather_into(out, x, dim, group_size, group_name)


def _check_own_size(op: str, pg: ProcessGroup, x: torch.Tensor, sizes, dim: int, name="sizes"):
    _check_group_size(op, pg, len(sizes), f"len({name})")
    rank = pg.rank()
    if x.shape[dim] != sizes[rank]:
        raise ValueError(
            f"compile_ops.{op}: x.shape[{dim}]={x.shape[dim]} on rank {rank} but "
            f"{name}[{rank}]={sizes[rank]}"
        )


def _all_gatherv_into(out, x, sizes, dim, group_name) -> torch.Tensor:
    pg = _group("all_gatherv", group_name, x)
    dim %= x.dim()
    _check_own_size("all_gatherv", pg, x, sizes, dim)
    _gather_into(out, x, dim, sizes, pg)
    return out


def _all_gatherv_out(x, sizes, dim, group_name, *, out):
    shapes.check_out("all_gatherv", out, x, shapes.all_gatherv_shape(x, sizes, dim))
    return _all_gatherv_into(out, x, sizes, dim, group_name)


def _all_gatherv(x, sizes, dim, group_name):
    out = x.new_empty(_shape(shapes.all_gatherv_shape, x, tuple(sizes), dim))
    return _all_gatherv_into(out, x, sizes, dim, group_name)


def _scatter_reduce_into(out, x, dim, sizes, op, pg) -> None:
    """Reduce every rank's ``x`` and leave slice ``rank`` (extents ``sizes``) along ``dim`` in ``out``."""
    rows = _leading(x, dim)
    src = rows if rows is not None else x.movedim(dim, 0).contiguous()
    dst = _leading(out, dim)
    buf = dst if dst is not None else out.movedim(dim, 0).contiguous()
    op, divide = _reduction(op, pg)
    opts = _REDUCE_SCATTER_OPTS[op]
    if sizes.count(sizes[0]) == len(sizes):
        _wait(pg._reduce_scatter_base(buf, src, opts))
    else:
        _wait(pg.reduce_scatter([buf], [list(src.split(list(sizes)))], opts))
    if divide:
        buf.div_(pg.size())
    if dst is None:
        out.copy_(buf.movedim(0, dim))


def _reduce_scatter_into(out, x, dim, op, group_size, group_name) -> torch.Tensor:
    pg = _group("reduce_scatter", group_name, x)
    _check_group_size("reduce_scatter", pg, group_size, "group_size")
    dim %= x.dim()
    _scatter_reduce_into(out, x, dim, [x.shape[dim] // group_size] * group_size, op, pg)
    return out


def _reduce_scatter_out(x, dim, op, group_size, group_name, *, out):
    shape = shapes.reduce_scatter_shape(x, dim, op, group_size)
    shapes.check_out("reduce_scatter", out, x, shape)
    return _reduce_scatter_into(out, x, dim, op, group_size, group_name)


def _reduce_scatter(x, dim, op, group_size, group_name):
    out = x.new_empty(_shape(shapes.reduce_scatter_shape, x, dim, op, group_size))
    return _reduce_scatter_into(out, x, dim, op, group_size, group_name)


def _reduce_scatterv_into(out, x, sizes, dim, op, rank, group_name) -> torch.Tensor:
    pg = _group("reduce_scatterv", group_name, x)
    _check_group_size("reduce_scatterv", pg, len(sizes), "len(sizes)")
    if pg.rank() != rank:
        raise GroupError(
            f"compile_ops.reduce_scatterv: rank={rank} but this process is rank {pg.rank()} of the "
            "group (was the code compiled on another rank?)"
        )
    _scatter_reduce_into(out, x, dim % x.dim(), sizes, op, pg)
    return out


def _reduce_scatterv_out(x, sizes, dim, op, rank, group_name, *, out):
    shape = shapes.reduce_scatterv_shape(x, sizes, dim, op, rank)
    shapes.check_out("reduce_scatterv", out, x, shape)
    return _reduce_scatterv_into(out, x, sizes, dim, op, rank, group_name)


def _reduce_scatterv(x, sizes, dim, op, rank, group_name):
    out = x.new_empty(_shape(shapes.reduce_scatterv_shape, x, tuple(sizes), dim, op, rank))
    return _reduce_scatterv_into(out, x, sizes, dim, op, rank, group_name)


def _all_to_all_into(out, x, output_split_sizes, input_split_sizes, group_name) -> torch.Tensor:
    pg = _group("all_to_all", group_name, x)
    _check_group_size("all_to_all", pg, len(input_split_sizes), "len(input_split_sizes)")
    src = x if x.is_contiguous() else x.contiguous()
    dst = (
        out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    )
    out_splits, in_splits = list(output_split_sizes), list(input_split_sizes)
    _wait(pg.alltoall_base(_wire(dst), _wire(src), out_splits, in_splits, _ALL_TO_ALL_OPTS))
    if dst is not out:
        out.copy_(dst)
    return out


def _all_to_all_out(x, output_split_sizes, input_split_sizes, group_name, *, out):
    shape = shapes.all_to_all_shape(x, output_split_sizes, input_split_sizes)
    shapes.check_out("all_to_all", out, x, shape)
    return _all_to_all_into(out, x, output_split_sizes, input_split_sizes, group_name)


def _all_to_all(x, output_split_sizes, input_split_sizes, group_name):
    shape = _shape(shapes.all_to_all_shape, x, tuple(output_split_sizes), tuple(input_split_sizes))
    out = x.new_empty(shape)
    return _all_to_all_into(out, x, output_split_sizes, input_split_sizes, group_name)


KERNELS = {
    "all_reduce": _all_reduce,
    "all_reduce_": _all_reduce_,
    "broadcast": _broadcast,
    "broadcast_": _broadcast_,
    "all_gather": _all_gather,
    "all_gather.out": _all_gather_out,
    "all_gatherv": _all_gatherv,
    "all_gatherv.out": _all_gatherv_out,
    "reduce_scatter": _reduce_scatter,
    "reduce_scatter.out": _reduce_scatter_out,
    "reduce_scatterv": _reduce_scatterv,
    "reduce_scatterv.out": _reduce_scatterv_out,
    "all_to_all": _all_to_all,
    "all_to_all.out": _all_to_all_out,
}


def _functionalize_twin(functional: str, mutated: str) -> Callable[..., torch.Tensor]:
    """Functionalization rule for a twin: run the out-of-place op, then write its result back.

    With it, AOTAutograd can trace a direct call of a twin, and Inductor can lower the twin that
    its reinplacing pass puts in the graph (it refuses mutating ops without such a rule).
    """

    def kernel(*args, **kwargs):
        target = kwargs[mutated] if mutated in kwargs else args[0]
        kwargs = {k: v for k, v in kwargs.items() if k != mutated}
        torch._functionalize_sync(target)
        plain = torch.utils._pytree.tree_map_only(
            torch.Tensor,
            lambda t: torch._from_functional_tensor(t) if torch._is_functional_tensor(t) else t,
            (args, kwargs),
        )
        with torch._C._ExcludeDispatchKeyGuard(
            torch._C.DispatchKeySet(torch._C.DispatchKey.Functionalize)
        ):
            result = getattr(ops, functional).default(*plain[0], **plain[1])
        torch._functionalize_replace(target, result)
        torch._functionalize_commit_update(target)
        torch._functionalize_sync(target)
        return target

    return kernel


_lib = torch.library.Library(shapes.NAMESPACE, "DEF")
ops = torch.ops.compile_ops
for _name, _schema in SCHEMAS.items():
    _lib.define(_schema)
    _lib.impl(_name, KERNELS[_name], "CompositeExplicitAutograd")
    if _name.endswith("_"):
        _lib.impl(_name, _functionalize_twin(_name[:-1], "x"), "Functionalize")
    elif _name.endswith(".out"):
        _lib.impl(_name, _functionalize_twin(_name[: -len(".out")], "out"), "Functionalize")
    else:
        # A collective is never dead code: if one rank's compiler drops it (say its result has
        # zero elements there) every other rank waits for it forever.
        torch.fx.node.has_side_effect(getattr(ops, _name).default)
shapes.register(_lib)


# ----------------------------------------------------------------------------------------------
# Public wrappers: torch.distributed-style names, group resolved to (name, size, rank) constants.


def _check_one_per_rank(op: str, pg: ProcessGroup, sizes: Sequence[int], name: str) -> None:
    if len(sizes) != pg.size():
        raise GroupError(
            f"compile_ops.{op}: len({name}) is {len(sizes)} but the group has {pg.size()} ranks"
        )


@switchable
def all_reduce(x: torch.Tensor, op: str = "sum", group: GroupLike = None) -> torch.Tensor:
    """Reduce ``x`` over the group; every rank gets the result in a new tensor."""
    _, name = group_and_name(group, "all_reduce")
    return ops.all_reduce(x, op, name)


@switchable
def broadcast(x: torch.Tensor, src: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Rank ``src`` (a global rank, as in torch.distributed) sends ``x`` to every rank."""
    _, name = group_and_name(group, "broadcast")
    return ops.broadcast(x, src, name)


@switchable
def all_gather(x: torch.Tensor, dim: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (all the same shape) along ``dim``."""
    pg, name = group_and_name(group, "all_gather")
    return ops.all_gather(x, dim, pg.size(), name)


def all_gatherv(
    x: torch.Tensor, sizes: Sequence[int], dim: int = 0, group: GroupLike = None
) -> torch.Tensor:
    """Concatenate along ``dim`` where rank r contributes ``sizes[r]`` slices."""
    pg, name = group_and_name(group, "all_gatherv")
    _check_one_per_rank("all_gatherv", pg, sizes, "sizes")
    return ops.all_gatherv(x, list(sizes), dim, name)


@switchable
def reduce_scatter(
    x: torch.Tensor, dim: int = 0, op: str = "sum", group: GroupLike = None
) -> torch.Tensor:
    """Reduce ``x`` over the group and keep this rank's equal slice along ``dim``."""
    pg, name = group_and_name(group, "reduce_scatter")
    return ops.reduce_scatter(x, dim, op, pg.size(), name)


def reduce_scatterv(
    x: torch.Tensor, sizes: Sequence[int], dim: int = 0, op: str = "sum", group: GroupLike = None
) -> torch.Tensor:
    """Reduce ``x`` over the group and keep this rank's ``sizes[rank]`` slices along ``dim``."""
    pg, name = group_and_name(group, "reduce_scatterv")
    _check_one_per_rank("reduce_scatterv", pg, sizes, "sizes")
    return ops.reduce_scatterv(x, list(sizes), dim, op, pg.rank(), name)


@switchable
def all_to_all(
    x: torch.Tensor,
    output_split_sizes: Sequence[int] | None,
    input_split_sizes: Sequence[int] | None,
    group: GroupLike = None,
) -> torch.Tensor:
    """Send ``input_split_sizes[r]`` rows of ``x`` to rank r; receive ``output_split_sizes[r]``.

    ``None`` for both means equal splits of dim 0 (as in ``all_to_all_single``).
    """
    pg, name = group_and_name(group, "all_to_all")
    if output_split_sizes is None and input_split_sizes is None:
        n = pg.size()
        if x.shape[0] % n != 0:
            raise ValueError(
                f"compile_ops.all_to_all: x.shape[0]={x.shape[0]} is not divisible by the group "
                f"size {n} (pass split sizes for uneven splits)"
            )
        output_split_sizes = input_split_sizes = [x.shape[0] // n] * n
    elif output_split_sizes is None or input_split_sizes is None:
        raise ValueError(
            "compile_ops.all_to_all: give both output_split_sizes and input_split_sizes, or neither"
        )
    _check_one_per_rank("all_to_all", pg, output_split_sizes, "output_split_sizes")
    _check_one_per_rank("all_to_all", pg, input_split_sizes, "input_split_sizes")
    return ops.all_to_all(x, list(output_split_sizes), list(input_split_sizes), name)
