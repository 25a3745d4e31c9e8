"""hinted_unbacked_fusion: with a hinted unbacked token dimension, Inductor fuses token-sized
buffers on torch 2.11 as torch 2.12 and newer do, and nothing changes without a hint.

Fusion is decided by the scheduler before code generation, so the buffers seen here in C++
kernels are the ones Triton kernels get on a GPU (measured there: docs/patches.md).
"""

from unittest import mock

import pytest
import torch
from helpers.patch_checks import check_inactive_elsewhere
from torch._inductor.utils import run_and_get_code

import compile_ops.moe.experts  # noqa: F401  (registers compile_ops_moe::grouped_mm)
import inductor_patches
from compile_ops.moe import mark_token_dim
from compile_ops.testing import codegen

PATCH = inductor_patches.get("hinted_unbacked_fusion")
needs_patched_torch = pytest.mark.skipif(
    not PATCH.matches_torch(),
    reason=f"hinted_unbacked_fusion is for torch {PATCH.torch_versions}; running {torch.__version__}",
)
K, HIDDEN, ROWS = 6, 64, 24


def top_k_sum(x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The MoE block's combine: per row, the masked float32 sum of its K slot outputs, made by an
    opaque op (a stored buffer), then cast back. From K = 5 on, Inductor stores a partial sum
    (``realize_acc_reads_threshold``), which only a fusion can put back in the same kernel."""
    rows = x.shape[0]
    routed = x[:, :K] > -0.5
    pairs = torch.ops.compile_ops_moe.grouped_mm(x.repeat_interleave(K, dim=0), w, ends)
    slots = pairs.view(rows, K, HIDDEN)
    y = torch.where(routed[:, 0, None], slots[:, 0].float(), 0.0)
    for j in range(1, K):
        y = y + torch.where(routed[:, j, None], slots[:, j].float(), 0.0)
    return y.to(x.dtype)


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 16, generator=g).bfloat16()
    w = torch.randn(2, HIDDEN, 16, generator=g).bfloat16()
    return x, w, torch.tensor([50, ROWS * K])


def compile_top_k_sum(mark):
    """(output, generated code) of ``top_k_sum`` compiled afresh (run_and_get_code resets
    Dynamo first), the token dim marked by ``mark``, with the patches as they are."""
    x, w, ends = inputs()
    try:
        with (
            torch._inductor.config.patch(fx_graph_cache=False),
            torch._functorch.config.patch(enable_autograd_cache=False),
        ):
            out, (code,) = run_and_get_code(
                torch.compile(top_k_sum, fullgraph=True), mark(x), w, ends
            )
    finally:
        torch._dynamo.reset()
    return out, code


def compiled(mark, patch_on: bool):
    """``compile_top_k_sum`` with the patch on or off (where this torch takes it)."""
    with PATCH.switched(patch_on):
        return compile_top_k_sum(mark)


def float32_buffers(code: str) -> int:
    """Float32 buffers the wrapper allocates: the stored partial sums."""
    return code.count("torch.float32)")


def unhinted(x):
    torch._dynamo.decorators.mark_unbacked(x, 0)
    return x


def test_hinted_token_dim_fuses_the_stored_partial_sum():
    out, code = compiled(mark_token_dim, patch_on=True)
    assert float32_buffers(code) == 0, code
    x, w, ends = inputs()
    torch.testing.assert_close(out, top_k_sum(x, w, ends), rtol=1e-2, atol=1e-2)


@needs_patched_torch
def test_without_the_patch_torch_2_11_keeps_the_partial_sum_in_memory():
    """What the patch changes: the same compile on unpatched torch 2.11."""
    out, code = compiled(mark_token_dim, patch_on=False)
    assert float32_buffers(code) == 1
    fused_out, fused_code = compiled(mark_token_dim, patch_on=True)
    assert len(codegen.kernel_launches(fused_code)) <= len(codegen.kernel_launches(code))
    torch.testing.assert_close(fused_out, out, rtol=1e-2, atol=1e-2)


@needs_patched_torch
def test_unhinted_unbacked_dim_is_left_to_torch_2_11():
    """The patch counts only hinted sizes, as torch 2.12 does: without a hint torch 2.11's
    rule stands and nothing is fused."""
    _, code = compiled(unhinted, patch_on=True)
    assert float32_buffers(code) == 1


@needs_patched_torch
def test_hinted_size_is_the_hint_times_the_row():
    """The bytes the scheduler now sees for the ``[u0, 64]`` float32 partial sum: hint * 64 * 4."""
    from torch._inductor.graph import GraphLowering

    seen = []
    with PATCH.switched(True):
        assert PATCH.is_applied()
        patched = GraphLowering.get_dep_size_hint

        def spy(self, dep, count_bytes=True):
            size = patched(self, dep, count_bytes)
            seen.append((str(dep.get_numel()), size))
            return size

        with mock.patch.object(GraphLowering, "get_dep_size_hint", spy):
            compile_top_k_sum(lambda x: mark_token_dim(x, hint=100))
    assert ("64*u0", 100 * 64 * 4) in seen, seen  # the float32 partial sum, now counted


def test_mark_token_dim_rejects_a_hint_below_one():
    with pytest.raises(ValueError, match="mark_token_dim: hint=0"):
        mark_token_dim(torch.zeros(3, 2), hint=0)


def test_mark_token_dim_marks_a_view_and_leaves_the_input_alone():
    """The mark goes on a view of the same storage: marked on the caller's tensor, it would
    follow it into every other compiled function it is passed to; a function compiled on the
    unmarked tensor afterwards keeps a static token count."""
    x = torch.randn(5, 4, requires_grad=True)
    marked = mark_token_dim(x, hint=64)
    assert marked is not x and marked.data_ptr() == x.data_ptr() and marked.shape == x.shape
    assert marked._dynamo_unbacked_indices == {0}
    assert not hasattr(x, "_dynamo_unbacked_indices")
    assert marked.grad_fn is not None  # still on x's autograd graph
    gm = []

    def backend(graph, example_inputs):
        gm.append(graph)
        return graph.forward

    torch.compile(lambda t: t * 2, backend=backend, fullgraph=True)(x)
    inputs = [n.meta["example_value"] for n in gm[0].graph.nodes if n.op == "placeholder"]
    shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else v for v in inputs]
    assert shapes == [(5, 4)], shapes  # not an unbacked u0 left by the call above


def test_inactive_on_other_torch_versions_and_says_so():
    check_inactive_elsewhere(PATCH)
