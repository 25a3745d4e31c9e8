"""What a ``compile-ops bench`` run measures: its studies, ops, dtypes and sizes, step by step."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from ..world import parse_choices

__all__ = [
    "ACCELERATOR_SIZES",
    "CPU_SIZES",
    "DTYPE_NAMES",
    "OPS",
    "STUDIES",
    "Config",
    "Step",
    "config_from",
    "parse_sizes",
]

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
DTYPE_NAMES = ("bf16", "fp32")
STUDIES = ("latency", "overhead", "dispatch")
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
ACCELERATOR_SIZES = tuple(4 * KIB * 4**i for i in range(9))  # 4 KiB .. 256 MiB
CPU_SIZES = tuple(4 * KIB * 4**i for i in range(6))  # 4 KiB .. 4 MiB: gloo on a few cores


@dataclass(frozen=True)
class Step:
    """One unit of work: a study at one op, dtype and size (or a study that has none)."""

    study: str
    op: str = ""
    dtype: str = ""
    nbytes: int = 0


@dataclass(frozen=True)
class Config:
    studies: tuple[str, ...] = STUDIES
    ops: tuple[str, ...] = OPS
    dtypes: tuple[str, ...] = DTYPE_NAMES
    sizes: tuple[int, ...] = ACCELERATOR_SIZES
    reps: int = 20
    block_ms: float = 2.0
    profile_dir: str | None = None

    def steps(self) -> list[Step]:
        """Every step, in the order they run: sized studies per op, dtype and size; then the rest."""
        sized = [s for s in ("latency", "overhead") if s in self.studies]
        steps = [
            Step(study, op, dtype, nbytes)
            for op in self.ops
            for dtype in self.dtypes
            for nbytes in self.sizes
            for study in sized
        ]
        if "dispatch" in self.studies:
            steps.append(Step("dispatch"))
        if self.profile_dir:
            steps.append(Step("profile"))
        return steps


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"4K,1M,256MiB"`` -> bytes."""
    units = {"K": KIB, "M": MIB, "G": GIB}
    sizes = []
    for item in text.split(","):
        item = item.strip().upper().removesuffix("IB").removesuffix("B")
        scale = units.get(item[-1:], 1)
        try:
            sizes.append(int(item[:-1] if scale > 1 else item) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4K,1M,256M)") from None
    return tuple(sizes)


def config_from(args: argparse.Namespace, backend: str) -> Config:
    config = Config(sizes=ACCELERATOR_SIZES if backend != "gloo" else CPU_SIZES)
    if args.quick:
        config = replace(
            config,
            ops=("all_reduce",),
            dtypes=("fp32",),
            sizes=(4 * KIB, 1 * MIB),
            reps=5,
            block_ms=1.0,
        )
    if args.studies:
        config = replace(config, studies=parse_choices(args.studies, STUDIES, "--studies"))
    if args.ops:
        config = replace(config, ops=parse_choices(args.ops, OPS, "--ops"))
    if args.dtypes:
        config = replace(config, dtypes=parse_choices(args.dtypes, DTYPE_NAMES, "--dtypes"))
    if args.sizes:
        config = replace(config, sizes=args.sizes)
    if args.reps:
        config = replace(config, reps=args.reps)
    if args.profile:
        if not args.out:
            raise SystemExit("compile-ops bench: --profile needs --out DIR")
        config = replace(config, profile_dir=str(Path(args.out).resolve()))
    return config
