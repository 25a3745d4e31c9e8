"""Group arguments: what a public ``group=`` means, and the name an op carries for it.

Op schemas carry a group *name*, not a ProcessGroup, so compiled graphs hold only strings and ints
(FX-cacheable, serialisable by ``torch.export``); the kernels turn the name back into a group each
time they run (:func:`group_from_name`). The name is one of two kinds, never confused:

* an **alias** registered with :func:`register_group` (``"tp"``), when the caller passed it. It is
  resolved as an alias only, so an exported program keeps it and runs wherever the alias is
  registered. An alias may never look like a name torch gives a group (decimal counters ``"0"``,
  ``"1"``, ... and 40-hex-digit hashes), so it cannot shadow a torch group, present or future.
* a **bound name** for every other group argument (a ProcessGroup, ``None``, a torch group name,
  a DeviceMesh, a list of ranks): the group is resolved when the call is made or traced, and
  bound to a name that means that group object and no other. torch reuses group names: after
  ``destroy_process_group()`` and a new ``init_process_group()`` the new groups are called
  ``"0"``, ``"1"``, ... again, so a graph compiled for the old ``"1"`` must not run on the new
  one. A group is bound to its torch name unless an earlier group of this process was bound to
  it, else to ``"<name>#<k>"``; once a bound group is destroyed its name raises
  :class:`GroupError`, eager and compiled alike, on every rank that uses it.

A plain torch name that no group of this process was bound to (a direct call of
``torch.ops.compile_ops.*`` with ``pg.group_name``, a program exported elsewhere) is looked up in
torch's registry when the op runs.

Dynamo guards a ProcessGroup handed to a function marked constant by identity (``ID_MATCH``, on
torch 2.11 and 2.14 alike), so code compiled for one group object never replays for another.
"""

from __future__ import annotations

import re
import weakref

import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed import distributed_c10d as c10d
from torch.distributed.device_mesh import DeviceMesh  # imported by torch.distributed already

from fake_impls.collectives import error_class

GroupLike = ProcessGroup | str | DeviceMesh | tuple[DeviceMesh, int] | list[int] | None

# The names torch gives groups: str(counter), and sha1 hex digests (new_group with
# use_local_synchronization, split_group). "#" is reserved for bound names.
_TORCH_NAME = re.compile(r"[0-9]+|[0-9a-f]{40}")

_aliases: dict[str, ProcessGroup] = {}
# Bound names, never released: a name whose group is gone must not come to mean another group.
_bound: dict[str, weakref.ref[ProcessGroup]] = {}
_names: weakref.WeakKeyDictionary[ProcessGroup, str] = weakref.WeakKeyDictionary()


class GroupError(ValueError):
    """An op was given a group that does not exist (any more) or does not fit its arguments."""


def constant_result(fn):
    """Mark ``fn`` for Dynamo as ``torch.compiler.assume_constant_result`` does (it sets exactly
    this attribute, torch 2.11 to 2.14), without importing Dynamo when compile_ops is imported:
    that import costs about 0.7 s on a CPU, paid by every rank and every command."""
    fn._dynamo_marked_constant = True
    return fn


def _is_live(pg: ProcessGroup) -> bool:
    return pg in c10d._world.pg_names


def _real(pg: ProcessGroup) -> ProcessGroup:
    """torch >= 2.12 hands functions marked constant a FakeScriptObject wrapping the group."""
    return pg if type(pg) is ProcessGroup else pg.real_obj


# ----------------------------------------------------------------------------------------------
# Aliases


def register_group(name: str, group: ProcessGroup) -> None:
    """Let ops accept ``name`` wherever a group is expected (an alias, kept in compiled graphs).

    Refused: names torch gives or may give its own groups (decimal numbers, 40-hex-digit strings,
    a live group's name), names with ``#``, and a name registered for another live group.
    Re-registering a name whose group was destroyed replaces it.
    """
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"register_group({name!r}): expected a ProcessGroup, got {type(group)}")
    if not isinstance(name, str) or not name or "#" in name or _TORCH_NAME.fullmatch(name):
        raise GroupError(
            f"register_group: {name!r} cannot be an alias: decimal numbers and 40-hex-digit "
            "strings are torch's own group names (now or later), and '#' is reserved"
        )
    if name in c10d._world.pg_names.values():
        raise GroupError(f"register_group: {name!r} is the name of a live torch process group")
    if not _is_live(group):
        raise GroupError(f"register_group({name!r}): the group has been destroyed")
    existing = _aliases.get(name)
    if existing is not None and existing is not group and _is_live(existing):
        raise GroupError(f"register_group: the name {name!r} is already taken by another group")
    _aliases[name] = group


def unregister_group(name: str) -> None:
    _aliases.pop(name, None)


def registered_groups() -> dict[str, ProcessGroup]:
    return dict(_aliases)


# ----------------------------------------------------------------------------------------------
# Run time: the name an op carries -> the group


def _lookup(name: str) -> ProcessGroup | None:
    """The group a bound name means, or else the group torch knows by that name now."""
    ref = _bound.get(name)
    if ref is not None:
        return ref()
    return None if "#" in name else _lookup_torch(name)


def _lookup_torch(name: str) -> ProcessGroup | None:
    try:
        return c10d._resolve_process_group(name)
    except (RuntimeError, ValueError, KeyError):
        return None


def group_from_name(group_name: str, op: str) -> ProcessGroup:
    """The live ProcessGroup an op's ``group_name`` argument refers to (each time the op runs)."""
    pg = _aliases.get(group_name)
    if pg is None:
        pg = _lookup(group_name)
        if pg is None:
            raise GroupError(
                f"compile_ops.{op}: group_name={group_name!r} names no live process group "
                f"(unknown, or destroyed); registered aliases: {sorted(_aliases)}"
            )
    if not _is_live(pg):
        raise GroupError(
            f"compile_ops.{op}: group_name={group_name!r} names no live process group: it was "
            "destroyed. Code compiled for it never runs on a newer group that took its name: "
            "call torch._dynamo.reset() after re-initialising, and pass the new group or an alias"
        )
    return pg


# ----------------------------------------------------------------------------------------------
# Call and trace time: the public group argument -> (group, name for the op)


def _bind_live(pg: ProcessGroup, op: str) -> str:
    if not _is_live(pg):
        raise error_class(GroupError)(
            f"compile_ops.{op}: the ProcessGroup passed has been destroyed"
        )
    name = _names.get(pg)
    if name is None:
        base = name = pg.group_name
        k = 1
        while name in _bound:
            k += 1
            name = f"{base}#{k}"
        _bound[name] = weakref.ref(pg)
        _names[pg] = name
    return name


@constant_result
def _bind(pg: ProcessGroup, op: str) -> str:
    """The name that means ``pg`` and no other group (see the module docstring)."""
    return _bind_live(_real(pg), op)


@constant_result
def serves_device(pg: ProcessGroup, device_type: str) -> bool:
    """Whether ``pg``'s backends carry tensors on devices of ``device_type`` (traceable)."""
    return any(d.type == device_type for d in _real(pg)._device_types)


@constant_result
def _check_alias(pg: ProcessGroup, op: str, alias: str) -> bool:
    if not _is_live(_real(pg)):
        raise error_class(GroupError)(
            f"compile_ops.{op}: group={alias!r} is registered for a destroyed group"
        )
    return True


@constant_result
def _bound_group(name: str, op: str) -> tuple[ProcessGroup, str]:
    """The live group torch knows by ``name`` now (for a ``#`` name: the group bound to it), and
    the name bound to it. One function: Dynamo cannot hand a group it got from one function
    marked constant to another."""
    pg = (_lookup if "#" in name else _lookup_torch)(name)
    if pg is None or not _is_live(pg):
        raise error_class(GroupError)(
            f"compile_ops.{op}: group={name!r} is not a registered alias nor a live torch group "
            f"name; registered aliases: {sorted(_aliases)}"
        )
    return pg, _bind_live(pg, op)


@constant_result
def _name_of_ranks(ranks: list[int], op: str) -> str:
    from torch.distributed._functional_collectives import _resolve_group_name

    try:
        return _resolve_group_name(list(ranks))
    except ValueError:  # torch's message for ranks that match no group is empty
        raise error_class(GroupError)(
            f"compile_ops.{op}: group={list(ranks)} matches no process group of this rank"
        ) from None


@constant_result
def _name_of_mesh_dim(group: DeviceMesh | tuple, op: str) -> str:
    # Marked constant: torch 2.14's resolver ends in a NewType call Dynamo cannot trace.
    from torch.distributed._functional_collectives import _resolve_group_name

    if isinstance(group, DeviceMesh) and group.ndim != 1:
        raise error_class(GroupError)(
            f"compile_ops.{op}: group is a {group.ndim}-D DeviceMesh; pass (mesh, dim) or a 1-D "
            "mesh such as mesh['tp']"
        )
    if isinstance(group, tuple) and not (
        len(group) == 2 and isinstance(group[0], DeviceMesh) and isinstance(group[1], int)
    ):
        raise error_class(TypeError)(f"compile_ops.{op}: a tuple group must be (DeviceMesh, dim)")
    return _resolve_group_name(group)


_REFUSABLE = {"GroupError": GroupError, "ValueError": ValueError, "TypeError": TypeError}


@constant_result
def refuse(message: str, kind: str) -> None:
    """Raise ``kind`` (named: its arguments must be constants) from code Dynamo traces. Dynamo
    calls this function rather than tracing it, so the error reaches the caller as itself (see
    ``error_class``), not as Dynamo's "Observed exception"."""
    raise error_class(_REFUSABLE[kind])(message)


def _default_group(op: str) -> ProcessGroup:
    if not dist.is_initialized():
        raise GroupError(
            f"compile_ops.{op}: group=None means the default group, but torch.distributed is not "
            "initialized; call torch.distributed.init_process_group first"
        )
    return dist.group.WORLD


def group_and_name(group: GroupLike, op: str = "resolve_group") -> tuple[ProcessGroup, str]:
    """The ProcessGroup behind a public ``group=`` argument, and the name its op carries.

    Traceable by Dynamo with ``fullgraph=True``: the lookups it cannot trace are marked constant.
    DeviceMesh, ``(mesh, dim)`` and rank lists go through functional collectives' own resolver.
    """
    if isinstance(group, ProcessGroup):
        return group, _bind(group, op)
    if group is None:
        pg = _default_group(op)
        return pg, _bind(pg, op)
    if isinstance(group, str):
        alias = _aliases.get(group)
        if alias is not None and _check_alias(alias, op, group):
            return alias, group
        return _bound_group(group, op)
    if isinstance(group, list):
        return _bound_group(_name_of_ranks(group, op), op)
    # Two calls: torch 2.14's Dynamo answers isinstance(mesh, (DeviceMesh, tuple)) with False.
    if isinstance(group, tuple) or isinstance(group, DeviceMesh):  # noqa: SIM101
        return _bound_group(_name_of_mesh_dim(group, op), op)
    if group is dist.GroupMember.NON_GROUP_MEMBER:
        refuse(f"compile_ops.{op}: this rank is not a member of the group passed", "GroupError")
    refuse(
        f"compile_ops.{op}: group must be a ProcessGroup, a group name, a DeviceMesh, "
        f"(DeviceMesh, dim), a list of ranks or None, got {type(group)}",
        "TypeError",
    )


def resolve_group(group: GroupLike, op: str = "resolve_group") -> ProcessGroup:
    """The ProcessGroup behind a public ``group=`` argument (traceable by Dynamo)."""
    return group_and_name(group, op)[0]
