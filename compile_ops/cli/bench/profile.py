"""``compile-ops bench --profile``: where a compiled call's host time goes, and its code.

Writes, into ``--out``: Inductor's generated code for each compiled function, torch profiler
tables and a Chrome trace, and cProfile summaries. The copy/clone lines found in the generated
code go into the result (a target: none where the collective's input is dead).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import OPS

if TYPE_CHECKING:
    from .studies import Bench, Result

__all__ = ["copies_in", "profile"]


def copies_in(source: str) -> list[str]:
    """Lines of Inductor's generated ``call()`` that copy or clone a buffer."""
    body = source[source.find("def call(") :]
    body = body[: body.find("\nrunner = ")] if "\nrunner = " in body else body
    return [line.strip() for line in body.splitlines() if re.search(r"clone|copy", line)]


def profile(bench: Bench, out: Result) -> None:
    out_dir = Path(bench.config.profile_dir)
    x = bench.inputs(4 << 10, torch.float32)[0]
    code = _generated_code(bench, out, x)
    tables, summaries = _host_profiles(bench, x, out_dir)
    if bench.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "generated_code.py").write_text("\n\n".join(code))
        (out_dir / "profiler_tables.txt").write_text("\n".join(tables))
        (out_dir / "cprofile.txt").write_text("\n".join(summaries))


def _generated_code(bench: Bench, out: Result, x: torch.Tensor) -> list[str]:
    from torch._inductor.utils import run_and_get_code

    code = []
    for kind, op in [*(("math+ours", op) for op in OPS), ("math+funcol", "all_reduce")]:
        torch._dynamo.reset()  # compile afresh, so that the generated code is captured
        _, sources = run_and_get_code(bench.compiled.get(kind, op), x)
        copies = [line for src in sources for line in copies_in(src)]
        out.generated.append({"fn": f"{kind} {op}", "copies": copies})
        code += [f"# ===== {kind} {op}", *sources]
    return code


def _host_profiles(bench: Bench, x: torch.Tensor, out_dir: Path) -> tuple[list[str], list[str]]:
    tables, summaries = [], []
    activities = list(torch.profiler.supported_activities())
    for kind in ("math", "math+ours", "math+funcol"):
        fn = bench.compiled.get(kind, "all_reduce")
        for _ in range(20):
            fn(x)
        bench.clock.start_together()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(50):
                fn(x)
            bench.clock.sync()
        tables.append(f"===== {kind} all_reduce: 50 calls, 4 KiB fp32")
        tables.append(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))
        if bench.rank == 0 and kind == "math+ours":
            out_dir.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(out_dir / "trace_math_ours.json"))
        bench.clock.start_together()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(2000):
            fn(x)
        bench.clock.sync()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        summaries.append(f"===== {kind} all_reduce: 2000 calls, 4 KiB fp32\n{text.getvalue()}")
    return tables, summaries
