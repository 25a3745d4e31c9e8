"""Reliability probe: what a user sees when a collective is misused, counted by class.

Runs a systematic set of cases on gloo worlds over 127.0.0.1, eager and compiled
(``fullgraph=True``, ``aot_eager``), each with debug mode off and on, and puts every case in one
class by comparing what every rank got with a reference computed in this process:

========== ==============================================================================
correct    every rank returned a result equal to the reference (expected to succeed)
clear      every rank raised; each first line is the package's (``compile_ops.<op>``) and
           names the argument (or, on a rank that is told of another rank's failure, that
           rank); the ranks' exceptions share a class below ``Exception``; no data moved
unclear    an error, but not a clear one (another class per rank, torch's or Dynamo's first
           line, an argument not named, data moved first), or an error where a result was due
wrong      a rank got a result with no error that differs from the reference, or any result
           where no correct result exists (ranks that disagree), or an input was modified
hang       some rank had not answered within the per-case timeout (far below the group's)
crash      a rank process died
========== ==============================================================================

Kinds of case: ``valid`` (every op x every documented dtype, ReduceOp values, negative dims,
zero sizes, group forms), ``bad input`` (a bad argument every rank passes), ``one rank bad``
(the last rank alone passes it), ``mismatch`` (each rank's arguments are fine alone, but they do
not fit together), ``autograd`` (gradients and refusals against a one-process autograd
reference), ``group`` (unregistered, destroyed, shadowing aliases, stale after re-init),
``meta`` (meta tensors), ``pool`` (the test kit's pool after unpicklable jobs and answers).

"Data moved" counts the backend calls of the collective kernels (the debug-mode fingerprint
exchange is not data). The probe's groups time out after 8 s (``--group-timeout``; torch's
default is 30 min): a rank that waited that long in a collective has hung (cases take well under
a second; where a result is due, a second run with 3x the timeout confirms it). After any case
that was not correct or clear, every rank destroys its groups and starts a new world in the same
process; a crash, or a rank stuck for 120 s outside a collective, costs new processes.

    python benchmarks/reliability_probe.py                  # worlds 2 and 3, everything
    python benchmarks/reliability_probe.py --json out.json  # also the per-case record
    python benchmarks/reliability_probe.py --worlds 2 --kinds mismatch --debug on
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.testing.pool import restart_world

CLASSES = ("correct", "clear", "unclear", "wrong", "hang", "crash")
KINDS = ("valid", "bad input", "one rank bad", "mismatch", "autograd", "group", "meta", "pool")
MODES = ("eager", "compiled")
# The group timeout of the probe's worlds: a rank that waits this long in a collective has hung
# (cases take well under a second; torch's default is 30 min). Where a result is due, a hang is
# confirmed by a second run with 3x the timeout.
GROUP_TIMEOUT_S = 8.0
# The parent stops waiting for a case after this long: a rank stuck outside a collective.
BACKSTOP_S = 120.0


# ================================================================================================
# Cases: every rank builds the same catalogue and runs a case by name.


@dataclass(frozen=True)
class Case:
    """One probe case.

    ``build(rank, n, compile)`` returns ``(fn, args)`` for this rank: ``fn(*args)`` is the call
    (``compile`` already applied where the case compiles). ``reference(n)`` gives every rank's
    expected value, or is None where an error is due; ``op`` and ``words`` say what a clear
    message names: ``compile_ops.<op>`` (``compile_ops`` for an empty op) and one of ``words``.
    """

    kind: str
    name: str
    op: str
    words: tuple[str, ...]
    build: Callable[[int, int, Callable], tuple[Callable, tuple]]
    reference: Callable[[int], list] | None = None
    modes: tuple[str, ...] = MODES


def _simple(make: Callable[[int, int], tuple[Callable, tuple]]):
    """A build whose function the probe compiles as it is."""

    def build(rank, n, compile):
        fn, args = make(rank, n)
        return compile(fn), args

    return build


def _valid_cases(n: int) -> list[Case]:
    from compile_ops.testing.cases import Case as OpCase
    from compile_ops.testing.cases import dtype_cases

    def from_op_case(kind: str, name: str, case: OpCase, call=None) -> Case:
        def make(rank, n_):
            def fn(x):
                y = case.pre(x)
                y = call(y, rank) if call else case.call(y, rank)
                return case.post(y)

            return fn, (case.input(rank),)

        return Case(kind, name, case.op, (), _simple(make), lambda n_: case.expected())

    out = [from_op_case("valid", f"dtype {c}", c) for c in dtype_cases(n)]
    for name in ("SUM", "AVG", "PRODUCT", "MIN", "MAX"):
        op = getattr(dist.ReduceOp, name)
        case = OpCase("all_reduce", n, reduce_op=name.lower())
        out.append(
            from_op_case(
                "valid",
                f"all_reduce op=ReduceOp.{name}",
                case,
                lambda y, r, op=op: compile_ops.all_reduce(y, op=op),
            )
        )
    case = OpCase("reduce_scatter", n, reduce_op="max", uneven=False)
    out.append(
        from_op_case(
            "valid",
            "reduce_scatter op=ReduceOp.MAX",
            case,
            lambda y, r: compile_ops.reduce_scatter(y, op=dist.ReduceOp.MAX),
        )
    )
    for op in ("all_gather", "reduce_scatter", "gather", "all_gatherv", "reduce_scatterv"):
        case = OpCase(op, n, dim=-1, uneven=op.endswith("v"))
        out.append(from_op_case("valid", f"{op} dim=-1", case))
    out.append(from_op_case("valid", "all_reduce zero-size", OpCase("all_reduce", n, shape=(0, 4))))
    out.append(
        from_op_case("valid", "all_gather zero-size", OpCase("all_gather", n, dim=1, shape=(3, 0)))
    )
    zeros = tuple((0,) * n for _ in range(n))
    out.append(
        from_op_case("valid", "all_to_all all splits 0", OpCase("all_to_all", n, splits=zeros))
    )
    return out + _group_form_cases(n)


def _group_form_cases(n: int) -> list[Case]:
    """all_reduce over each form a group argument takes; every rank is a member."""
    everyone = list(range(n))

    def expected(n_):
        return [torch.full((3,), float(sum(range(1, n_ + 1)))) for _ in range(n_)]

    def with_group(form: str):
        def build(rank, n_, compile):
            if form == "alias":
                compile_ops.register_group("probe_tp", dist.new_group(everyone))
                group = "probe_tp"
            elif form == "subgroup":
                group = dist.new_group(everyone)
            elif form == "torch name":
                group = dist.new_group(everyone).group_name
            elif form == "ranks":
                group = everyone
            else:  # the same group as an alias on rank 0, as the ProcessGroup elsewhere
                sub = dist.new_group(everyone)
                compile_ops.register_group("probe_tp", sub)
                group = "probe_tp" if rank == 0 else sub
            fn = compile(lambda x: compile_ops.all_reduce(x, group=group))
            return fn, (torch.full((3,), float(rank + 1)),)

        return Case("valid", f"all_reduce group={form}", "all_reduce", (), build, expected)

    return [with_group(f) for f in ("alias", "subgroup", "torch name", "ranks", "mixed")]


def _call(name: str, *args, **kwargs):
    """``compile_ops.<name>(x, *args, **kwargs)`` as a function of x."""
    wrapper = getattr(compile_ops, name)
    return lambda x: wrapper(x, *args, **kwargs)


# A bad argument: (name, op, words, make(rank, n) -> (fn, args)). Each rank's call is the same
# unless the maker looks at the rank.
def _bad_inputs() -> list[tuple]:
    ones = lambda n: [1] * n  # noqa: E731
    return [
        ("reduce_scatter indivisible", "reduce_scatter", ("x.shape", "divisible"),
         lambda r, n: (_call("reduce_scatter"), (torch.ones(2 * n + 1, 2),))),
        ("all_gatherv len(sizes)", "all_gatherv", ("len(sizes)",),
         lambda r, n: (_call("all_gatherv", ones(n + 1)), (torch.ones(1, 2),))),
        ("all_gatherv sizes vs x", "all_gatherv", ("sizes",),
         lambda r, n: (_call("all_gatherv", [2] * n), (torch.ones(1, 2),))),
        ("all_gatherv negative size", "all_gatherv", ("sizes",),
         lambda r, n: (_call("all_gatherv", [-1, *ones(n - 1)]), (torch.ones(1, 2),))),
        ("reduce_scatterv sizes sum", "reduce_scatterv", ("sizes",),
         lambda r, n: (_call("reduce_scatterv", ones(n)), (torch.ones(n + 1, 2),))),
        ("reduce_scatterv len(sizes)", "reduce_scatterv", ("len(sizes)",),
         lambda r, n: (_call("reduce_scatterv", ones(n - 1)), (torch.ones(n - 1, 2),))),
        ("all_to_all split sum", "all_to_all", ("input_split_sizes",),
         lambda r, n: (_call("all_to_all", ones(n), ones(n)), (torch.ones(n + 1, 2),))),
        ("all_to_all negative split", "all_to_all", ("split_sizes",),
         lambda r, n: (_call("all_to_all", ones(n), [-1, *[1] * (n - 2), 2]),
                       (torch.ones(n, 2),))),
        ("all_to_all one split list", "all_to_all", ("split_sizes",),
         lambda r, n: (_call("all_to_all", ones(n), None), (torch.ones(n, 2),))),
        ("all_to_all default split indivisible", "all_to_all", ("x.shape[0]",),
         lambda r, n: (_call("all_to_all"), (torch.ones(n + 1, 2),))),
        ("all_to_all len(output_split_sizes)", "all_to_all", ("output_split_sizes",),
         lambda r, n: (_call("all_to_all", ones(n + 1), ones(n)), (torch.ones(n, 2),))),
        ("all_gather dim too large", "all_gather", ("dim",),
         lambda r, n: (_call("all_gather", dim=2), (torch.ones(2, 2),))),
        ("all_gather dim too small", "all_gather", ("dim",),
         lambda r, n: (_call("all_gather", dim=-3), (torch.ones(2, 2),))),
        ("reduce_scatter dim", "reduce_scatter", ("dim",),
         lambda r, n: (_call("reduce_scatter", dim=5), (torch.ones(2 * n, 2),))),
        ("gather dim", "gather", ("dim",),
         lambda r, n: (_call("gather", dim=3), (torch.ones(2, 2),))),
        ("all_gather 0-d x", "all_gather", ("dimension", "dim"),
         lambda r, n: (_call("all_gather"), (torch.tensor(1.0),))),
        ("all_reduce avg int32", "all_reduce", ("op", "dtype"),
         lambda r, n: (_call("all_reduce", op="avg"), (torch.ones(4, dtype=torch.int32),))),
        ("all_reduce bool", "all_reduce", ("dtype",),
         lambda r, n: (_call("all_reduce"), (torch.ones(4, dtype=torch.bool),))),
        ("all_reduce complex64", "all_reduce", ("dtype",),
         lambda r, n: (_call("all_reduce"), (torch.ones(4, dtype=torch.complex64),))),
        ("reduce_scatter float8", "reduce_scatter", ("dtype",),
         lambda r, n: (_call("reduce_scatter"),
                       (torch.ones(2 * n, dtype=torch.float8_e4m3fn),))),
        ("all_reduce op='mean'", "all_reduce", ("op",),
         lambda r, n: (_call("all_reduce", op="mean"), (torch.ones(4),))),
        ("all_reduce op='SUM'", "all_reduce", ("op",),
         lambda r, n: (_call("all_reduce", op="SUM"), (torch.ones(4),))),
        ("all_reduce op=ReduceOp.BAND", "all_reduce", ("op",),
         lambda r, n: (_call("all_reduce", op=dist.ReduceOp.BAND), (torch.ones(4),))),
        ("reduce_scatterv op=ReduceOp.BXOR", "reduce_scatterv", ("op",),
         lambda r, n: (_call("reduce_scatterv", ones(n), op=dist.ReduceOp.BXOR),
                       (torch.ones(n, 2),))),
        ("all_reduce op=3", "all_reduce", ("op",),
         lambda r, n: (_call("all_reduce", op=3), (torch.ones(4),))),
        ("broadcast src out of group", "broadcast", ("src",),
         lambda r, n: (_call("broadcast", src=n), (torch.ones(4),))),
        ("broadcast src=-1", "broadcast", ("src",),
         lambda r, n: (_call("broadcast", src=-1), (torch.ones(4),))),
        ("gather dst out of group", "gather", ("dst",),
         lambda r, n: (_call("gather", dst=n + 1), (torch.ones(2),))),
        ("all_reduce group='probe_missing'", "all_reduce", ("group",),
         lambda r, n: (_call("all_reduce", group="probe_missing"), (torch.ones(4),))),
        ("all_reduce group=3.5", "all_reduce", ("group",),
         lambda r, n: (_call("all_reduce", group=3.5), (torch.ones(4),))),
    ]  # fmt: skip


def _bad_input_cases(n: int) -> list[Case]:
    return [
        Case("bad input", name, op, words, _simple(make)) for name, op, words, make in _bad_inputs()
    ]


# The bad inputs the last rank alone passes (the others pass a good one).
_ONE_RANK = {
    "reduce_scatter indivisible": lambda r, n: (_call("reduce_scatter"), (torch.ones(2 * n, 2),)),
    "all_gatherv len(sizes)": lambda r, n: (_call("all_gatherv", [1] * n), (torch.ones(1, 2),)),
    "all_to_all split sum": lambda r, n: (_call("all_to_all", [1] * n, [1] * n), (torch.ones(n, 2),)),
    "all_gather dim too large": lambda r, n: (_call("all_gather", dim=1), (torch.ones(2, 2),)),
    "all_reduce op='mean'": lambda r, n: (_call("all_reduce"), (torch.ones(4),)),
    "all_reduce op=3": lambda r, n: (_call("all_reduce"), (torch.ones(4),)),
    "broadcast src out of group": lambda r, n: (_call("broadcast", src=0), (torch.ones(4),)),
    "all_reduce group='probe_missing'": lambda r, n: (_call("all_reduce"), (torch.ones(4),)),
}  # fmt: skip


def _one_rank_bad_cases(n: int) -> list[Case]:
    bad = {name: (op, words, make) for name, op, words, make in _bad_inputs()}
    out = []
    for name, good in _ONE_RANK.items():
        op, words, make = bad[name]

        def mixed(r, n_, make=make, good=good):
            return (make if r == n_ - 1 else good)(r, n_)

        out.append(Case("one rank bad", name, op, words, _simple(mixed)))
    out.append(Case("one rank bad", "meta x on the last rank", "all_reduce", ("meta",),
                    _simple(lambda r, n_: (_call("all_reduce"),
                                           (torch.ones(4, device="meta" if r == n_ - 1 else "cpu"),)))))  # fmt: skip
    out.append(Case("one rank bad", "all_reduce requires_grad on the last rank", "all_reduce",
                    ("grad",), _simple(lambda r, n_: (
                        _call("all_reduce"), (torch.ones(4, requires_grad=r == n_ - 1),)))))  # fmt: skip
    return out


def _mismatch_cases(n: int) -> list[Case]:
    def last(r, n):
        return r == n - 1

    def a2a_rows(r, n):
        ones = [1] * n
        expects = [2, *ones[1:]] if last(r, n) else ones  # the last rank expects 2 rows from 0
        return _call("all_to_all", expects, ones), (torch.ones(n, 2),)

    def gatherv_sizes(r, n):
        sizes = [2, 1, *[1] * (n - 2)] if last(r, n) else [1, 2, *[1] * (n - 2)]
        return _call("all_gatherv", sizes), (torch.ones(sizes[r], 2),)

    def scatterv_sizes(r, n):
        sizes = [2, 1, *[1] * (n - 2)] if last(r, n) else [1, 2, *[1] * (n - 2)]
        return _call("reduce_scatterv", sizes), (torch.ones(n + 1, 2),)

    def group_differs(r, n):
        sub = dist.new_group(list(range(n)))  # the same ranks as the world, another group
        return _call("all_reduce", group=sub if last(r, n) else None), (torch.ones(4),)

    def collective(r, n):
        fn = compile_ops.all_gather if last(r, n) else compile_ops.all_reduce
        return (lambda x: fn(x)), (torch.ones(4),)

    makers = {
        "all_to_all rows": ("all_to_all", ("split_sizes",), a2a_rows),
        "all_reduce op": ("all_reduce", ("op",),
                          lambda r, n: (_call("all_reduce", op="max" if last(r, n) else "sum"),
                                        (torch.ones(4),))),
        "reduce_scatter op": ("reduce_scatter", ("op",),
                              lambda r, n: (_call("reduce_scatter", op="min" if last(r, n) else "sum"),
                                            (torch.ones(2 * n),))),
        "all_gather dim": ("all_gather", ("dim",),
                           lambda r, n: (_call("all_gather", dim=int(last(r, n))), (torch.ones(2, 2),))),
        "reduce_scatter dim": ("reduce_scatter", ("dim",),
                               lambda r, n: (_call("reduce_scatter", dim=int(last(r, n))),
                                             (torch.ones(2 * n, 2 * n),))),
        "all_reduce shape": ("all_reduce", ("shape",),
                             lambda r, n: (_call("all_reduce"), (torch.ones(3 if last(r, n) else 2, 3),))),
        "all_gather shape": ("all_gather", ("shape",),
                             lambda r, n: (_call("all_gather"), (torch.ones(2, 3 if last(r, n) else 2),))),
        "all_to_all row shape": ("all_to_all", ("shape",),
                                 lambda r, n: (_call("all_to_all"), (torch.ones(n, 3 if last(r, n) else 2),))),
        "all_reduce dtype float32/int32": ("all_reduce", ("dtype",),
                                           lambda r, n: (_call("all_reduce"),
                                                         (torch.ones(4, dtype=torch.int32 if last(r, n) else torch.float32),))),
        "all_gather dtype float32/float16": ("all_gather", ("dtype",),
                                             lambda r, n: (_call("all_gather"),
                                                           (torch.ones(4, dtype=torch.float16 if last(r, n) else torch.float32),))),
        "all_gatherv sizes": ("all_gatherv", ("sizes",), gatherv_sizes),
        "all_gatherv extent vs sizes": ("all_gatherv", ("sizes", "x.shape"),
                                        lambda r, n: (_call("all_gatherv", [1] * n),
                                                      (torch.ones(2 if last(r, n) else 1, 2),))),
        "reduce_scatterv sizes": ("reduce_scatterv", ("sizes",), scatterv_sizes),
        "broadcast src": ("broadcast", ("src",),
                          lambda r, n: (_call("broadcast", src=int(last(r, n))), (torch.ones(4),))),
        "gather dst": ("gather", ("dst",),
                       lambda r, n: (_call("gather", dst=int(last(r, n))), (torch.ones(2),))),
        "collective": ("", ("collective",), collective),
        "group (same ranks, another group)": ("all_reduce", ("group",), group_differs),
    }  # fmt: skip
    return [
        Case("mismatch", name, op, words, _simple(make))
        for name, (op, words, make) in makers.items()
    ]


# -- autograd ---------------------------------------------------------------------------------


def _weights(rank: int, shape) -> torch.Tensor:
    """The rank's loss weights: loss_r = (out_r * w_r).sum(), so every gradient entry differs."""
    numel = torch.Size(shape).numel()
    return (torch.arange(numel, dtype=torch.float64) + 1 + 10 * rank).reshape(shape)


def _autograd_cases(n: int) -> list[Case]:
    from compile_ops.ops import SPECS
    from compile_ops.testing.cases import Case as OpCase

    def grad_case(name, op_case: OpCase, call=None) -> Case:
        spec = SPECS[op_case.op]

        def inputs(n_):
            return [op_case.input(r).to(torch.float64) for r in range(n_)]

        def build(rank, n_, compile):
            def forward(x):
                out = call(x, rank) if call else op_case.call(x, rank)
                return (out * _weights(rank, out.shape)).sum()

            forward = compile(forward)
            x0 = inputs(n_)[rank]

            def fn(x):
                x = x.clone().requires_grad_(True)
                forward(x).backward()
                return x.grad

            return fn, (x0,)

        def reference(n_):
            xs = [x.requires_grad_(True) for x in inputs(n_)]
            calls = [op_case.arguments(r) for r in range(n_)]
            outs = spec.reference(xs, calls)
            sum((o * _weights(r, o.shape)).sum() for r, o in enumerate(outs)).backward()
            # A rank whose input no output uses (broadcast's non-sources) gets zeros.
            return [torch.zeros_like(x) if x.grad is None else x.grad for x in xs]

        return Case("autograd", name, op_case.op, (), build, reference)

    cases = [
        grad_case("all_gather dim 0", OpCase("all_gather", n)),
        grad_case("all_gather dim 1", OpCase("all_gather", n, dim=1)),
        grad_case("all_gatherv uneven", OpCase("all_gatherv", n, uneven=True)),
        grad_case("reduce_scatter sum", OpCase("reduce_scatter", n)),
        grad_case("reduce_scatter avg dim 1", OpCase("reduce_scatter", n, reduce_op="avg", dim=1)),
        grad_case("reduce_scatterv uneven", OpCase("reduce_scatterv", n, uneven=True)),
        grad_case("all_to_all uneven", OpCase("all_to_all", n, uneven=True)),
        grad_case("broadcast", OpCase("broadcast", n)),
    ]

    def pair(name, fn, grad_of):
        def build(rank, n_, compile):
            forward = compile(lambda x: (fn(x) * _weights(rank, x.shape)).sum())

            def run(x):
                x = x.clone().requires_grad_(True)
                forward(x).backward()
                return x.grad

            return run, (torch.ones(2, 3, dtype=torch.float64),)

        return Case("autograd", name, name.split()[0], (), build, grad_of)

    cases.append(pair("reduce_from_group (backward identity)", compile_ops.reduce_from_group,
                      lambda n_: [_weights(r, (2, 3)) for r in range(n_)]))  # fmt: skip
    cases.append(pair("copy_to_group (backward all-reduce)", compile_ops.copy_to_group,
                      lambda n_: [sum(_weights(s, (2, 3)) for s in range(n_)) for _ in range(n_)]))  # fmt: skip

    def refusal(name, op, call, shape=(4,)):
        def build(rank, n_, compile):
            forward = compile(lambda x: (call(x) * 2).sum())

            def run(x):
                x = x.clone().requires_grad_(True)
                forward(x).backward()
                return x.grad

            return run, (torch.ones(*shape, dtype=torch.float64),)

        return Case("autograd", name, op, ("grad",), build)

    cases += [
        refusal("all_reduce sum refuses", "all_reduce", _call("all_reduce")),
        refusal("all_reduce max refuses", "all_reduce", _call("all_reduce", op="max")),
        refusal("reduce_scatter max refuses", "reduce_scatter", _call("reduce_scatter", op="max"),
                (2 * n,)),
        refusal("gather refuses", "gather", _call("gather")),
        refusal("all_reduce_ (in place) refuses", "all_reduce_",
                lambda x: torch.ops.compile_ops.all_reduce_(x * 1, "sum", "0")),
    ]  # fmt: skip
    return cases


# -- groups -----------------------------------------------------------------------------------


def _group_cases(n: int) -> list[Case]:
    everyone = list(range(n))

    def destroyed(rank, n_, compile):
        sub = dist.new_group(everyone)
        fn = compile(lambda x: compile_ops.all_reduce(x, group=sub))
        fn(torch.ones(2))  # traced and run while the group lives
        dist.destroy_process_group(sub)
        return fn, (torch.ones(2),)

    def alias_of_destroyed(rank, n_, compile):
        sub = dist.new_group(everyone)
        compile_ops.register_group("probe_dead", sub)
        dist.destroy_process_group(sub)
        return compile(lambda x: compile_ops.all_reduce(x, group="probe_dead")), (torch.ones(2),)

    def shadowing_alias(name_of):
        def build(rank, n_, compile):
            sub = dist.new_group(everyone[:-1] if n_ > 2 else everyone)
            member = sub is not dist.GroupMember.NON_GROUP_MEMBER
            name = name_of(sub if member else dist.group.WORLD)

            def fn(x):
                compile_ops.register_group(name, sub if member else dist.group.WORLD)
                return compile(lambda t: compile_ops.all_reduce(t, group=dist.group.WORLD))(x)

            return fn, (torch.ones(2),)

        return build

    def stale(which: str):
        def build(rank, n_, compile):
            old = dist.group.WORLD if which == "world" else dist.new_group(everyone)
            fn = compile(lambda x, g: compile_ops.all_reduce(x, group=g))
            fn(torch.ones(2), old)  # compiled and run before the re-init
            restart_world(GROUP_TIMEOUT_S)
            dist.new_group(everyone)  # the new group '1' (the old sub's name)
            return (lambda x: fn(x, old)), (torch.ones(2),)

        return build

    words = ("group", "destroyed")
    return [
        Case("group", "destroyed ProcessGroup", "all_reduce", words, destroyed),
        Case("group", "alias of a destroyed group", "all_reduce", words, alias_of_destroyed),
        Case("group", "alias '0' (the world's torch name)", "register_group", ("'0'", "alias"),
             shadowing_alias(lambda g: "0")),
        Case("group", "alias = a subgroup's torch name", "register_group", ("alias", "live"),
             shadowing_alias(lambda g: g.group_name)),
        Case("group", "stale world group after re-init", "all_reduce", words, stale("world")),
        Case("group", "stale subgroup after re-init", "all_reduce", words, stale("sub")),
    ]  # fmt: skip


def _meta_cases(n: int) -> list[Case]:
    def meta(op, *args, shape=(4,), **kwargs):
        return lambda r, n_: (_call(op, *args, **kwargs), (torch.ones(*shape, device="meta"),))

    return [
        Case("meta", "all_reduce meta x", "all_reduce", ("meta",), _simple(meta("all_reduce"))),
        Case("meta", "all_gather meta x", "all_gather", ("meta",), _simple(meta("all_gather"))),
        Case("meta", "all_to_all meta x", "all_to_all", ("meta",),
             _simple(meta("all_to_all", shape=(2 * n, 2)))),
        Case("meta", "broadcast meta x", "broadcast", ("meta",), _simple(meta("broadcast"))),
    ]  # fmt: skip


def catalogue(n: int) -> dict[str, Case]:
    """Every case for world size ``n``, by ``kind: name``."""
    cases = [
        *_valid_cases(n),
        *_bad_input_cases(n),
        *_one_rank_bad_cases(n),
        *_mismatch_cases(n),
        *_autograd_cases(n),
        *_group_cases(n),
        *_meta_cases(n),
    ]
    return {f"{c.kind}: {c.name}": c for c in cases}


_catalogues: dict[int, dict[str, Case]] = {}


def _case(n: int, key: str) -> Case:
    if n not in _catalogues:
        _catalogues[n] = catalogue(n)
    return _catalogues[n][key]


# ================================================================================================
# Rank side


_moved = [0]  # backend calls made by the collective kernels during the current case


def _count_data_movement() -> None:
    """Count every backend call the kernels make (they all end in ``kernels.wait``)."""
    from compile_ops.ops import kernels

    if getattr(kernels.wait, "_probe", False):
        return
    original = kernels.wait

    def wait(work):
        _moved[0] += 1
        return original(work)

    wait._probe = True
    kernels.wait = wait


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().flatten().view(torch.uint8).clone()


def _compiler(mode: str) -> Callable:
    if mode == "eager":
        return lambda fn: fn
    torch._dynamo.reset()
    return lambda fn: torch.compile(fn, fullgraph=True, backend="aot_eager")


def run_case(key: str, mode: str, debug: bool) -> dict:
    """Run one case on this rank; what happened, as plain data (module level: it pickles)."""
    _count_data_movement()
    case = _case(dist.get_world_size(), key)
    rank, n = dist.get_rank(), dist.get_world_size()
    previous = compile_ops.set_debug_mode(debug)
    try:
        fn, args = case.build(rank, n, _compiler(mode))
        before = [_bits(a) for a in args if isinstance(a, torch.Tensor) and not a.is_meta]
        _moved[0] = 0
        try:
            value = fn(*args)
        except Exception as e:
            lines = str(e).strip().splitlines() or [""]
            return {
                "kind": "err",
                "type": type(e).__name__,
                "mro": [f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__],
                "first": lines[0][:500],
                "message": str(e)[:3000],
                "moved": _moved[0],
            }
        after = [_bits(a) for a in args if isinstance(a, torch.Tensor) and not a.is_meta]
        intact = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu() if not value.is_meta else ("meta", tuple(value.shape))
        return {"kind": "ok", "value": value, "intact": intact, "moved": _moved[0]}
    finally:
        compile_ops.set_debug_mode(previous)
        for alias in [a for a in compile_ops.registered_groups() if a.startswith("probe_")]:
            compile_ops.unregister_group(alias)


def fresh_world(timeout_s: float) -> int:
    """A new world (every group destroyed) whose groups time out after ``timeout_s``: after a
    case that left ranks out of step, and to set the timeout."""
    restart_world(timeout_s)
    return dist.get_world_size()


def warm_up(timeout_s: float) -> int:
    """Set the group timeout, import and compile once (a case does not pay for first use)."""
    restart_world(timeout_s)
    _count_data_movement()
    torch._dynamo.reset()
    fn = torch.compile(lambda x: compile_ops.all_reduce(x) + 1, fullgraph=True, backend="aot_eager")
    return int(fn(torch.ones(2)).sum().item())


def echo(token):
    return token, dist.get_rank()


def unpicklable_result():
    return lambda: 0


class _Stubborn(Exception):
    """An exception that does not survive pickling (its constructor needs two arguments)."""

    def __init__(self, a, b):
        super().__init__(a)


def raise_unpicklable():
    raise _Stubborn("x", "y")


def result_only_this_process_can_load():
    """A value of a class that exists in this worker only: the parent cannot unpickle it."""
    module = sys.modules[__name__]
    module._Ghost = type("_Ghost", (), {"__module__": __name__, "__qualname__": "_Ghost"})
    return module._Ghost()


# ================================================================================================
# Parent side


@dataclass
class Record:
    world: int
    debug: bool
    mode: str
    kind: str
    name: str
    outcome: str
    detail: str
    seconds: float

    def to_json(self) -> dict:
        return dict(vars(self))


def _close(got, want) -> bool:
    from compile_ops.testing.compare import default_tolerance

    if want is None:
        return got is None
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
        return False
    rtol, atol = default_tolerance(want.dtype)
    try:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError:
        return False
    return True


def _names_what_it_should(case: Case, first: str, rank: int, bad_rank: int | None) -> bool:
    where = "compile_ops" + (f".{case.op}" if case.op else "")
    if case.op == "register_group":
        where = "register_group"
    if not first.startswith(where) and where not in first.split(":")[0]:
        return False
    if rank != bad_rank and bad_rank is not None and f"rank(s) [{bad_rank}]" in first:
        return True  # told that another rank's own check failed
    return any(w in first for w in case.words) if case.words else True


def _common_class(answers: list[dict]) -> str | None:
    shared = set(answers[0]["mro"])
    for a in answers[1:]:
        shared &= set(a["mro"])
    for cls in answers[0]["mro"]:  # the most specific class every rank's exception is
        if cls in shared:
            return None if cls in ("builtins.Exception", "builtins.BaseException") else cls
    return None


def classify(case: Case, n: int, answers: list[dict]) -> tuple[str, str]:
    """(class, detail) of a case every rank answered."""
    reference = case.reference(n) if case.reference else None
    errors = [a for a in answers if a["kind"] == "err"]
    for rank, a in enumerate(answers):
        if a["kind"] == "ok":
            if not a["intact"]:
                return "wrong", f"rank {rank} modified its input"
            if reference is None:
                return "wrong", f"rank {rank} got a result and no error"
            if not _close(a["value"], reference[rank]):
                return "wrong", f"rank {rank}: result differs from the reference"
    if not errors:
        return "correct", ""
    if len(errors) < len(answers):
        raised = [r for r, a in enumerate(answers) if a["kind"] == "err"]
        return "unclear", f"only ranks {raised} raised: {errors[0]['type']}: {errors[0]['first']}"
    first = f"{errors[0]['type']}: {errors[0]['first']}"
    if reference is not None:
        return "unclear", f"an error where a result was due: {first}"
    if any(a["moved"] for a in answers):
        return "unclear", f"raised after data moved: {first}"
    if _common_class(answers) is None:
        kinds = sorted({a["type"] for a in answers})
        return "unclear", f"no common class: {kinds}: {first}"
    bad_rank = n - 1 if case.kind == "one rank bad" else None
    for rank, a in enumerate(answers):
        if not _names_what_it_should(case, a["first"], rank, bad_rank):
            return "unclear", f"rank {rank}: {a['type']}: {a['first']}"
    return "clear", first


class Worlds:
    """The pool of one world size. A case that leaves ranks out of step gets a new world in the
    same processes (cheap); a crash or a rank stuck outside a collective, new processes."""

    def __init__(self, n: int, group_timeout: float):
        self.n, self.group_timeout = n, group_timeout
        self.pool = None
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        from compile_ops.testing.pool import WorkerPool

        for attempt in range(3):
            self.pool = WorkerPool(self.n)
            try:
                self.pool.start().run(warm_up, self.group_timeout, timeout=BACKSTOP_S * 2)
                return
            except Exception:
                self.pool.close()
                if attempt == 2:
                    raise

    def replace(self) -> None:
        self.pool.close()
        self._start()
        self.restarts += 1

    def renew(self, timeout: float | None = None) -> None:
        """A new world in the same processes (or new processes, if that fails)."""
        try:
            self.pool.run(fresh_world, timeout or self.group_timeout, timeout=BACKSTOP_S)
        except Exception:
            self.replace()

    def close(self) -> None:
        self.pool.close()


def _broken(e) -> tuple[str, str]:
    from compile_ops.testing.pool import WorkerTimeout

    failures = getattr(e, "failures", {})
    died = sorted(r for r, why in failures.items() if "died" in str(why))
    if died:
        return "crash", f"rank(s) {died} died: {failures[died[0]]}"
    if isinstance(e, WorkerTimeout):
        silent = sorted(r for r, why in failures.items() if "no answer" in str(why))
        return "hang", f"rank(s) {silent} gave no answer within {BACKSTOP_S:.0f}s"
    return "crash", str(e).splitlines()[0]


def _timed_out(answers: list[dict]) -> list[int]:
    """Ranks that waited in a collective until the group's timeout."""
    return [r for r, a in enumerate(answers) if a["kind"] == "err" and "Timed out" in a["message"]]


def run_one(worlds: Worlds, case: Case, key: str, mode: str, debug: bool):
    from compile_ops.testing.pool import ExchangeError, WorkerError

    try:
        answers = worlds.pool.run(run_case, key, mode, debug, timeout=BACKSTOP_S)
    except ExchangeError as e:
        worlds.replace()
        return _broken(e)
    except WorkerError as e:  # an answer that did not come back (the rank is in step)
        worlds.renew()
        return "unclear", str(e).splitlines()[0]
    waited = _timed_out(answers)
    if waited:
        outcome = "hang", f"rank(s) {waited} waited until the group's timeout"
    else:
        outcome = classify(case, worlds.n, answers)
    if outcome[0] not in ("correct", "clear") or case.kind == "group":
        worlds.renew()  # ranks may be out of step, or the case re-initialised the world
    return outcome


def pool_cases(worlds: Worlds) -> list[tuple[str, str, str]]:
    """(name, class, detail) for each abuse of the pool, judged by the next job's answer."""
    from compile_ops.testing.pool import WorkerError

    n = worlds.n
    abuses = {
        "map with an argument that does not pickle": lambda p: p.map(
            echo, [("A",)] * (n - 1) + [(lambda: 0,)]
        ),
        "a function that does not pickle": lambda p: p.run(lambda: 0),
        "a result that does not pickle": lambda p: p.run(unpicklable_result),
        "an exception that does not pickle": lambda p: p.run(raise_unpicklable),
        "a result the parent cannot unpickle": lambda p: p.run(result_only_this_process_can_load),
    }
    out = []
    for i, (name, abuse) in enumerate(abuses.items()):
        try:
            abuse(worlds.pool)
            outcome, detail = "wrong", "the abuse raised nothing"
        except (pickle.PicklingError, WorkerError) as e:
            lines = str(e).splitlines()
            outcome, detail = "clear", f"{type(e).__name__}: {' / '.join(lines[:3])[:300]}"
        token = f"after-{i}"
        try:
            follow = worlds.pool.run(echo, token, timeout=BACKSTOP_S)
        except Exception as e:  # (any failure of the next job is the finding)
            worlds.replace()
            outcome, detail = _broken(e)
        else:
            if follow != [(token, r) for r in range(n)]:
                outcome, detail = "wrong", f"the next job got {follow}"
        out.append((name, outcome, detail))
    return out


def probe(
    worlds_: tuple[int, ...],
    debugs: tuple[bool, ...],
    kinds: tuple[str, ...] = KINDS,
    modes: tuple[str, ...] = MODES,
    select: Callable[[str], bool] = lambda key: True,
    group_timeout: float = GROUP_TIMEOUT_S,
    progress: Callable[[str], None] = lambda line: None,
) -> list[Record]:
    """Every selected case on every world, debug mode off and on, in each mode."""
    records: list[Record] = []
    for n in worlds_:
        cases = {k: c for k, c in catalogue(n).items() if c.kind in kinds and select(k)}
        runs = [(k, m) for k in cases for m in modes if m in cases[k].modes]
        worlds = Worlds(n, group_timeout)
        try:
            for debug in debugs:
                where = f"w{n} debug {'on' if debug else 'off'}"
                for i, (key, mode) in enumerate(runs):
                    case, start = cases[key], time.perf_counter()
                    outcome, detail = run_one(worlds, case, key, mode, debug)
                    if outcome == "hang" and case.reference:
                        worlds.renew(3 * group_timeout)  # confirm with 3x the timeout
                        outcome, detail = run_one(worlds, case, key, mode, debug)
                        worlds.renew()
                    seconds = time.perf_counter() - start
                    records.append(
                        Record(n, debug, mode, case.kind, case.name, outcome, detail, seconds)
                    )
                    progress(
                        f"[{where} {i + 1}/{len(runs)}] {mode:8s} {key}: {outcome} {detail[:160]}"
                    )
                if "pool" in kinds and select("pool"):
                    for name, outcome, detail in pool_cases(worlds):
                        records.append(Record(n, debug, "eager", "pool", name, outcome, detail, 0))
                        progress(f"[{where}] pool: {name}: {outcome} {detail[:160]}")
        finally:
            worlds.close()
    return records


# -- output -----------------------------------------------------------------------------------


def counts(records: list[Record]) -> dict[tuple, Counter]:
    table: dict[tuple, Counter] = {}
    for r in records:
        table.setdefault((r.world, r.debug, r.kind), Counter())[r.outcome] += 1
        table.setdefault((r.world, r.debug, "all"), Counter())[r.outcome] += 1
    return table


def format_table(records: list[Record]) -> str:
    table = counts(records)
    head = ("world", "debug", "kind", "cases", *CLASSES)
    rows = []
    for (world, debug, kind), c in sorted(
        table.items(),
        key=lambda kv: (
            kv[0][0],
            kv[0][1],
            kv[0][2] == "all",
            KINDS.index(kv[0][2]) if kv[0][2] in KINDS else 99,
        ),
    ):
        rows.append(
            (
                str(world),
                "on" if debug else "off",
                kind,
                str(sum(c.values())),
                *(str(c[k]) for k in CLASSES),
            )
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def findings(records: list[Record]) -> str:
    """Every case that was not correct or clear, one line each."""
    lines = []
    for r in records:
        if r.outcome in ("correct", "clear"):
            continue
        lines.append(
            f"w{r.world} debug {'on ' if r.debug else 'off'} {r.mode:8s} {r.outcome:7s} "
            f"{r.kind}: {r.name}: {r.detail[:220]}"
        )
    return "\n".join(lines)


def environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "backend": "gloo over 127.0.0.1",
        "group_timeout_s": GROUP_TIMEOUT_S,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", default="2,3", help="comma-separated world sizes")
    parser.add_argument("--debug", choices=("off", "on", "both"), default="both")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--match", default="", help="only cases whose 'kind: name' contains this")
    parser.add_argument(
        "--group-timeout",
        type=float,
        default=GROUP_TIMEOUT_S,
        help="seconds a rank waits in a collective before the case counts as a hang",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="the counts and every case's record as JSON: to stdout instead of the table, or "
        "into FILE besides it",
    )
    parser.add_argument(
        "--from",
        dest="saved",
        metavar="JSON",
        nargs="+",
        help="print the table of saved runs (--json FILE) instead of running",
    )
    args = parser.parse_args(argv)
    worlds_ = tuple(int(w) for w in args.worlds.split(","))
    debugs = {"off": (False,), "on": (True,), "both": (False, True)}[args.debug]
    kinds = tuple(k.strip() for k in args.kinds.split(","))
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {KINDS}")
    modes = tuple(m.strip() for m in args.modes.split(","))
    if args.saved:
        return _show_saved(args.saved)
    env = environment()
    command = " ".join(["python benchmarks/reliability_probe.py", *(argv or sys.argv[1:])])
    start = time.perf_counter()
    records = probe(
        worlds_,
        debugs,
        kinds,
        modes,
        select=lambda key: args.match in key,
        group_timeout=args.group_timeout,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    env["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        table = counts(records)
        doc = {
            "environment": env,
            "command": command,
            "counts": [
                {"world": w, "debug": d, "kind": k, "cases": sum(cnt.values()),
                 **{c: cnt[c] for c in CLASSES}}
                for (w, d, k), cnt in sorted(table.items(), key=str)
            ],
            "cases": [r.to_json() for r in records],
        }  # fmt: skip
        if args.json == "-":
            print(json.dumps(doc, indent=1))
            return _exit_code(records)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    print(f"reliability probe, {env['date']}, torch {env['torch']}, Python {env['python']}")
    print(f"{env['machine']}; {env['backend']}; group timeout {args.group_timeout:.0f}s "
          f"(a hang); {env['seconds']:.0f}s in all")  # fmt: skip
    print(f"command: {command}")
    return _report(records)


def _show_saved(paths: list[str]) -> int:
    """The table and findings of saved runs, each run's environment and command first."""
    records = []
    for path in paths:
        with open(path) as f:
            saved = json.load(f)
        # One run (``--json``), or several collected under "runs" (as in benchmarks/results/).
        for doc in saved.get("runs", [saved]):
            records += _show_run(path, doc)
    return _report(records)


def _show_run(path: str, doc: dict) -> list[Record]:
    """Print one saved run's environment and command; its records."""
    env = doc["environment"]
    print(f"{path}: {env['date']}, torch {env['torch']}, Python {env['python']}, "
          f"{env['machine']}, {env['backend']}, {env['seconds']:.0f}s")  # fmt: skip
    print(f"  command: {doc['command']}")
    return [Record(**r) for r in doc["cases"]]


def _report(records: list[Record]) -> int:
    """Print the counts and the findings; the exit code (see ``_exit_code``)."""
    print()
    print(format_table(records))
    print()
    print("cases neither correct nor a clear error:")
    print(findings(records) or "(none)")
    return _exit_code(records)


def _exit_code(records: list[Record]) -> int:
    """1 where debug mode let a wrong result, a hang or a crash through."""
    return int(any(r.debug and r.outcome in ("wrong", "hang", "crash") for r in records))


if __name__ == "__main__":
    # Ranks unpickle the case functions by this module's name, not as __main__.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reliability_probe

    sys.exit(reliability_probe.main())
