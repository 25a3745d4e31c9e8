"""realize_on_reuse: its decisions against a plain reference of the cost model, the module panel
compiled with and without it (CPU Inductor), and the residual stream of a decoder stack.

The decisions are properties of lowering, not of the device: the stored buffers and the loads
per RMSNorm kernel seen here in C++ kernels are the ones Triton kernels get on a GPU.
"""

import pytest
import torch
from helpers.patch_checks import check_inactive_elsewhere
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._inductor.decomposition import select_decomp_table
from torch._inductor.graph import GraphLowering
from torch._inductor.utils import run_and_get_code
from torch._inductor.virtualized import V
from torch.fx.experimental.proxy_tensor import make_fx

import inductor_patches
from compile_ops.testing import codegen, realize_panel
from inductor_patches.realize_on_reuse import decisions

PATCH = inductor_patches.get("realize_on_reuse")
needs_patched_torch = pytest.mark.skipif(
    not PATCH.matches_torch(),
    reason=f"realize_on_reuse is for torch {PATCH.torch_versions}; running {torch.__version__}",
)


def test_inactive_on_other_torch_versions_and_says_so():
    check_inactive_elsewhere(PATCH)


@pytest.fixture
def patched():
    with PATCH.switched(True):
        assert PATCH.is_applied()
        yield


@pytest.fixture
def unpatched():
    with PATCH.switched(False):
        yield


# ---------------------------------------------------------------- decisions on hand-built graphs


def reference_store(read_bytes: int, out_bytes: int, users: int) -> bool:
    """The cost model written out: recompute in every user vs store once, one user fused."""
    return read_bytes * users >= read_bytes + out_bytes * users


def reference_narrow_copy(read_bytes: int, out_bytes: int, consumers: int) -> bool:
    return read_bytes * consumers >= out_bytes + out_bytes * consumers


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def lower(fn, *inputs, symbolic=False) -> GraphLowering:
    """Run Inductor's lowering (graph walk, realize decisions) without generating code."""
    decisions.reset()
    mode = "symbolic" if symbolic else "real"
    gm = make_fx(fn, decomposition_table=select_decomp_table(), tracing_mode=mode)(*inputs)
    if symbolic:
        inputs = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
        fake_mode = inputs[0].fake_mode
        graph = GraphLowering(gm, shape_env=fake_mode.shape_env)
        with V.set_graph_handler(graph), V.set_fake_mode(fake_mode):
            graph.run(*inputs)
    else:
        graph = GraphLowering(gm)
        with V.set_graph_handler(graph):
            graph.run(*inputs)
    return graph


T, H = 8, 16
bf16 = torch.bfloat16


def _bf(*shape):
    return torch.randn(*shape, dtype=bf16)


def _add_two_users(a, b):
    s = a + b
    return s.sum(-1), s * 2


def _fp32_add_three_users(a, b):
    s = a.float() + b  # vLLM's RMSNorm add: bf16 in, fp32 out
    return s.sum(-1), s * 2, s.amax(-1)


def _three_inputs_two_users(a, b, c):
    s = a * b + c
    return s.sum(-1), s * 2


def _broadcast_weight_two_users(a, w):
    s = a * w
    return s.sum(-1), s * 2


def _fp32_three_inputs_four_users(a, b, c):
    s = a * b - c
    return s.sum(-1), s.amax(-1), s.amin(-1), s * 2


def _one_input_four_users(a):
    s = a * 2 + 1
    return s.sum(-1), s.amax(-1), s.amin(-1), s * 3


# (function, inputs, tensors the shared value reads, its dtype, FX users)
SHARED_CASES = {
    "bf16 add, 2 users": (_add_two_users, lambda: (_bf(T, H), _bf(T, H)), (0, 1), bf16, 2),
    "fp32 add of bf16, 3 users": (
        _fp32_add_three_users,
        lambda: (_bf(T, H), _bf(T, H)),
        (0, 1),
        torch.float32,
        3,
    ),
    "3 inputs, 2 users": (
        _three_inputs_two_users,
        lambda: (_bf(T, H), _bf(T, H), _bf(T, H)),
        (0, 1, 2),
        bf16,
        2,
    ),
    "broadcast weight, 2 users": (
        _broadcast_weight_two_users,
        lambda: (_bf(T, H), _bf(H)),
        (0, 1),
        bf16,
        2,
    ),
    "fp32 3 inputs, 4 users": (
        _fp32_three_inputs_four_users,
        lambda: (torch.randn(T, H), torch.randn(T, H), torch.randn(T, H)),
        (0, 1, 2),
        torch.float32,
        4,
    ),
    "1 input, 4 users": (_one_input_four_users, lambda: (_bf(T, H),), (0,), bf16, 4),
}


@needs_patched_torch
@pytest.mark.parametrize("case", SHARED_CASES)
def test_shared_value_decision_equals_reference(patched, case):
    fn, make_inputs, read_idx, dtype, users = SHARED_CASES[case]
    inputs = make_inputs()
    read = nbytes(*(inputs[i] for i in read_idx))
    out = T * H * dtype.itemsize
    lower(fn, *inputs)
    want = reference_store(read, out, users)
    # Asked twice per node by torch (stride choice, then mark_reuse): counted once.
    assert decisions.counts() == {f"bytes:{'realize' if want else 'inline'}": 1}


@settings(deadline=None)  # arithmetic only; on a loaded machine one call can exceed 200 ms
@given(st.integers(1, 10**12), st.integers(1, 10**12), st.integers(0, 10**4))
def test_rule_functions_equal_reference(read, out, users):
    from inductor_patches.realize_on_reuse import store_narrow_copy, store_shared_value

    assert store_shared_value(read, out, users) == (users > 1 and reference_store(read, out, users))
    assert store_narrow_copy(read, out, users) == (
        users > 0 and reference_narrow_copy(read, out, users)
    )


def test_reference_covers_both_outcomes():
    outcomes = set()
    for _, make_inputs, read_idx, dtype, users in SHARED_CASES.values():
        inputs = make_inputs()
        outcomes.add(
            reference_store(nbytes(*(inputs[i] for i in read_idx)), T * H * dtype.itemsize, users)
        )
    assert outcomes == {True, False}


@needs_patched_torch
def test_decision_uses_size_hints_of_symbolic_shapes(patched):
    lower(_add_two_users, _bf(T, H), _bf(T, H), symbolic=True)
    assert decisions.counts() == {"bytes:realize": 1}


def _data_dependent(a):
    t = a.nonzero().float()
    s = t * 3 + t.abs()
    return s.sum(-1), s * 2


@needs_patched_torch
def test_unknown_sizes_fall_back_to_torch_rule(patched):
    lower(_data_dependent, torch.randn(T, H), symbolic=True)
    assert decisions.counts() == {"sizes_unknown:inline": 2}


def _broadcast_of_a_sum(a, b, c):
    return (a[:, :1] + b[:, :1]) + c  # [T, 1] expanded to [T, H]: expand passes users=H


@needs_patched_torch
def test_broadcast_ratio_is_not_a_consumer_count(patched):
    graph = lower(_broadcast_of_a_sum, _bf(T, H), _bf(T, H), _bf(T, H))
    # With users=H read as consumers the bytes rule would store the [T, 1] sum: 4T*(H-1) > 2T*(H+1).
    assert reference_store(4 * T, 2 * T, H)
    assert decisions.counts() == {"broadcast:inline": 1}
    assert len(graph.buffers) == 1


def _scale_broadcast_to_all_users(w1, w2, x, y):
    s = w1 * w2
    return s * x, s * y


@needs_patched_torch
def test_value_every_user_broadcasts_keeps_torch_rule(patched):
    lower(
        _scale_broadcast_to_all_users,
        torch.randn(H),
        torch.randn(H),
        torch.randn(T, H),
        torch.randn(T, H),
    )
    assert reference_store(2 * H * 4, H * 4, 2)  # bytes alone would store it in a kernel of its own
    assert decisions.total("no_host") == 1 and decisions.total("bytes") == 0


def _narrow_residual(a, b):
    x = a.float() + b  # fp32 sum, shared by the norm and the bf16 residual
    residual = x.to(bf16)
    return x.pow(2).mean(-1), residual + 1


def _narrow_copy_of_one_input(a):
    x = a.float() * 2
    return x.pow(2).mean(-1), x.to(bf16) + 1


@needs_patched_torch
def test_narrow_copy_of_shared_value_equals_reference(patched):
    a, b = _bf(T, H), _bf(T, H)
    graph = lower(_narrow_residual, a, b)
    assert reference_narrow_copy(nbytes(a, b), T * H * 2, 1)
    assert decisions.counts() == {"bytes:inline": 1, "narrow_copy:realize": 1}
    stored = [buf for buf in graph.buffers if buf.get_dtype() == bf16 and buf.get_numel() == T * H]
    assert len(stored) == 2  # the residual and the output

    lower(_narrow_copy_of_one_input, a)  # a copy of one load: nothing to cut, not even asked
    assert decisions.total("narrow_copy") == 0


@needs_patched_torch
def test_patch_changes_buffers_only_where_the_model_says(unpatched):
    a, b = _bf(T, H), _bf(T, H)
    cases = [(_add_two_users, (a, b)), (_fp32_add_three_users, (a, b)), (_narrow_residual, (a, b))]
    before = [len(lower(fn, *args).buffers) for fn, args in cases]
    with PATCH.switched(True):
        after = [len(lower(fn, *args).buffers) for fn, args in cases]
    assert after == [before[0] + 1, before[1], before[2] + 1]


# ---------------------------------------------------------------- the panel, compiled on CPU

TOKENS = 32
SIZES = realize_panel.TINY
_compiled: dict = {}


def compiled(name: str, patch_on: bool):
    """(outputs, generated code, decision counts) of one panel module, compiled once per run."""
    key = (name, patch_on)
    if key not in _compiled:
        case = realize_panel.PANEL[name]
        module, inputs = case.module(SIZES), case.inputs(SIZES, TOKENS)
        decisions.reset()
        with (
            PATCH.switched(patch_on),
            torch._inductor.config.patch(fx_graph_cache=False, compile_threads=1),
            torch._functorch.config.patch(enable_autograd_cache=False),
            torch.no_grad(),
        ):
            out, codes = run_and_get_code(torch.compile(module, fullgraph=True), *inputs)
            eager = module(*inputs)
        _compiled[key] = (out, eager, codes, decisions.counts())
    return _compiled[key]


def _pairs(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    return zip(got, want, strict=True)


# bf16 outputs of magnitude up to ~5: two units in the last place are 0.0625.
BF16_2ULP = {"atol": 7e-2, "rtol": 5e-2}
# Rounding differences between eager (bf16 after every op) and compiled kernels (fp32 inside a
# kernel) add up over depth: 32 layers get twice the 8-layer bound.
BF16_4ULP = {"atol": 1.4e-1, "rtol": 1e-1}


@needs_patched_torch
@pytest.mark.parametrize("name", realize_panel.PANEL)
def test_panel_with_patch_matches_without_and_eager(name):
    on, eager, _, _ = compiled(name, True)
    off = compiled(name, False)[0]
    for got, want in _pairs(on, eager):
        torch.testing.assert_close(got, want, **(BF16_2ULP if got.is_floating_point() else {}))
    for got, want in _pairs(off, eager):
        torch.testing.assert_close(got, want, **(BF16_2ULP if got.is_floating_point() else {}))
    if name != "decoder_stack":
        # Same kernels (test below), so bit for bit the same result.
        assert all(torch.equal(a, b) for a, b in _pairs(on, off))
    else:
        # Stored, the residual is rounded to bf16 as in eager; recomputed inside a kernel it
        # stays fp32 (Inductor skips intermediate casts unless emulate_precision_casts).
        torch.testing.assert_close(on, off, **BF16_2ULP)


SINGLE_BLOCKS = [name for name in realize_panel.PANEL if name != "decoder_stack"]


@needs_patched_torch
@pytest.mark.parametrize("name", SINGLE_BLOCKS)
def test_single_blocks_keep_their_kernels(name):
    """Blocks without a reused full-size value compile exactly as without the patch."""
    on, off = compiled(name, True), compiled(name, False)
    assert [codegen.kernel_launches(c) for c in on[2]] == [
        codegen.kernel_launches(c) for c in off[2]
    ]
    assert sum(on[3].values()) > 0  # the rule was asked, and decided the same as torch


@needs_patched_torch
def test_decoder_stack_stores_each_residual_once():
    layers = SIZES.layers
    on, off = compiled("decoder_stack", True), compiled("decoder_stack", False)
    loads_on, loads_off = codegen.norm_loads(on[2]), codegen.norm_loads(off[2])
    assert len(loads_on) == len(loads_off) == 2 * layers + 1
    # Each norm reads its input, the stored residual and its weight; the first one has no
    # residual yet; without the patch the residual's add chain is recomputed, growing with depth.
    assert max(loads_on) == 3 and max(loads_off) > 3
    assert on[3]["narrow_copy:realize"] == 2 * layers - 1
    launches_on = [k for c in on[2] for k in codegen.kernel_launches(c)]
    launches_off = [k for c in off[2] for k in codegen.kernel_launches(c)]
    assert len(launches_on) == len(launches_off)  # stored inside the norm kernels: no new kernels


# ---------------------------------------------------------------- the FX graph cache


def _two_norms(h, r, w1, w2, proj):
    h, r = realize_panel.add_rms_norm(h, r, w1)
    return realize_panel.add_rms_norm(h @ proj, r, w2)[0]


@needs_patched_torch
def test_fx_graph_cache_never_crosses_patch_sets(tmp_path, monkeypatch, unpatched):
    """Fresh cache dir: unchanged patch set hits, a changed one misses, in both directions."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    args = (_bf(TOKENS, H), _bf(TOKENS, H), _bf(H), _bf(H), _bf(H, H))

    def run():
        torch._dynamo.reset()
        counters.clear()
        out, codes = run_and_get_code(torch.compile(_two_norms, fullgraph=True), *args)
        hit = (
            counters["inductor"]["fxgraph_cache_hit"]
            + counters["aot_autograd"]["autograd_cache_hit"]
        )
        return out, hit > 0, codegen.norm_loads(codes)

    with (
        torch._inductor.config.patch(fx_graph_cache=True, compile_threads=1),
        torch._functorch.config.patch(enable_autograd_cache=True),
    ):
        off, hit, loads_off = run()
        assert not hit and loads_off == [3, 4]  # second norm recomputes h + r
        assert run()[1]
        with PATCH.switched(True):
            on, hit, loads_on = run()
            assert not hit and loads_on == [3, 3]  # reads the stored residual
            on_again, hit, _ = run()
            assert hit and torch.equal(on_again, on)
        off_again, hit, _ = run()
        assert hit and torch.equal(off_again, off)


@needs_patched_torch
@pytest.mark.slow
def test_32_layer_stack_stores_each_residual_once(patched):
    """The same property at Llama-8B depth (about 3 minutes of CPU compilation)."""
    from dataclasses import replace

    sizes = replace(SIZES, layers=32)
    case = realize_panel.PANEL["decoder_stack"]
    decisions.reset()
    with (
        torch._inductor.config.patch(fx_graph_cache=False, compile_threads=1),
        torch._functorch.config.patch(enable_autograd_cache=False),
        torch.no_grad(),
    ):
        module, (x,) = case.module(sizes), case.inputs(sizes, TOKENS)
        out, codes = run_and_get_code(torch.compile(module, fullgraph=True), x)
        torch.testing.assert_close(out, module(x), **BF16_4ULP)
    loads = codegen.norm_loads(codes)
    assert len(loads) == 65 and max(loads) == 3
    assert decisions.counts()["narrow_copy:realize"] == 63


# ---------------------------------------------------------------- with compile_ops' own pass


@needs_patched_torch
def test_tensor_parallel_stack_with_patch_matches_eager():
    """all_reduce after each row-parallel projection is reinplaced and the residual still stored.

    One gloo rank in this process: the graph, the reinplacing and the lowering are those of any
    world size, without paying a compilation in every spawned rank.
    """
    import torch.distributed as dist
    from helpers import patch_workers

    layers = 2
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        got = patch_workers.tp_stack_with_patch(layers, TOKENS)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(got["compiled"], got["eager"], **BF16_2ULP)
    assert got["inplace_all_reduces"] == 2 * layers
    assert got["decisions"]["narrow_copy:realize"] == 2 * layers - 1
    assert max(got["norm_loads"]) == 3
