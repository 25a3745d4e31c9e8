"""How ``compile-ops bench`` times a call: blocks of calls, interleaved contenders, medians.

On accelerators, device events around a block of calls (a block's time per call is the
steady-state cost, host- or device-bound, whichever is slower); on CPU the host clock. Every
contender gets the same number of blocks, interleaved round by round, so drift and noise fall on
all of them alike; the median over blocks is reported, with the interquartile range as spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Clock", "Stats"]


@dataclass
class Stats:
    median_us: float
    p25_us: float
    p75_us: float
    blocks: int
    calls_per_block: int

    @classmethod
    def of(cls, samples: Sequence[float], calls_per_block: int) -> Stats:
        q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        return cls(statistics.median(samples), q[0], q[2], len(samples), calls_per_block)


class Clock:
    """Per-call time of a block of calls: device events on accelerators, the host clock on CPU."""

    def __init__(self, device: torch.device, group: dist.ProcessGroup):
        self.device = device
        self.group = group
        self.on_device = device.type != "cpu"

    def sync(self) -> None:
        if self.on_device:
            torch.accelerator.synchronize()

    def start_together(self) -> None:
        self.sync()
        dist.barrier(group=self.group)
        self.sync()

    def per_call_us(self, fn: Callable[[int], object], calls: int) -> float:
        if not self.on_device:
            start = time.perf_counter()
            for i in range(calls):
                fn(i)
            return (time.perf_counter() - start) / calls * 1e6
        begin = torch.Event(device=self.device, enable_timing=True)
        end = torch.Event(device=self.device, enable_timing=True)
        begin.record()
        for i in range(calls):
            fn(i)
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) * 1e3 / calls

    def measure(
        self, contenders: dict[str, Callable[[int], object]], reps: int, block_ms: float
    ) -> dict[str, Stats]:
        """Interleave the contenders block by block; the same sequence on every rank."""
        calls = {}
        for name, fn in contenders.items():
            self.start_together()
            self.per_call_us(fn, 3)  # warm-up
            self.start_together()
            estimate = self.per_call_us(fn, 3)
            calls[name] = self._agree(max(1, min(500, int(block_ms * 1e3 / max(estimate, 1.0)))))
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(reps):
            for name, fn in contenders.items():
                self.start_together()
                samples[name].append(self.per_call_us(fn, calls[name]))
        return {name: Stats.of(s, calls[name]) for name, s in samples.items()}

    def _agree(self, calls: int) -> int:
        # Every rank must issue the same number of collectives: all take the smallest count.
        t = torch.tensor([calls], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())
