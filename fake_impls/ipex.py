"""Fake kernels for intel-extension-for-pytorch's XPU ops on the fp8-linear and fused-MoE paths.

IPEX registers these ops with an XPU kernel and nothing else, so FakeTensorMode cannot run them
and torch.compile stops at every call ("Operator does not support running with fake tensors"):
an fp8 or MoE model on XPU then has to run eagerly.

IPEX infers each schema from the C++ signature of its kernel (arguments named ``_0``, ``_1``, ...,
no alias annotations). Every fake here allocates what that kernel allocates (shape, dtype, device,
and for fp8_gemm_w8a16 the strides it derives from its input's), as of IPEX 2.9 and 2.10 for XPU,
and checks what the kernel checks, so a bad call fails at trace time with the op's name.

A fake is attached only where the op exists with exactly the argument and return types it was
written for and has no fake yet; another signature (another IPEX version) is reported with a
warning and left without one, because a fake that guesses is worse than a graph break.

Left out on purpose:

* ``topk_softmax.moe`` and ``moe_sum.moe`` write into arguments that their schemas do not declare
  as written (``Tensor``, not ``Tensor(a!)``) and return nothing. Given a fake, a compiler would
  take them for pure calls with unused results and could drop or reorder them. They need the
  mutation declared in the schema (upstream, or by a wrapper op), not a fake.
* ``fp8_gemm.Tensor`` transposes its inputs in place when ``trans_A``/``trans_B`` is set, a change
  of input metadata that no schema can declare.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .audit import fake_kernel
from .register import resolve_op

__all__ = ["FAKES", "NAMESPACE", "register", "register_if_installed", "schema"]

NAMESPACE = "torch_ipex"
PACKAGE = "intel_extension_for_pytorch"


def _check(cond, op: str, message: str) -> None:
    torch._check(cond, lambda: f"{NAMESPACE}.{op}: {message}")


def _aligned8(n):
    # The MoE kernels keep per-expert arrays padded to a multiple of 8 experts.
    return (n + 7) // 8 * 8


def _fp8_gemm_w8a16(a, b, trans_b, b_scale, bias):
    op = "fp8_gemm_w8a16"
    _check(a.dim() in (2, 3), op, f"A must be 2-D or 3-D, got {a.dim()}-D")
    _check(b.dim() == 2, op, f"B must be 2-D, got {b.dim()}-D")
    k, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    _check(a.shape[-1] == k, op, f"A has K={a.shape[-1]} but B (trans_B={trans_b}) has K={k}")
    # The kernel keeps A's layout: every stride but the last is rescaled from K to N columns.
    strides = [s // a.shape[-1] * n for s in a.stride()[:-1]] + [a.stride(-1)]
    return a.new_empty_strided((*a.shape[:-1], n), strides)


def _check_moe_gemm(op, a, b, rows_for_experts, n_experts):
    _check(a.dim() == 2, op, f"matrix_a must be 2-D [tokens, K], got {a.dim()}-D")
    _check(b.dim() == 3, op, f"matrix_b must be 3-D [experts, K, N], got {b.dim()}-D")
    _check(b.shape[0] == n_experts, op, f"matrix_b has {b.shape[0]} experts, n_experts={n_experts}")
    _check(b.shape[1] == a.shape[1], op, f"matrix_b has K={b.shape[1]}, matrix_a K={a.shape[1]}")
    _check(
        rows_for_experts.shape[0] == _aligned8(b.shape[0]),
        op,
        f"rows_for_experts has {rows_for_experts.shape[0]} entries, expected "
        f"{_aligned8(b.shape[0])} (experts rounded up to a multiple of 8)",
    )
    return a.new_empty((a.shape[0], b.shape[2]))


def _fused_moe_gemm(a, b, b_scale_inv, vnni_transform, rows, rows_host, n_experts):
    return _check_moe_gemm("fused_moe_gemm", a, b, rows, n_experts)


def _fused_moe_gemm_persistent(a, b, b_scale_inv, rows, n_experts):
    return _check_moe_gemm("fused_moe_gemm_persistent", a, b, rows, n_experts)


def _int32(like: torch.Tensor, *shape) -> torch.Tensor:
    return like.new_empty(shape, dtype=torch.int32)


def _grouped_topk(hidden, gating, n_topk, renormalize, n_group, n_topk_group, scoring, bias):
    op = "grouped_topk"
    _check(gating.dim() == 2, op, f"gating_output must be 2-D, got {gating.dim()}-D")
    _check(
        hidden.shape[0] == gating.shape[0],
        op,
        f"hidden_states has {hidden.shape[0]} tokens, gating_output {gating.shape[0]}",
    )
    if bias is not None:
        _check(
            bias.shape[0] == gating.shape[1],
            op,
            f"bias has {bias.shape[0]} entries, gating_output {gating.shape[1]} experts",
        )
    weights = gating.new_empty((gating.shape[0], n_topk), dtype=torch.float32)
    return weights, _int32(gating, gating.shape[0], n_topk)


def _moe_rows_counts(topk_ids, experts_offset, n_experts_local):
    _check(topk_ids.dim() == 2, "moe_rows_counts", f"topk ids must be 2-D, got {topk_ids.dim()}-D")
    return _int32(topk_ids, _aligned8(n_experts_local)), _int32(topk_ids, *topk_ids.shape)


def _moe_scatter(activation, rows, topk_ids, expert_offsets, experts_offset, n_local, n_topk):
    op = "moe_scatter"
    _check(activation.dim() == 2, op, f"activation must be 2-D, got {activation.dim()}-D")
    n_tokens, channels = activation.shape
    reordered = activation.new_empty((n_tokens * n_topk, channels))
    return reordered, _int32(activation, n_tokens, n_topk)


def _moe_gather(moe_output, scores, mapped_slot, n_experts, n_topk, normalize):
    return moe_output.new_empty((scores.shape[0], moe_output.shape[1]))


# overload name -> (signature as IPEX infers it, fake)
FAKES: dict[str, tuple[str, Callable[..., Any]]] = {
    "fp8_gemm_w8a16.xpu": (
        "(Tensor _0, Tensor _1, bool _2, Tensor? _3, Tensor? _4) -> Tensor _0",
        _fp8_gemm_w8a16,
    ),
    "fused_moe_gemm.moe": (
        "(Tensor _0, Tensor _1, Tensor? _2, bool? _3, Tensor _4, Tensor _5, int _6) -> Tensor _0",
        _fused_moe_gemm,
    ),
    "fused_moe_gemm_persistent.moe": (
        "(Tensor _0, Tensor _1, Tensor? _2, Tensor _3, int _4) -> Tensor _0",
        _fused_moe_gemm_persistent,
    ),
    "grouped_topk.moe": (
        "(Tensor _0, Tensor _1, int _2, bool _3, int _4, int _5, str _6, Tensor? _7)"
        " -> (Tensor _0, Tensor _1)",
        _grouped_topk,
    ),
    "moe_rows_counts.moe": (
        "(Tensor _0, int _1, int _2) -> (Tensor _0, Tensor _1)",
        _moe_rows_counts,
    ),
    "moe_scatter.moe": (
        "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, int _4, int _5, int _6)"
        " -> (Tensor _0, Tensor _1)",
        _moe_scatter,
    ),
    "moe_gather.moe": (
        "(Tensor _0, Tensor _1, Tensor _2, int _3, int _4, bool _5) -> Tensor _0",
        _moe_gather,
    ),
}


def schema(name: str) -> str:
    """The schema the fake for ``name`` (e.g. ``"moe_gather.moe"``) was written for."""
    return name + FAKES[name][0]


def _types(s: torch._C.FunctionSchema) -> tuple:
    args = tuple((str(a.type), a.kwarg_only, a.alias_info is not None) for a in s.arguments)
    return args, tuple((str(r.type), r.alias_info is not None) for r in s.returns)


def register(namespace: str = NAMESPACE, lib: torch.library.Library | None = None) -> list[str]:
    """Give each op of :data:`FAKES` found in ``namespace`` its fake; returns the ops given one.

    Skipped: ops the namespace does not define, ops that already have a fake, and ops whose
    schema differs from the expected one (with a warning naming both schemas).
    """
    registered = []
    for name, (_, fake) in FAKES.items():
        qualified = f"{namespace}::{name}"
        try:
            op = resolve_op(qualified)
        except (AttributeError, RuntimeError, ValueError):
            continue
        expected = torch._C.parse_schema(f"{namespace}::{schema(name)}")
        if _types(op._schema) != _types(expected):
            warnings.warn(
                f"{qualified} is {op._schema}, but its fake was written for {expected}; "
                "not registered (torch.compile will graph-break at this op)",
                stacklevel=2,
            )
            continue
        if fake_kernel(op) is not None:
            continue
        torch.library.register_fake(qualified, fake, lib=lib)
        registered.append(qualified)
    return registered


def register_if_installed() -> list[str]:
    """:func:`register` for IPEX's own namespace, if IPEX is installed; never a hard dependency."""
    if importlib.util.find_spec(PACKAGE) is None:
        return []
    try:
        importlib.import_module(PACKAGE)
    except Exception as e:  # a broken install must not break importing us
        warnings.warn(
            f"{PACKAGE} is installed but failed to import ({e}); no fakes registered for it",
            stacklevel=2,
        )
        return []
    return register()
