"""Registers, spills and shared memory of the MoE Triton kernels, compiled for a GPU target on any
machine: the grouped GEMM (compile_ops/moe/triton_grouped_gemm.py) for every tile it launches
(with the persistent TMA tile of triton_tma_gemm.py on sm_90 and newer), the capacity
all_to_all send-buffer kernel (triton_peer_pack.py) at a decode shape, and its one-shot
exchange (triton_one_shot.py).
Triton lowers the kernel to PTX and its own ptxas reports the resources (no GPU needed).

    python3 benchmarks/moe_kernel_resources.py              # sm_90 (H100, H200), bf16 and fp32
    python3 benchmarks/moe_kernel_resources.py --arch 100 --json

A kernel at the 255-register cap that spills keeps part of its live state in local memory (read
through L1/L2), and a k-loop without async copies waits on every load: that is what this is for.
The kernels are compiled with the alignment facts Triton's launcher gives them at run time.
The shape only sets the EVEN_K/EVEN_N variants; the defaults are DeepSeek-V2-Lite's (hidden
2048, intermediate 1408, 64 experts; the send buffer at top-6, two ranks, 64 tokens per rank).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compile_ops.moe import triton_grouped_gemm as tg
from compile_ops.moe import triton_one_shot as tos
from compile_ops.moe import triton_peer_pack as tpp
from compile_ops.moe import triton_tma_gemm as ttg

POINTERS = ("a_ptr", "w_ptr", "ends_ptr", "rows_ptr", "dest_ptr", "scale_ptr", "out_ptr")
SCALARS = ("num_m", "N", "K", "stride_a", "stride_we", "stride_wn", "stride_out")


def _signature(kernel: str, dtype: str, meta: dict) -> dict:
    """Argument types as the ops pass them (rows and dest int64, scale float32, ends int32)."""
    types = {"a_ptr": dtype, "w_ptr": dtype, "out_ptr": dtype, "ends_ptr": "*i32"}
    types |= {"rows_ptr": "*i64", "dest_ptr": "*i64", "scale_ptr": "*fp32"}
    if kernel == "gate_up":  # ends stands in for what gate_up never reads
        types |= {"dest_ptr": "*i32", "scale_ptr": "*i32"}
    else:
        types["rows_ptr"] = "*i32"
    sig = {name: types[name] for name in POINTERS} | {name: "i32" for name in SCALARS}
    return sig | {name: "constexpr" for name in meta}


def _specialized(fn, sig: dict, ints: dict) -> dict:
    """The alignment facts Triton's launcher gives the compiler at run time, which a kernel
    compiled from its source alone lacks: every pointer (torch's allocations) and every integer
    argument whose value is a multiple of 16 is divisible by 16. Without them loads are not
    vectorised and the k-loop is not pipelined, so registers and spills differ from the run."""
    aligned = {
        name
        for name, kind in sig.items()
        if kind.startswith("*") or (name in ints and ints[name] % 16 == 0)
    }
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}


def resources(kernel: str, dtype: str, cfg: tg.TileConfig, shape: dict, arch: int) -> dict:
    """ptxas's report for one tile of ``kernel`` ("gate_up" or "down")."""
    n, k = (shape["intermediate"], shape["hidden"])[:: 1 if kernel == "gate_up" else -1]
    meta = tg.kernel_constants(kernel, cfg, 1, shape["experts"], n, k)
    rows_per_weight = 2 * n if kernel == "gate_up" else n
    ints = {"N": n, "K": k, "stride_a": k, "stride_we": rows_per_weight * k, "stride_wn": k}
    ints["stride_out"] = n  # num_m (row tiles) depends on the routing: no fact
    sig = _signature(kernel, dtype, meta)
    attrs = _specialized(tg.grouped_gemm_kernel, sig, ints)
    source = ASTSource(tg.grouped_gemm_kernel, sig, constexprs=meta, attrs=attrs)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    report = _ptxas_report(triton.compile(source, target=_target(arch), options=options), arch)
    return {
        "kernel": kernel,
        "dtype": dtype.lstrip("*"),
        "tile": "x".join(map(str, cfg[:3])) + f" w{cfg.num_warps} s{cfg.num_stages}",
        **report,
    }


def persistent_resources(kernel: str, shape: dict, arch: int) -> dict:
    """ptxas's report for the persistent TMA tile of ``kernel`` in bfloat16, and its copies:
    TMA tile loads (``cp.async.bulk.tensor``) and tensor-core products (``wgmma``) in the PTX."""
    cfg, flatten = tg.PERSISTENT_CONFIGS[kernel]
    gate_up, large_from = kernel == "gate_up", tg.LARGE_FROM_ROWS_PER_EXPERT
    n, k = (shape["intermediate"], shape["hidden"])[:: 1 if gate_up else -1]
    meta = ttg.kernel_constants(cfg, flatten, shape["experts"], gate_up, 132, large_from)
    sig = {"a_ptr": "*bf16", "w_ptr": "*bf16", "ends_ptr": "*i32", "dest_ptr": "*i64"}
    sig |= {"scale_ptr": "*fp32", "out_ptr": "*bf16"}
    sig |= dict.fromkeys(("M", "N", "K", "stride_out", "W_ROWS"), "i32")
    sig |= dict.fromkeys(meta, "constexpr")
    w_rows = 2 * n if gate_up else n
    ints = {"N": n, "K": k, "stride_out": n, "W_ROWS": w_rows}
    fn = ttg.persistent_grouped_gemm_kernel
    source = ASTSource(fn, sig, constexprs=meta, attrs=_specialized(fn, sig, ints))
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    compiled = triton.compile(source, target=_target(arch), options=options)
    ptx = compiled.asm["ptx"]
    tile = "x".join(map(str, cfg[:3])) + f" w{cfg.num_warps} s{cfg.num_stages} persistent"
    return {
        "kernel": kernel,
        "dtype": "bf16",
        "tile": tile,
        **_ptxas_report(compiled, arch),
        "tma_loads": ptx.count("cp.async.bulk.tensor"),
        "wgmma": ptx.count("wgmma.mma_async"),
    }


def peer_pack_resources(arch: int, k: int = 6, ranks: int = 2, per_rank: int = 64) -> dict:
    """ptxas's report for the send-buffer kernel with a 16-bit wire."""
    scalars = ("n_tokens", "n_experts", "hidden", "stride_x", "stride_wire")
    sig = {"x_ptr": "*bf16", "ids_ptr": "*i64", "weights_ptr": "*fp32", "owners_ptr": "*i1"}
    sig |= {"wire_ptr": "*bf16", "back_ptr": "*i64"} | {name: "i32" for name in scalars}
    meta = tpp.kernel_constants(k, ranks, per_rank, per_rank, 2)
    sig |= dict.fromkeys(meta, "constexpr")
    ints = {"hidden": 2048, "stride_x": 2048, "stride_wire": 2048 + 4 * k}
    attrs = _specialized(tpp.peer_pack_kernel, sig, ints)
    source = ASTSource(tpp.peer_pack_kernel, sig, constexprs=meta, attrs=attrs)
    compiled = triton.compile(source, target=_target(arch), options={"num_warps": tpp.NUM_WARPS})
    tile = f"{tpp.BLOCK_T}x{tpp.BLOCK_H} w{tpp.NUM_WARPS}"
    return {"kernel": "peer_pack", "dtype": "bf16", "tile": tile, **_ptxas_report(compiled, arch)}


def one_shot_resources(arch: int, ranks: int = 2) -> dict:
    """ptxas's report for the one-shot exchange, 4-byte words, and the PTX's system-scope flag
    atomics (a release to set a peer's flag, an acquire to take one's own)."""
    sig = {"x_ptr": "*i32", "out_ptr": "*i32", "buffer_ptrs": "*i64", "signal_ptrs": "*i64"}
    sig["calls_ptr"] = "*i32"
    sig |= {"rank": "i32", "per_peer": "i32"}
    meta = {"N_RANKS": ranks, "RANKS_POW2": triton.next_power_of_2(ranks), "BLOCK": tos.BLOCK}
    sig |= dict.fromkeys(meta, "constexpr")
    attrs = _specialized(tos.one_shot_all_to_all_kernel, sig, {})
    source = ASTSource(tos.one_shot_all_to_all_kernel, sig, constexprs=meta, attrs=attrs)
    compiled = triton.compile(source, target=_target(arch), options={"num_warps": tos.NUM_WARPS})
    ptx = compiled.asm["ptx"]
    atomics = {
        "release_sys_cas": len(re.findall(r"atom\.(?:\w+\.)*release\.sys(?:\.\w+)*\.cas", ptx)),
        "acquire_sys_cas": len(re.findall(r"atom\.(?:\w+\.)*acquire\.sys(?:\.\w+)*\.cas", ptx)),
    }
    tile = f"{tos.BLOCK} w{tos.NUM_WARPS}"
    report = _ptxas_report(compiled, arch)
    return {"kernel": "one_shot", "dtype": "i32", "tile": tile, **report, **atomics}


def _target(arch: int) -> GPUTarget:
    return GPUTarget("cuda", arch, 32)


def _ptxas_report(compiled, arch: int) -> dict:
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        command = [triton.knobs.nvidia.ptxas.path, "-v", f"--gpu-name=sm_{arch}{suffix}", str(ptx)]
        command += ["-o", str(Path(tmp) / "kernel.cubin")]
        report = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    number = lambda pattern: int(re.search(pattern, report).group(1))  # noqa: E731
    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "shared_bytes": compiled.metadata.shared,
        "pipelined_loads": compiled.asm["ttgir"].count("async_copy_global_to_local"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90)")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    for name, default in (("hidden", 2048), ("intermediate", 1408), ("experts", 64)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)
    shape = {"hidden": args.hidden, "intermediate": args.intermediate, "experts": args.experts}
    rows = []
    every = [
        (lambda d=dtype, k=kernel, c=cfg: resources(k, f"*{d}", c, shape, args.arch))
        for dtype in args.dtypes.split(",")
        for kernel in ("gate_up", "down")
        for cfg in tg.CONFIGS[(kernel, 4 if dtype == "fp32" else 2)]
    ]
    if "bf16" in args.dtypes.split(",") and args.arch >= 90:
        every += [
            (lambda k=kernel: persistent_resources(k, shape, args.arch))
            for kernel in ("gate_up", "down")
        ]
    every += [lambda: peer_pack_resources(args.arch), lambda: one_shot_resources(args.arch)]
    for measure in every:
        rows.append(measure())
        if not args.json:
            r = rows[-1]
            print(
                f"{r['kernel']:9} {r['dtype']:5} {r['tile']:22} {r['registers']:4d} regs  "
                f"spill {r['spill_stores']:5d} B stored, {r['spill_loads']:5d} B loaded  "
                f"shared {r['shared_bytes']:6d} B  async copies {r['pipelined_loads']}"
                + (f"  TMA loads {r['tma_loads']}  wgmma {r['wgmma']}" if "wgmma" in r else ""),
                flush=True,
            )
    if args.json:
        print(json.dumps({"arch": args.arch, "shape": shape, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
