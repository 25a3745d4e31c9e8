"""The sharded MoE block against the single-device reference: every manager x layout on gloo
worlds 2 and 4, eager and compiled, float32 and bfloat16; the reduce contract; bad input."""

import ast
import pathlib

import pytest
import torch
from conftest import gpu_worlds
from helpers.moe_workers import (
    LAYOUTS,
    SIGMOID,
    TOL,
    bad_inputs,
    run_block,
    run_block_on_accelerator,
    run_flipped,
)

from compile_ops import moe
from compile_ops.moe import MANAGERS, All2AllManager, MoEConfig

# Uneven counts per rank, with a rank that has no token at all.
EAGER_STEPS = {2: [[3, 5], [1, 1], [0, 4], [17, 2]], 4: [[3, 5, 1, 2], [1, 1, 1, 1], [0, 4, 2, 0]]}
# One compiled graph must serve all of these: 1 to 512 tokens, uneven across ranks.
COMPILED_STEPS = {
    2: [[1, 1], [2, 9], [512, 1], [37, 100], [1, 512]],
    4: [[1, 1, 1, 1], [512, 3, 1, 70], [2, 9, 64, 1]],
}


def _cells():
    for world, kind in LAYOUTS:
        for manager in MANAGERS:
            yield pytest.param(world, kind, manager, id=f"w{world}-{kind}-{manager}")


def _assert_matches(results, dtype, compare_eager=None):
    for rank, (steps, _) in enumerate(results):
        for step, (out, want) in enumerate(steps):
            assert out.dtype == dtype
            torch.testing.assert_close(out, want, **TOL[dtype], msg=f"rank {rank} step {step}")
            if compare_eager is not None:
                eager = compare_eager[rank][0][step][0]
                torch.testing.assert_close(out, eager, **TOL[dtype], msg=f"vs eager: {rank} {step}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("world_size", "kind", "manager"), list(_cells()))
def test_eager_matches_reference(world, world_size, kind, manager, dtype):
    results = world(world_size).run(run_block, manager, kind, dtype, EAGER_STEPS[world_size])
    _assert_matches(results, dtype)


@pytest.mark.parametrize(("world_size", "kind", "manager"), list(_cells()))
def test_sigmoid_scoring_without_renormalisation(world, world_size, kind, manager):
    steps = EAGER_STEPS[world_size][:2]
    results = world(world_size).run(
        run_block, manager, kind, torch.float32, steps, None, True, SIGMOID
    )
    _assert_matches(results, torch.float32)


def _compiled_cells():
    # Every manager x layout compiled (Dynamo, AOTAutograd, fakes, unbacked sizes: the aot_eager
    # backend), in float32 and in bfloat16.
    for param in _cells():
        for dtype in (torch.float32, torch.bfloat16):
            yield pytest.param(*param.values, dtype, id=f"{param.id}-{str(dtype)[6:]}")


@pytest.mark.parametrize(("world_size", "kind", "manager", "dtype"), list(_compiled_cells()))
def test_compiled_one_graph_for_every_token_count(world, world_size, kind, manager, dtype):
    """fullgraph=True (no graph break) and one frame (no recompile) over 1..512 tokens."""
    steps = COMPILED_STEPS[world_size]
    pool = world(world_size)
    compiled = pool.run(run_block, manager, kind, dtype, steps, "aot_eager")
    eager = pool.run(run_block, manager, kind, dtype, steps)
    assert [frames for _, frames in compiled] == [1] * world_size
    _assert_matches(compiled, dtype, compare_eager=eager)


@pytest.mark.parametrize(
    ("world_size", "kind", "manager", "dtype"),
    [
        (2, "ep", "naive", torch.float32),
        (2, "tp", "agrs", torch.bfloat16),
        (2, "ep", "all_to_all", torch.float32),
    ],
    ids=str,
)
def test_inductor(world, world_size, kind, manager, dtype):
    """Each manager once through Inductor's code generation (C++ compiles cost ~10 s each)."""
    steps = COMPILED_STEPS[world_size][:3]
    results = world(world_size).run(run_block, manager, kind, dtype, steps, "inductor")
    assert [frames for _, frames in results] == [1] * world_size
    _assert_matches(results, dtype)


# ---- the reduce contract -------------------------------------------------------------------


def test_managers_state_whether_combine_reduces():
    assert {name: m.output_is_reduced for name, m in MANAGERS.items()} == {
        "naive": False,
        "agrs": True,
        "all_to_all": True,
    }
    with pytest.raises(TypeError, match="must state output_is_reduced"):

        class Silent(All2AllManager):
            name = "silent"


@pytest.mark.parametrize(("world_size", "kind", "manager"), list(_cells()))
def test_flipped_flag_is_caught(world, world_size, kind, manager):
    """With output_is_reduced inverted the block is wrong, and debug mode says how."""
    n = world_size
    for rank, (out, want, error) in enumerate(world(n).run(run_flipped, manager, kind, [6] * n)):
        assert not torch.allclose(out, want, **TOL[torch.float32]), f"rank {rank}"
        assert error.startswith("ReduceContractError"), error
        reducing = MANAGERS[manager].output_is_reduced
        assert (f"about the group size ({n}): reduced twice" if reducing else "is missing") in error


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_flipped_flag_is_caught_when_compiled(world, backend):
    for out, want, error in world(2).run(run_flipped, "agrs", "ep", [5, 5], backend):
        assert not torch.allclose(out, want)
        assert "not reduced exactly once" in error


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_every_collective_names_its_group():
    """MoE code reaches collectives only through GroupComm (``*.comm.<op>``), and GroupComm
    (comm.py) passes group= on every call: a collective that silently runs on the default group cannot come back."""
    package = pathlib.Path(moe.__file__).parent
    collectives = {
        "all_reduce", "all_gather", "all_gatherv", "reduce_scatter", "reduce_scatterv",
        "all_to_all", "broadcast", "all_gather_into_tensor", "reduce_scatter_tensor",
        "all_to_all_single", "all_gather_object", "barrier",
    }  # fmt: skip
    calls = 0
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name.rsplit(".", 1)[-1] not in collectives:
                continue
            calls += 1
            where = f"{path.name}:{node.lineno}: {name}"
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if owner.endswith("comm") or (path.name == "comm.py" and owner == "self"):
                continue  # a GroupComm method: the group is bound
            assert owner == "compile_ops" and path.name == "comm.py", f"{where}: not via GroupComm"
            assert any(k.arg == "group" for k in node.keywords), f"{where}: no group="
    assert calls > 10  # the walk does see the managers' calls


# ---- bad input ------------------------------------------------------------------------------


def test_top_k_larger_than_experts():
    with pytest.raises(ValueError, match="top_k=9 is larger than experts=8"):
        MoEConfig(hidden=16, intermediate=32, experts=8, top_k=9)


def test_bad_input_raises_clear_errors(world):
    errors = world(4).run(bad_inputs)[0]
    expected = {
        "experts": "experts=6 is not divisible by the EP size 4",
        "intermediate": "intermediate=30 is not divisible by the TP size 4",
        "weights_hidden": "router has shape (8, 24) but the config (hidden=16",
        "x_hidden": "x has shape (3, 24) but the block takes [tokens, hidden=16]",
        "x_dtype": "x.dtype=torch.bfloat16 but the block's weights are torch.float32",
        "manager": "unknown manager 'deepep'; choose one of ['agrs', 'all_to_all', 'naive']",
        "device": "the weights are on meta but group",
        "other_layout": "the manager was built for layout ep",
        "grid": "tp holds group ranks [0, 2] but rank 0 of a 2x2 (ep x tp) grid needs [0, 1]",
    }
    for what, text in expected.items():
        assert errors[what] is not None, f"{what}: no error"
        assert text in errors[what][1], f"{what}: {errors[what]}"


# ---- GPU: NCCL, one GPU per rank (world 1; world 2 where two GPUs are present) ----------------

GPU_STEPS = {1: [[1], [7], [512], [33]], 2: COMPILED_STEPS[2]}


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", gpu_worlds(1, 2))
@pytest.mark.parametrize("kind", ["tp", "ep"])
@pytest.mark.parametrize("manager", list(MANAGERS))
def test_gpu_nccl_compiled(world, manager, kind, world_size):
    for dtype in (torch.float32, torch.bfloat16):
        results = world(world_size, "nccl").run(
            run_block_on_accelerator, manager, kind, dtype, GPU_STEPS[world_size]
        )
        assert [frames for _, frames in results] == [1] * world_size, "graph breaks or recompiles"
        _assert_matches(results, dtype)
