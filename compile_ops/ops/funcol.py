"""An opt-in switch: the public collectives as torch's functional collectives.

Our ops are synchronous: each returns when its data has arrived. torch's functional collectives
(``torch.ops._c10d_functional.*``) split a collective into an op that starts it and a
``wait_tensor`` that waits, and Inductor's communication passes (reordering for overlap,
bucketing, async tensor parallelism) match only those ops. Under this switch the public calls
emit ``_c10d_functional`` ops plus ``wait_tensor`` instead of ``torch.ops.compile_ops``, so those
passes see them. The switch is read when a call is made or traced; Dynamo guards on it, so
flipping it recompiles. Set it outside compiled regions.

Where functional collectives have no equivalent (``all_gatherv``, ``reduce_scatterv``: uneven
sizes) the public calls stay ours. Group arguments are resolved as everywhere (aliases,
DeviceMesh, ...), but the op carries torch's group name, which torch resolves when the op runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch.distributed import ProcessGroup

from fake_impls import collectives as shapes

from ..groups import GroupError, GroupLike, group_and_name, serves_device
from .arguments import ReduceOpLike, all_to_all_splits, reduce_op_name

ENV_VAR = "COMPILE_OPS_FUNCTIONAL_COLLECTIVES"

_enabled = os.environ.get(ENV_VAR, "0").strip().lower() in ("1", "true", "yes", "on")

F = TypeVar("F", bound=Callable)


class use_functional_collectives:  # a class named like a function, as torch.set_grad_enabled
    """Make the public collectives emit ``torch.ops._c10d_functional`` ops (or not).

    Call it to switch for the process (``compile_ops.use_functional_collectives(True)``), or use
    it as a context manager to switch for a block; leaving the block restores the setting. The
    environment variable ``COMPILE_OPS_FUNCTIONAL_COLLECTIVES=1`` sets the initial value.
    """

    def __init__(self, enabled: bool = True) -> None:
        global _enabled
        self._previous = _enabled
        _enabled = bool(enabled)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        global _enabled
        _enabled = self._previous


def functional_collectives_enabled() -> bool:
    """Whether the public collectives currently emit functional collectives."""
    return _enabled


def switchable(wrapper: F) -> F:
    """Route a public wrapper to its functional-collective twin while the switch is on."""
    twin = _TWINS.get(wrapper.__name__)
    if twin is None:
        return wrapper

    @functools.wraps(wrapper)
    def dispatch(*args, **kwargs):
        if _enabled:
            return twin(*args, **kwargs)
        return wrapper(*args, **kwargs)

    return dispatch  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# The twins: same signature, arguments and errors as the public wrappers.

_funcol = torch.ops._c10d_functional
# Backends with a native AVG; elsewhere avg is a sum followed by a division (as our kernels do).
_NATIVE_AVG = ("nccl", "gloo")
_BYTE_ONLY = frozenset(
    dt
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if (dt := getattr(torch, name, None)) is not None
)


def _group(group: GroupLike, op: str, x: torch.Tensor) -> tuple[ProcessGroup, str]:
    pg, _ = group_and_name(group, op)  # checks that the group is live, binds it
    if not serves_device(pg, x.device.type):
        raise GroupError(
            f"compile_ops.{op}: x is on {x.device} but the group serves no such device"
        )
    return pg, pg.group_name


def _wire(t: torch.Tensor) -> torch.Tensor:
    """``t`` as backends carry it: fp8 as bytes, complex as pairs of reals (a view)."""
    if t.dtype in _BYTE_ONLY:
        return t.view(torch.uint8)
    return torch.view_as_real(t) if t.is_complex() else t


def _unwire(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in _BYTE_ONLY:
        return t.view(dtype)
    return torch.view_as_complex(t) if dtype.is_complex else t


def _leading(x: torch.Tensor, dim: int) -> torch.Tensor:
    return (x.movedim(dim, 0) if dim else x).contiguous()


def _trailing(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.movedim(0, dim).contiguous() if dim else t


def _validate(op: str, rule: Callable, *args, reduce_op: str | None = None) -> None:
    """Our shape rule, in eager. Under torch.compile the functional collectives' own checks apply
    (the rules' message callables trace inside fake kernels only, not through Dynamo); the
    reduction is checked here, as the backend would name no op."""
    if not torch.compiler.is_compiling():
        rule(*args)
    elif reduce_op is not None and reduce_op not in shapes.REDUCE_OPS:
        raise ValueError(f"compile_ops.{op}: op={reduce_op!r} is not one of {shapes.REDUCE_OPS}")


def _wait(t: torch.Tensor) -> torch.Tensor:
    return _funcol.wait_tensor(t)


def all_reduce(x: torch.Tensor, op: ReduceOpLike = "sum", group: GroupLike = None) -> torch.Tensor:
    op = reduce_op_name(op, "all_reduce")
    _validate("all_reduce", shapes.all_reduce_shape, x, op, reduce_op=op)
    pg, name = _group(group, "all_reduce", x)
    divide = op == "avg" and pg._get_backend_name() not in _NATIVE_AVG
    out = _wait(_funcol.all_reduce(x, "sum" if divide else op, name))
    return out / pg.size() if divide else out


def broadcast(x: torch.Tensor, src: int = 0, group: GroupLike = None) -> torch.Tensor:
    _validate("broadcast", shapes.broadcast_shape, x, src)
    pg, name = _group(group, "broadcast", x)
    ranks = torch.distributed.get_process_group_ranks(pg)
    if src not in ranks:
        raise GroupError(f"compile_ops.broadcast: src={src} is not a member of the group")
    out = _wait(_funcol.broadcast(_wire(x.contiguous()), ranks.index(src), name))
    return _unwire(out, x.dtype)


def all_gather(x: torch.Tensor, dim: int = 0, group: GroupLike = None) -> torch.Tensor:
    pg, name = _group(group, "all_gather", x)
    n = pg.size()
    _validate("all_gather", shapes.all_gather_shape, x, dim, n)
    dim %= x.dim()
    out = _wait(_funcol.all_gather_into_tensor(_wire(_leading(x, dim)), n, name))
    return _trailing(_unwire(out, x.dtype), dim)


def reduce_scatter(
    x: torch.Tensor, dim: int = 0, op: ReduceOpLike = "sum", group: GroupLike = None
) -> torch.Tensor:
    op = reduce_op_name(op, "reduce_scatter")
    pg, name = _group(group, "reduce_scatter", x)
    n = pg.size()
    _validate("reduce_scatter", shapes.reduce_scatter_shape, x, dim, op, n, reduce_op=op)
    dim %= x.dim()
    divide = op == "avg" and pg._get_backend_name() not in _NATIVE_AVG
    out = _wait(_funcol.reduce_scatter_tensor(_leading(x, dim), "sum" if divide else op, n, name))
    return _trailing(out / n if divide else out, dim)


def all_to_all(
    x: torch.Tensor,
    output_split_sizes: Sequence[int] | None,
    input_split_sizes: Sequence[int] | None,
    group: GroupLike = None,
) -> torch.Tensor:
    pg, name = _group(group, "all_to_all", x)
    output_split_sizes, input_split_sizes = all_to_all_splits(
        x, pg, output_split_sizes, input_split_sizes
    )
    _validate("all_to_all", shapes.all_to_all_shape, x, output_split_sizes, input_split_sizes)
    wire = _wire(x.contiguous())
    out = _funcol.all_to_all_single(wire, output_split_sizes, input_split_sizes, name)
    return _unwire(_wait(out), x.dtype)


_TWINS: dict[str, Callable] = {
    "all_reduce": all_reduce,
    "broadcast": broadcast,
    "all_gather": all_gather,
    "reduce_scatter": reduce_scatter,
    "all_to_all": all_to_all,
}
