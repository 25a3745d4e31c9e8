"""``compile-ops bench``'s report: the tables, bus bandwidth, and the targets met or missed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..tables import format_table
from .contenders import VARIANT_TITLES, VARIANTS
from .studies import TINY_ELEMENTS, Result

__all__ = [
    "LARGE",
    "TARGET_DISPATCH_RATIO",
    "TARGET_SLACK_US",
    "Target",
    "bus_bandwidth_gbps",
    "overhead_rows",
    "report",
    "size_label",
    "summary_lines",
    "targets",
]

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
LARGE = 16 * MIB  # from here on a stray copy would show as a clear excess over raw
TARGET_SLACK_US = 5.0  # compiled overhead target: one raw call + this
TARGET_DISPATCH_RATIO = 0.8  # eager target: this times _c10d_functional all_reduce + wait

Rows = list[dict[str, Any]]


def size_label(nbytes: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= scale:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def _cell(s: dict[str, Any], ref: dict[str, Any] | None = None) -> str:
    text = f"{s['median_us']:.1f} ±{_spread(s):.0%}"
    return f"{text} {s['median_us'] / ref['median_us']:.2f}x" if ref else text


def _spread(s: dict[str, Any]) -> float:
    return (s["p75_us"] - s["p25_us"]) / s["median_us"] if s["median_us"] else 0.0


def grouped(rows: Rows) -> dict[tuple, dict[str, dict[str, Any]]]:
    """``(op, dtype, bytes) -> {variant: row}``, in the order the rows came."""
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["op"], r["dtype"], r["bytes"]), {})[r["variant"]] = r
    return out


def _variant_table(rows: Rows, cell: Callable[[str, int, dict, str], str]) -> str:
    """One row per op/dtype/size, one column per variant; ``cell(op, bytes, row's variants, v)``."""
    by_size = grouped(rows)
    variants = [v for v in VARIANTS if any(v in g for g in by_size.values())]
    body = [
        [
            op,
            dtype,
            size_label(nbytes),
            *(cell(op, nbytes, g, v) if v in g else "-" for v in variants),
        ]
        for (op, dtype, nbytes), g in by_size.items()
    ]
    return format_table(["op", "dtype", "size", *(VARIANT_TITLES[v] for v in variants)], body)


def latency_table(rows: Rows) -> str:
    return _variant_table(
        rows, lambda op, nbytes, g, v: _cell(g[v], None if v == "raw" else g.get("raw"))
    )


# Bus bandwidth as nccl-tests defines it: the bytes each rank must send or receive over its link
# for a ring algorithm, per second. It is comparable across world sizes and with the link's own
# limit. ``bytes`` is each rank's input; all_gather moves n - 1 of its n output chunks.
BUS_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: n - 1,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}


def bus_bandwidth_gbps(op: str, nbytes: int, world: int, median_us: float) -> float:
    return BUS_FACTOR[op](world) * nbytes / median_us / 1e3 if median_us else 0.0


def bandwidth_table(rows: Rows, world: int) -> str:
    def cell(op: str, nbytes: int, g: dict, v: str) -> str:
        bw = bus_bandwidth_gbps(op, nbytes, world, g[v]["median_us"])
        raw = bus_bandwidth_gbps(op, nbytes, world, g["raw"]["median_us"]) if "raw" in g else 0
        return f"{bw:.2f}" + (f" {bw / raw:.2f}x" if v != "raw" and raw else "")

    return _variant_table(rows, cell)


def overhead_rows(rows: Rows) -> Rows:
    """Per op/dtype/size: compiled overhead of the collective and whether it meets the target."""
    out = []
    for (op, dtype, nbytes), g in grouped(rows).items():
        raw_us, base = g["raw"]["median_us"], g["math"]["median_us"]
        row = {
            "op": op,
            "dtype": dtype,
            "bytes": nbytes,
            "raw_us": raw_us,
            "math_us": base,
            "ours_overhead_us": g["math+ours"]["median_us"] - base,
            "funcol_overhead_us": g["math+funcol"]["median_us"] - base,
            "target_us": raw_us + TARGET_SLACK_US,
        }
        if "graph math+ours" in g:
            row["graph_overhead_us"] = (
                g["graph math+ours"]["median_us"] - g["graph math"]["median_us"]
            )
        row["met"] = row["ours_overhead_us"] <= row["target_us"]
        out.append(row)
    return out


def overhead_table(rows: Rows) -> str:
    summary = overhead_rows(rows)
    graph = any("graph_overhead_us" in r for r in summary)
    header = ["op", "dtype", "size", "raw call", "compiled math", "+ours", "+funcol", "target"]
    header += ["met", *(["+ours in graph"] if graph else [])]
    body = []
    for r in summary:
        line = [
            r["op"],
            r["dtype"],
            size_label(r["bytes"]),
            f"{r['raw_us']:.1f}",
            f"{r['math_us']:.1f}",
            f"{r['ours_overhead_us']:+.1f}",
            f"{r['funcol_overhead_us']:+.1f}",
            f"{r['target_us']:.1f}",
            "yes" if r["met"] else "NO",
        ]
        if graph:
            line.append(f"{r.get('graph_overhead_us', float('nan')):+.1f}")
        body.append(line)
    return format_table(header, body)


def dispatch_table(rows: Rows) -> str:
    ref = next((r for r in rows if r["variant"] == "_c10d_functional+wait"), None)
    body = [[r["variant"], _cell(r, ref)] for r in rows]
    return format_table(["tiny fp32 all_reduce", "µs per call, vs _c10d_functional+wait"], body)


def dispatch_ratio(rows: Rows, variant: str = "ours wrapper") -> float | None:
    by = {r["variant"]: r["median_us"] for r in rows}
    if variant in by and "_c10d_functional+wait" in by:
        return by[variant] / by["_c10d_functional+wait"]
    return None


@dataclass(frozen=True)
class Target:
    target: str  # what is promised
    met: bool
    detail: str  # the measured number behind the verdict


def targets(result: Result) -> list[Target]:
    """Every target the measured studies can judge."""
    found = []
    if result.overhead:
        summary = overhead_rows(result.overhead)
        missed = [r for r in summary if not r["met"]]
        worst = max(summary, key=lambda r: r["ours_overhead_us"] - r["raw_us"])
        found.append(
            Target(
                f"compiled overhead <= raw + {TARGET_SLACK_US:.0f} µs",
                not missed,
                f"{len(summary) - len(missed)}/{len(summary)} met; worst excess "
                f"{worst['ours_overhead_us'] - worst['raw_us']:+.1f} µs over raw "
                f"({worst['op']} {worst['dtype']} {size_label(worst['bytes'])})",
            )
        )
        large = [r for r in summary if r["bytes"] >= LARGE]
        if large:
            # An extra pass over memory is device work. Graph replays time the device alone;
            # launched calls also carry the host's cost, which at 16 MiB can exceed the transfer.
            in_graph = all("graph_overhead_us" in r for r in large)
            key, timed = (
                ("graph_overhead_us", "in graph") if in_graph else ("ours_overhead_us", "launched")
            )
            excess = max(r[key] - r["raw_us"] for r in large)
            found.append(
                Target(
                    f"no extra pass over memory at >= {size_label(LARGE)} ({timed})",
                    excess <= TARGET_SLACK_US,
                    f"worst excess over raw {excess:+.1f} µs",
                )
            )
    ratio = dispatch_ratio(result.dispatch)
    if ratio is not None:
        op_alone = dispatch_ratio(result.dispatch, "ours op")
        found.append(
            Target(
                f"eager tiny all_reduce <= {TARGET_DISPATCH_RATIO}x _c10d_functional+wait",
                ratio <= TARGET_DISPATCH_RATIO,
                f"{ratio:.2f}x (the op without the wrapper: {op_alone:.2f}x)",
            )
        )
    ours = [g for g in result.generated if g["fn"].startswith("math+ours")]
    if ours:
        clean = [g for g in ours if not g["copies"]]
        found.append(
            Target(
                "no copy/clone in generated code, input dead",
                len(clean) == len(ours),
                f"{len(clean)}/{len(ours)} ops",
            )
        )
    return found


def summary_lines(result: Result) -> list[str]:
    lines = ["Targets:"]
    for t in targets(result):
        lines.append(f"  {t.target}: {t.detail} ({'met' if t.met else 'MISSED'})")
    for g in result.generated:
        lines += [f"    {g['fn']}: {line}" for line in g["copies"]]
    lines += [f"  ERROR {e}" for e in result.errors]
    if len(lines) == 1:
        lines.append("  none measured (the overhead and dispatch studies check them)")
    return lines


def report(result: Result) -> str:
    env = ", ".join(f"{k} {v}" for k, v in result.env.items())
    parts = [f"compile-ops bench: {env}"]
    if result.latency:
        parts += [
            "",
            "Latency per call, µs (median ±IQR, ratio to (a)); size = each rank's input",
            latency_table(result.latency),
        ]
        world = int(result.env.get("world", "1"))
        if world > 1:
            parts += [
                "",
                f"Bus bandwidth, GB/s (nccl-tests convention, world {world}; ratio to (a))",
                bandwidth_table(result.latency, world),
            ]
    if result.overhead:
        parts += [
            "",
            "Compiled overhead of a collective, µs: compiled(math + op) - compiled(math)",
            overhead_table(result.overhead),
        ]
    if result.dispatch:
        parts += [
            "",
            f"Eager per-call cost, {TINY_ELEMENTS} fp32 elements",
            dispatch_table(result.dispatch),
        ]
    return "\n".join([*parts, "", *summary_lines(result)])


def step_line(result: Result) -> str:
    """One line with what a single step measured (shown as the benchmark runs)."""
    if result.latency:
        g = next(iter(grouped(result.latency).values()))
        raw = g.get("raw")
        cells = [f"{v} {_cell(g[v], None if v == 'raw' else raw)}" for v in VARIANTS if v in g]
        return "µs: " + ", ".join(cells)
    if result.overhead:
        (r,) = overhead_rows(result.overhead)
        return (
            f"compiled overhead µs: +ours {r['ours_overhead_us']:+.1f}, +funcol "
            f"{r['funcol_overhead_us']:+.1f}, raw call {r['raw_us']:.1f}"
        )
    if result.dispatch:
        ratio = dispatch_ratio(result.dispatch)
        return f"ours wrapper {ratio:.2f}x _c10d_functional+wait" if ratio else "measured"
    if result.generated:
        return f"{sum(not g['copies'] for g in result.generated)}/{len(result.generated)} compiled functions without copies"
    return "done"
