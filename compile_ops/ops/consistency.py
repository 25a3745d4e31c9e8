"""Debug mode: every rank checks that the others called the same collective with matching arguments.

Ranks that disagree do not fail cleanly. A rank that sends 1 row where its peer expects 2 leaves
the peer with uninitialised memory; different reduce ops, dims, shapes or dtypes give wrong
values, a crash inside the backend, or a wait until the process group's timeout. No rank can see
this alone. In debug mode each collective kernel first all-gathers a fixed-length int64
fingerprint of its arguments over its own group and compares every rank's fingerprint, so every
rank raises the same :class:`RankMismatchError`, naming the first field that differs and each
rank's value, before any data moves. Compiled code calls the same kernels, so it is checked too.

The fingerprint's length depends only on the group's size, which every rank of the exchange
shares, so the exchange itself cannot mismatch. Off by default (``COMPILE_OPS_DEBUG=1`` or
:func:`set_debug_mode` turn it on; it must be on on every rank); when off, a kernel pays one flag
read.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map_only

from fake_impls.collectives import REDUCE_OPS

from ..groups import group_from_name

__all__ = ["RankMismatchError", "checked", "debug_mode", "is_debug_mode", "set_debug_mode"]

_ENV = "COMPILE_OPS_DEBUG"


class RankMismatchError(ValueError):
    """The ranks of a group called a collective with arguments that do not fit together."""


def _from_env() -> bool:
    value = os.environ.get(_ENV, "").strip().lower()
    if value in ("", "0", "false", "off", "no"):
        return False
    if value in ("1", "true", "on", "yes"):
        return True
    raise ValueError(f"{_ENV}={value!r}: expected 1/true/on/yes or 0/false/off/no")


_enabled = _from_env()


def set_debug_mode(enabled: bool) -> bool:
    """Turn the cross-rank argument check on or off (on every rank!); returns the previous state."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def is_debug_mode() -> bool:
    return _enabled


@contextlib.contextmanager
def debug_mode(enabled: bool = True) -> Iterator[None]:
    """``with compile_ops.debug_mode(): ...`` checks every collective inside across ranks."""
    previous = set_debug_mode(enabled)
    try:
        yield
    finally:
        set_debug_mode(previous)


def checked(name: str, kernel: Callable) -> Callable:
    """``kernel`` of op overload ``name``, preceded in debug mode by the cross-rank check."""
    _OP_NAMES[_code(_collective(name))] = _collective(name)

    def run(*args, **kwargs):
        if _enabled:
            _verify(name, args, kwargs)
        return kernel(*args, **kwargs)

    return run


# ----------------------------------------------------------------------------------------------
# The fingerprint: fixed slots of int64, strings as CRC-32 codes.

_NA = -(2**63)  # "this op has no such argument"
_SHAPE_SLOTS = 8  # dims shown in messages; the digest covers every dim
_SCALARS = (
    "op",
    "group",
    "device",
    "dtype",
    "ndim",
    "dim",
    "reduce_op",
    "src",
    "dst",
    "group_size",
)
_LISTS = ("sizes", "input_split_sizes", "output_split_sizes")
_LABELS = {
    "op": "the collective",
    "group": "the group",
    "device": "x.device type",
    "dtype": "x.dtype",
    "ndim": "x.dim()",
    "dim": "dim",
    "reduce_op": "op",
    "src": "src",
    "dst": "dst",
    "group_size": "group_size",
}
# Ops whose x may differ along one dim across ranks, and where that dim comes from.
_FREE_DIM = {"all_gatherv": "dim", "all_to_all": 0}
_OP_NAMES: dict[int, str] = {}


def _code(text: str) -> int:
    return zlib.crc32(text.encode())


def _collective(overload: str) -> str:
    """The collective an overload performs: in-place and out= twins match the functional op."""
    return overload.split(".")[0].removesuffix("_")


def _valid_dim(x: torch.Tensor, dim) -> int | None:
    if isinstance(dim, int) and x.dim() > 0 and -x.dim() <= dim < x.dim():
        return dim % x.dim()
    return None


def _fingerprint(call: dict, op: str, n: int, valid: bool) -> dict[str, list[int]]:
    x = call["x"]
    dim = _valid_dim(x, call.get("dim"))
    free = _FREE_DIM.get(op)
    free = dim if free == "dim" else free
    masked = [-1 if i == free else s for i, s in enumerate(x.shape)]
    scalars = {
        "op": _code(op),
        "group": _code(call["torch_group_name"]),
        "device": _code(x.device.type),
        "dtype": _code(str(x.dtype)),
        "ndim": x.dim(),
        "dim": _NA if "dim" not in call else (call["dim"] if dim is None else dim),
        "reduce_op": _code(call["op"]) if "op" in call else _NA,
        "src": call.get("src", _NA),
        "dst": call.get("dst", _NA),
        "group_size": call.get("group_size", _NA),
    }
    fp = {k: [int(v)] for k, v in scalars.items()}
    fp["shape"] = [_code(repr(masked)), *_padded(list(x.shape), _SHAPE_SLOTS)]
    fp["extent"] = [_NA if dim is None else x.shape[dim]]
    for key in _LISTS:
        values = [int(v) for v in call.get(key, ())]
        fp[key] = [len(values) if key in call else _NA, *_padded(values, n)]
    fp["valid"] = [int(valid)]
    return fp


def _padded(values: list[int], width: int) -> list[int]:
    return (values + [_NA] * width)[:width]


def _local_problem(name: str, call: dict, pg) -> Exception | None:
    """What this rank's own checks say about its arguments, without communicating.

    The op's fake kernel runs the shape rules the eager kernel runs (on fake tensors: nothing is
    allocated). A rank whose own check fails raises; the others must learn of it in the
    exchange, or they would go on into the collective and wait for that rank forever.
    """
    if "rank" in call and call["rank"] != pg.rank():
        return RankMismatchError(
            f"compile_ops.{name}: rank={call['rank']} but this process is rank {pg.rank()} of "
            "the group (was the code compiled on another rank?)"
        )
    overload = _overload(name)
    args = [call[a.name] for a in overload._schema.arguments if not a.kwarg_only]
    kwargs = {a.name: call[a.name] for a in overload._schema.arguments if a.kwarg_only}
    try:
        with FakeTensorMode() as mode:
            fake = tree_map_only(torch.Tensor, mode.from_tensor, (args, kwargs))
            overload(*fake[0], **fake[1])
    except Exception as e:
        return e
    return None


def _overload(name: str):
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.compile_ops, packet), overload or "default")


def _layout(n: int) -> list[tuple[str, int]]:
    return [(k, 1) for k in _SCALARS] + [
        ("shape", 1 + _SHAPE_SLOTS),
        ("extent", 1),
        *((k, 1 + n) for k in _LISTS),
        ("valid", 1),
    ]


def _flatten(fp: dict[str, list[int]], n: int) -> list[int]:
    return [v for key, _ in _layout(n) for v in fp[key]]


def _unflatten(row: Sequence[int], n: int) -> dict[str, list[int]]:
    fp, at = {}, 0
    for key, width in _layout(n):
        fp[key], at = list(row[at : at + width]), at + width
    return fp


# ----------------------------------------------------------------------------------------------
# The check.


def _verify(name: str, args: tuple, kwargs: dict) -> None:
    overload = _overload(name)
    params = overload._schema.arguments
    call = dict(zip((a.name for a in params if not a.kwarg_only), args, strict=False))
    call.update(kwargs)
    call["x"] = args[0]  # every collective's first argument is the tensor it sends
    pg = group_from_name(call["group_name"], name)
    # Compared by torch's name for the group, which every rank shares: the name the op carries
    # may be an alias on one rank and a bound name on another, and bound names ("0#2") count
    # the groups this process has seen under a name, which ranks need not agree on.
    call["torch_group_name"] = pg.group_name
    n = pg.size()
    if n == 1:
        return
    op = _collective(name)
    here = _local_problem(name, call, pg)
    mine = _fingerprint(call, op, n, valid=here is None)
    everyone = [_unflatten(row, n) for row in _exchange(_flatten(mine, n), pg, args[0], name)]
    ranks = dist.get_process_group_ranks(pg)
    problem = _first_difference(op, everyone, call, ranks)
    if problem is not None:
        raise RankMismatchError(problem + " (debug mode)")
    if here is not None:
        raise here
    invalid = [r for r, fp in zip(ranks, everyone, strict=True) if not fp["valid"][0]]
    if invalid:
        raise RankMismatchError(
            f"compile_ops.{op}: the arguments on rank(s) {invalid} fail that rank's own checks, "
            "which raise there; this rank stops too instead of waiting for them (debug mode)"
        )


def _exchange(fingerprint: list[int], pg, x: torch.Tensor, name: str) -> list[list[int]]:
    served = {d.type for d in pg._device_types}
    device = x.device if x.device.type in served else _group_device(served)
    if device.type != "cpu":
        from .graph_capture import is_capturing

        if is_capturing(device):
            raise RuntimeError(
                f"compile_ops.{name}: debug mode cannot run inside a graph capture (it reads "
                "every rank's fingerprint back on the host); turn it off around the capture, "
                "whose warm-up calls it does check"
            )
    mine = torch.tensor(fingerprint, dtype=torch.int64, device=device)
    everyone = mine.new_empty(pg.size() * mine.numel())
    dist.all_gather_into_tensor(everyone, mine, group=pg)
    return everyone.view(pg.size(), -1).tolist()


def _group_device(served: set[str]) -> torch.device:
    if "cpu" in served:
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator()
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def _listing(ranks: Sequence[int], values: Sequence) -> str:
    return "; ".join(f"rank {r}: {v}" for r, v in zip(ranks, values, strict=True))


def _decode(key: str, value: int, call: dict) -> str:
    if value == _NA:
        return "none"
    if key not in ("op", "group", "device", "dtype", "reduce_op"):
        return str(value)
    own = {
        "op": None,
        "group": call["torch_group_name"],
        "device": call["x"].device.type,
        "dtype": str(call["x"].dtype),
        "reduce_op": call.get("op"),
    }[key]
    candidates = {
        "op": _OP_NAMES.values(),
        "group": dist.distributed_c10d._world.pg_names.values(),
        "device": ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "meta"),
        "dtype": (str(v) for v in vars(torch).values() if isinstance(v, torch.dtype)),
        "reduce_op": REDUCE_OPS,
    }[key]
    for text in (own, *candidates):
        if text is not None and _code(text) == value:
            return repr(text) if key in ("group", "reduce_op") else text
    return f"<unknown, CRC-32 {value:#010x}>"


def _shape_text(fp: dict[str, list[int]]) -> str:
    ndim = fp["ndim"][0]
    dims = [str(s) for s in fp["shape"][1 : 1 + min(ndim, _SHAPE_SLOTS)]]
    return "[" + ", ".join(dims + (["..."] if ndim > _SHAPE_SLOTS else [])) + "]"


def _first_difference(op: str, everyone: list[dict], call: dict, ranks: list[int]) -> str | None:
    """The message for the first argument the ranks disagree on, or None if they all fit."""
    for key in _SCALARS:
        values = [fp[key][0] for fp in everyone]
        if len(set(values)) > 1:
            where = "compile_ops" if key == "op" else f"compile_ops.{op}"
            shown = [_decode(key, v, call) for v in values]
            return f"{where}: ranks disagree on {_LABELS[key]}: {_listing(ranks, shown)}"
    n = len(everyone)
    for key in _LISTS:
        lists = [fp[key] for fp in everyone]
        if len({values[0] for values in lists}) > 1:
            shown = [values[0] for values in lists]
            return f"compile_ops.{op}: ranks disagree on len({key}): {_listing(ranks, shown)}"
        if op != "all_to_all" and len({tuple(values) for values in lists}) > 1:
            shown = [values[1 : 1 + values[0]] for values in lists]
            return f"compile_ops.{op}: ranks disagree on {key}: {_listing(ranks, shown)}"
    if len({fp["shape"][0] for fp in everyone}) > 1:
        free = _FREE_DIM.get(op)
        free = everyone[0]["dim"][0] if free == "dim" else free
        label = "x.shape" if free is None else f"x.shape outside dim {free}"
        shown = [_shape_text(fp) for fp in everyone]
        return f"compile_ops.{op}: ranks disagree on {label}: {_listing(ranks, shown)}"
    if op == "all_to_all" and everyone[0]["input_split_sizes"][0] == n:
        return _split_difference(everyone, ranks)
    if op == "all_gatherv" and everyone[0]["sizes"][0] == n:
        sizes = everyone[0]["sizes"][1:]
        extents = [fp["extent"][0] for fp in everyone]
        for r in range(n):
            if extents[r] != _NA and extents[r] != sizes[r]:
                dim = everyone[0]["dim"][0]
                return (
                    f"compile_ops.all_gatherv: x.shape[{dim}]={extents[r]} on rank {ranks[r]} but "
                    f"sizes[{r}]={sizes[r]}; x.shape[{dim}] per rank: {_listing(ranks, extents)}"
                )
    return None


def _split_difference(everyone: list[dict], ranks: list[int]) -> str | None:
    sends = [fp["input_split_sizes"][1:] for fp in everyone]
    expects = [fp["output_split_sizes"][1:] for fp in everyone]
    for r, row in enumerate(sends):
        for s, count in enumerate(row):
            if count != expects[s][r]:
                return (
                    f"compile_ops.all_to_all: rank {ranks[r]} sends {count} row(s) to rank "
                    f"{ranks[s]} (input_split_sizes[{s}]={count}) but rank {ranks[s]} expects "
                    f"{expects[s][r]} from rank {ranks[r]} (output_split_sizes[{r}]="
                    f"{expects[s][r]}); input_split_sizes per rank: {_listing(ranks, sends)}; "
                    f"output_split_sizes per rank: {_listing(ranks, expects)}"
                )
    return None
