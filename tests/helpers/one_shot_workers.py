"""The one-shot all_to_all on the ranks of a GPU world (module level, so it pickles).

Every result is compared with NCCL's ``all_to_all_single`` of the same input, bit for bit: the
exchange only moves bytes.
"""

import torch
import torch.distributed as dist

import compile_ops  # noqa: F401  (defines the ops)
from compile_ops.moe import Layout, make_manager
from compile_ops.moe.one_shot import one_shot_all_to_all

from .workers import raises

# (rows per peer, columns, dtype): a bf16 wire row of the decode shape (4-byte words), float32,
# and rows of 3 bytes (moved byte by byte); sizes from one program to many.
CASES = [
    (8, 2072, torch.bfloat16),
    (1, 2072, torch.bfloat16),
    (64, 2048, torch.bfloat16),
    (5, 7, torch.float32),
    (3, 3, torch.uint8),
]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def _input(rows: int, cols: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(_device()).manual_seed(seed * 7919 + dist.get_rank())
    shape = (dist.get_world_size() * rows, cols)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, device=_device(), dtype=dtype)
    return torch.randn(shape, generator=g, device=_device()).to(dtype)


def _nccl(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x)
    return out


def exchanges(rounds: int) -> dict:
    """Every case, interleaved for ``rounds`` rounds (the flags of every buffer reused), eager
    and compiled, then a captured graph replayed with fresh inputs."""
    name = dist.group.WORLD.group_name
    mismatches = []
    compiled = torch.compile(lambda x: one_shot_all_to_all(x, name) + 0, fullgraph=True)
    for r in range(rounds):
        for i, (rows, cols, dtype) in enumerate(CASES):
            x = _input(rows, cols, dtype, seed=r * len(CASES) + i)
            want = _nccl(x)
            if not torch.equal(one_shot_all_to_all(x, name), want):
                mismatches.append(("eager", r, rows, cols, str(dtype)))
            if dtype != torch.uint8 and not torch.equal(compiled(x), want):
                mismatches.append(("compiled", r, rows, cols, str(dtype)))

    rows, cols, dtype = CASES[0]
    static = _input(rows, cols, dtype, seed=1000)
    one_shot_all_to_all(static, name)  # its buffer exists before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = one_shot_all_to_all(static, name)
    for r in range(rounds):
        static.copy_(_input(rows, cols, dtype, seed=2000 + r))
        graph.replay()
        if not torch.equal(result, _nccl(static)):
            mismatches.append(("replayed", r, rows, cols, str(dtype)))

    late = torch.cuda.CUDAGraph()
    fresh = _input(11, 5, torch.float32, seed=3000)  # a size never exchanged before
    with torch.cuda.graph(late):
        first_in_capture = raises(one_shot_all_to_all, fresh, name)
    torch.cuda.synchronize()
    op = torch.ops.compile_ops_moe.one_shot_all_to_all.default
    checks = torch.library.opcheck(op, (_input(rows, cols, dtype, seed=4000), name))
    return {"mismatches": mismatches, "first_in_capture": first_in_capture, "opcheck": checks}


def back_to_back(calls: int, single_buffer: bool = False) -> int:
    """Calls queued without a host wait, the ranks drifting apart: before each, every rank
    sleeps a random while and, half the time, starts a matrix product on a side stream that
    competes with the exchange for the SMs (its copy-out slows down). Returns how many results
    differ from NCCL's.

    ``single_buffer`` is the variant without the two halves (its call count reset before every
    call): a rank then may write into the half a slower peer is still copying out.
    """
    from compile_ops.moe import one_shot

    name = dist.group.WORLD.group_name
    rows, cols = 2048, 2048  # 8 MiB per peer: the copy-out takes many steps per program
    inputs = [_input(rows, cols, torch.bfloat16, seed=5000 + c) for c in range(calls)]
    one_shot_all_to_all(inputs[0], name)  # creates the buffer
    (ws,) = [w for (_, _, n), w in one_shot._workspaces.items() if n == inputs[0].nbytes]
    g = torch.Generator().manual_seed(dist.get_rank())
    side, a = torch.cuda.Stream(), torch.randn(4096, 4096, device=_device(), dtype=torch.bfloat16)
    outs = []
    torch.cuda.synchronize()
    for x in inputs:
        torch.cuda._sleep(int(torch.randint(0, 20000, (), generator=g)))
        if torch.rand((), generator=g) < 0.5:
            with torch.cuda.stream(side):
                a @ a
        if single_buffer:
            ws.calls.zero_()
        outs.append(one_shot_all_to_all(x, name))
    torch.cuda.synchronize()
    return sum(not torch.equal(out, _nccl(x)) for out, x in zip(outs, inputs, strict=True))


def mismatched_sizes():
    """Each rank passes a shape of its own (both new): every rank raises, naming the sizes."""
    x = _input(2 + dist.get_rank(), 8, torch.float32, seed=6000)
    return raises(one_shot_all_to_all, x, dist.group.WORLD.group_name)


def manager_choice() -> dict:
    """What the capacity all_to_all manager picks on this world, and what it refuses."""
    device = _device()
    ep = Layout.ep(None)
    return {
        "default": make_manager("all_to_all", ep, 8, device, max_tokens_per_rank=4).one_shot,
        "off": make_manager(
            "all_to_all", ep, 8, device, max_tokens_per_rank=4, one_shot=False
        ).one_shot,
    }
