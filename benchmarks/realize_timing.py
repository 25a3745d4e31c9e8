"""Paired, interleaved timing that resolves a 1 % difference, or says that it could not.

Each repetition times every way back to back (the order rotates), so slow drifts of the machine
(clocks, temperature, other tenants) hit all ways alike; the per-repetition ratio to a reference
way is what is compared. Repetitions continue until the 95 % confidence interval of every median
ratio is narrower than the resolution asked for, or the budget runs out (then ``resolved`` is
False and the interval says how far the data goes). On an accelerator each sample replays a
captured graph (``compile_ops.graph_capture``), which takes the host out of the measurement.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def median_ci(xs: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (order statistics, normal approx.)."""
    n = len(xs)
    if n < 6:
        return min(xs), max(xs)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    k = max(0, math.floor(n / 2 - z * math.sqrt(n) / 2))
    ordered = sorted(xs)
    return ordered[k], ordered[n - 1 - k]


@dataclass
class Comparison:
    """``way`` against ``reference``: median of paired ratios (way / reference) and its CI."""

    way: str
    reference: str
    ratios: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ci(self) -> tuple[float, float]:
        return median_ci(self.ratios)

    def resolved(self, resolution: float) -> bool:
        lo, hi = self.ci
        return hi - lo <= resolution

    def verdict(self, threshold: float = 0.01) -> str:
        lo, hi = self.ci
        if hi < 1 - threshold:
            return f"faster by more than {threshold:.0%}"
        if lo > 1 + threshold:
            return f"slower by more than {threshold:.0%}"
        if lo >= 1 - threshold and hi <= 1 + threshold:
            return f"within {threshold:.0%}"
        return "not resolved"

    def describe(self) -> str:
        lo, hi = self.ci
        return (
            f"{self.way} / {self.reference} = {self.ratio:.4f} "
            f"[{lo:.4f}, {hi:.4f}] over {len(self.ratios)} paired repetitions"
        )


def spread(samples: list[float]) -> float:
    """Interquartile range over the median, of one way's samples."""
    if len(samples) < 4:
        return float("nan")
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


def runner(fn: Callable, args: tuple, device: str) -> Callable[[], object]:
    """``fn(*args)`` as a no-argument call: a graph replay on an accelerator."""
    if device == "cpu":
        return lambda: fn(*args)
    from compile_ops.graph_capture import capture

    return capture(fn, *args, device=device).replay


def sample_ms(run: Callable[[], object], inner: int, device: str) -> float:
    """Mean time of ``inner`` back-to-back calls, in ms (device events on an accelerator)."""
    if device == "cpu":
        start = time.perf_counter()
        for _ in range(inner):
            run()
        return (time.perf_counter() - start) * 1e3 / inner
    begin, end = torch.Event(enable_timing=True), torch.Event(enable_timing=True)
    begin.record()
    for _ in range(inner):
        run()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / inner


def compare(
    runs: dict[str, Callable[[], object]],
    pairs: list[tuple[str, str]],
    device: str,
    *,
    target_sample_ms: float = 20.0,
    resolution: float = 0.01,
    min_reps: int = 12,
    max_reps: int = 400,
    budget_s: float = 90.0,
) -> tuple[list[Comparison], dict[str, list[float]], int]:
    """Time the runs interleaved until each (way, reference) pair is resolved or the budget is
    spent; returns the comparisons, the samples per way (ms per call) and the calls per sample."""
    ways = list(runs)
    for run in runs.values():  # warm up (and let clocks settle)
        sample_ms(run, 3, device)
    one = min(sample_ms(run, 1, device) for run in runs.values())
    inner = max(1, round(target_sample_ms / max(one, 1e-3)))
    samples: dict[str, list[float]] = {way: [] for way in ways}
    comparisons = [Comparison(way, reference) for way, reference in pairs]
    deadline = time.monotonic() + budget_s
    for rep in range(max_reps):
        order = ways[rep % len(ways) :] + ways[: rep % len(ways)]
        now = {way: sample_ms(runs[way], inner, device) for way in order}
        for way, t in now.items():
            samples[way].append(t)
        for c in comparisons:
            c.ratios.append(now[c.way] / now[c.reference])
        done = all(c.resolved(resolution) for c in comparisons)
        if rep + 1 >= min_reps and (done or time.monotonic() > deadline):
            break
    return comparisons, samples, inner
