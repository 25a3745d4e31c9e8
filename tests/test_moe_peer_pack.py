"""The capacity all_to_all manager's send buffer (compile_ops/moe/peer_pack.py): its layout, and
the Triton kernel equal to the torch ops bit for bit, on a CPU through Triton's interpreter and on
a GPU compiled."""

from __future__ import annotations

import pytest
import torch
from helpers import peer_pack_cases

from compile_ops.moe import peer_pack as pp


def test_layout_slots_in_token_order_then_padding_and_back_marks_each_token():
    # Four tokens, two ranks of two experts each; blocks of 2 rows per peer.
    x = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3)
    ids = torch.tensor([[0, 2], [1, 0], [1, 3], [0, 1]])
    weights = torch.full((4, 2), 0.5)
    owners = torch.tensor([[True, False], [True, False], [False, True], [False, True]])
    wire, back = pp.peer_pack(x, ids, weights, owners, per_peer=2, per_rank=4)
    # Rank 0 is offered tokens 0, 1, 2, 3 (the last two past its block); rank 1 tokens 0, 2.
    gone, skip = pp.dropped(2, 2), pp.not_sent(2, 2)
    assert back.tolist() == [[0, 2], [1, skip], [gone, 3], [gone, skip]]
    assert torch.equal(wire[:, :3], x[[0, 1, 0, 2]])
    routing = wire[:, 3:].view(torch.float32)
    assert routing.tolist() == [
        [0, 2, 0.5, 0.5],
        [1, 0, 0.5, 0.5],
        [0, 2, 0.5, 0.5],
        [1, 3, 0.5, 0.5],
    ]

    # One token: every block but its first row is padding (zeros, ids -1, weights 0).
    wire, back = pp.peer_pack(x[:1], ids[:1], weights[:1], owners, per_peer=2, per_rank=4)
    assert back.tolist() == [[0, 2]]
    assert wire[[1, 3], :3].eq(0).all()
    assert wire[[1, 3], 3:].view(torch.float32).tolist() == [[-1, -1, 0, 0]] * 2


def test_kernel_matches_torch_ops_in_triton_interpreter():
    """The kernel's logic on a CPU (Triton's interpreter), every case of peer_pack_cases: a
    running count that is off by one, or padding written over a kept row, fails here."""
    pytest.importorskip("triton")
    from helpers.moe_workers import run_interpreted

    out = run_interpreted("peer_pack_cases")
    assert f"{len(peer_pack_cases.CASES)} cases equal" in out


def test_kernel_compiles_for_hopper():
    """No GPU needed: Triton lowers the kernel for sm_90 and its ptxas assembles it."""
    pytest.importorskip("triton")
    from helpers.moe_workers import benchmark_script

    row = benchmark_script("moe_kernel_resources").peer_pack_resources(90)
    assert 0 < row["registers"] <= 255 and row["spill_stores"] == 0, row


def test_traced_kernel_writes_only_its_outputs():
    """torch's analysis of the traced kernel (lowered for sm_90 without a GPU) finds it writes
    ``wire`` and ``back`` alone. An input it counts as written is one the compiled graph
    treats as mutated (copied before the launch where Inductor cannot reinplace the write):
    the routing ids and the owner table were, while the kernel read them through a helper
    whose result addresses its stores."""
    pytest.importorskip("triton")
    from helpers.kernel_writes import traced_writes

    from compile_ops.moe import triton_peer_pack as tpp

    (x, ids, weights, owners), per_peer, per_rank = peer_pack_cases.inputs(
        peer_pack_cases.CASES[4], "cpu"
    )
    writes = traced_writes(
        lambda *args: tpp.peer_pack(*args, per_peer, per_rank), x, ids, weights, owners
    )
    assert writes == [("peer_pack_kernel", {"wire_ptr", "back_ptr"})]


@pytest.mark.gpu
def test_kernel_matches_torch_ops_on_gpu():
    from compile_ops.moe import triton_peer_pack as tpp

    assert peer_pack_cases.mismatches(tpp.peer_pack, "cuda") == []

    # Compiled through a function of its own: compiling the op object compiles
    # CustomOpDef.__call__, whose recompile limit every custom op shares in one process.
    def pack(*args):
        return tpp.peer_pack(*args)

    torch._dynamo.reset()
    compiled = torch.compile(pack, fullgraph=True)
    assert peer_pack_cases.mismatches(compiled, "cuda") == []
    # The op's schema, its fake (the same function on fake tensors) and its dispatch.
    args, per_peer, per_rank = peer_pack_cases.inputs(peer_pack_cases.CASES[1], "cuda")
    torch.library.opcheck(torch.ops.compile_ops_moe.peer_pack, (*args, per_peer, per_rank))
