"""Grouped expert compute: every experts_impl against the expert-by-expert reference, only the
routed pairs computed, padding rows contributing nothing, one compiled graph for every row
count, and the choice of implementation. GPU tests (Triton, torch._grouped_mm, a captured
graph) skip without a GPU."""

import pytest
import torch
import torch.distributed as dist
from helpers.moe_experts_workers import run_sharded_vs_reference
from torch.fx.experimental.proxy_tensor import make_fx

from compile_ops.moe import MoEConfig, MoEWeights, compute, mark_token_dim, resolve_experts_impl
from compile_ops.moe.experts import check_experts_impl, group_pairs, local_experts

CONFIG = MoEConfig(hidden=32, intermediate=48, experts=8, top_k=2)
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 5e-2}}
CPU_IMPLS = [
    pytest.param("portable", torch.float32, id="portable-fp32"),
    pytest.param("portable", torch.bfloat16, id="portable-bf16"),
    pytest.param("grouped_mm", torch.bfloat16, id="grouped_mm-bf16"),
]
GPU_IMPLS = [
    pytest.param("triton", torch.float32, id="triton-fp32"),
    pytest.param("triton", torch.bfloat16, id="triton-bf16"),
    pytest.param("grouped_mm", torch.bfloat16, id="grouped_mm-bf16"),
    pytest.param("portable", torch.bfloat16, id="portable-bf16"),
]
# (rows, first local expert, local experts, padding rows): every expert local; an EP slice; no
# rows; padding rows (id -1 or past the last expert, weight 0, NaN activations); 100 rows per
# expert (the Triton kernels' tile for many rows).
CASES = [(37, 0, 8, 0), (37, 2, 4, 0), (0, 0, 8, 0), (23, 4, 4, 5), (400, 0, 8, 0)]


def _case(config, rows, first, n_local, padding, dtype, device="cpu", seed=0):
    """(local_experts arguments, reference output, reference mass) for experts
    ``[first, first + n_local)``; ``seed`` draws the inputs (the weights are always the same)."""
    w = MoEWeights.random(config, 0, dtype, device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(rows, config.hidden, generator=g).to(dtype=dtype, device=device)
    weights, ids = compute.route(x, w.router, config)
    if padding:
        ids[:padding] = -1
        ids[padding - 1] = config.experts  # out of range on the other side
        weights[:padding] = 0
        x[:padding] = float("nan")
    local = (ids >= first) & (ids < first + n_local)
    want = compute.reference_experts(x, torch.where(local, ids, -1), weights, w)
    picked = slice(first, first + n_local)
    gate_up, down = compute.pack_local_experts(w.gate[picked], w.up[picked], w.down[picked])
    expert_ids = torch.arange(first, first + n_local, device=device)
    return (x, ids, weights, expert_ids, gate_up, down), want, (weights * local).sum(-1)


def _check_impl(impl, dtype, device):
    for rows, first, n_local, padding in CASES:
        args, want, want_mass = _case(CONFIG, rows, first, n_local, padding, dtype, device)
        y, mass = compute.local_experts(*args, impl)
        assert y.dtype == torch.float32 and y.shape == (rows, CONFIG.hidden)
        torch.testing.assert_close(y, want, **TOL[dtype], msg=f"{rows=} {first=} {n_local=}")
        torch.testing.assert_close(mass, want_mass)
        if padding:
            assert torch.equal(y[:padding], torch.zeros_like(y[:padding])), "padding contributed"


@pytest.mark.parametrize(("impl", "dtype"), CPU_IMPLS)
def test_matches_reference(impl, dtype):
    _check_impl(impl, dtype, "cpu")


def _largest_intermediate(impl, dtype, n_local, rows=16):
    config = MoEConfig(hidden=64, intermediate=32, experts=n_local, top_k=2)
    args, _, _ = _case(config, rows, 0, n_local, 0, dtype)

    def fn(*args):
        return local_experts(*args, impl)

    graph = make_fx(fn, tracing_mode="fake")(*args)
    return max(
        node.meta["val"].numel()
        for node in graph.graph.nodes
        if node.op == "call_function"
        and isinstance(node.meta.get("val"), torch.Tensor)
        and not getattr(node.target, "is_view", False)  # views allocate nothing (weights.T)
    )


@pytest.mark.parametrize("n_local", [1, 255, 256, 32767, 32768])
def test_sort_keys_hold_every_local_expert_and_the_unrouted_key(n_local):
    """The sort key is the local expert, or ``n_local`` for a pair routed elsewhere, in the
    narrowest integer type: at each type's edge, the last expert keeps its own group and an
    unrouted pair (a padding id, another rank's expert) lands in none."""
    first = 7
    ids = torch.tensor([[first + n_local - 1, -1], [first, first + n_local], [first - 1, first]])
    grouping = group_pairs(ids, torch.tensor(first), n_local)
    local = ids.reshape(-1) - first
    routed = ((local >= 0) & (local < n_local)).nonzero().flatten()
    assert torch.equal(grouping.valid, (local >= 0) & (local < n_local))
    assert grouping.ends.dtype == torch.int32 and grouping.ends.shape == (n_local,)
    assert grouping.ends[-1] == routed.numel() == 3
    assert torch.equal(grouping.order[:3], routed[local[routed].argsort(stable=True)])
    counts = torch.diff(grouping.ends, prepend=grouping.ends.new_zeros(1))
    assert torch.equal(counts, torch.bincount(local[routed], minlength=n_local).int())


@pytest.mark.parametrize(("impl", "dtype"), CPU_IMPLS[1:])
def test_activation_memory_grows_with_pairs_not_local_experts(impl, dtype):
    """No [rows, local experts, ...] intermediate: the largest one is the same for 8 and 64
    local experts, at most (pairs + 1 padding row) x max(2I, H) elements."""
    rows, k, two_i, hidden = 16, 2, 64, 64
    few, many = (_largest_intermediate(impl, dtype, n) for n in (8, 64))
    assert few == many <= (rows * k + 1) * max(two_i, hidden), (few, many)


# DeepSeek-V3 routing (sigmoid, score bias, grouped choice, scaling): the routing that asks the
# most of the compiler, compiled together with the experts.
GROUPED = MoEConfig(
    hidden=32, intermediate=48, experts=8, top_k=2, scoring="sigmoid", router_bias=True,
    expert_groups=4, topk_groups=2, group_score="top2_sum", routed_scaling=2.5,
)  # fmt: skip


@pytest.mark.parametrize(("impl", "dtype"), [CPU_IMPLS[0], CPU_IMPLS[2]])
def test_compiled_one_graph_for_every_row_count(impl, dtype):
    """Inductor (one C++ build each): routing and experts, unbacked rows, 0 to 64 of them."""
    _check_compiled(impl, dtype, "cpu", "inductor")


def _check_compiled(impl, dtype, device, backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    w = MoEWeights.random(GROUPED, 0, dtype, device)
    gate_up, down = compute.pack_local_experts(w.gate[2:6], w.up[2:6], w.down[2:6])
    expert_ids = torch.arange(2, 6, device=device)

    def block(x):
        weights, ids = compute.route(x, w.router, GROUPED, w.router_bias)
        return compute.local_experts(x, ids, weights, expert_ids, gate_up, down, impl)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    for rows in (1, 9, 64, 0, 3):
        x = torch.randn(rows, CONFIG.hidden).to(dtype=dtype, device=device)
        got = compiled(mark_token_dim(x.clone()))
        for out, want in zip(got, block(x), strict=True):
            torch.testing.assert_close(out, want, **TOL[dtype], msg=f"{rows=}")
    assert counter.frame_count == 1


def test_portable_op_passes_opcheck():
    a = torch.randn(10, 16)
    b = torch.randn(3, 8, 16)
    for ends in ([2, 2, 7], [0, 0, 0], [10, 10, 10]):
        ends = torch.tensor(ends, dtype=torch.int32)
        torch.library.opcheck(torch.ops.compile_ops_moe.grouped_mm, (a, b, ends))
    out = torch.ops.compile_ops_moe.grouped_mm(a, b, torch.tensor([2, 2, 7], dtype=torch.int32))
    torch.testing.assert_close(out[:2], a[:2] @ b[0].T)
    torch.testing.assert_close(out[2:7], a[2:7] @ b[2].T)
    assert torch.equal(out[7:], torch.zeros(3, 8)), "rows past the last group are zero"


def test_auto_choice_and_bad_choices_raise():
    assert resolve_experts_impl("cpu", torch.float32) == "portable"
    assert resolve_experts_impl("cpu", torch.bfloat16) == "portable"
    assert check_experts_impl("auto", "cpu", torch.bfloat16) == "portable"
    assert check_experts_impl("grouped_mm", "cpu", torch.bfloat16) == "grouped_mm"
    for impl, dtype, text in (
        ("cutlass", torch.float32, "experts_impl='cutlass' is not one of"),
        ("grouped_mm", torch.float32, "experts_impl='grouped_mm' needs bfloat16"),
        ("triton", torch.bfloat16, "experts_impl='triton' needs a CUDA device"),
    ):
        with pytest.raises(ValueError, match=text):
            check_experts_impl(impl, "cpu", dtype)


def test_sharded_block_takes_and_shows_experts_impl(world):
    for impl, want_impl in (("grouped_mm", "grouped_mm"), ("auto", "portable")):
        results = world(2).run(
            run_sharded_vs_reference, CONFIG, torch.bfloat16, [3, 0, 17], impl, None, "cpu"
        )
        for rank, (steps, resolved, _) in enumerate(results):
            assert resolved == want_impl
            for step, (out, want) in enumerate(steps):
                torch.testing.assert_close(out, want, **TOL[torch.bfloat16], msg=f"{rank} {step}")


# ---- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(("impl", "dtype"), GPU_IMPLS)
def test_gpu_matches_reference(impl, dtype):
    _check_impl(impl, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize(("impl", "dtype"), GPU_IMPLS)
def test_gpu_compiled_one_graph_for_every_row_count(impl, dtype):
    _check_compiled(impl, dtype, "cuda", "inductor")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_triton_in_a_captured_graph(dtype):
    """Captured once for 400 rows; replayed with other routings: 100 routed rows per expert
    (the many-rows tile), 25 (the few-rows tile: 300 padding rows with id -1, weight 0, NaN
    activations), none. The worst-case grid and the tile choice on the device serve them all."""
    rows = 400
    args, _, _ = _case(CONFIG, rows, 0, 8, 0, dtype, "cuda")
    static = [a.clone() for a in args[:3]]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        compute.local_experts(*static, *args[3:], "triton")  # compiles the kernels
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, mass = compute.local_experts(*static, *args[3:], "triton")
    for seed, padding in ((1, 0), (2, 300), (3, rows)):
        new, want, want_mass = _case(CONFIG, rows, 0, 8, padding, dtype, "cuda", seed)
        for buffer, value in zip(static, new[:3], strict=True):
            buffer.copy_(value)
        graph.replay()
        torch.testing.assert_close(y, want, **TOL[dtype], msg=f"{seed=}")
        torch.testing.assert_close(mass, want_mass)


@pytest.mark.gpu
def test_gpu_top_6_sum_is_one_kernel_with_a_hinted_token_dim():
    """DeepSeek's top-6 through the Triton path, compiled with ``mark_token_dim``: the weighted
    sum of a row's six outputs and its cast back are one kernel, with no float32
    ``[tokens, hidden]`` buffer between them (on torch 2.11 through the hinted_unbacked_fusion
    patch; without it Inductor stores the sum of the first five and adds the sixth in a second
    kernel)."""
    import re

    from torch._inductor.utils import run_and_get_code

    config = MoEConfig(hidden=256, intermediate=64, experts=8, top_k=6)
    w = MoEWeights.random(config, 0, torch.bfloat16, "cuda")
    gate_up, down = compute.pack_local_experts(w.gate, w.up, w.down)
    expert_ids = torch.arange(8, device="cuda")

    def block(x):
        weights, ids = compute.route(x, w.router, config)
        y, _ = compute.local_experts(x, ids, weights, expert_ids, gate_up, down, "triton")
        return y.to(x.dtype)

    x = torch.randn(96, 256, device="cuda").bfloat16()
    # run_and_get_code resets Dynamo before it compiles
    out, codes = run_and_get_code(torch.compile(block, fullgraph=True), mark_token_dim(x))
    float32_sums = re.findall(
        r"empty_strided_cuda\(\(u\d+, 256\), \(256, 1\), torch\.float32\)", codes[0]
    )
    assert float32_sums == [], float32_sums
    torch.testing.assert_close(out, block(x), **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_triton_ops_pass_opcheck():
    from compile_ops.moe import triton_grouped_gemm  # noqa: F401  (registers the ops)

    dtype, device = torch.bfloat16, "cuda"
    x = torch.randn(6, 64, dtype=dtype, device=device)
    gate_up = torch.randn(3, 2 * 32, 64, dtype=dtype, device=device)
    down = torch.randn(3, 64, 32, dtype=dtype, device=device)
    rows = torch.tensor([5, 0, 1, 1, 3, 2, 4, 0, 5, 2, 3, 4], device=device)
    ends = torch.tensor([4, 4, 12], dtype=torch.int32, device=device)  # every row in a group
    act = torch.ops.compile_ops_moe.gate_up_silu(x, rows, gate_up, ends)
    dest = torch.randperm(12, device=device)
    scale = torch.rand(12, device=device)
    torch.library.opcheck(torch.ops.compile_ops_moe.gate_up_silu, (x, rows, gate_up, ends))
    torch.library.opcheck(torch.ops.compile_ops_moe.down_scatter, (act, down, ends, dest, scale))


@pytest.mark.gpu
def test_gpu_16_bit_router_product_accumulates_in_float32_without_a_copy():
    """A bfloat16 router on CUDA multiplies in bfloat16 with a float32 result: no float32 copy
    of the tokens, and the experts and weights of the float32 product (Qwen1.5-MoE's sizes)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func)
            return func(*args, **(kwargs or {}))

    config = MoEConfig(hidden=2048, intermediate=64, experts=60, top_k=4)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(512, 2048, device="cuda", generator=g).bfloat16()
    router = (torch.randn(60, 2048, device="cuda", generator=g) / 45).bfloat16()
    with Ops() as ops:
        weights, ids = compute.route(x, router, config)
    assert torch.ops.aten.mm.dtype in ops.seen, ops.seen
    assert torch.ops.aten._to_copy.default not in ops.seen, ops.seen
    scores = torch.nn.functional.linear(x.float(), router.float()).softmax(-1)
    top = scores.topk(5, dim=-1)
    clear = top.values[:, 3] - top.values[:, 4] > 1e-5  # no near-tie for the last expert
    assert clear.float().mean() > 0.9
    assert torch.equal(ids[clear], top.indices[clear, :4])
    want = top.values[:, :4] / top.values[:, :4].sum(-1, keepdim=True)
    torch.testing.assert_close(weights[clear], want[clear], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_triton_grouping_is_the_stable_sort_eager_and_compiled():
    from helpers import group_pairs_cases

    from compile_ops.moe import triton_group_pairs as tgp

    # Compiled through a function of its own: compiling the op object compiles
    # CustomOpDef.__call__, whose recompile limit every custom op shares in one process.
    def group(*args):
        return tgp.group_pairs(*args)

    torch._dynamo.reset()
    compiled = torch.compile(group, fullgraph=True, dynamic=True)
    for run in (tgp.group_pairs, compiled):
        assert group_pairs_cases.mismatches(run, "cuda") == []
    args = group_pairs_cases.inputs(group_pairs_cases.CASES[3], "cuda")
    torch.library.opcheck(torch.ops.compile_ops_moe.group_pairs, args)


@pytest.mark.gpu
def test_gpu_triton_topk_is_torch_topk_eager_and_compiled():
    from helpers import topk_cases

    from compile_ops.moe import triton_topk

    def topk_ids(scores, k):  # compiled through a function of its own, as above
        return triton_topk.topk_ids(scores, k)

    torch._dynamo.reset()
    compiled = torch.compile(topk_ids, fullgraph=True, dynamic=True)
    for run in (triton_topk.topk_ids, compiled):
        assert topk_cases.mismatches(run, "cuda") == []
    scores, k = topk_cases.inputs(topk_cases.CASES[3], "cuda")
    torch.library.opcheck(torch.ops.compile_ops_moe.topk_ids, (scores, k))


@pytest.mark.gpu
@pytest.mark.parametrize(("impl", "dtype"), GPU_IMPLS)
def test_gpu_sharded_block_each_impl(world, impl, dtype):
    results = world(1, "nccl").run(
        run_sharded_vs_reference, CONFIG, dtype, [1, 7, 512, 33], impl, "inductor", "cuda"
    )
    for steps, resolved, frames in results:
        assert (resolved, frames) == (impl, 1)
        for step, (out, want) in enumerate(steps):
            torch.testing.assert_close(out, want, **TOL[dtype], msg=f"step {step}")


def test_triton_kernel_matches_torch_in_triton_interpreter():
    """Both roles and both 16-bit tiles on a CPU (Triton's interpreter) against float32 torch,
    around the switch between the tiles: a few-rows launch whose grid misses a tile it needs (9
    tiles for 383 rows over 4 experts) fails here, and so does a tile order that mixes up row
    and column tiles (one case is two column tiles wide in both roles)."""
    pytest.importorskip("triton")
    from helpers import grouped_gemm_cases
    from helpers.moe_workers import run_interpreted

    out = run_interpreted("grouped_gemm_cases")
    assert f"{len(grouped_gemm_cases.CASES)} cases equal" in out


def test_triton_topk_is_torch_topk_in_triton_interpreter():
    """The routing's Triton top-k on a CPU (Triton's interpreter) against a stable descending
    sort: the same ids in the same order, with ties in expert order, NaN first and rows left
    mostly at -inf by a group mask (an expert already taken is never picked again)."""
    pytest.importorskip("triton")
    from helpers import topk_cases
    from helpers.moe_workers import run_interpreted

    out = run_interpreted("topk_cases")
    assert f"{len(topk_cases.CASES)} cases equal" in out


def test_triton_topk_names_the_argument_it_refuses():
    pytest.importorskip("triton")
    from compile_ops.moe import triton_topk

    with pytest.raises(RuntimeError, match=r"topk_ids: k=9 must be between 1 and the 8 experts"):
        triton_topk.launch_topk_ids(triton_topk.topk_ids_kernel, torch.zeros(2, 8), 9)
    with pytest.raises(RuntimeError, match=r"topk_ids: scores must be \[tokens, experts\] float32"):
        triton_topk.launch_topk_ids(triton_topk.topk_ids_kernel, torch.zeros(2, 8).half(), 2)


def test_triton_grouping_is_the_stable_sort_in_triton_interpreter():
    """The Triton path's counting sort on a CPU (Triton's interpreter): at every sorted position
    the same pair, token row and weight as ``group_pairs``' stable sort, and the same group
    ends, from no pairs to many chunks. Counting a chunk's equal keys after a pair instead of
    before it, or reading a group end from the first chunk instead of the last, fails here."""
    pytest.importorskip("triton")
    from helpers import group_pairs_cases
    from helpers.moe_workers import run_interpreted

    out = run_interpreted("group_pairs_cases")
    assert f"{len(group_pairs_cases.CASES)} cases equal" in out


@pytest.mark.parametrize(
    ("ids", "weights", "n_local", "named"),
    [
        (torch.zeros(3, 2), torch.zeros(3, 2), 4, "ids"),
        (torch.zeros(6, dtype=torch.long), torch.zeros(6), 4, "ids"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 1), 4, "weights"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2), 0, "n_local"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2, device="meta"), 4, "weights"),
    ],
)
def test_triton_grouping_rejects_bad_arguments_naming_them(ids, weights, n_local, named):
    pytest.importorskip("triton")
    from compile_ops.moe import triton_group_pairs as tgp

    match = f"compile_ops_moe.group_pairs: {named} must"
    with pytest.raises(RuntimeError, match=match):  # checked before any launch
        tgp.launch_group_pairs((None, None), ids, torch.tensor(0), weights, n_local)


@pytest.mark.parametrize("persistent", [False, True], ids=["pointer_tiles", "with_persistent"])
def test_traced_triton_kernels_write_only_their_outputs(monkeypatch, persistent):
    """torch's analysis of what each traced Triton kernel of the block writes (the block traced
    as ``torch.compile`` traces it, its kernels lowered for sm_90 without a GPU) finds only the
    kernel's outputs. An input it counts as written is copied for every launch (a pointer
    handed to a helper whose result addresses a store is counted so), and an input with an
    unbacked size (the routing ids) then fails to compile; both were so before the kernels
    loaded the group ends and ids themselves. ``with_persistent`` traces the block as on a
    Hopper GPU: the many-rows product by the persistent TMA kernel, fed by the row gather."""
    pytest.importorskip("triton")
    from helpers.kernel_writes import traced_writes

    from compile_ops.moe import triton_tma_gemm as ttg

    w = MoEWeights.random(CONFIG, 0, torch.bfloat16, "cpu")
    gate_up, down = compute.pack_local_experts(w.gate[2:6], w.up[2:6], w.down[2:6])

    def block(x):
        weights, ids = compute.route(x, w.router, CONFIG)
        return local_experts(x, ids, weights, torch.arange(2, 6), gate_up, down, "triton")

    x = torch.randn(9, CONFIG.hidden, dtype=torch.bfloat16)
    torch._dynamo.decorators.mark_unbacked(x, 0)
    if persistent:
        monkeypatch.setattr(ttg, "supported", lambda device: True)
        monkeypatch.setattr(ttg, "programs", lambda device: 132)
    writes = traced_writes(block, x)
    outputs = {
        "count_kernel": {"counts_ptr"},
        "place_kernel": {"rows_ptr", "pairs_ptr", "scale_ptr", "ends_ptr"},
        "grouped_gemm_kernel": {"out_ptr"},
        "gather_rows_kernel": {"out_ptr"},
        "persistent_grouped_gemm_kernel": {"out_ptr"},
    }
    assert [kernel for kernel, _ in writes[:2]] == ["count_kernel", "place_kernel"], writes
    # both pointer tiles of both products; or one pointer tile, the gather and the persistent
    # kernel for gate_up, one pointer tile and the persistent kernel for down
    launched = [kernel for kernel, _ in writes[2:]]
    assert launched.count("persistent_grouped_gemm_kernel") == (2 if persistent else 0), writes
    assert len(writes) == 2 + (5 if persistent else 4), writes
    for kernel, written in writes:
        assert written <= outputs[kernel], (kernel, written)


def test_triton_kernel_compiles_for_hopper_in_both_roles():
    """No GPU is needed to compile: Triton lowers the grouped GEMM for sm_90 and its ptxas
    assembles it, so a kernel that no longer compiles fails here, not first on a GPU. With the
    alignment facts of a run, every committed 16-bit tile keeps its k-loop pipelined (async
    copies into shared memory) and spills nothing: a change that loses either fails here."""
    pytest.importorskip("triton")
    from helpers.moe_workers import benchmark_script

    tool = benchmark_script("moe_kernel_resources")
    shape = {"hidden": 2048, "intermediate": 1408, "experts": 64}
    for kernel in ("gate_up", "down"):
        for cfg in tool.tg.CONFIGS[(kernel, 2)]:
            row = tool.resources(kernel, "*bf16", cfg, shape, 90)
            assert row["kernel"] == kernel and 0 < row["registers"] <= 255, row
            assert row["pipelined_loads"] > 0 and row["spill_stores"] == 0, row


def test_persistent_tma_tile_compiles_for_hopper_in_both_roles():
    """The persistent many-rows tile (triton_tma_gemm.py) lowered for sm_90 on a CPU: its tiles
    arrive by TMA copies (``cp.async.bulk.tensor``), the products run on ``wgmma``, and nothing
    spills. A change that falls back to pointer loads or to the older tensor-core path fails."""
    pytest.importorskip("triton")
    from helpers.moe_workers import benchmark_script

    tool = benchmark_script("moe_kernel_resources")
    shape = {"hidden": 2048, "intermediate": 1408, "experts": 64}
    for kernel in ("gate_up", "down"):
        row = tool.persistent_resources(kernel, shape, 90)
        assert 0 < row["registers"] <= 255 and row["spill_stores"] == 0, row
        assert row["tma_loads"] > 0 and row["wgmma"] > 0 and row["pipelined_loads"] == 0, row


def test_persistent_tile_only_where_the_copy_engine_can_address_the_rows():
    """TMA needs 16-byte rows and a 16-byte aligned first element, by storage offset and, for
    a real tensor, by address; elsewhere (and off NVIDIA GPUs, and in float32) the launches
    keep the pointer tile for every count. (That gate_up takes any ``x`` whose rows fit, since
    the copy engine reads a gathered copy, is checked in the interpreter cases.)"""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from compile_ops.moe import triton_grouped_gemm as tg
    from compile_ops.moe import triton_tma_gemm as ttg

    aligned = torch.empty(5, 64, dtype=torch.bfloat16)
    assert ttg.tma_ready(aligned, torch.empty(3, 8, 64, dtype=torch.bfloat16))
    narrow = torch.empty(3, 8, 36, dtype=torch.bfloat16)  # 72 B rows
    assert not ttg.tma_ready(aligned, narrow) and not ttg.rows_fit(narrow)
    offset = torch.empty(70, dtype=torch.bfloat16)[3:67].view(1, 64)  # starts 6 B in
    assert not ttg.tma_ready(offset) and ttg.tma_ready(offset.clone()) and ttg.rows_fit(offset)
    foreign = torch.from_dlpack(offset)  # the same memory, as storage offset 0
    assert foreign.storage_offset() == 0 and foreign.data_ptr() % 16 == 6
    assert not ttg.tma_ready(foreign)
    with FakeTensorMode():  # a trace sees sizes and offsets only
        assert ttg.tma_ready(torch.empty(5, 64, dtype=torch.bfloat16))
        assert not ttg.tma_ready(torch.empty(70, dtype=torch.bfloat16)[3:67])
    assert not ttg.supported(torch.device("cpu"))
    assert tg.persistent_for(aligned) is None  # on the CPU


def test_benchmark_reports_and_plots_a_saved_run(tmp_path, capsys):
    """``benchmarks/moe_experts.py --from RUN.json --plot FILE.png`` on a committed run: the
    table has every row of the run, and the plot is a PNG."""
    pytest.importorskip("matplotlib")
    import json
    import pathlib

    from helpers.moe_workers import benchmark_script

    run = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    run = run / "2026-11-30-h200-moe-experts-graphs.json"
    png = tmp_path / "moe.png"
    assert benchmark_script("moe_experts").main(["--from", str(run), "--plot", str(png)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 + len(json.loads(run.read_text())["rows"])
    assert any("| dense ceiling |" in line for line in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_refuses_an_unknown_shape(capsys):
    """``--shapes`` names the shapes it knows instead of timing a subset silently."""
    from helpers.moe_workers import benchmark_script

    with pytest.raises(SystemExit) as exit_info:
        benchmark_script("moe_experts").main(["--shapes", "DeepSeek-V2-Lite,Mixtral-8x22B"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--shapes: unknown ['Mixtral-8x22B']" in err and "DeepSeek-V2-Lite" in err


def test_benchmark_candidates_mark_their_own_alias_of_the_input(monkeypatch):
    """Every candidate of ``benchmarks/moe_experts.py`` marks its token dim on an alias of x,
    not on x: the timed loop hands one x to all of them, and a mark left on it (the block's
    unbacked dim) compiled the next candidate with it."""
    from helpers.moe_workers import benchmark_script

    bench = benchmark_script("moe_experts")
    monkeypatch.setattr(torch, "compile", lambda module, **_: module)  # eager: the marks alone
    hidden, inter, experts, k = bench.QUICK["small"]
    config = MoEConfig(hidden=hidden, intermediate=inter, experts=experts, top_k=k)
    w = bench.random_weights(config, torch.device("cpu"), torch.float32)
    x = torch.randn(5, hidden)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        fns = bench.candidates(config, w, torch.device("cpu"), ["portable"])
        assert {"block[portable]", "experts[portable]", "sort+_grouped_mm"} <= set(fns)
        for label, fn in fns.items():
            assert fn(x).shape == x.shape, label
            names = ("_dynamo_dynamic_indices", "_dynamo_unbacked_indices")
            marks = [name for name in names if hasattr(x, name)]
            assert not marks, f"{label} left {marks} on the caller's tensor"
    finally:
        dist.destroy_process_group()
