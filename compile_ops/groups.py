"""Name <-> ProcessGroup registry.

Op schemas carry a group *name* rather than a ProcessGroup, so compiled graphs hold only strings and
ints (FX-cacheable, no Python objects). The canonical name is torch's own ``ProcessGroup.group_name``;
users may add aliases such as ``"tp"`` or ``"ep"`` with :func:`register_group`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.distributed_c10d import _resolve_process_group

GroupLike = ProcessGroup | str | None

_aliases: dict[str, ProcessGroup] = {}


class GroupError(ValueError):
    """An op was given a group that does not exist (any more) or does not fit its arguments."""


def register_group(name: str, group: ProcessGroup) -> None:
    """Let ops accept ``name`` wherever a group is expected."""
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"register_group({name!r}): expected a ProcessGroup, got {type(group)}")
    existing = _aliases.get(name)
    if existing is not None and existing is not group:
        raise GroupError(f"register_group: the name {name!r} is already taken by another group")
    _aliases[name] = group


def unregister_group(name: str) -> None:
    _aliases.pop(name, None)


def registered_groups() -> dict[str, ProcessGroup]:
    return dict(_aliases)


@torch._dynamo.assume_constant_result
def _group_by_torch_name(name: str) -> ProcessGroup | None:
    # A C++ lookup Dynamo cannot trace; a live group's name never changes, so the answer is constant.
    try:
        return _resolve_process_group(name)
    except (RuntimeError, ValueError, KeyError):
        return None


def resolve_group(group: GroupLike, op: str = "resolve_group") -> ProcessGroup:
    """The ProcessGroup behind a public ``group=`` argument (traceable by Dynamo)."""
    if group is None:
        if not dist.is_initialized():
            raise GroupError(
                f"compile_ops.{op}: group=None means the default group, but torch.distributed is not "
                "initialized; call torch.distributed.init_process_group first"
            )
        return dist.group.WORLD
    if isinstance(group, str):
        if group in _aliases:
            return _aliases[group]
        pg = _group_by_torch_name(group)
        if pg is None:
            raise GroupError(
                f"compile_ops.{op}: group={group!r} is not a registered name nor a live torch group name; "
                f"registered: {sorted(_aliases)}"
            )
        return pg
    if isinstance(group, ProcessGroup):
        return group
    raise TypeError(
        f"compile_ops.{op}: group must be a ProcessGroup, a group name or None, got {type(group)}"
    )


def group_from_name(group_name: str, op: str) -> ProcessGroup:
    """The live ProcessGroup an op's ``group_name`` argument refers to (eager, at run time)."""
    pg = _aliases.get(group_name)
    if pg is None:
        try:
            pg = _resolve_process_group(group_name)
        except (RuntimeError, ValueError, KeyError) as e:
            raise GroupError(
                f"compile_ops.{op}: group_name={group_name!r} names no live process group "
                "(unknown, or destroyed since the code was compiled)"
            ) from e
    if not dist.is_initialized() or pg not in dist.distributed_c10d._world.pg_names:
        raise GroupError(
            f"compile_ops.{op}: group_name={group_name!r} refers to a destroyed process group"
        )
    return pg
