"""Audit a ``torch.ops`` namespace: can torch.compile trace every op in it?

For every overload: where FakeTensorMode would take its output metadata from (the lookup torch
itself makes), what its schema declares, and whether ``torch.library.opcheck`` passes on the
sample inputs given for it.

Status, per overload:

* ``fail`` (red): no fake kernel, so Dynamo cannot trace a call (a graph break, an error under
  ``fullgraph=True``); or opcheck failed on a sample.
* ``warn``: the only fake is the real kernel run on meta tensors (CompositeExplicitAutograd) and
  no sample verified it; or the schema returns nothing and declares no mutation, so a compiler
  may drop the call as dead code.
* ``ok``: otherwise. Without samples, ``ok`` means a fake exists, not that it is right.

``compile-ops audit NAMESPACE`` prints the table and exits 1 if any overload is red.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch._library.utils import can_generate_trivial_fake_impl

from .collectives import NAMESPACE as COMPILE_OPS
from .register import Sample, qualname, resolve_op

__all__ = ["OpReport", "audit", "collective_samples", "fake_kernel", "format_table", "schema_kind"]

Status = Literal["ok", "warn", "fail"]

# fake_kernel() answers, in the order FakeTensorMode tries them.
DECOMPOSES = "decomposes"
REGISTER_FAKE = "register_fake"
TRIVIAL = "trivial"
PYTHON_META = "python meta"
META_KERNEL = "Meta kernel"
REAL_KERNEL = "real kernel"


@dataclass(frozen=True)
class OpReport:
    op: str
    fake: str | None  # see fake_kernel(); None: there is none
    schema: str  # see schema_kind()
    opcheck: str  # "pass", "fail", or "-" where no sample was given
    problems: tuple[str, ...]
    status: Status


def fake_kernel(op: torch._ops.OpOverload) -> str | None:
    """Where FakeTensorMode gets ``op``'s output metadata from; None if from nowhere.

    Follows FakeTensorMode's dispatch for a non-builtin op: a CompositeImplicitAutograd op
    decomposes; a ``torch.library.custom_op`` has a fake only once ``register_fake`` gave it one;
    otherwise a ``register_fake`` kernel, then the trivial fake of a mutating op that returns
    nothing, then a Python meta function, then a Meta kernel, and last a CompositeExplicitAutograd
    kernel, which FakeTensorMode runs on meta tensors as if it were a fake.
    """
    name = qualname(op)

    def has(key: str) -> bool:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)

    if has("CompositeImplicitAutograd"):
        return DECOMPOSES
    opdef = torch._library.custom_ops._maybe_get_opdef(name)
    if opdef is not None:
        # custom_op always installs a fake wrapper; it is real only once register_fake ran.
        if opdef._abstract_fn is not None:
            return REGISTER_FAKE
    elif torch._library.simple_registry.singleton.find(name).fake_impl.kernel is not None:
        return REGISTER_FAKE
    if can_generate_trivial_fake_impl(op):
        return TRIVIAL
    if op in torch._decomp.meta_table:
        return PYTHON_META
    if opdef is None and has("Meta"):
        return META_KERNEL
    if opdef is None and has("CompositeExplicitAutograd"):
        return REAL_KERNEL
    return None


def schema_kind(schema: torch._C.FunctionSchema) -> str:
    """``functional``, ``mutates <args>``, ``returns a view`` or ``returns nothing``."""
    mutated = [
        a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write
    ]
    if mutated:
        return "mutates " + ", ".join(mutated)
    if any(r.alias_info is not None for r in schema.returns):
        return "returns a view"
    if not schema.returns:
        return "returns nothing"
    return "functional"


def namespace_ops(namespace: str) -> list[torch._ops.OpOverload]:
    """Every overload defined in ``namespace`` so far (its library must have been imported)."""
    prefix = f"{namespace}::"
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix))
    ops = []
    for name in names:
        try:
            ops.append(resolve_op(name))
        except (AttributeError, RuntimeError, ValueError):
            continue  # kernels registered for an op nobody defined: nothing to trace
    return ops


def audit(namespace: str, samples: Mapping[str, Sequence[Sample]] | None = None) -> list[OpReport]:
    """One :class:`OpReport` per overload in ``torch.ops.<namespace>``.

    ``samples`` maps an overload (``"name"`` for the default one, ``"name.overload"``, with or
    without the ``namespace::`` prefix) to ``(args, kwargs)`` inputs for ``torch.library.opcheck``.
    For ``compile_ops`` they default to :func:`collective_samples` on the default process group,
    and a world of one gloo rank is started for the audit if there is none (under several ranks,
    run the audit on every rank: the samples are collectives).
    """
    ops = namespace_ops(namespace)
    if not ops:
        raise ValueError(
            f"torch.ops.{namespace} has no operators; import the library that defines them first"
        )
    if samples is None and namespace == COMPILE_OPS:
        with _default_group() as group:
            return _audit(ops, _by_qualname(namespace, ops, collective_samples(group)))
    return _audit(ops, _by_qualname(namespace, ops, samples or {}))


def _by_qualname(namespace, ops, samples) -> dict[str, Sequence[Sample]]:
    known = {qualname(op) for op in ops}
    out = {}
    for key, value in samples.items():
        name = key if "::" in key else f"{namespace}::{key}"
        name = name.removesuffix(".default")
        if name not in known:
            raise ValueError(f"samples given for {name}, which is not an operator of {namespace}")
        out[name] = value
    return out


def _audit(ops, samples: Mapping[str, Sequence[Sample]]) -> list[OpReport]:
    return [_report(op, samples.get(qualname(op), ())) for op in ops]


def _report(op: torch._ops.OpOverload, samples: Sequence[Sample]) -> OpReport:
    fake = fake_kernel(op)
    schema = schema_kind(op._schema)
    checks = [f for i, (args, kwargs) in enumerate(samples) for f in _opcheck(op, i, args, kwargs)]
    failures = list(checks)
    if fake is None:
        failures.insert(
            0,
            "no fake kernel: torch.compile cannot trace a call (a graph break; an error under "
            "fullgraph=True)",
        )
    warnings = []
    if fake == REAL_KERNEL and not samples:
        warnings.append(
            "the fake is the real kernel run on meta tensors; give samples so opcheck checks it"
        )
    if schema == "returns nothing":
        warnings.append(
            "returns nothing and declares no mutation: a compiler may drop the call as dead code; "
            "declare what it writes (Tensor(a!)) in the schema"
        )
    status: Status = "fail" if failures else "warn" if warnings else "ok"
    opcheck = "-" if not samples else ("fail" if checks else "pass")
    return OpReport(qualname(op), fake, schema, opcheck, tuple(failures + warnings), status)


def _opcheck(op, index: int, args, kwargs) -> list[str]:
    try:
        results = torch.library.opcheck(op, tuple(args), dict(kwargs), raise_exception=False)
    except Exception as e:  # an op that cannot even be checked is a failure
        return [f"opcheck could not run on sample {index}: {_first_line(e)}"]
    return [
        f"opcheck {test} failed on sample {index}: {_first_line(result)}"
        for test, result in results.items()
        if result not in ("SUCCESS", "SKIPPED")
    ]


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------
# Samples for our own namespace: every overload, on the group the audit runs in.


@contextlib.contextmanager
def _default_group() -> Iterator[dist.ProcessGroup]:
    if dist.is_initialized():
        yield dist.group.WORLD
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def collective_samples(group: dist.ProcessGroup) -> dict[str, list[Sample]]:
    """opcheck inputs for every ``compile_ops`` overload, on this rank of ``group``.

    Rank-dependent sizes make the variable-size ops uneven whenever the group has several ranks.
    """
    n, rank, name = group.size(), group.rank(), group.group_name
    device_types = {d.type for d in group._device_types}
    device = "cpu" if "cpu" in device_types else torch.accelerator.current_accelerator().type
    gen = torch.Generator().manual_seed(rank)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    x = rand(2 * n, 3)
    sizes = [r + 1 for r in range(n)]  # rank r holds r + 1 rows
    mine = rand(sizes[rank], 3)
    total = rand(sum(sizes), 3)
    ones = [1] * n

    def out(*shape: int) -> dict[str, torch.Tensor]:
        return {"out": torch.empty(*shape, device=device)}

    return {
        "all_reduce": [((x, "sum", name), {}), ((x, "max", name), {})],
        "all_reduce_": [((x.clone(), "sum", name), {})],
        "broadcast": [((x, 0, name), {})],
        "broadcast_": [((x.clone(), 0, name), {})],
        "broadcast_backward": [((x, 0, name), {})],
        "all_gather": [((x, 0, n, name), {}), ((x, 1, n, name), {})],
        "all_gather.out": [((x, 0, n, name), out(2 * n * n, 3))],
        "all_gatherv": [((mine, sizes, 0, name), {})],
        "all_gatherv.out": [((mine, sizes, 0, name), out(sum(sizes), 3))],
        "reduce_scatter": [((x, 0, "sum", n, name), {})],
        "reduce_scatter.out": [((x, 0, "sum", n, name), out(2, 3))],
        "reduce_scatterv": [((total, sizes, 0, "sum", rank, name), {})],
        "reduce_scatterv.out": [((total, sizes, 0, "sum", rank, name), out(sizes[rank], 3))],
        "all_to_all": [((rand(n, 3), ones, ones, name), {})],
        "all_to_all.out": [((rand(n, 3), ones, ones, name), out(n, 3))],
    }


# ----------------------------------------------------------------------------------------------
# Table and command line.


def format_table(reports: Sequence[OpReport]) -> str:
    """One row per overload, then one line per problem."""
    header = ("op", "fake kernel", "schema", "opcheck", "status")
    rows = [(r.op, r.fake or "none", r.schema, r.opcheck, r.status) for r in reports]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"{r.status}: {r.op}: {p}" for r in reports for p in r.problems]
    counts = {s: sum(r.status == s for r in reports) for s in ("ok", "warn", "fail")}
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("namespace", help="a torch.ops namespace, e.g. compile_ops or torch_ipex")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: the library that defines the namespace (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    for module in args.imports:
        importlib.import_module(module)
    try:
        reports = audit(args.namespace)
    except ValueError as e:
        print(f"compile-ops audit: {e} (see --import)", file=sys.stderr)
        return 2
    print(format_table(reports))
    return 1 if any(r.status == "fail" for r in reports) else 0
