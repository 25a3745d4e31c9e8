"""MoE functions that run inside the worker ranks (module level, so they pickle by reference)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from compile_ops.moe import (
    CAPACITY_MANAGERS,
    MANAGERS,
    Capacity,
    Layout,
    MoEBlock,
    MoEConfig,
    MoEWeights,
    ReduceContractError,
    ShardedMoEBlock,
    mark_token_dim,
)

from .workers import raises

CONFIG = MoEConfig(hidden=16, intermediate=32, experts=8, top_k=2, shared_intermediate=16)
SIGMOID = MoEConfig(
    hidden=16, intermediate=32, experts=8, top_k=3, scoring="sigmoid", renormalize=False
)
# The sharded layouts the tests cover, each with its world size.
LAYOUTS = [(2, "tp"), (2, "ep"), (4, "tp"), (4, "ep"), (4, "tp_ep")]
# Per dtype: the sharded block sums partial outputs in the model dtype, the reference in float32.
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 5e-2}}
# The TP x EP grid of a 4-rank world: TP pairs {0,1},{2,3}; EP pairs {0,2},{1,3}.
GRID = {"moe_tp": [[0, 1], [2, 3]], "moe_ep": [[0, 2], [1, 3]]}
_grid_groups: dict[str, dist.ProcessGroup] = {}


def layout(kind: str) -> Layout:
    if kind == "tp":
        return Layout.tp(None)
    if kind == "ep":
        return Layout.ep(None)
    if not _grid_groups:  # once per process: every rank creates the subgroups in the same order
        import compile_ops

        for name, ranks in GRID.items():
            _grid_groups[name] = dist.new_subgroups_by_enumeration(ranks)[0]
            compile_ops.register_group(name, _grid_groups[name])
    return Layout.tp_ep(None, tp="moe_tp", ep="moe_ep")


def tokens(counts: list[int], dtype: torch.dtype, step: int = 0, hidden: int = 16):
    """Every rank's tokens (the same on every rank, so each can compute the reference)."""
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(c, hidden, generator=g).to(dtype) for c in counts]


def _own(t: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
    start = sum(counts[:rank])
    return t[start : start + counts[rank]]


def flipped(name: str, registry=MANAGERS) -> type:
    """The manager ``name`` with its reduce statement inverted (a double or missing reduce)."""
    base = registry[name]
    return type(
        f"Flipped{base.__name__}", (base,), {"output_is_reduced": not base.output_is_reduced}
    )


def _block(manager, kind, dtype, config, debug, flip=False, device="cpu"):
    weights = MoEWeights.random(config, seed=7, dtype=dtype, device=device)
    lay = layout(kind)
    if flip:
        manager = flipped(manager)(lay, config.experts, device)
    return ShardedMoEBlock(config, weights, lay, manager, debug=debug), MoEBlock(config, weights)


def run_block(
    manager: str,
    kind: str,
    dtype: torch.dtype,
    steps: list[list[int]],
    backend: str | None = None,
    debug: bool = True,
    config: MoEConfig = CONFIG,
    device: str = "cpu",
):
    """Run the sharded block on ``steps`` (per-rank token counts, one list per call).

    Returns per step ``(out, reference rows)`` for this rank, and the number of compiled frames
    (``backend=None``: eager). The token dimension is unbacked, so one frame serves every count.
    """
    from torch._dynamo.testing import CompileCounterWithBackend

    block, ref = _block(manager, kind, dtype, config, debug, device=device)
    counter = CompileCounterWithBackend(backend) if backend else None
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        results = _run_steps(block, ref, steps, dtype, config.hidden, device, counter)
    return results, counter.frame_count if counter else 0


def _run_steps(block, ref, steps, dtype, hidden: int, device: str, counter) -> list:
    """``block`` on each step's tokens, compiled under ``counter`` (a Dynamo compile counter;
    the token dimension unbacked) or eager (None): per step ``(out, reference rows)``."""
    rank = dist.get_rank()
    fn = block
    if counter:
        torch._dynamo.reset()
        fn = torch.compile(block, backend=counter, fullgraph=True)
    results = []
    for step, counts in enumerate(steps):
        xs = [x.to(device) for x in tokens(counts, dtype, step, hidden)]
        x = mark_token_dim(xs[rank].clone()) if counter else xs[rank]
        results.append((fn(x), _own(ref(torch.cat(xs)), counts, rank)))
    return results


def run_flipped(manager: str, kind: str, counts: list[int], backend: str | None = None):
    """A manager whose ``output_is_reduced`` is inverted (same token count on every rank, so the
    extra all_reduce of a flipped reducing manager is well-formed).

    Returns this rank's (output without debug, reference rows, the error debug mode raised).
    """
    rank = dist.get_rank()
    xs = tokens(counts, torch.float32)
    outputs = []
    for debug in (False, True):
        block, ref = _block(manager, kind, torch.float32, CONFIG, debug, flip=True)
        if backend:
            torch._dynamo.reset()
            block = torch.compile(block, backend=backend, fullgraph=True)
        try:
            with torch._dynamo.config.patch(capture_scalar_outputs=True):
                outputs.append(block(xs[rank]))
        except (ReduceContractError, RuntimeError) as e:
            outputs.append(f"{type(e).__name__}: {e}")
    return outputs[0], _own(ref(torch.cat(xs)), counts, rank), outputs[1]


def run_block_on_accelerator(manager: str, kind: str, dtype: torch.dtype, steps: list[list[int]]):
    """The block on this rank's accelerator, compiled with Inductor."""
    device = torch.accelerator.current_accelerator().type
    return run_block(manager, kind, dtype, steps, "inductor", True, CONFIG, device)


def bad_inputs():
    """The error of each misuse (runs on every rank of a 4-rank world)."""
    from compile_ops.moe import make_manager

    weights = MoEWeights.random(CONFIG)
    six = MoEConfig(hidden=16, intermediate=32, experts=6, top_k=2)
    odd = MoEConfig(hidden=16, intermediate=30, experts=8, top_k=2)
    wide = MoEConfig(hidden=24, intermediate=32, experts=8, top_k=2)
    block = ShardedMoEBlock(CONFIG, weights, Layout.ep(None))
    layout(
        "tp_ep"
    )  # the grid's groups, moe_tp and moe_ep, exist from here on (whatever ran before)
    return {
        "experts": raises(ShardedMoEBlock, six, MoEWeights.random(six), Layout.ep(None)),
        "intermediate": raises(ShardedMoEBlock, odd, MoEWeights.random(odd), Layout.tp(None)),
        "weights_hidden": raises(ShardedMoEBlock, CONFIG, MoEWeights.random(wide), layout("tp")),
        "x_hidden": raises(block, torch.randn(3, 24)),
        "x_dtype": raises(block, torch.randn(3, 16, dtype=torch.bfloat16)),
        "manager": raises(make_manager, "deepep", Layout.ep(None), 8),
        "device": raises(make_manager, "agrs", Layout.ep(None), 8, "meta"),
        "other_layout": raises(
            ShardedMoEBlock, CONFIG, weights, Layout.tp(None), make_manager("agrs", layout("ep"), 8)
        ),
        "grid": raises(Layout.tp_ep, None, "moe_ep", "moe_tp"),
    }


# ---- capacity mode -----------------------------------------------------------------------------

CAPACITY = 8  # max_tokens_per_rank of the capacity tests


def capacity_block(
    manager, kind, dtype, per_peer=None, debug=True, device="cpu", flip=False, config=CONFIG
):
    """A capacity-mode block (max_tokens_per_rank=CAPACITY) and the reference."""
    weights = MoEWeights.random(config, seed=7, dtype=dtype, device=device)
    lay = layout(kind)
    if flip:
        capacity = Capacity.of(manager, CAPACITY, per_peer)
        manager = flipped(manager, CAPACITY_MANAGERS)(lay, config.experts, device, capacity)
    block = ShardedMoEBlock(
        config, weights, lay, manager, debug, max_tokens_per_rank=CAPACITY,
        max_tokens_per_peer=per_peer,
    )  # fmt: skip
    return block, MoEBlock(config, weights)


class GraphRecorder:
    """A torch.compile backend that runs AOTAutograd (as aot_eager does) and keeps the graphs
    it saw: Dynamo's (torch-level) and the ATen graph the compiler would get."""

    def __init__(self) -> None:
        self.dynamo: list[torch.fx.GraphModule] = []
        self.aten: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.common import aot_autograd

        self.dynamo.append(gm)

        def keep(aten_gm, _inputs):
            self.aten.append(aten_gm)
            return aten_gm

        return aot_autograd(fw_compiler=keep)(gm, example_inputs)

    def host_reads(self) -> list[str]:
        """Every node that reads a device value on the host or makes a size from data:
        ``.tolist()``/``.item()`` in Dynamo's graph; ``_local_scalar_dense``/``item`` or any
        node binding a new unbacked size (nonzero, ...) in the ATen graph."""
        found = []
        for gm in self.dynamo:
            for node in gm.graph.nodes:
                if node.op == "call_method" and node.target in ("tolist", "item", "cpu", "numpy"):
                    found.append(f"dynamo: {node.format_node()}")
        aten = torch.ops.aten
        for gm in self.aten:
            for node in gm.graph.nodes:
                if node.target in (aten._local_scalar_dense.default, aten.item.default):
                    found.append(f"aten: {node.format_node()}")
                elif node.meta.get("unbacked_bindings"):
                    found.append(f"aten (data-dependent size): {node.format_node()}")
        return found

    def collectives(self) -> list[tuple[str, tuple, tuple]]:
        """``(op, input shape, split-size lists)`` of every compile_ops collective in the ATen
        graphs; a symbolic size shows as its name."""
        found = []
        for gm in self.aten:
            for node in gm.graph.nodes:
                schema = getattr(node.target, "_schema", None)
                if schema is None or not schema.name.startswith("compile_ops::"):
                    continue
                shape = tuple(
                    s if isinstance(s, int) else str(s) for s in node.args[0].meta["val"].shape
                )
                splits = tuple(tuple(a) for a in node.args[1:] if isinstance(a, (list, tuple)))
                found.append((schema.name.split("::")[1], shape, splits))
        return found


def run_capacity(
    manager: str,
    kind: str,
    dtype: torch.dtype,
    steps: list[list[int]],
    backend: str | None = None,
    per_peer: int | None = None,
    debug: bool = True,
    device: str = "cpu",
):
    """The capacity-mode block on ``steps`` (per-rank counts per call), eager or compiled
    (``backend``: a torch.compile backend name, or "record": aot_eager keeping the graphs).

    Returns per step ``(out, reference rows)``, the compiled frame count, the host reads found
    in the graphs (``record`` only) and the rows the all_to_all manager dropped.
    """
    from torch._dynamo.testing import CompileCounterWithBackend

    block, ref = capacity_block(manager, kind, dtype, per_peer, debug, device)
    recorder = GraphRecorder() if backend == "record" else None
    counter = CompileCounterWithBackend(recorder or backend) if backend else None
    results = _run_steps(block, ref, steps, dtype, CONFIG.hidden, device, counter)
    dropped = getattr(block.manager, "dropped", torch.zeros(())).item()
    return {
        "steps": results,
        "frames": counter.frame_count if counter else 0,
        "host_reads": recorder.host_reads() if recorder else None,
        "collectives": recorder.collectives() if recorder else None,
        "dropped": dropped,
    }


def dynamic_host_reads(manager: str, kind: str):
    """The same graph check on a dynamic-mode block: it must find the count reads."""
    recorder = GraphRecorder()
    block, _ = _block(manager, kind, torch.float32, CONFIG, debug=False)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend=recorder, fullgraph=True)
    xs = tokens([3] * dist.get_world_size(), torch.float32)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled(mark_token_dim(xs[dist.get_rank()].clone()))
    return recorder.host_reads()


def capacity_cell(manager: str, kind: str, steps: list[list[int]]):
    """One manager x layout in capacity mode: eager and compiled (graphs recorded), float32 and
    bfloat16; ``{(dtype, "eager" | "compiled"): run_capacity(...)}``."""
    return {
        (dtype, mode): run_capacity(manager, kind, dtype, steps, backend)
        for dtype in (torch.float32, torch.bfloat16)
        for mode, backend in (("eager", None), ("compiled", "record"))
    }


class RecordingComm:
    """Stands in for a manager's GroupComm: records each collective it is asked for (method,
    input shape, dtype), then runs it."""

    def __init__(self, comm) -> None:
        self._comm = comm
        self.calls: list[tuple[str, tuple, str]] = []

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if not callable(attr):
            return attr

        def call(x, *args):
            self.calls.append((name, tuple(x.shape), str(x.dtype)))
            return attr(x, *args)

        return call


def over_capacity(manager: str, counts: list[int], per_peer: int | None = None):
    """Eager: the error for this rank's ``counts[rank]`` tokens, and the collectives run."""
    block, _ = capacity_block(manager, "ep", torch.float32, per_peer)
    recording = RecordingComm(block.manager.comm)
    block.manager.comm = recording
    error = raises(block, tokens(counts, torch.float32)[dist.get_rank()])
    return error, recording.calls


def over_capacity_compiled(manager: str):
    """Compiled (one token dim for all counts): a valid call, then CAPACITY + 1 tokens."""
    block, _ = capacity_block(manager, "ep", torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    n, rank = dist.get_world_size(), dist.get_rank()
    compiled(mark_token_dim(tokens([3] * n, torch.float32)[rank]))
    return raises(compiled, mark_token_dim(tokens([CAPACITY + 1] * n, torch.float32)[rank]))


def dropped_rows(per_peer: int, steps: list[list[int]]):
    """The all_to_all manager (EP) with ``max_tokens_per_peer``, compiled: per step this rank's
    output, the reference, which of its tokens lost a send (from the routing), how many sends
    it lost and the manager's ``dropped`` counter after the step."""
    from compile_ops.moe import compute

    rank = dist.get_rank()
    block, ref = capacity_block("all_to_all", "ep", torch.float32, per_peer, debug=False)
    owners = block.manager.owners
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    results = []
    for step, counts in enumerate(steps):
        xs = tokens(counts, torch.float32, step)
        out = compiled(mark_token_dim(xs[rank].clone()))
        _, ids = compute.route(xs[rank], block.router, CONFIG)
        wanted = owners[ids].any(1)
        lost = wanted & (wanted.cumsum(0) > per_peer)  # [T, n]: sends past the buffer
        want = _own(ref(torch.cat(xs)), counts, rank)
        results.append((out, want, lost.any(1), int(lost.sum()), int(block.manager.dropped)))
    return results


def run_capacity_flipped(manager: str, kind: str, counts: list[int]):
    """Capacity mode with ``output_is_reduced`` inverted: (output without debug, reference
    rows, the error debug mode raised)."""
    rank = dist.get_rank()
    xs = tokens(counts, torch.float32)
    outputs = []
    for debug in (False, True):
        block, ref = capacity_block(manager, kind, torch.float32, debug=debug, flip=True)
        try:
            outputs.append(block(xs[rank]))
        except ReduceContractError as e:
            outputs.append(f"{type(e).__name__}: {e}")
    return outputs[0], _own(ref(torch.cat(xs)), counts, rank), outputs[1]


def capacity_argument_errors():
    """The error of each misuse of the capacity arguments (every rank of a 2-rank world)."""
    from compile_ops.moe import make_manager

    ep, weights, rank = Layout.ep(None), MoEWeights.random(CONFIG), dist.get_rank()
    agrs8 = make_manager("agrs", ep, 8, max_tokens_per_rank=8)
    return {
        "zero": raises(make_manager, "agrs", ep, 8, "cpu", max_tokens_per_rank=0),
        "float": raises(make_manager, "naive", ep, 8, "cpu", max_tokens_per_rank=8.0),
        "peer_alone": raises(make_manager, "all_to_all", ep, 8, "cpu", max_tokens_per_peer=4),
        "peer_for_agrs": raises(
            make_manager, "agrs", ep, 8, "cpu", max_tokens_per_rank=8, max_tokens_per_peer=4
        ),
        "peer_above_rank": raises(
            make_manager, "all_to_all", ep, 8, "cpu", max_tokens_per_rank=4, max_tokens_per_peer=8
        ),
        "ranks_disagree": raises(make_manager, "naive", ep, 8, "cpu", max_tokens_per_rank=8 + rank),
        "block_vs_manager": raises(
            ShardedMoEBlock, CONFIG, weights, ep, agrs8, max_tokens_per_rank=4
        ),
        "one_shot_alone": raises(make_manager, "all_to_all", ep, 8, "cpu", one_shot=True),
        "one_shot_for_agrs": raises(
            make_manager, "agrs", ep, 8, "cpu", max_tokens_per_rank=8, one_shot=False
        ),
        "one_shot_on_gloo": raises(
            make_manager, "all_to_all", ep, 8, "cpu", max_tokens_per_rank=8, one_shot=True
        ),
        "one_shot_default_off_gloo": not make_manager(
            "all_to_all", ep, 8, "cpu", max_tokens_per_rank=8
        ).one_shot,
        "default_is_dynamic": ShardedMoEBlock(CONFIG, weights, ep).manager.capacity is None,
        "given_manager_kept": ShardedMoEBlock(CONFIG, weights, ep, agrs8).manager is agrs8,
    }


def benchmark_script(name: str):
    """A script of benchmarks/ (not a package) as a module, loaded once per process."""
    import importlib.util
    import pathlib
    import sys

    if name not in sys.modules:
        path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def run_benchmark(name: str, function: str, *args):
    """``function(*args)`` of benchmarks/<name>.py, in this worker."""
    return getattr(benchmark_script(name), function)(*args)


def run_interpreted(helper: str) -> str:
    """Run tests/helpers/<helper>.py as a script under Triton's interpreter (kernels on the CPU,
    no GPU) and return its output; fails the calling test if the script exits non-zero."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests")])
    script = root / "tests" / "helpers" / f"{helper}.py"
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
