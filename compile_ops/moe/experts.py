"""Grouped expert compute: only the routed (row, expert) pairs, grouped by expert on the device.

For ``R`` rows routed to ``k`` experts each there are ``P = R * k`` pairs. They are sorted by
local expert, the pairs of experts held elsewhere (and padding rows, whose ids are out of range)
going to a group past the last local expert; the group ends come from a ``searchsorted`` of the
sorted keys. All of it stays on the device: no value is read back, and every shape is a
function of ``R`` alone, so one compiled graph (or captured device graph) serves any routing.

Then one grouped GEMM for gate_up, SiLU-and-multiply, one grouped GEMM for down, and the
weighted sum of each row's ``k`` outputs, in float32. Activation memory is ``O(P * (2I + H))``:
nothing is ever ``[rows, local experts, ...]``.

Three implementations (``EXPERTS_IMPLS``), one choice per block (``experts_impl=``):

* ``"triton"``: the pairs grouped by a Triton counting sort (triton_group_pairs.py, the same
  order), then two Triton kernels (triton_grouped_gemm.py) that gather the rows in the
  prologue, apply SiLU-and-multiply (gate_up) or the routing weight (down) in the epilogue.
* ``"grouped_mm"``: ``torch._grouped_mm`` (bfloat16; CUDA and CPU), glue compiled by Inductor.
* ``"portable"``: any device and dtype; a custom op multiplies group by group, reading the
  group ends on the host (on the CPU that read costs nothing).

``"auto"`` (:func:`resolve_experts_impl`) picks by device and dtype, from measurements recorded
in docs/moe.md.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

EXPERTS_IMPLS = ("auto", "triton", "grouped_mm", "portable")


class Grouping(NamedTuple):
    """The routed pairs sorted by local expert.

    ``order[s]``: the pair (``row * k + slot``) at sorted position ``s``; ``ends[e]``: sorted
    positions ``[ends[e-1], ends[e])`` are local expert ``e``'s (int32, cumulative); ``valid``
    ``[P]`` in pair order: the pair goes to a local expert.
    """

    order: torch.Tensor
    ends: torch.Tensor
    valid: torch.Tensor


def group_pairs(ids: torch.Tensor, first_expert: torch.Tensor, n_local: int) -> Grouping:
    """Sort the pairs of ``ids`` ``[R, k]`` by local expert (``ids - first_expert``); pairs
    outside ``[0, n_local)`` (other ranks' experts, padding ids such as -1) sort last and
    belong to no group."""
    local = ids.reshape(-1) - first_expert
    valid = routed_here(ids, first_expert, n_local)
    # The narrowest key type: a radix sort makes one pass per key byte (8 for int64).
    key = torch.where(valid, local, n_local).to(_key_dtype(n_local))
    sorted_key, order = torch.sort(key, stable=True)
    bounds = torch.arange(n_local, device=ids.device, dtype=sorted_key.dtype)
    ends = torch.searchsorted(sorted_key, bounds, right=True, out_int32=True)
    return Grouping(order, ends, valid)


def routed_here(ids: torch.Tensor, first_expert: torch.Tensor, n_local: int) -> torch.Tensor:
    """``[P]``: whether each pair of ``ids`` ``[R, k]`` goes to one of this rank's ``n_local``
    experts ``first_expert ..``."""
    local = ids.reshape(-1) - first_expert
    return (local >= 0) & (local < n_local)


def _key_dtype(n_local: int) -> torch.dtype:
    """The narrowest integer type that holds the sort keys ``0 .. n_local``."""
    for dtype in (torch.uint8, torch.int16):
        if n_local <= torch.iinfo(dtype).max:
            return dtype
    return torch.int32


def local_experts(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of ``sum_k weights[:, k] * expert[ids[:, k]](x)``, ``[R, H]`` in
    float32, and the routing mass this rank covered per row, ``[R]`` (the debug check of the
    reduce contract sums it).

    ``expert_ids`` ``[El]`` are the consecutive global ids of the experts packed in ``gate_up``
    ``[El, 2I, H]`` (gate rows, then up rows) and ``down`` ``[El, H, I]`` (whole experts or TP
    slices; see ``compute.pack_local_experts``). Routes to experts held elsewhere, and padding
    rows (any id outside ``expert_ids``), contribute nothing. ``impl``: one of
    ``EXPERTS_IMPLS`` but "auto", resolved; None: resolved here from the weights' device and
    dtype (:func:`resolve_experts_impl`).
    """
    if impl is None:
        impl = resolve_experts_impl(gate_up.device, gate_up.dtype)
    rows, k = ids.shape
    first, n_local = expert_ids[0], expert_ids.shape[0]
    if impl == "triton":
        # needs triton; imported where it is used
        from . import triton_group_pairs as tgp
        from . import triton_grouped_gemm as tg

        token_rows, pairs, scale, ends = tgp.group_pairs(ids, first, weights, n_local)
        valid = routed_here(ids, first, n_local)
        act = tg.gate_up_silu(x, token_rows, gate_up, ends)
        pair_out = tg.down_scatter(act, down, ends, pairs, scale)  # weighted, pair order
        slots = pair_out.view(rows, k, pair_out.shape[-1])
        slot_out = [slots[:, j].float() for j in range(k)]
    else:
        g = group_pairs(ids, first, n_local)
        valid = g.valid
        gmm = _grouped_mm if impl == "grouped_mm" else torch.ops.compile_ops_moe.grouped_mm
        h = gmm(_gather_rows(x, g.order // k), gate_up, g.ends)
        inter = h.shape[-1] // 2
        sorted_out = gmm(F.silu(h[:, :inter]) * h[:, inter:], down, g.ends)
        position = (
            torch.empty_like(g.order)
            .scatter_(0, g.order, torch.arange(g.order.shape[0], device=ids.device))
            .view(rows, k)
        )
        w = weights.float()
        slot_out = [sorted_out[position[:, j]].float() * w[:, j, None] for j in range(k)]
    valid = valid.view(rows, k)
    # Slot by slot, so that the compiler fuses the gathers and the sum into one kernel with no
    # [P, H] float32 buffer. Rows past the last group are never computed (garbage for
    # _grouped_mm, unwritten for Triton): masked, not multiplied.
    y = torch.where(valid[:, 0, None], slot_out[0], 0.0)
    for j in range(1, k):
        y = y + torch.where(valid[:, j, None], slot_out[j], 0.0)
    mass = (weights.float() * valid).sum(-1)
    return y, mass


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` plus one zero row at the end (past every group, so never multiplied).

    The extra row keeps every ``[P, ...]`` tensor non-empty: with no rows at all, Inductor's
    CUDA launcher of a 2D-tiled gather feeding ``torch._grouped_mm`` divides by zero
    (torch 2.11). The padding is fused into the gather; nothing is copied.
    """
    padded = F.pad(x, (0, 0, 0, 1))
    return padded[torch.cat([rows, rows.new_full((1,), x.shape[0])])]


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """``a`` ``[P, K]`` sorted by group times ``b[g].T`` (``b`` ``[G, N, K]``) per group."""
    return torch._grouped_mm(a, b.transpose(-2, -1), offs=ends)


@torch.library.custom_op("compile_ops_moe::grouped_mm", mutates_args=())
def grouped_mm_portable(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """``a`` ``[P, K]`` sorted by group times ``b[g].T`` (``b`` ``[G, N, K]``) for the rows
    ``[ends[g-1], ends[g])`` of group ``g``; rows past ``ends[-1]`` are zero.

    An opaque op (its shape depends only on its inputs'), so that compiled graphs stay free of
    data-dependent shapes; its kernel reads ``ends`` on the host, which costs nothing on a CPU.
    """
    out = a.new_zeros((a.shape[0], b.shape[1]))
    start = 0
    for group, end in enumerate(ends.tolist()):
        if end > start:
            torch.mm(a[start:end], b[group].t(), out=out[start:end])
        start = end
    return out


@grouped_mm_portable.register_fake
def _(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    torch._check(
        a.shape[1] == b.shape[2],
        lambda: f"compile_ops_moe.grouped_mm: a has {a.shape[1]} columns, b[g].T {b.shape[2]} rows",
    )
    return a.new_empty((a.shape[0], b.shape[1]))


def resolve_experts_impl(device: torch.device | str, dtype: torch.dtype) -> str:
    """What ``experts_impl="auto"`` runs for weights of ``dtype`` on ``device``.

    CUDA: the Triton kernels (on an H200 they beat ``torch._grouped_mm`` plus its gather and
    SiLU kernels at 8 of 9 measured shape x token counts, and came within 2% at the ninth;
    docs/moe.md), ``torch._grouped_mm`` for bfloat16 where triton is missing; any other device:
    the portable path.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if triton_available():
            return "triton"
        if dtype == torch.bfloat16 and _has_grouped_mm():
            return "grouped_mm"
    return "portable"


def check_experts_impl(impl: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """``impl`` resolved (``"auto"``) and checked against the weights' device and dtype."""
    device = torch.device(device)
    if impl not in EXPERTS_IMPLS:
        raise ValueError(f"compile_ops.moe: experts_impl={impl!r} is not one of {EXPERTS_IMPLS}")
    if impl == "auto":
        impl = resolve_experts_impl(device, dtype)
    elif impl == "triton" and (device.type != "cuda" or not triton_available()):
        raise ValueError(
            f"compile_ops.moe: experts_impl='triton' needs a CUDA device and triton; the "
            f"weights are on {device}"
        )
    elif impl == "grouped_mm" and (
        dtype != torch.bfloat16 or device.type not in ("cuda", "cpu") or not _has_grouped_mm()
    ):
        raise ValueError(
            "compile_ops.moe: experts_impl='grouped_mm' needs bfloat16 weights on CUDA or the "
            f"CPU (torch._grouped_mm); the weights are {dtype} on {device}"
        )
    if impl == "triton":
        # define the ops before any trace
        from . import triton_group_pairs, triton_grouped_gemm  # noqa: F401
    return impl


def _has_grouped_mm() -> bool:
    return hasattr(torch, "_grouped_mm")


def triton_available() -> bool:
    """Whether triton imports here (the Triton paths need it; the package runs without)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
