"""Graph capture: clear refusals everywhere, capture and replay of a compiled TP MLP on a GPU."""

import pytest
import torch
from conftest import gpu_worlds
from helpers.capture_workers import (
    gloo_refusals,
    moe_capacity_dropped,
    moe_capacity_replays,
    moe_replay_matches_eager,
    pool_bytes,
    replay_matches_eager,
    stream_and_status,
)
from helpers.moe_workers import CONFIG

from compile_ops.graph_capture import (
    CapturedGraph,
    GraphCaptureError,
    capture,
    graph_backend,
    graph_capture,
    is_capturing,
)
from compile_ops.moe import CAPACITY_MANAGERS

HIDDEN, FFN = 1024, 4096
SIZES = [1, 2, 4, 8]
ACCELERATOR = torch.accelerator.current_accelerator(check_available=True)


# --- CPU: refusals and the replay contract ------------------------------------------------------


def enter(device=None):
    with graph_capture(device):
        pass


@pytest.mark.skipif(ACCELERATOR is not None, reason="an accelerator is available here")
def test_no_accelerator_names_cpu():
    with pytest.raises(GraphCaptureError, match=r"no accelerator is available.*'cpu'"):
        enter()
    with pytest.raises(GraphCaptureError, match="'cpu'"):
        capture(torch.neg, torch.ones(2))
    with pytest.raises(GraphCaptureError, match=r"device=0 .* 'cpu'"):
        enter(0)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_device_without_graphs_is_named(device):
    with pytest.raises(GraphCaptureError, match=f"device '{device}' has no graphs"):
        enter(device)


def test_graph_types_are_looked_up_per_device():
    assert graph_backend("cuda").name == "torch.cuda.CUDAGraph"
    # torch 2.11 and 2.14 both define torch.xpu.XPUGraph (usable where torch is built with XPU).
    assert graph_backend("xpu:0").name == "torch.xpu.XPUGraph"
    for device in ("cpu", "mps", "meta"):
        with pytest.raises(GraphCaptureError, match=f"no graph type for device '{device}'"):
            graph_backend(device)


def test_nothing_is_capturing_on_the_cpu():
    assert is_capturing("cpu") is False
    if ACCELERATOR is None:
        assert is_capturing() is False


def test_gloo_groups_are_refused(world):
    (result,) = world(1).run(gloo_refusals)
    refused = {case for case, got in result.items() if got is not None}
    assert refused >= {"default", "cuda_gloo", "cpu_only", "xpu", "context"}, result
    for case in ("default", "cuda_gloo"):
        kind, message = result[case]
        assert kind == "GraphCaptureError"
        assert "runs cuda collectives on gloo, which cannot be captured" in message
        assert "capturable backends for cuda: ['nccl']" in message
    assert "the default group" in result["default"][1]
    assert result["cpu_only"][0] == "GraphCaptureError"
    assert "has no backend for cuda tensors (it serves ['cpu'])" in result["cpu_only"][1]
    assert "has no backend for xpu tensors" in result["xpu"][1]
    # graph_capture checks its groups once it knows the device: gloo where a GPU exists.
    expected = "on gloo, which cannot be captured" if ACCELERATOR is not None else "'cpu'"
    assert result["context"][0] == "GraphCaptureError" and expected in result["context"][1]
    assert result["capturing"] is False


class HostGraph:
    """Stands in for a device graph on the CPU: replay reruns the function into its output."""

    def __init__(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.output = fn(*args, **kwargs)

    def replay(self):
        self.output.copy_(self.fn(*self.args, **self.kwargs))


def test_replay_copies_inputs_into_the_static_buffers_and_checks_them():
    def scaled(x, *, scale):
        return x * scale

    static = torch.randn(3, 4)
    host = HostGraph(scaled, (static,), {"scale": 2.0})
    graph = CapturedGraph(host, (static,), {"scale": 2.0}, host.output)

    new = torch.randn(3, 4)
    out = graph(new, scale=2.0)
    assert out is host.output  # the static output, overwritten by the next replay
    assert torch.equal(static, new) and torch.equal(out, new * 2)
    static.copy_(torch.randn(3, 4))
    assert torch.equal(graph.replay(), static * 2)  # inputs written straight into the buffer

    with pytest.raises(ValueError, match=r"args\[0\] has shape \(2, 4\).*captured with \(3, 4\)"):
        graph(torch.randn(2, 4), scale=2.0)
    with pytest.raises(ValueError, match=r"args\[0\] .* dtype torch.float64"):
        graph(torch.randn(3, 4, dtype=torch.float64), scale=2.0)
    with pytest.raises(ValueError, match=r"kwargs\['scale'\] was 2.0 at capture, got 3.0"):
        graph(new, scale=3.0)
    with pytest.raises(ValueError, match="captured with 1 positional arguments"):
        graph(new, new, scale=2.0)


def test_replay_of_plain_tensor_arguments_checks_them_too():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    host = HostGraph(torch.add, (a, b), {})
    graph = CapturedGraph(host, (a, b), {}, host.output)
    new_a, new_b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(graph(new_a, new_b), new_a + new_b)
    with pytest.raises(ValueError, match=r"args\[1\] has shape \(3, 2\)"):
        graph(new_a, torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"args\[0\] was a tensor at capture, got <class 'float'>"):
        graph(1.0, new_b)
    with pytest.raises(ValueError, match="captured with 2 positional arguments"):
        graph(new_a)


# --- GPU: capture and replay over NCCL ----------------------------------------------------------


@pytest.mark.gpu
def test_capture_runs_on_a_side_stream_it_hands_out(world):
    (result,) = world(1, "nccl").run(stream_and_status)
    assert result["side_stream"] and result["inside"] and result["restored"]
    assert result["seen"] == [False, True]  # warm-up runs eagerly, then one recorded call
    assert result["outside"] is False
    assert result["device"].startswith(ACCELERATOR.type)
    assert result["late"][0] == "GraphCaptureError" and "block ended" in result["late"][1]
    torch.testing.assert_close(result["out"], result["expected"])


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", gpu_worlds(1, 2))
def test_compiled_tp_mlp_replays_match_eager(world, world_size):
    rounds = 5
    per_rank = world(world_size, "nccl").run(replay_matches_eager, HIDDEN, FFN, SIZES, rounds)
    for result in per_rank:
        assert len(result["replays"]) == rounds * len(SIZES)
        for n, replayed, eager, reference in result["replays"]:
            assert replayed.shape == (n, HIDDEN)
            torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(eager, reference, rtol=1e-4, atol=1e-4)
        assert result["pools"] == 1, "the sizes were not captured into one memory pool"


@pytest.mark.gpu
def test_sizes_share_one_pool(world):
    ((shared, separate),) = world(1, "nccl").run(pool_bytes, HIDDEN, FFN, SIZES)
    assert 0 < shared < separate, f"shared pool {shared} B, a pool per size {separate} B"


@pytest.mark.gpu
@pytest.mark.parametrize("manager", ["naive", "agrs"])
def test_compiled_moe_block_replays_match_eager(world, manager):
    rounds = 3
    (replays,) = world(1, "nccl").run(moe_replay_matches_eager, manager, SIZES, rounds)
    assert len(replays) == rounds * len(SIZES)
    for n, replayed, eager, reference in replays:
        assert replayed.shape == (n, CONFIG.hidden) and replayed.dtype == torch.bfloat16
        # The same kernels as the compiled call, so equal to it; eager rounds differently (bf16).
        torch.testing.assert_close(replayed, eager, rtol=2e-2, atol=5e-2)
        torch.testing.assert_close(replayed, reference, rtol=2e-2, atol=5e-2)


def _capacity_cells():
    for world_size, kinds in ((1, ["tp", "ep"]), (2, ["tp", "ep"]), (4, ["tp", "ep", "tp_ep"])):
        (world_param,) = gpu_worlds(world_size)
        for kind in kinds:
            for manager in CAPACITY_MANAGERS:
                yield pytest.param(
                    world_size, kind, manager, marks=world_param.marks,
                    id=f"w{world_size}-{kind}-{manager}",
                )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize(("world_size", "kind", "manager"), list(_capacity_cells()))
def test_compiled_capacity_moe_block_replays_match_reference(world, world_size, kind, manager):
    """Capacity mode reads nothing back to the host, so the whole compiled block captures at
    any world size, for every manager; the ranks replay different token counts in one step."""
    rounds = 3
    per_rank = world(world_size, "nccl").run(moe_capacity_replays, manager, kind, SIZES, rounds)
    for rank, replays in enumerate(per_rank):
        assert len(replays) == rounds * len(SIZES)
        for n, replayed, eager, reference in replays:
            where = f"rank {rank}, {n} tokens"
            assert replayed.shape == (n, CONFIG.hidden) and replayed.dtype == torch.bfloat16
            torch.testing.assert_close(replayed, reference, rtol=2e-2, atol=5e-2, msg=where)
            torch.testing.assert_close(replayed, eager, rtol=2e-2, atol=5e-2, msg=where)


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", gpu_worlds(2))
def test_replayed_all_to_all_counts_rows_past_max_tokens_per_peer(world, world_size):
    """A replay cannot raise: rows past a tight per-peer buffer are counted on the device, the
    counter accumulating over replays; exactly the sends the routing put past the buffers."""
    per_rank = world(world_size, "nccl").run(moe_capacity_dropped, max(SIZES), 1, 3)
    for dropped, lost in per_rank:
        assert dropped == lost > 0
