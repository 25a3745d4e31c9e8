"""Everything the collective benchmarks need from one GPU, in one run of a few minutes.

    python3 benchmarks/overhead_gpu.py            # from the repository root; results under $OUT

World 1 over NCCL: latency of every op (raw c10d, functional collectives, ours eager, compiled and
replayed from a CUDA graph) from 4 KiB to 256 MiB in bf16 and fp32; the compiled overhead of each
collective; the eager per-call cost of a tiny all_reduce; and profiles of a compiled call (torch
profiler tables and trace, cProfile, Inductor's generated code). Extra arguments go to
``compile-ops bench`` (for instance ``--quick`` to try the script on CPU).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compile_ops import cli

if __name__ == "__main__":
    out = os.environ.get("OUT", "bench-out")
    sys.exit(cli.main(["bench", "--out", out, "--profile", *sys.argv[1:]]))
