"""Functions that run inside the worker ranks (module level, so they pickle by reference)."""

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.ops import SPECS, autograd, opcheck_samples


def raises(fn, *args, **kwargs):
    """Run ``fn`` and return ``(exception type name, message)``, or None if it did not raise."""
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return type(e).__name__, str(e)
    return None


def rank() -> int:
    return dist.get_rank()


def healthy() -> float:
    """A real collective: proves no rank was left half-way inside an earlier one."""
    return compile_ops.all_reduce(torch.ones(2)).sum().item()


def op_samples(device: str = "cpu"):
    """(overload, args, kwargs) for every sample of every compile_ops overload (from the spec
    table), valid on this rank's world."""
    ops = torch.ops.compile_ops
    world = dist.group.WORLD
    # broadcast_backward (the adjoint of broadcast) is the one op defined outside the spec table.
    samples = {**opcheck_samples(SPECS.values(), world, device), **autograd.opcheck_samples(world)}
    return [
        (getattr(getattr(ops, op), overload or "default"), args, kwargs)
        for name, per_overload in samples.items()
        for op, _, overload in [name.partition(".")]
        for args, kwargs in per_overload
    ]


def opcheck_all(device: str = "cpu"):
    """torch.library.opcheck on every sample; returns {overload name: [failure or None, ...]}."""
    results = {}
    for op, args, kwargs in op_samples(device):
        torch.manual_seed(0)  # every rank runs the same sequence of collectives
        try:
            torch.library.opcheck(op, args, kwargs)
            failure = None
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
        results.setdefault(str(op), []).append(failure)
    return results


def namespace_overloads() -> set[str]:
    """Every overload torch knows in the compile_ops namespace, as ``str(OpOverload)`` names it."""
    from fake_impls.audit import namespace_ops

    return {str(op) for op in namespace_ops("compile_ops")}


# --- an out-of-place op must never hand back its input --------------------------------------------

# Ops that reproduce a bug on purpose, each defined once per process (and kept alive here).
_bug_libraries: dict[str, torch.library.Library] = {}


def _define_once(ns: str, schema: str, kernel, fake) -> torch._ops.OpOverload:
    name = schema.split("(")[0]
    if ns not in _bug_libraries:
        lib = torch.library.Library(ns, "DEF")
        lib.define(schema)
        lib.impl(name, kernel, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{ns}::{name}", fake, lib=lib)
        _bug_libraries[ns] = lib
    return getattr(getattr(torch.ops, ns), name).default


def _aliasing_all_reduce(x, group_name):
    dist.all_reduce(x)
    return x


def define_aliasing_all_reduce():
    """The aliased-result bug on purpose: reduce in place, return the input from a functional schema."""
    return _define_once(
        "compile_ops_buggy",
        "all_reduce(Tensor x, str group_name) -> Tensor",
        _aliasing_all_reduce,
        lambda x, group_name: x.new_empty(x.shape),
    )


def aliasing_pattern(op_name: str, compiled: bool):
    """Two programs that expose an op returning (an alias of) its input; returns (got, want) pairs.

    * the input is read again after the op: an in-place op changes what later code sees (eager);
    * the input is dead after the op: Inductor hands its buffer to a later intermediate, which then
      overwrites the result that aliases it (compiled: the result reads as all zeros).
    """
    rank, n = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD.group_name
    op = {
        "all_reduce": compile_ops.all_reduce,
        "broadcast": lambda y: compile_ops.broadcast(y, src=0),
        "buggy": lambda y: define_aliasing_all_reduce()(y, group),
    }[op_name]
    if op_name == "buggy":
        define_aliasing_all_reduce()

    def read_input_later(x):
        y = x * 2
        return op(y), y + 0.5

    def reuse_freed_buffer(x):
        r = op(x * 2)
        z = torch.mm(x * r.sum(), x)
        return r + z

    def inputs(r):
        return torch.arange(16, dtype=torch.float32).view(4, 4) / 16 + r

    x = inputs(rank)
    ys = [2 * inputs(r) for r in range(n)]
    reduced = ys[0] if op_name == "broadcast" else sum(ys)
    want_read = (reduced, ys[rank] + 0.5)
    want_reuse = reduced + torch.mm(x * reduced.sum(), x)
    if compiled:
        torch._dynamo.reset()
        read_input_later = torch.compile(read_input_later, fullgraph=True)
        reuse_freed_buffer = torch.compile(reuse_freed_buffer, fullgraph=True)
    got_read = read_input_later(x)
    got_reuse = reuse_freed_buffer(x)
    return [(got_read[0], want_read[0]), (got_read[1], want_read[1]), (got_reuse, want_reuse)]


def matches(pairs) -> bool:
    return all(torch.allclose(got, want, rtol=1e-5, atol=1e-4) for got, want in pairs)


def copy_kernels(code: str) -> list[str]:
    """Lines of generated code that copy or clone a buffer."""
    needles = (".clone(", "copy_(", "aten.copy", "aten.clone")
    return [line.strip() for line in code.splitlines() if any(n in line for n in needles)]


def generated_code(op_name: str, input_live: bool, device: str = "cpu"):
    """Compile y = 2x; r = op(y); return r + 1 (and + y when live); return code and results."""
    from torch._inductor.utils import run_and_get_code

    rank = dist.get_rank()
    op = compile_ops.all_reduce if op_name == "all_reduce" else compile_ops.broadcast

    def fn(x):
        y = x * 2
        r = op(y)
        return r + y if input_live else r + 1

    x = torch.arange(8, dtype=torch.float32, device=device) + rank
    torch._dynamo.reset()
    out, (code, *_) = run_and_get_code(torch.compile(fn, fullgraph=True), x)
    out = out.cpu()
    n = dist.get_world_size()
    ys = [2 * (torch.arange(8, dtype=torch.float32) + r) for r in range(n)]
    reduced = sum(ys) if op_name == "all_reduce" else ys[0]
    expected = reduced + (ys[rank] if input_live else 1)
    return code, out, expected


def bad_calls():
    """Each bad call and what it must raise; run identically on every rank, before any traffic."""
    n = dist.get_world_size()
    x = torch.ones(2 * n + 1, 3)
    ok = torch.ones(2 * n, 3)
    calls = {
        "indivisible": lambda: compile_ops.reduce_scatter(x, dim=0),
        "sizes_sum": lambda: compile_ops.reduce_scatterv(ok, [1] * n),
        "sizes_count": lambda: compile_ops.reduce_scatterv(ok, [2 * n]),
        "gatherv_count": lambda: compile_ops.all_gatherv(ok, [2 * n] * (n + 1)),
        "gatherv_own": lambda: compile_ops.all_gatherv(ok, [1] * n),
        "splits_sum": lambda: compile_ops.all_to_all(ok, [1] * n, [1] * n),
        "splits_count": lambda: compile_ops.all_to_all(ok, [2 * n], [2 * n, 0]),
        "unknown_group": lambda: compile_ops.all_reduce(ok, group="no-such-group"),
        "bad_op": lambda: compile_ops.all_reduce(ok, op="xor"),
        "bad_dtype": lambda: compile_ops.all_reduce(ok.bool()),
        "avg_int": lambda: compile_ops.all_reduce(ok.int(), op="avg"),
        "bad_dim": lambda: compile_ops.all_gather(ok, dim=2),
        "scalar": lambda: compile_ops.all_gather(torch.tensor(1.0)),
        "bad_src": lambda: compile_ops.broadcast(ok, src=n),
        "gather_dst": lambda: compile_ops.gather(ok, dst=n),
        "gather_dim": lambda: compile_ops.gather(ok, dim=-3),
        "out_shape": lambda: torch.ops.compile_ops.all_gather.out(
            ok, 0, n, dist.group.WORLD.group_name, out=torch.empty(1)
        ),
        "group_size": lambda: torch.ops.compile_ops.all_gather(
            ok, 0, n + 1, dist.group.WORLD.group_name
        ),
    }
    return {name: raises(call) for name, call in calls.items()}


def compiled_bad_calls():
    """Bad calls inside torch.compile(fullgraph=True): what each raises, as in bad_calls."""
    n = dist.get_world_size()
    x = torch.ones(2 * n + 1, 3)
    ok = torch.ones(2 * n, 3)
    counts = torch.ones(n, dtype=torch.int64)  # splits read from a tensor: they sum to n, not 2n
    calls = {
        "indivisible": (lambda t: compile_ops.reduce_scatter(t), (x,), False),
        "indivisible_dynamic": (lambda t: compile_ops.reduce_scatter(t), (x,), True),
        "bad_dim": (lambda t: compile_ops.all_gather(t, dim=2), (ok,), False),
        "bad_op": (lambda t: compile_ops.all_reduce(t, op="xor"), (ok,), False),
        "avg_int": (lambda t: compile_ops.all_reduce(t.int(), op="avg"), (ok,), True),
        "gatherv_count": (lambda t: compile_ops.all_gatherv(t, [2 * n] * (n + 1)), (ok,), False),
        "splits_from_tensor": (
            lambda t, s: compile_ops.all_to_all(t, s.tolist(), s.tolist()),
            (ok, counts),
            False,
        ),
        "sizes_from_tensor": (
            lambda t, s: compile_ops.reduce_scatterv(t, s.tolist()),
            (ok, counts),
            True,
        ),
    }
    results = {}
    for name, (fn, args, dynamic) in calls.items():
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=dynamic)
        results[name] = raises(compiled, *args)
    # Without fullgraph, Dynamo breaks the graph at the bad call, which then raises eagerly.
    torch._dynamo.reset()
    try:
        torch.compile(calls["indivisible"][0], backend="aot_eager")(x)
    except Exception as e:
        results["graph_break"] = type(e).__name__, str(e), type(e) is ValueError
    return results


def meta_inputs():
    """Every op on a meta tensor, outside fake mode: what each raises."""
    from compile_ops.testing.cases import OPS, Case

    rank = dist.get_rank()
    results = {}
    for op in OPS:
        case = Case(op, dist.get_world_size(), uneven=SPECS[op].uneven)
        results[op] = raises(case.call, case.input(rank).to("meta"), rank)
    return results


def wrong_device_and_destroyed_group():
    """A group whose backend serves no CPU tensors, then the same group after destruction."""
    ranks = list(range(dist.get_world_size()))
    cuda_only = dist.new_group(ranks, backend="cuda:gloo")
    name = cuda_only.group_name
    wrong_device = raises(compile_ops.all_reduce, torch.ones(3), group=cuda_only)
    compile_ops.register_group("cuda-only", cuda_only)
    dist.destroy_process_group(cuda_only)
    destroyed = raises(torch.ops.compile_ops.all_reduce, torch.ones(3), "sum", name)
    destroyed_alias = raises(compile_ops.all_reduce, torch.ones(3), group="cuda-only")
    compile_ops.unregister_group("cuda-only")
    return wrong_device, destroyed, destroyed_alias


# --- FX graph cache shared by the ranks of one machine ------------------------------------------


def _naive_reduce_scatterv_fake(x, sizes, group_name):
    return x.new_empty((sizes[dist.get_rank()], *x.shape[1:]))  # the rank from process state


def define_naive_reduce_scatterv():
    """reduce_scatterv whose fake reads the rank from process state instead of its arguments."""
    op = _define_once(
        "compile_ops_naive",
        "reduce_scatterv(Tensor x, SymInt[] sizes, str group_name) -> Tensor",
        lambda x, sizes, group_name: compile_ops.reduce_scatterv(x, sizes),
        _naive_reduce_scatterv_fake,
    )
    torch.fx.node.has_side_effect(op)
    return op


def _fx_cache_entries() -> int:
    import os

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    root = os.path.join(cache_dir(), "fxgraph")
    return sum(len(files) for _, _, files in os.walk(root))


def compile_first_on(variant: str, first: int):
    """Rank ``first`` compiles against a fresh shared FX graph cache; the others compile once
    its entry is written (they cannot wait for it to finish: its collective needs them).

    Returns (output shapes of two rounds, expected shape, FX-cache hits, misses) of this rank.
    """
    import time

    from torch._dynamo.utils import counters

    rank, n = dist.get_rank(), dist.get_world_size()
    sizes = [1, 2, 3][:n]
    x, expected = torch.ones(sum(sizes), 4), (sizes[rank], 4)
    if variant == "naive":
        op = define_naive_reduce_scatterv()
        group = dist.group.WORLD.group_name

        def fn(x):
            return op(x * 2, sizes, group) + 1
    elif variant == "gather":  # the whole gather on rank `first`, nothing elsewhere
        x, expected = torch.ones(2, 4), (2 * n if rank == first else 0, 4)

        def fn(x):
            return compile_ops.gather(x * 2, dst=first) + 1
    else:

        def fn(x):
            return compile_ops.reduce_scatterv(x * 2, sizes) + 1

    counters.clear()
    before = _fx_cache_entries()
    dist.barrier()
    if rank != first:
        deadline = time.monotonic() + 120
        while _fx_cache_entries() == before and time.monotonic() < deadline:
            time.sleep(0.05)
    shapes = []
    for _ in range(2):  # the second round is served from the cache on every rank
        torch._dynamo.reset()
        try:
            shapes.append(tuple(torch.compile(fn, fullgraph=True)(x).shape))
        except AssertionError as e:  # a wrong cached shape trips Inductor's check after the op
            shapes.append(f"AssertionError: {str(e).splitlines()[0]}")
    hits = counters["inductor"]["fxgraph_cache_hit"]
    misses = counters["inductor"]["fxgraph_cache_miss"]
    return shapes, expected, hits, misses


def ops_kept_when_unused() -> dict[str, bool]:
    """Per op: whether Inductor's code for a program that discards the op's result still calls it.

    A collective is never dead code: a rank that skipped one would leave the others waiting.
    """
    from torch._inductor.utils import run_and_get_code

    from compile_ops.testing.cases import OPS, Case

    rank, kept = dist.get_rank(), {}
    for op in OPS:
        case = Case(op, dist.get_world_size(), uneven=SPECS[op].uneven)

        def discard(x, case=case):
            case.call(x, rank)
            return x + 1

        torch._dynamo.reset()
        compiled = torch.compile(discard, fullgraph=True, backend="inductor")
        # The FX graph cache's key does not cover op tags: compile afresh, not from the cache.
        with torch._inductor.config.patch(fx_graph_cache=False):
            _, code = run_and_get_code(compiled, case.input(rank))
        kept[op] = any(f"compile_ops.{op}." in line for line in "\n".join(code).splitlines())
    return kept
