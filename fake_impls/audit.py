"""Audit a ``torch.ops`` namespace: can ``torch.compile(fullgraph=True)`` trace every op in it?

For every overload: where FakeTensorMode takes its output metadata from (asked of torch's own
tables and predicates, in the order ``FakeTensorMode`` consults them), what its schema declares,
and whether ``torch.library.opcheck`` passes on the sample inputs given for it (opcheck runs the
op under FakeTensorMode, among other tests).

Status, per overload:

* ``fail``: a fullgraph compile breaks on it: FakeTensorMode has nothing to run (not even the
  real kernel on zero-filled inputs, which it allows for torch's own namespaces only), or its
  rule for the op refuses because the output depends on the data; or opcheck failed on a sample.
* ``warn``: it traces, with a caveat: only with static shapes (FakeTensorMode runs the real
  kernel on zero-filled inputs; a dynamic dimension breaks); or the only fake of a library op is
  its real kernel run on meta tensors and no sample verified it; or the schema returns nothing
  and declares no mutation, so a compiler may drop the call as dead code.
* ``ok``: otherwise. Without samples, ``ok`` means FakeTensorMode finds a fake, not that it is right.

``compile-ops audit NAMESPACE`` prints the table (see ``compile_ops.cli.audit``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch._library.utils import can_generate_trivial_fake_impl, is_builtin
from torch._subclasses import fake_impls as torch_fake_rules
from torch._subclasses.fake_tensor import FakeTensorMode

from .collectives import NAMESPACE as COMPILE_OPS
from .register import Sample, qualname, resolve_op

__all__ = [
    "OpReport",
    "audit",
    "collective_samples",
    "fake_kernel",
    "schema_kind",
    "set_collective_samples",
]

Status = Literal["ok", "warn", "fail"]

# fake_kernel() answers, in the order FakeTensorMode tries them.
DECOMPOSES = "decomposes"
PYTHON_META = "python meta"
REGISTER_FAKE = "register_fake"
FAKE_RULE = "fake tensor rule"
DATA_DEPENDENT = "data-dependent"
META_KERNEL = "Meta kernel"
REAL_KERNEL = "real kernel"
TRIVIAL = "trivial"
FALLBACK = "real kernel on zeros"

# FakeTensorMode's rules that exist only to refuse: the output's shape or value is data.
_REFUSING_RULES = tuple(
    f for f in (getattr(torch_fake_rules, n, None) for n in ("data_dep", "dyn_shape")) if f
)
# Kernels that serve the Meta key. The dispatcher's computed Meta entry (what torch's has_meta
# reads) also counts its backend fallback, which only raises NotImplementedError.
_META_KEYS = {
    "Meta": META_KERNEL,
    "CompositeExplicitAutograd": REAL_KERNEL,
    "CompositeExplicitAutogradNonFunctional": REAL_KERNEL,
}


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

    The same sources, in the same order, as ``FakeTensorMode._dispatch_impl``: a decomposition
    (torch's decomposition table or a CompositeImplicitAutograd kernel, unless a Python meta
    exists); a prim's meta; a ``register_fake`` kernel (for a ``torch.library.custom_op`` only
    once ``register_fake`` gave it one); one of FakeTensorMode's own rules
    (``torch._subclasses.fake_impls``), two of which refuse data-dependent outputs; a Python
    meta (``torch._decomp.meta_table``) or a kernel that serves the Meta key; the trivial fake
    of a mutating op that returns nothing; last, for torch's own namespaces only, the real
    kernel run on zero-filled inputs (``FakeTensorMode.can_run_unsafe_fallback``), which
    works with static shapes only.
    """
    name = qualname(op)

    def has(key: str) -> bool:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)

    python_meta = op in torch._decomp.meta_table  # preferred to a decomposition
    if not python_meta and (
        op in torch._decomp.decomposition_table or has("CompositeImplicitAutograd")
    ):
        return DECOMPOSES
    if name.startswith("prims::") and hasattr(op, "prim_meta_impl"):
        return PYTHON_META
    opdef = torch._library.custom_ops._maybe_get_opdef(name)
    if opdef is not None:
        # custom_op always installs a fake wrapper; without register_fake it raises unless the
        # op mutates and returns nothing.
        if opdef._abstract_fn is not None:
            return REGISTER_FAKE
        return TRIVIAL if can_generate_trivial_fake_impl(op) else None
    if torch._library.simple_registry.singleton.find(name).fake_impl.kernel is not None:
        return REGISTER_FAKE
    rules = torch_fake_rules.op_implementations_checks
    rule = next((impl for check, impl in rules if check(op)), None)
    if rule is not None:
        return DATA_DEPENDENT if rule in _REFUSING_RULES else FAKE_RULE
    if python_meta:
        return PYTHON_META
    for key, source in _META_KEYS.items():
        if has(key):
            return source
    if can_generate_trivial_fake_impl(op):
        return TRIVIAL
    if FakeTensorMode().can_run_unsafe_fallback(op):
        return FALLBACK
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
    breaks, caveat = _lookup_problems(op, fake, bool(samples))
    failures = [*breaks, *checks]
    warnings = caveat
    if schema == "returns nothing":
        warnings.append(
            "returns nothing and declares no mutation: a compiler may drop the call as dead code; "
            "declare what it writes (Tensor(a!)) in the schema"
        )
    status: Status = "fail" if failures else "warn" if warnings else "ok"
    opcheck = "-" if not samples else ("fail" if checks else "pass")
    return OpReport(qualname(op), fake, schema, opcheck, tuple(failures + warnings), status)


def _lookup_problems(
    op: torch._ops.OpOverload, fake: str | None, sampled: bool
) -> tuple[list[str], list[str]]:
    """What the fake's source means for a fullgraph compile: (what breaks it, caveats)."""
    if fake is None:
        return [
            "no fake kernel: torch.compile cannot trace a call (a graph break; an error under "
            "fullgraph=True)"
        ], []
    if fake == DATA_DEPENDENT:
        return [
            "FakeTensorMode refuses it: its output's shape or value depends on the data "
            "(a graph break; an error under fullgraph=True)"
        ], []
    if fake == FALLBACK:
        return [], [
            "no fake kernel; FakeTensorMode runs the real kernel on zero-filled inputs, which "
            "traces with static shapes only (dynamic=True or a dynamic dimension breaks)"
        ]
    if fake == REAL_KERNEL and not sampled and not is_builtin(op):
        return [], [
            "the fake is the real kernel run on meta tensors; give samples so opcheck checks it"
        ]
    return [], []


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


# compile_ops hands its samples over when it defines its ops (set_collective_samples): they are
# derived from its op table, which this package may not import.
_collective_samples: Callable[[dist.ProcessGroup], dict[str, list[Sample]]] | None = None


def set_collective_samples(provider: Callable[[dist.ProcessGroup], dict[str, list[Sample]]]):
    """Where :func:`collective_samples` gets ``compile_ops``'s samples from."""
    global _collective_samples
    _collective_samples = provider


def collective_samples(group: dist.ProcessGroup) -> dict[str, list[Sample]]:
    """opcheck inputs for every ``compile_ops`` overload, on this rank of ``group``.

    Rank-dependent sizes make the variable-size ops uneven whenever the group has several ranks.
    """
    if _collective_samples is None:
        raise ValueError("no samples for compile_ops: import compile_ops first")
    return _collective_samples(group)
