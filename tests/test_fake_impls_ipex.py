"""The IPEX fakes, exercised on a test library that defines IPEX's schemas with CPU kernels.

IPEX cannot be installed beside torch >= 2.11, so its XPU kernels are replaced here by CPU
kernels written from what the XPU kernels do; the fakes are then checked against them (shapes,
dtypes, strides), by opcheck, and in a compiled fp8-linear + fused-MoE step.
"""

import warnings

import pytest
import torch
from helpers.scratch_library import ScratchLibrary

import fake_impls
from compile_ops.cli.audit import format_reports
from fake_impls import ipex
from fake_impls.audit import audit

# The schemas IPEX infers from its C++ kernel signatures (IPEX 2.9 / 2.10 for XPU).
IPEX_SCHEMAS = [
    "fp8_gemm_w8a16.xpu(Tensor _0, Tensor _1, bool _2, Tensor? _3, Tensor? _4) -> Tensor _0",
    "fused_moe_gemm.moe(Tensor _0, Tensor _1, Tensor? _2, bool? _3, Tensor _4, Tensor _5, int _6)"
    " -> Tensor _0",
    "fused_moe_gemm_persistent.moe(Tensor _0, Tensor _1, Tensor? _2, Tensor _3, int _4)"
    " -> Tensor _0",
    "grouped_topk.moe(Tensor _0, Tensor _1, int _2, bool _3, int _4, int _5, str _6, Tensor? _7)"
    " -> (Tensor _0, Tensor _1)",
    "moe_rows_counts.moe(Tensor _0, int _1, int _2) -> (Tensor _0, Tensor _1)",
    "moe_scatter.moe(Tensor _0, Tensor _1, Tensor _2, Tensor _3, int _4, int _5, int _6)"
    " -> (Tensor _0, Tensor _1)",
    "moe_gather.moe(Tensor _0, Tensor _1, Tensor _2, int _3, int _4, bool _5) -> Tensor _0",
]


def _aligned8(n):
    return (n + 7) // 8 * 8


# CPU stand-ins for the XPU kernels: same outputs' metadata, same meaning.


def fp8_gemm_w8a16(a, b, trans_b, b_scale, bias):
    w = (b.t() if trans_b else b).float()
    if b_scale is not None:
        w = w * b_scale.float()
    out = a.float() @ w
    if bias is not None:
        out = out + bias.float()
    k, n = a.shape[-1], w.shape[1]
    strides = [s // k * n for s in a.stride()[:-1]] + [a.stride(-1)]
    return torch.empty_strided(out.shape, strides, dtype=a.dtype).copy_(out)


def _grouped_gemm(a, b, b_scale, rows):
    out = a.new_zeros(a.shape[0], b.shape[2])
    start = 0
    for e, count in enumerate(rows[: b.shape[0]].tolist()):
        w = b[e].float() * (b_scale[e].float() if b_scale is not None else 1.0)
        out[start : start + count] = (a[start : start + count].float() @ w).to(a.dtype)
        start += count
    return out


def fused_moe_gemm(a, b, b_scale, vnni, rows, rows_host, n_experts):
    return _grouped_gemm(a, b, b_scale, rows_host)


def fused_moe_gemm_persistent(a, b, b_scale, rows, n_experts):
    return _grouped_gemm(a, b, b_scale, rows)


def grouped_topk(hidden, gating, n_topk, renormalize, n_group, n_topk_group, scoring, bias):
    scores = gating.float().sigmoid() if scoring == "sigmoid" else gating.float().softmax(-1)
    biased = scores if bias is None else scores + bias.float()
    groups = biased.view(gating.shape[0], n_group, -1)
    keep = groups.amax(-1).topk(n_topk_group, dim=-1).indices
    mask = torch.zeros_like(groups[..., 0]).scatter_(1, keep, 1.0).unsqueeze(-1)
    ids = (groups * mask + (mask - 1) * 1e9).flatten(1).topk(n_topk, dim=-1).indices
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids.to(torch.int32)


def moe_rows_counts(topk_ids, experts_offset, n_local):
    local = topk_ids.long() - experts_offset
    mine = (local >= 0) & (local < n_local)
    rows = torch.zeros(_aligned8(n_local), dtype=torch.int32)
    offsets = torch.full(topk_ids.shape, -1, dtype=torch.int32)
    for t, k in mine.nonzero().tolist():  # token-major: slot within its expert
        e = local[t, k]
        offsets[t, k] = rows[e]
        rows[e] += 1
    return rows, offsets


def moe_scatter(activation, rows, topk_ids, offsets, experts_offset, n_local, n_topk):
    starts = torch.cumsum(rows.long(), 0) - rows.long()
    local = topk_ids.long() - experts_offset
    mine = (local >= 0) & (local < n_local)
    slots = torch.where(mine, starts[local.clamp(0, n_local - 1)] + offsets.long(), -1)
    reordered = activation.new_zeros(activation.shape[0] * n_topk, activation.shape[1])
    t, k = mine.nonzero(as_tuple=True)
    reordered[slots[t, k]] = activation[t]
    return reordered, slots.to(torch.int32)


def moe_gather(moe_output, scores, slots, n_experts, n_topk, normalize):
    weights = scores / scores.sum(-1, keepdim=True) if normalize else scores
    mine = slots >= 0
    rows = moe_output[slots.long().clamp(min=0)].float() * (weights * mine).unsqueeze(-1)
    return rows.sum(1).to(moe_output.dtype)


KERNELS = [
    fp8_gemm_w8a16,
    fused_moe_gemm,
    fused_moe_gemm_persistent,
    grouped_topk,
    moe_rows_counts,
    moe_scatter,
    moe_gather,
]


def ipex_like_library(schemas=IPEX_SCHEMAS, kernels=KERNELS) -> ScratchLibrary:
    return ScratchLibrary("ipex_like", dict(zip(schemas, kernels, strict=True)))


@pytest.fixture
def ipex_like():
    lib = ipex_like_library()
    yield lib
    lib.close()
    torch._dynamo.reset()


FP8 = torch.float8_e4m3fn
E, K, N, TOKENS, TOP_K = 4, 16, 24, 5, 2  # experts, hidden, intermediate, tokens, top-k


def _weights(*shape, dtype=FP8):
    return (torch.randn(*shape) / 4).to(dtype)


def samples(weights=FP8):
    """Per op: (args, kwargs) inputs, covering the layouts the kernels distinguish."""
    a = torch.randn(TOKENS, K, dtype=torch.bfloat16)
    b_kn, b_nk = _weights(K, N, dtype=weights), _weights(N, K, dtype=weights)
    scale, bias = torch.rand(N) + 0.5, torch.randn(N, dtype=torch.bfloat16)
    batched = torch.randn(3, TOKENS, K, dtype=torch.bfloat16)
    seq_major = torch.randn(TOKENS, 3, K, dtype=torch.bfloat16).transpose(0, 1)  # [b, m, k]
    ids = torch.tensor([[0, 2], [1, 2], [3, 0], [2, 1], [0, 3]], dtype=torch.int32)
    rows, offsets = moe_rows_counts(ids, 0, E)
    grouped = torch.randn(TOKENS * TOP_K, K, dtype=torch.bfloat16)
    w_moe, w_scale = _weights(E, K, N, dtype=weights), torch.rand(E) + 0.5
    gating = torch.randn(TOKENS, 8)
    scores = torch.rand(TOKENS, TOP_K)
    slots = moe_scatter(a, rows, ids, offsets, 0, E, TOP_K)[1]
    return {
        "fp8_gemm_w8a16.xpu": [
            ((a, b_kn, False, scale, None), {}),
            ((a, b_nk, True, None, bias), {}),
            ((batched, b_kn, False, scale, bias), {}),
            ((seq_major, b_nk, True, scale, None), {}),
        ],
        "fused_moe_gemm.moe": [((grouped, w_moe, w_scale, True, rows, rows, E), {})],
        "fused_moe_gemm_persistent.moe": [((grouped, w_moe, w_scale, rows, E), {})],
        "grouped_topk.moe": [
            ((a, gating, TOP_K, True, 4, 2, "sigmoid", torch.randn(8)), {}),
            ((a, gating, 3, False, 2, 1, "softmax", None), {}),
        ],
        "moe_rows_counts.moe": [((ids, 0, E), {}), ((ids, 2, 2), {})],
        "moe_scatter.moe": [((a, rows, ids, offsets, 0, E, TOP_K), {})],
        "moe_gather.moe": [((grouped, scores, slots, E, TOP_K, True), {})],
    }


def test_every_fake_attaches_to_the_ipex_schemas_and_passes_opcheck(ipex_like):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registered = ipex.register(ipex_like.ns, lib=ipex_like.fakes)
    assert registered == [f"{ipex_like.ns}::{name}" for name in ipex.FAKES]
    # opcheck's schema check compares inputs with torch.allclose, which has no fp8 CPU kernel;
    # the fakes never read the weights' dtype, so bf16 weights stand in here.
    reports = audit(ipex_like.ns, samples(weights=torch.bfloat16))
    assert [(r.status, r.opcheck) for r in reports] == [("ok", "pass")] * len(ipex.FAKES), (
        format_reports(reports)
    )


@pytest.mark.parametrize("name", list(ipex.FAKES))
def test_fake_matches_the_kernel_metadata(ipex_like, name):
    op = getattr(getattr(ipex_like.ops, name.split(".")[0]), name.split(".")[1])
    fake_impls.check_fake(op, ipex.FAKES[name][1], samples()[name])


def test_fp8_gemm_w8a16_output_layout(ipex_like):
    ipex.register(ipex_like.ns, lib=ipex_like.fakes)
    op = ipex_like.ops.fp8_gemm_w8a16.xpu
    seq_major = torch.empty(7, 3, K, device="meta").transpose(0, 1)  # [3, 7, K], strides [K, 3K, 1]
    cases = [
        (
            (torch.empty(7, K, device="meta"), torch.empty(K, N, device="meta"), False),
            (7, N),
            (N, 1),
        ),
        (
            (torch.empty(7, K, device="meta"), torch.empty(N, K, device="meta"), True),
            (7, N),
            (N, 1),
        ),
        ((seq_major, torch.empty(N, K, device="meta"), True), (3, 7, N), (N, 3 * N, 1)),
    ]
    for (a, b, trans_b), shape, strides in cases:
        out = op(a, b, trans_b, None, None)
        assert (tuple(out.shape), out.stride(), out.dtype) == (shape, strides, a.dtype)
    with pytest.raises(RuntimeError, match=r"fp8_gemm_w8a16: A has K=16 but B \(trans_B=False\)"):
        op(torch.empty(7, K, device="meta"), torch.empty(N, K, device="meta"), False, None, None)


def test_moe_fakes_check_what_the_kernels_check(ipex_like):
    ipex.register(ipex_like.ns, lib=ipex_like.fakes)
    a, w = torch.empty(10, K, device="meta"), torch.empty(E, K, N, device="meta")
    with pytest.raises(RuntimeError, match="rows_for_experts has 4 entries, expected 8"):
        ipex_like.ops.fused_moe_gemm_persistent.moe(a, w, None, torch.empty(E, device="meta"), E)
    with pytest.raises(RuntimeError, match="matrix_b has 4 experts, n_experts=5"):
        ipex_like.ops.fused_moe_gemm_persistent.moe(a, w, None, torch.empty(8, device="meta"), 5)
    rows, offsets = ipex_like.ops.moe_rows_counts.moe(torch.empty(3, 2, device="meta"), 0, 9)
    assert (rows.shape, rows.dtype, offsets.shape) == ((16,), torch.int32, (3, 2))


def test_a_different_schema_is_left_without_a_fake():
    # IPEX 2.8's fused_moe_gemm took neither scales nor vnni_transform.
    old = ["fused_moe_gemm.moe(Tensor _0, Tensor _1, Tensor _2, Tensor _3, int _4) -> Tensor _0"]
    lib = ipex_like_library(
        old, [lambda a, b, rows, rows_host, n: _grouped_gemm(a, b, None, rows_host)]
    )
    try:
        with pytest.warns(UserWarning, match="fused_moe_gemm.moe is .* written for"):
            assert ipex.register(lib.ns, lib=lib.fakes) == []
        assert audit(lib.ns)[0].fake is None
    finally:
        lib.close()


def test_an_existing_fake_is_kept(ipex_like):
    def own(a, b, trans_b, b_scale, bias):
        return a.new_empty((*a.shape[:-1], b.shape[0] if trans_b else b.shape[1]))

    torch.library.register_fake(f"{ipex_like.ns}::fp8_gemm_w8a16.xpu", own, lib=ipex_like.fakes)
    assert f"{ipex_like.ns}::fp8_gemm_w8a16.xpu" not in ipex.register(
        ipex_like.ns, lib=ipex_like.fakes
    )
    entry = torch._library.simple_registry.singleton.find(f"{ipex_like.ns}::fp8_gemm_w8a16.xpu")
    assert entry.fake_impl.kernel.source.startswith(__file__)


def _moe_step(ops):
    """An fp8 linear, then the fused-MoE pipeline the way IPEX's MoE layer calls it."""

    def step(x, w_proj, scale, gating, w13, w13_scale, w2, w2_scale):
        h = ops.fp8_gemm_w8a16.xpu(x, w_proj, True, scale, None)
        weights, ids = ops.grouped_topk.moe(h, gating, TOP_K, False, 2, 1, "softmax", None)
        rows, offsets = ops.moe_rows_counts.moe(ids, 0, E)
        grouped, slots = ops.moe_scatter.moe(h, rows, ids, offsets, 0, E, TOP_K)
        up = ops.fused_moe_gemm_persistent.moe(grouped, w13, w13_scale, rows, E)
        act = torch.nn.functional.silu(up[:, :N]) * up[:, N:]
        down = ops.fused_moe_gemm_persistent.moe(act, w2, w2_scale, rows, E)
        return ops.moe_gather.moe(down, weights, slots, E, TOP_K, True) + h

    return step


def test_compiled_fullgraph_moe_step_only_after_registration(ipex_like):
    step = _moe_step(ipex_like.ops)
    torch.manual_seed(0)
    args = (
        torch.randn(TOKENS, K, dtype=torch.bfloat16),
        _weights(K, K),
        torch.rand(K) + 0.5,
        torch.randn(TOKENS, E),
        _weights(E, K, 2 * N),
        torch.rand(E) + 0.5,
        _weights(E, N, K),
        torch.rand(E) + 0.5,
    )
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="fake"):
        torch.compile(step, fullgraph=True)(*args)

    ipex.register(ipex_like.ns, lib=ipex_like.fakes)

    torch._dynamo.reset()
    # Inductor computes silu(up) * up in fp32 and rounds once; eager rounds each op to bf16.
    # Those roundings add up across the down projection's sum, so an output element can be off
    # by a few bf16 steps of the largest output, whatever its own size: the bound is 2 such steps
    # (60 seeds tried: at most 1.2).
    compiled = torch.compile(step, fullgraph=True)(*args)
    eager = step(*args)
    scale = eager.abs().max().item()
    torch.testing.assert_close(compiled, eager, atol=2 * 2**-7 * scale, rtol=0)
