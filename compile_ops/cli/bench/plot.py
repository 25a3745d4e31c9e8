"""``compile-ops bench --plot FILE.png``: latency and bus bandwidth against message size.

One panel pair per op and dtype, one line per contender (raw c10d, funcol, ours eager, compiled,
graph). Bandwidth is drawn only for worlds of two or more ranks (one rank moves nothing over a
link); the link's limit, where given (``--link-gbps``), is a dashed line. Needs matplotlib, the
``plot`` extra: ``pip install 'compile-ops[plot]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .contenders import VARIANT_TITLES, VARIANTS
from .report import bus_bandwidth_gbps, grouped, size_label

__all__ = ["plot"]


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit(
            "compile-ops bench --plot needs matplotlib, which is not installed: "
            "pip install 'compile-ops[plot]'"
        ) from None
    return Figure


def _series(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[tuple]]]:
    """``(op, dtype) -> {variant: [(bytes, median µs), ...]}`` sorted by size."""
    out: dict[tuple[str, str], dict[str, list[tuple]]] = {}
    for (op, dtype, nbytes), by_variant in grouped(rows).items():
        lines = out.setdefault((op, dtype), {})
        for variant, row in by_variant.items():
            lines.setdefault(variant, []).append((nbytes, row["median_us"]))
    return {k: {v: sorted(p) for v, p in lines.items()} for k, lines in out.items()}


def plot(latency: list[dict[str, Any]], env: dict[str, str], path: str, link_gbps: float | None):
    """Write the figure to ``path`` (any format matplotlib knows by the suffix)."""
    if not latency:
        raise SystemExit("compile-ops bench --plot: no latency measurements to plot")
    Figure = _figure_class()
    world = int(env.get("world", "1"))
    series = _series(latency)
    columns = 2 if world > 1 else 1
    fig = Figure(figsize=(6.5 * columns, 3.6 * len(series)), layout="constrained")
    axes = fig.subplots(len(series), columns, squeeze=False)
    for row, ((op, dtype), lines) in enumerate(series.items()):
        lat = axes[row][0]
        for variant in (v for v in VARIANTS if v in lines):
            sizes, times = zip(*lines[variant], strict=True)
            lat.plot(sizes, times, marker="o", label=VARIANT_TITLES[variant])
            if columns == 2:
                bandwidth = [bus_bandwidth_gbps(op, n, world, t) for n, t in lines[variant]]
                axes[row][1].plot(sizes, bandwidth, marker="o", label=VARIANT_TITLES[variant])
        ticks = sorted({n for points in lines.values() for n, _ in points})
        _axis(lat, ticks, f"{op} {dtype}: latency", "µs per call", log_y=True)
        if columns == 2:
            bw = axes[row][1]
            if link_gbps:
                bw.axhline(
                    link_gbps, color="black", linestyle="--", label=f"link {link_gbps:g} GB/s"
                )
            _axis(bw, ticks, f"{op} {dtype}: bus bandwidth (world {world})", "GB/s", log_y=False)
    fig.suptitle(
        f"compile-ops bench: {env.get('device', '')}, {env.get('backend', '')}, "
        f"torch {env.get('torch', '')}, {env.get('date', '')}"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _axis(ax: Any, ticks: list[int], title: str, ylabel: str, log_y: bool) -> None:
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xticks(ticks, [size_label(t) for t in ticks], rotation=45, fontsize=7)
    ax.set(title=title, xlabel="message size per rank", ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
