"""Cases for the Triton grouped GEMM (both roles, both 16-bit tiles) against float32 torch.

Run as a script (``TRITON_INTERPRET=1`` on a CPU, the tests do), it launches the kernel itself
and exits 1 naming every case whose rows differ from the reference. The cases straddle the
switch between the two tiles (fewer than ``LARGE_FROM_ROWS_PER_EXPERT`` rows per expert on
average, or not) and include the most tiles the few-rows launch can need below it."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

HIDDEN, INTER = 64, 48  # columns past a tile's edge, and a k-loop with a partial last block
# Wider than every tile (gate_up's 128 columns, down's 256), so each role sweeps two column
# tiles, the second partial: a tile order that mixes up row and column tiles shows here.
WIDE = 272, 136
# (rows per expert, (hidden, intermediate)): sorted pairs; rows past their sum are padding the
# kernels must not touch
CASES = [
    ([3, 0, 70, 20], (HIDDEN, INTER)),  # few rows: the 64-row tile runs
    ([65, 65, 65, 188], (HIDDEN, INTER)),  # 383 rows, one short of the switch: 9 64-row tiles
    ([96, 96, 96, 96], (HIDDEN, INTER)),  # exactly at the switch: the 128-row tile runs
    ([100, 150, 0, 140], (HIDDEN, INTER)),
    ([100, 120], WIDE),  # many rows in 2 row tiles (at most 4 launched): fewer than a group (8)
    # last tiles of 65, 64 and 64 rows: a tile of half the rows would hold all but one of them
    ([193, 192, 64], (HIDDEN, INTER)),
]
PADDING = 17


def inputs(counts: list[int], hidden: int, inter: int, device):
    g = torch.Generator().manual_seed(sum(counts))
    experts, routed = len(counts), sum(counts)
    tokens = routed // 2 + 1
    # x starts 6 bytes into its storage: the kernels read it by pointer, and the copy engine
    # only its gathered copy, so the persistent kernel still serves it
    x = torch.randn(tokens * hidden + 3, generator=g).to(torch.float16)[3:].view(tokens, hidden)
    gate_up = (torch.randn(experts, 2 * inter, hidden, generator=g) / 8).to(torch.float16)
    down = (torch.randn(experts, hidden, inter, generator=g) / 8).to(torch.float16)
    rows = torch.randint(0, tokens, (routed + PADDING,), generator=g)
    ends = torch.tensor(counts).cumsum(0).to(torch.int32)
    dest = torch.randperm(routed + PADDING, generator=g)
    scale = torch.rand(routed + PADDING, generator=g)
    moved = [t.to(device) for t in (gate_up, down, rows, ends, dest, scale)]
    return [x if x.device == torch.device(device) else x.to(device), *moved]


def expected(x, gate_up, down, rows, ends, dest, scale):
    """(act, out) rows of the routed pairs in float32; padding rows are left out."""
    inter = gate_up.shape[1] // 2
    act = torch.zeros(rows.shape[0], inter)
    out = torch.zeros(rows.shape[0], x.shape[1])
    start = 0
    for e, end in enumerate(ends.tolist()):
        h = x[rows[start:end]].float() @ gate_up[e].float().T
        a = (F.silu(h[:, :inter]) * h[:, inter:]).half().float()  # stored in 16 bits
        act[start:end] = a
        out[dest[start:end]] = scale[start:end, None] * (a @ down[e].float().T)
        start = end
    return act, out


def mismatches(gate_up_silu, down_scatter, device) -> list[str]:
    bad = []
    for counts, (hidden, inter) in CASES:
        x, gate_up, down, rows, ends, dest, scale = inputs(counts, hidden, inter, device)
        want_act, want_out = expected(
            *(t.cpu() for t in (x, gate_up, down, rows, ends, dest, scale))
        )
        routed = sum(counts)
        act = gate_up_silu(x, rows, gate_up, ends).float().cpu()
        out = down_scatter(want_act.half().to(device), down, ends, dest, scale).float().cpu()
        kept = dest[:routed].cpu()
        for name, got, want in (("act", act[:routed], want_act[:routed]),
                                ("out", out[kept], want_out[kept])):  # fmt: skip
            if not torch.allclose(got, want, rtol=2e-2, atol=2e-2):
                worst = (got - want).abs().max().item()
                case = f"rows per expert {counts}, hidden {hidden}, intermediate {inter}"
                bad.append(f"{case}: {name} off by up to {worst:.3g}")
    return bad


def _scalar_loop_bounds_in_the_interpreter() -> None:
    """Triton's interpreter holds a scalar argument as a one-element array and converts it with
    ``int()``, which NumPy >= 2.4 refuses for arrays with a dimension; the kernel's k-loop runs
    to the argument K. Convert through ``.item()`` instead (this process only)."""
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


if __name__ == "__main__":
    from compile_ops.moe import triton_grouped_gemm as tg
    from compile_ops.moe import triton_tma_gemm as ttg

    _scalar_loop_bounds_in_the_interpreter()

    class Counted:
        """A kernel that counts its launches."""

        def __init__(self, kernel):
            self.kernel, self.launches = kernel, 0

        def __getitem__(self, grid):
            self.launches += 1
            return self.kernel[grid]

    failed = []
    # With the persistent TMA kernel for the many-rows counts (three programs, so that each
    # walks several tiles), then the pointer tiles alone: in this order no earlier call has left
    # the right values in the memory a later output is allocated from.
    counted = Counted(ttg.persistent_grouped_gemm_kernel)
    for persistent in (tg.Persistent(counted, ttg.gather_rows_kernel, 3), None):

        def gate_up_silu(*a):
            return tg.launch_gate_up_silu(tg.grouped_gemm_kernel, *a, persistent)  # noqa: B023

        def down_scatter(*a):
            return tg.launch_down_scatter(tg.grouped_gemm_kernel, *a, persistent)  # noqa: B023

        where = "persistent" if persistent else "pointer tiles"
        failed += [f"{where}: {m}" for m in mismatches(gate_up_silu, down_scatter, "cpu")]
    if counted.launches != 2 * len(CASES):  # once in each role: no case fell back
        failed.append(f"persistent kernel launched {counted.launches}x, not {2 * len(CASES)}x")
    print("\n".join(failed) or f"{len(CASES)} cases equal")
    sys.exit(1 if failed else 0)
