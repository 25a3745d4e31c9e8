"""Rank functions for tests/test_autograd.py (module level, so they pickle by reference)."""

import math

import torch
import torch.distributed as dist

import compile_ops

from .workers import raises

ops = torch.ops.compile_ops


def _group_name() -> str:
    return dist.group.WORLD.group_name


def op_cases():
    """name -> (this rank's input shape, the op applied to it); uneven sizes where an op allows."""
    r, n = dist.get_rank(), dist.get_world_size()
    sizes = [k + 1 for k in range(n)]
    sends = [(r + 2 * s) % 3 for s in range(n)]
    expects = [(s + 2 * r) % 3 for s in range(n)]
    return {
        "all_gather": ((2, 3), lambda x: compile_ops.all_gather(x, dim=1)),
        "all_gatherv": ((sizes[r], 2), lambda x: compile_ops.all_gatherv(x, sizes)),
        "all_gatherv_dim1": ((2, sizes[r]), lambda x: compile_ops.all_gatherv(x, sizes, dim=-1)),
        "reduce_scatter": ((2 * n, 2), lambda x: compile_ops.reduce_scatter(x)),
        "reduce_scatter_avg": ((2, n), lambda x: compile_ops.reduce_scatter(x, 1, op="avg")),
        "reduce_scatterv": ((sum(sizes), 2), lambda x: compile_ops.reduce_scatterv(x, sizes)),
        "reduce_scatterv_avg": (
            (2, sum(sizes)),
            lambda x: compile_ops.reduce_scatterv(x, sizes, dim=1, op="avg"),
        ),
        "all_to_all": ((sum(sends), 2), lambda x: compile_ops.all_to_all(x, expects, sends)),
        "broadcast": ((3,), lambda x: compile_ops.broadcast(x, src=1)),
        "broadcast_backward": ((3,), lambda x: ops.broadcast_backward(x, 1, _group_name())),
        "pair": ((3,), lambda x: x),  # copy_to_group then reduce_from_group alone
    }


def _whole_world(fn, in_shapes, out_shapes):
    """``fn`` over the whole world as one function every rank computes identically.

    Input: every rank's input, flattened and concatenated (the same tensor on every rank).
    Output: every rank's output, likewise. ``copy_to_group`` makes the gradient of each rank's
    slice reach every rank; ``reduce_from_group`` of the outputs placed in their slots gathers
    them, with the identity backward that a replicated result calls for. So gradcheck sees the
    true Jacobian of the collective, numerically and through the registered backward, on every
    rank, and every rank runs the same sequence of collectives.
    """
    r = dist.get_rank()
    ins = [math.prod(s) for s in in_shapes]
    outs = [math.prod(s) for s in out_shapes]

    def world(flat):
        everyone = compile_ops.copy_to_group(flat)
        mine = everyone[sum(ins[:r]) : sum(ins[: r + 1])].view(in_shapes[r])
        y = fn(mine).flatten()
        before, after = sum(outs[:r]), sum(outs[r + 1 :])
        return compile_ops.reduce_from_group(
            torch.cat([y.new_zeros(before), y, y.new_zeros(after)])
        )

    return world, sum(ins)


def gradcheck_ops(names):
    """torch.autograd.gradcheck of each named case over the whole world (float64)."""
    cases = op_cases()
    results = {}
    for name in names:
        shape, fn = cases[name]
        in_shapes = [None] * dist.get_world_size()
        dist.all_gather_object(in_shapes, shape)
        probe = fn(torch.zeros(shape, dtype=torch.float64))
        out_shapes = [None] * dist.get_world_size()
        dist.all_gather_object(out_shapes, tuple(probe.shape))
        world, numel = _whole_world(fn, in_shapes, out_shapes)
        torch.manual_seed(0)  # the same input on every rank
        flat = torch.randn(numel, dtype=torch.float64, requires_grad=True)
        results[name] = raises(torch.autograd.gradcheck, world, (flat,), raise_exception=True)
    return results


def tensor_parallel_mlp():
    """A Megatron-style MLP: copy_to_group -> column-parallel -> row-parallel -> reduce_from_group.

    Returns (gradcheck outcome, x.grad, the single-process reference's x.grad).
    """
    r, n = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # every rank draws the full weights, then keeps its shard
    w_up = torch.randn(4, 2 * n, dtype=torch.float64)
    w_down = torch.randn(2 * n, 3, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    up, down = w_up[:, 2 * r : 2 * r + 2], w_down[2 * r : 2 * r + 2]

    def sharded(x):
        h = torch.tanh(compile_ops.copy_to_group(x) @ up)
        return compile_ops.reduce_from_group(h @ down)

    outcome = raises(torch.autograd.gradcheck, sharded, (x,), raise_exception=True)
    sharded(x).pow(2).sum().backward()
    ref = x.detach().clone().requires_grad_()
    (torch.tanh(ref @ w_up) @ w_down).pow(2).sum().backward()
    return outcome, x.grad, ref.grad


def _seeded_inputs(cases, dtype=torch.float32):
    r = dist.get_rank()
    return {
        name: (torch.arange(math.prod(shape), dtype=dtype).view(shape) / 7 + r).requires_grad_()
        for name, (shape, _) in cases.items()
    }


def _outputs(cases, xs):
    return {name: fn(xs[name]) for name, (_, fn) in cases.items()}


def eager_and_compiled_grads(backend: str, names=None):
    """The named ops' input gradients, eager and through a compiled program: (eager, compiled).

    Without names: every op and both conjugate pairs. The program returns the ops' outputs and
    the backward is seeded with rank- and position-dependent gradients, so a graph holds only
    the collectives (no kernels to compile) and every output element weighs differently.
    """
    cases = {k: v for k, v in op_cases().items() if k != "pair"}
    cases["copy_to_group"] = ((2,), compile_ops.copy_to_group)
    cases["reduce_from_group"] = ((2,), compile_ops.reduce_from_group)
    cases = {k: v for k, v in cases.items() if names is None or k in names}
    r = dist.get_rank()
    grads = []
    torch._dynamo.reset()
    compiled = torch.compile(lambda xs: _outputs(cases, xs), fullgraph=True, backend=backend)
    for run in (lambda xs: _outputs(cases, xs), compiled):
        xs = _seeded_inputs(cases)
        ys = run(xs)
        seeds = {
            k: torch.arange(y.numel(), dtype=y.dtype).view(y.shape) + 1 + r for k, y in ys.items()
        }
        torch.autograd.backward(list(ys.values()), list(seeds.values()))
        grads.append({name: x.grad for name, x in xs.items()})
    return grads


def complex_all_gather_grad():
    """all_gather of a complex tensor: its backward reduce-scatters real and imaginary parts."""
    x = torch.tensor([1 + 2j, 3 - 1j], requires_grad=True)
    compile_ops.all_gather(x).abs().pow(2).sum().backward()
    return x.grad, 2 * x.detach() * dist.get_world_size()


def refusals(compiled: bool):
    """Every call that must refuse a gradient, and what each raised (no rank communicates)."""
    calls = {
        "all_reduce": lambda x: compile_ops.all_reduce(x),
        "all_reduce_max": lambda x: compile_ops.all_reduce(x, op="max"),
        "reduce_scatter_max": lambda x: compile_ops.reduce_scatter(x, op="max"),
        "reduce_scatter_min": lambda x: compile_ops.reduce_scatter(x, op="min"),
        "reduce_scatter_product": lambda x: compile_ops.reduce_scatter(x, op="product"),
        "reduce_scatterv_max": lambda x: compile_ops.reduce_scatterv(
            x, [2] * dist.get_world_size(), op="max"
        ),
    }
    torch._dynamo.reset()
    outcomes = {}
    for name, call in calls.items():
        fn = torch.compile(call, fullgraph=True, backend="eager") if compiled else call
        x = torch.ones(2 * dist.get_world_size(), 2, requires_grad=True)
        outcomes[name] = raises(fn, x)
    return outcomes


def refusal_on_one_rank():
    """Rank 0 alone calls all_reduce on a tensor that requires grad: it must raise without
    waiting for the other ranks (which never call)."""
    if dist.get_rank() != 0:
        return None
    return raises(compile_ops.all_reduce, torch.ones(2, requires_grad=True))


def no_grad_paths():
    """The refusing ops run as usual where no gradient is required."""
    n = dist.get_world_size()
    x = torch.ones(2 * n, requires_grad=True)
    with torch.no_grad():
        a = compile_ops.all_reduce(x)
    b = compile_ops.all_reduce(x.detach(), op="max")
    c = compile_ops.reduce_scatter(x.detach(), op="product")
    return a.tolist(), b.tolist(), c.tolist()


def backward_graph_code():
    """The compiled backward of all_gatherv and broadcast, as code (world 3, sizes [2, 2, 1]).

    Ranks 0 and 1 trace the same program on inputs of the same shape; their backward graphs
    must be the same too, or a compile cache shared by the ranks would serve one rank's
    backward to the other.
    """
    from torch._dynamo.backends.common import aot_autograd

    codes = []

    def keep(gm, example_inputs):
        codes.append(gm.code)
        return gm

    sizes = [2, 2, 1]
    r = dist.get_rank()

    def fn(x, y):
        return compile_ops.all_gatherv(x, sizes), compile_ops.broadcast(y, src=2)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    x = torch.ones(sizes[r], 3, requires_grad=True)
    y = torch.ones(3, requires_grad=True)
    a, b = compiled(x, y)
    (a.sum() + b.sum()).backward()
    return codes[-1], x.grad, y.grad


def twins():
    """The in-place and out= twins: no gradient, and their writes are seen by autograd."""
    n, name = dist.get_world_size(), _group_name()
    w, x = torch.ones(3, requires_grad=True), torch.full((3,), 2.0)
    y = w * x  # saves x for w's gradient
    ops.all_reduce_(x, "sum", name)
    stale = raises(y.sum().backward)
    refused = raises(ops.all_reduce_, torch.ones(3, requires_grad=True) * 1, "sum", name)
    out = torch.empty(3 * n)
    refused_out = raises(ops.all_gather.out, torch.ones(3, requires_grad=True), 0, n, name, out=out)
    return stale, refused, refused_out


def opcheck_with_gradients():
    """torch.library.opcheck of every op that has a gradient, on inputs that require one."""
    r, n, name = dist.get_rank(), dist.get_world_size(), _group_name()
    sizes = [k + 1 for k in range(n)]
    sends = [(r + 2 * s) % 3 for s in range(n)]
    expects = [(s + 2 * r) % 3 for s in range(n)]

    def x(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    samples = {
        "all_gather": (ops.all_gather.default, (x(2, 3), 1, n, name)),
        "all_gatherv": (ops.all_gatherv.default, (x(sizes[r], 2), sizes, 0, name)),
        "reduce_scatter": (ops.reduce_scatter.default, (x(2 * n, 2), 0, "avg", n, name)),
        "reduce_scatterv": (
            ops.reduce_scatterv.default,
            (x(sum(sizes), 2), sizes, 0, "sum", r, name),
        ),
        "all_to_all": (ops.all_to_all.default, (x(sum(sends), 2), expects, sends, name)),
        "broadcast": (ops.broadcast.default, (x(3), 0, name)),
        "broadcast_backward": (ops.broadcast_backward.default, (x(3), 1, name)),
    }
    results = {}
    for label, (op, args) in samples.items():
        torch.manual_seed(0)  # every rank runs the same sequence of collectives
        results[label] = raises(torch.library.opcheck, op, args)
    return results
