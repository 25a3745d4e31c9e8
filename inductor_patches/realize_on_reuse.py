"""Store a reused value once when recomputing it costs more memory traffic (torch 2.11).

Inductor inlines a pointwise value into every consumer unless ``StorageBox.
should_realize_on_reuse`` says to store it. torch 2.11 answers by counting buffers read (more
than 4) or ops; in a decoder stack compiled as one graph that lets the residual stream be
recomputed from all earlier layer outputs in every RMSNorm kernel, so work grows with depth.
This patch decides by bytes instead, in two places:

* ``should_realize_on_reuse`` (a value with ``users`` consumers): store when
  ``read * (users - 1) >= out * users`` (see :func:`store_shared_value`). Only when Inductor's
  graph walk asks with the number of FX consumers; a broadcast/repeat/unfold lowering passes a
  ratio of element counts instead, which says nothing about memory traffic, so those calls keep
  torch's rule. torch's rules for heavy ops on CPU and for large inner functions still come first.
* ``has_exceeded_max_reads`` (asked of every lowered value): a narrowing cast of a shared value,
  e.g. the bf16 ``residual = x.to(bf16)`` of an fp32 ``x = h + residual`` that also feeds the
  norm, is stored when ``read * consumers >= out * (1 + consumers)``
  (see :func:`store_narrow_copy`): the norm kernel, which reads ``h`` and ``residual`` anyway,
  also writes the bf16 residual, and the next layer reads those 2 bytes instead of the chain.

Where sizes cannot be read (unbacked symbols) or no consumer could host the store (every
consumer broadcasts the value, so the store would be a kernel of its own) torch's rule decides.
Every decision is counted once per IR node in :data:`decisions`.
"""

from __future__ import annotations

import sys
import weakref
from collections import Counter
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import torch

from .registry import Patch, Replacement, register

# On for torch 2.11: it passed the safety panel of docs/patches.md (real model families, the
# program fuzzer, tensor-parallel, sequence-parallel and async-TP stacks, patch on vs off vs eager).
ON_BY_DEFAULT = True

_CPU_HEAVY_OPS = ("exp", "sigmoid")  # torch 2.11's own list, kept as is


def store_shared_value(read_bytes: int, out_bytes: int, users: int) -> bool:
    """Store a value read by ``users`` consumers instead of recomputing it in each?

    Recomputing reads the inputs once per consumer: ``read * users``. Storing reads them once,
    writes the value once and lets the other consumers read it; the consumer that Inductor fuses
    the store into reads it from registers: ``read + out * users``. Ties store, because a value
    left inline grows the reads of everything built on it.
    """
    return users > 1 and read_bytes * (users - 1) >= out_bytes * users


def store_narrow_copy(read_bytes: int, out_bytes: int, consumers: int) -> bool:
    """Store a narrowing cast of a value that is computed anyway for its other consumers?

    Recomputing reads the cast's inputs once per consumer: ``read * consumers``. Storing adds
    one write to the kernel that already computes the value, then each consumer reads the
    narrow copy: ``out * (1 + consumers)``. Ties store, as above.
    """
    return consumers >= 1 and read_bytes * consumers >= out_bytes * (1 + consumers)


class Decisions:
    """How often each rule decided, counted once per IR node and caller."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def record(self, rule: str, realize: bool) -> None:
        self._counts[f"{rule}:{'realize' if realize else 'inline'}"] += 1

    def counts(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    def total(self, rule: str | None = None, realize: bool | None = None) -> int:
        return sum(
            n
            for key, n in self._counts.items()
            if (rule is None or key.split(":")[0] == rule)
            and (realize is None or key.endswith(":realize") == realize)
        )

    def reset(self) -> None:
        self._counts.clear()


decisions = Decisions()

# Per graph being lowered: (id of IR node, users, caller) -> (node, decision). The node is held
# so its id stays unique while the graph lives; torch asks the same question twice per node.
_memos: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[Any, bool]]] = (
    weakref.WeakKeyDictionary()
)


def _memo() -> dict[tuple[Any, ...], tuple[Any, bool]]:
    from torch._inductor.virtualized import V

    return _memos.setdefault(V.graph, {})


def _asked_by_graph_walk(frame: FrameType | None, skip: frozenset[CodeType]) -> bool:
    """True when ``GraphLowering.run_node`` asks about the node it just lowered."""
    from torch._inductor.graph import GraphLowering

    while frame is not None and frame.f_code in skip:
        frame = frame.f_back
    return frame is not None and frame.f_code is GraphLowering.run_node.__code__


def _delegating_codes(attribute: str) -> frozenset[CodeType]:
    """Code of every ``ir`` class's own ``attribute`` (the box/view methods that forward)."""
    from torch._inductor import ir

    return frozenset(
        cls.__dict__[attribute].__code__
        for cls in vars(ir).values()
        if isinstance(cls, type)
        and attribute in cls.__dict__
        and hasattr(cls.__dict__[attribute], "__code__")
    )


def _sizes(box: Any) -> tuple[int, int] | None:
    """(bytes the inlined value reads, bytes it would store), or None where not known."""
    from torch._inductor.virtualized import V
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    data = box.data
    try:
        reads = box.get_reads()
    except NotImplementedError:
        return None
    numel = data.get_numel()
    if free_unbacked_symbols(numel) or any(dep.has_unbacked_symbols() for dep in reads):
        return None
    hints = [V.graph.get_dep_size_hint(dep) for dep in reads]
    out = V.graph.sizevars.optimization_hint(numel, fallback=0) * data.dtype.itemsize
    if out <= 0 or any(hint <= 0 for hint in hints):
        return None
    # A value computed from indices alone (positions, masks) reads 0 bytes: free to recompute.
    return sum(hints), out


def _numel_hint(value: Any) -> int | None:
    from torch._inductor.virtualized import V

    if not isinstance(value, torch.Tensor):
        return None
    numel = value.numel()
    if isinstance(numel, torch.SymInt):
        return V.graph.sizevars.optimization_hint(numel.node.expr, fallback=0)
    return int(numel)


def _can_host_store(node: torch.fx.Node, exclude: torch.fx.Node | None = None) -> bool:
    """Does some consumer iterate over all of the value (same size, or reducing it)?

    Only then can Inductor fuse the store into a kernel that runs anyway; a value that every
    consumer broadcasts would be stored by a kernel of its own.
    """
    numel = _numel_hint(node.meta.get("val"))
    if numel is None:
        return False
    for user in node.users:
        if user is exclude:
            continue
        outputs = user.meta.get("val")
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        for out in outputs:
            n = _numel_hint(out)
            if n is not None and n <= numel:
                return True
    return False


def _decide_shared(box: Any, users: int, original: Callable[..., bool]) -> tuple[str, bool]:
    from torch._inductor import ir
    from torch._inductor.virtualized import V

    data = box.data
    if ir.is_cpu(data) and any(op in data.inner_fn_opcount().used_ops for op in _CPU_HEAVY_OPS):
        return "torch_heavy_op", True
    if box.has_large_inner_fn():
        return "torch_large_inner_fn", True
    sizes = _sizes(box)
    if sizes is None:
        return "sizes_unknown", original(box, users)
    if not _can_host_store(V.graph.current_node):
        return "no_host", original(box, users)
    return "bytes", store_shared_value(*sizes, users)


def _make_should_realize_on_reuse(original: Callable[..., bool]) -> Callable[..., bool]:
    from torch._inductor import ir

    skip = _delegating_codes("mark_reuse")

    def should_realize_on_reuse(self: Any, users: int) -> bool:
        data = self.data
        if users <= 1 or not isinstance(data, (ir.Pointwise, ir.Reduction)):
            return original(self, users)
        by_graph = _asked_by_graph_walk(sys._getframe(1), skip)
        memo = _memo()
        key = (id(data), users, by_graph)
        if key in memo:
            return memo[key][1]
        if by_graph:
            rule, realize = _decide_shared(self, users, original)
        else:  # a broadcast's element ratio, not a number of consumers
            rule, realize = "broadcast", original(self, users)
        memo[key] = (data, realize)
        decisions.record(rule, realize)
        return realize

    return should_realize_on_reuse


def _narrowed_shared_value(node: torch.fx.Node) -> torch.fx.Node | None:
    """The source when ``node`` casts a multi-use value to a narrower float type, else None."""
    if node.target is not torch.ops.prims.convert_element_type.default:
        return None
    source = node.args[0]
    if not isinstance(source, torch.fx.Node) or len(source.users) < 2:
        return None
    src, dst = source.meta.get("val"), node.meta.get("val")
    if not (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)):
        return None
    if not (src.dtype.is_floating_point and dst.dtype.is_floating_point):
        return None
    return source if dst.dtype.itemsize < src.dtype.itemsize else None


def _make_has_exceeded_max_reads(original: Callable[..., bool]) -> Callable[..., bool]:
    from torch._inductor import ir
    from torch._inductor.virtualized import V

    skip = _delegating_codes("has_exceeded_max_reads")

    def has_exceeded_max_reads(self: Any) -> bool:
        if original(self):
            return True
        data = self.data
        if not isinstance(data, ir.Pointwise) or not _asked_by_graph_walk(sys._getframe(1), skip):
            return False
        node = V.graph.current_node
        source = _narrowed_shared_value(node)
        # realize_hint(), which graph.py calls on True, stores only a value of 2+ real loads.
        if source is None or data.inner_fn_opcount().nontrivial_read_count < 2:
            return False
        memo = _memo()
        key = (id(data), "narrow")
        if key in memo:
            return memo[key][1]
        sizes = _sizes(self)
        if sizes is None:
            rule, realize = "sizes_unknown", False
        elif not _can_host_store(source, exclude=node):
            rule, realize = "no_host", False
        else:
            rule, realize = "narrow_copy", store_narrow_copy(*sizes, len(node.users))
        memo[key] = (data, realize)
        decisions.record(rule, realize)
        return realize

    return has_exceeded_max_reads


PATCH = register(
    Patch(
        name="realize_on_reuse",
        summary="store reused values by a bytes cost model (residual stream stored once per layer)",
        torch_versions=">=2.11,<2.12",
        replacements=(
            Replacement(
                "torch._inductor.ir.StorageBox",
                "should_realize_on_reuse",
                ("self", "users"),
                _make_should_realize_on_reuse,
            ),
            Replacement(
                "torch._inductor.ir.StorageBox",
                "has_exceeded_max_reads",
                ("self",),
                _make_has_exceeded_max_reads,
            ),
        ),
        default=ON_BY_DEFAULT,
        default_reason=(
            "passed its safety panel (docs/patches.md): no extra kernels, outputs as close to "
            "eager as without it, async-TP and sequence parallelism unaffected; "
            "COMPILE_OPS_PATCHES=-realize_on_reuse turns it off"
        ),
    )
)
