"""Rank functions for the group, export and functional-collectives tests (module level: they
pickle by reference)."""

import os

import torch
import torch.distributed as dist

import compile_ops
from compile_ops.testing.pool import restart_world


def outcome(fn, *args, **kwargs):
    """``fn``'s result (a tensor's first element), or ``(exception type, message)``."""
    try:
        result = fn(*args, **kwargs)
    except Exception as e:
        return type(e).__name__, str(e)
    return result.flatten()[0].item() if isinstance(result, torch.Tensor) else result


def _reduce(x, group):
    return compile_ops.all_reduce(x, group=group)


def _compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="eager")


# --- aliases never shadow torch group names ----------------------------------------------------


def alias_refusals():
    """Try to register aliases that are, or could become, torch group names; then use groups."""
    n = dist.get_world_size()
    sub = dist.new_group(list(range(n - 1)))  # every rank takes part in creating it
    member = dist.get_rank() < n - 1
    tries = {
        "world name": "0",
        "own name": sub.group_name if member else "1",
        "future counter": str(dist.distributed_c10d._world.group_count + 3),
        "hashed name": "0123456789abcdef0123456789abcdef01234567",
        "reserved #": "tp#2",
        "empty": "",
    }
    results = {}
    for what, name in tries.items():
        try:
            compile_ops.register_group(name, sub if member else dist.group.WORLD)
        except compile_ops.GroupError as e:
            results[what] = str(e)
        else:
            results[what] = None
            compile_ops.unregister_group(name)  # keep the world usable for the checks below
    x = torch.ones(2)
    results["world"] = outcome(compile_ops.all_reduce, x, group=dist.group.WORLD)
    results["world compiled"] = outcome(_compiled(_reduce), x, dist.group.WORLD)
    results["'0'"] = outcome(compile_ops.all_reduce, x, group="0")
    if member:
        compile_ops.register_group("tp", sub)
        results["alias"] = outcome(compile_ops.all_reduce, x, group="tp")
        results["alias compiled"] = outcome(_compiled(_reduce), x, "tp")
        compile_ops.unregister_group("tp")
        dist.destroy_process_group(sub)
    return results


# --- destroyed groups raise, and code compiled before a re-init never runs on a new group ------


def stale_groups_after_reinit(timeout_s: float = 20.0):
    """World 3: groups '0' (world) and '1' (ranks 1, 2) are used eager and compiled, every group
    is destroyed, a new world starts, whose group '1' is ranks 0 and 1. Every use of an old
    group must raise GroupError; the new groups must work."""
    torch._dynamo.reset()
    rank = dist.get_rank()
    x = torch.ones(2)
    old_world, old_sub = dist.group.WORLD, dist.new_group([1, 2])
    by_arg = _compiled(_reduce)
    by_closure = _compiled(lambda t: compile_ops.all_reduce(t, group=old_sub))
    by_default = _compiled(lambda t: compile_ops.all_reduce(t))
    before = {"world": outcome(by_arg, x, old_world), "default": outcome(by_default, x)}
    if rank != 0:
        before["sub"] = outcome(by_closure, x)
    restart_world(timeout_s)
    new_sub = dist.new_group([0, 1])
    after = {
        "names": [getattr(g, "group_name", None) for g in (old_world, old_sub, new_sub)],
        "eager stale world": outcome(compile_ops.all_reduce, x, group=old_world),
        "compiled stale world": outcome(by_arg, x, old_world),
        "compiled new world": outcome(by_arg, x, dist.group.WORLD),
        "compiled default": outcome(by_default, x),
    }
    if rank != 0:
        after["eager stale sub"] = outcome(compile_ops.all_reduce, x, group=old_sub)
        after["compiled stale sub"] = outcome(by_closure, x)
    if rank != 2:
        after["compiled new sub"] = outcome(by_arg, x, new_sub)
    return before, after


def compiled_then_destroyed():
    """A group used by compiled code, then destroyed: the code raises, eager raises."""
    torch._dynamo.reset()
    sub = dist.new_group(list(range(dist.get_world_size())))
    x = torch.ones(2)
    by_arg = _compiled(_reduce)
    by_closure = _compiled(lambda t: compile_ops.all_gather(t, group=sub))
    before = (outcome(by_arg, x, sub), by_closure(x).shape[0])
    dist.destroy_process_group(sub)
    after = {
        "compiled by argument": outcome(by_arg, x, sub),
        "compiled by closure": outcome(by_closure, x),
        "eager": outcome(compile_ops.all_reduce, x, group=sub),
    }
    return before, after


# --- funcol's group arguments: DeviceMesh, (mesh, dim), ranks ---------------------------------


def mesh_groups():
    """World 2: the same all_reduce and all_gather over every form of group funcol accepts."""
    from torch.distributed.device_mesh import init_device_mesh

    torch._dynamo.reset()
    n, rank = dist.get_world_size(), dist.get_rank()
    flat = init_device_mesh("cpu", (n,), mesh_dim_names=("tp",))
    grid = init_device_mesh("cpu", (1, n), mesh_dim_names=("dp", "tp"))
    x = torch.full((2,), float(rank + 1))

    def ops(t, group):
        return compile_ops.all_reduce(t, group=group), compile_ops.all_gather(t, group=group)

    forms = {
        "mesh": flat,
        "(mesh, 1)": (grid, 1),
        "mesh['tp']": grid["tp"],
        "ranks": list(range(n)),
        "(mesh, 0)": (grid, 0),  # a group of one rank
    }
    results = {}
    # dynamic=False: the dim of (mesh, dim) varies between calls here and must stay a constant
    compiled = torch.compile(ops, fullgraph=True, backend="eager", dynamic=False)
    for what, group in forms.items():
        eager = ops(x, group)
        graph = compiled(x, group)
        results[what] = [t.tolist() for t in (*eager, *graph)]
    results["2-D mesh"] = outcome(compile_ops.all_reduce, x, group=grid)
    results["unknown ranks"] = outcome(compile_ops.all_reduce, x, group=[n + 3])
    results["bad tuple"] = outcome(compile_ops.all_reduce, x, group=(grid, "tp"))
    return results


# --- torch.export keeps the alias -------------------------------------------------------------


class _TensorParallelTail(torch.nn.Module):
    def forward(self, x):
        return compile_ops.all_reduce(x * 2, group="tp"), compile_ops.all_gather(x, group="tp")


def _group_names_in(ep) -> set:
    return {
        str(node.args[-1])
        for node in ep.graph.nodes
        if node.op == "call_function" and str(node.target).startswith("compile_ops.")
    }


def export_with_alias(directory: str):
    """Export a module that reduces over alias 'tp', created after another group; save it."""
    ranks = list(range(dist.get_world_size()))
    other, tp = dist.new_group(ranks), dist.new_group(ranks)
    compile_ops.register_group("tp", tp)
    try:
        x = torch.full((2,), float(dist.get_rank() + 1))
        ep = torch.export.export(_TensorParallelTail(), (x,))
        torch.export.save(ep, os.path.join(directory, f"rank{dist.get_rank()}.pt2"))
        return tp.group_name, _group_names_in(ep), [t.tolist() for t in ep.module()(x)]
    finally:
        compile_ops.unregister_group("tp")
        dist.destroy_process_group(tp)
        dist.destroy_process_group(other)


def load_with_alias(directory: str):
    """Load the program in a fresh world whose groups are created in another order."""
    ranks = list(range(dist.get_world_size()))
    tp, other = dist.new_group(ranks), dist.new_group(ranks)
    ep = torch.export.load(os.path.join(directory, f"rank{dist.get_rank()}.pt2"))
    x = torch.full((2,), float(dist.get_rank() + 1))
    unregistered = outcome(ep.module(), x)  # an alias is resolved as an alias only
    compile_ops.register_group("tp", tp)
    try:
        return tp.group_name, unregistered, [t.tolist() for t in ep.module()(x)]
    finally:
        compile_ops.unregister_group("tp")
        dist.destroy_process_group(other)
        dist.destroy_process_group(tp)


# --- the functional-collectives switch --------------------------------------------------------


def _collectives_program(x, y, splits_out, splits_in):
    n = dist.get_world_size()
    return (
        compile_ops.all_reduce(x),
        compile_ops.all_reduce(x, "max"),
        compile_ops.all_gather(x, dim=1),
        compile_ops.reduce_scatter(x, dim=0),
        compile_ops.reduce_scatter(x, dim=1, op="avg"),
        compile_ops.all_reduce(x, dist.ReduceOp.MIN),  # torch.distributed's spelling
        compile_ops.reduce_scatter(x, 0, dist.ReduceOp.AVG),
        compile_ops.all_to_all(y, splits_out, splits_in),
        compile_ops.broadcast(x, src=n - 1),
    )


def _ops_in(graphs) -> set:
    return {
        str(node.target)
        for gm in graphs
        for node in gm.graph.nodes
        if node.op == "call_function" and str(node.target).startswith(("compile_ops.", "_c10d"))
    }


def functional_collectives_switch(compiler: str, uneven: bool):
    """The same program with our ops and with functional collectives, eager and compiled (by
    ``compiler``, for the functional collectives; our ops' graph only runs as captured). With
    even splits every rank compiles the same graph, and Inductor builds its kernels once."""
    torch._dynamo.reset()
    rank, n = dist.get_rank(), dist.get_world_size()
    x = torch.arange(2 * n * 3 * n, dtype=torch.float32).reshape(2 * n, 3 * n) * (rank + 1)
    if uneven:
        splits_in = [(rank + r) % 3 for r in range(n)]
        splits_out = [(s + rank) % 3 for s in range(n)]
        y = torch.randn(sum(splits_in), 4, generator=torch.Generator().manual_seed(rank))
    else:
        splits_in = splits_out = None
        y = torch.randn(2 * n, 4, generator=torch.Generator().manual_seed(rank))
    args = (x, y, splits_out, splits_in)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        if not compile_ops.functional_collectives_enabled():
            return gm.forward
        return torch._dynamo.lookup_backend(compiler)(gm, example_inputs)

    compiled = torch.compile(_collectives_program, fullgraph=True, backend=capture)
    ours = _collectives_program(*args)
    with compile_ops.use_functional_collectives():
        enabled = compile_ops.functional_collectives_enabled()
        funcol_eager = _collectives_program(*args)
        funcol_compiled = compiled(*args)
    funcol_graph = _ops_in(graphs)
    ours_compiled = compiled(*args)  # the switch is guarded: this recompiles, with our ops
    return {
        "enabled inside": enabled,
        "enabled after": compile_ops.functional_collectives_enabled(),
        "results": [ours, funcol_eager, funcol_compiled, ours_compiled],
        "funcol graph": funcol_graph,
        "graphs": len(graphs),
        "ours graph": _ops_in(graphs[1:]),
    }
