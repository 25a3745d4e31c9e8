"""Gradients of the collectives: exact where the adjoint is unambiguous, refused elsewhere."""

import pytest
import torch
from helpers import autograd_workers as aw
from helpers import workers

GRADIENT_OPS = [
    "all_gather",
    "all_gatherv",
    "all_gatherv_dim1",
    "reduce_scatter",
    "reduce_scatter_avg",
    "reduce_scatterv",
    "reduce_scatterv_avg",
    "all_to_all",
    "broadcast",
    "broadcast_backward",
    "pair",
]


@pytest.mark.parametrize("n", [2, 3])
def test_gradcheck_over_the_whole_world(world, n):
    for rank, results in enumerate(world(n).run(aw.gradcheck_ops, GRADIENT_OPS, timeout=120)):
        failed = {name: got for name, got in results.items() if got is not None}
        assert not failed, f"rank {rank}: {failed}"


@pytest.mark.parametrize("n", [2, 3])
def test_conjugate_pairs_give_a_tensor_parallel_mlp_its_single_process_gradient(world, n):
    for outcome, grad, expected in world(n).run(aw.tensor_parallel_mlp):
        assert outcome is None, outcome
        torch.testing.assert_close(grad, expected)


# Inductor gets the programs whose graphs hold only collectives (no kernels to build); the
# gradients themselves are formed by AOTAutograd, which aot_eager runs for every op.
INDUCTOR_OPS = [
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "broadcast",
    "copy_to_group",
    "reduce_from_group",
]


@pytest.mark.parametrize(
    "n, backend, names",
    [(2, "aot_eager", None), (3, "aot_eager", None), (2, "inductor", INDUCTOR_OPS)],
    ids=["w2-aot_eager", "w3-aot_eager", "w2-inductor"],
)
def test_compiled_gradients_equal_eager(world, n, backend, names):
    for rank, (eager, compiled) in enumerate(
        world(n).run(aw.eager_and_compiled_grads, backend, names)
    ):
        for name, grad in eager.items():
            assert compiled[name] is not None, f"rank {rank}: {name} has no compiled gradient"
            torch.testing.assert_close(compiled[name], grad, msg=f"rank {rank}: {name}")


def test_backward_graphs_do_not_depend_on_the_tracing_rank(world):
    (code0, xg0, yg0), (code1, xg1, yg1), (_, xg2, yg2) = world(3).run(aw.backward_graph_code)
    assert code0 == code1
    assert xg0.tolist() == xg1.tolist() == [[3.0] * 3] * 2 and xg2.tolist() == [[3.0] * 3]
    assert yg0.tolist() == yg1.tolist() == [0.0] * 3 and yg2.tolist() == [3.0] * 3


def test_complex_all_gather_has_a_gradient(world):
    for grad, expected in world(2).run(aw.complex_all_gather_grad):
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_reductions_refuse_a_gradient_on_every_rank(world, compiled):
    pool = world(2)
    for outcomes in pool.run(aw.refusals, compiled):
        for name, got in outcomes.items():
            assert got is not None, f"{name}: nothing was raised"
            op = name
            if name.endswith(("max", "min", "product")):
                op, reduce_op = name.rsplit("_", 1)
                assert f"op='{reduce_op}' has no gradient" in got[1], (name, got)
            else:
                assert "reduce_from_group" in got[1] and "copy_to_group" in got[1], (name, got)
            assert f"compile_ops.{op}: x requires grad" in got[1], (name, got)
            assert got[0] == ("TorchRuntimeError" if compiled else "GradientError"), got
    assert pool.run(workers.healthy) == [4.0, 4.0]


def test_refusal_raises_before_any_communication(world):
    pool = world(2)
    got = pool.run(aw.refusal_on_one_rank, timeout=60)[0]
    assert got is not None and got[0] == "GradientError", got
    assert pool.run(workers.healthy) == [4.0, 4.0]


def test_refusing_ops_run_without_a_gradient(world):
    a, b, c = world(2).run(aw.no_grad_paths)[0]
    assert a == [2.0] * 4 and b == [1.0] * 4 and c == [1.0, 1.0]


def test_twins_refuse_a_gradient_and_record_their_writes(world):
    pool = world(2)
    for stale, refused, refused_out in pool.run(aw.twins, timeout=60):
        assert stale is not None and "modified by an inplace operation" in stale[1], stale
        assert refused[0] == "GradientError" and "compile_ops.all_reduce_: x requires" in refused[1]
        assert refused_out[0] == "GradientError" and "all_gather.out: x requires" in refused_out[1]
    assert pool.run(workers.healthy) == [4.0, 4.0]


def test_opcheck_passes_with_gradients(world):
    for rank, results in enumerate(world(2).run(aw.opcheck_with_gradients, timeout=120)):
        failed = {name: got for name, got in results.items() if got is not None}
        assert not failed, f"rank {rank}: {failed}"
