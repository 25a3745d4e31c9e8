"""``compile-ops bench``: our collectives side by side with raw c10d and torch's functional ones.

Every number comes from one world and one process per rank, with all contenders interleaved
round by round (see :mod:`.timing`). The studies (:mod:`.studies`) run step by step, each step
one study at one op, dtype and size, so progress shows as they finish; the report
(:mod:`.report`) follows, as text or as the JSON document of docs/commands.md, and
``--plot`` draws it (:mod:`.plot`), also from a saved ``results.json`` (``--from``).

Exit code: 1 when a contender failed (an error line in the report), or with ``--strict`` when a
target is missed; 0 otherwise. Targets are judged and shown either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import world as worlds
from .config import DTYPE_NAMES, OPS, STUDIES, config_from, parse_sizes

__all__ = ["add_arguments", "bench_document", "load", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one rank, all_reduce, fp32, two sizes, few repetitions (under a minute on CPU)",
    )
    worlds.add_world_arguments(parser, "default: 1 with an accelerator or --quick, else 2")
    choices = [
        ("--studies", STUDIES, "(default: all)"),
        ("--ops", OPS, ""),
        ("--dtypes", DTYPE_NAMES, ""),
    ]
    for flag, allowed, extra in choices:
        parser.add_argument(
            flag, default=None, help=f"comma-separated subset of {','.join(allowed)} {extra}"
        )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="bytes per rank, e.g. 4K,1M,256M (default: 4K..256M on accelerators, 4K..4M on CPU)",
    )
    parser.add_argument("--reps", type=int, default=None, help="timed blocks per contender")
    parser.add_argument("--out", default=None, help="directory for results.json and report.txt")
    parser.add_argument(
        "--profile", action="store_true", help="also write profiler tables and code to --out"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON document, not tables")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--plot", metavar="FILE", help="draw latency and bandwidth to FILE.png")
    parser.add_argument(
        "--from",
        dest="source",
        metavar="RESULTS_JSON",
        help="report (and --plot) a saved results.json instead of measuring",
    )
    parser.add_argument(
        "--link-gbps", type=float, default=None, help="the link's bandwidth, drawn on the plot"
    )


def measure(args: argparse.Namespace):
    """Start (or join) the world and run every step, showing each as it finishes."""
    from ..tables import Progress
    from .report import step_line
    from .studies import Result, run_step

    backend = args.backend or worlds.default_backend()
    config = config_from(args, backend)
    # One rank with an accelerator (the target configuration) and for --quick (one process to
    # start and compile in); two over gloo otherwise.
    default_size = 2 if backend == "gloo" and not args.quick else 1
    result, steps = Result(), config.steps()
    plan = worlds.plan_world(args, "compile-ops bench", default_size)
    progress = Progress(len(steps), "bench") if worlds.is_lead_process() else None
    if progress:
        progress.status("joining torchrun's world" if plan.size is None else "starting ranks")
    with plan.start() as world:
        for step in steps:
            what = " ".join(str(p) for p in (step.study, step.op, step.dtype) if p)
            what += f" {_size(step.nbytes)}" if step.nbytes else ""
            if progress:
                progress.status(what)
            done = world.run_first(run_step, config, step)
            result.add(done)
            if progress:
                progress.step()
                progress.emit(
                    f"bench [{progress.done}/{len(steps)}] {what}: {step_line(done)}", sys.stderr
                )
        lead = world.is_lead
    return result, lead


def _size(nbytes: int) -> str:
    from .report import size_label

    return size_label(nbytes)


def load(path: str):
    """A ``Result`` from a results.json that ``bench --out`` or ``--json`` wrote."""
    from ..schema import SCHEMA_ID
    from .studies import Result

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"compile-ops bench: --from {path}: {e}") from None
    if doc.get("schema") != SCHEMA_ID or doc.get("command") != "bench":
        raise SystemExit(
            f"compile-ops bench: --from {path}: not a bench document of schema {SCHEMA_ID} "
            f"(schema {doc.get('schema')!r}, command {doc.get('command')!r})"
        )
    fields = ("env", "latency", "overhead", "dispatch", "generated", "errors")
    return Result(**{k: doc[k] for k in fields}), doc.get("link_gbps")


def bench_document(result, strict: bool, link_gbps: float | None) -> dict:
    """The JSON document of a run (docs/commands.md): measurements, targets and the verdict."""
    from dataclasses import asdict

    from ..schema import document
    from .report import targets

    found = targets(result)
    ok = not result.errors and (not strict or all(t.met for t in found))
    return document(
        "bench",
        ok=ok,
        **asdict(result),
        targets=[asdict(t) for t in found],
        strict=strict,
        link_gbps=link_gbps,
    )


def run(args: argparse.Namespace) -> int:
    from .report import report

    start = time.perf_counter()
    if args.source:
        result, link = load(args.source)
        link = args.link_gbps if args.link_gbps is not None else link
        lead = True
    else:
        result, lead = measure(args)
        link = args.link_gbps
    if not lead:
        return 1 if result.errors else 0
    doc = bench_document(result, args.strict, link)
    text = report(result)
    if not args.source:
        text += f"\n  wall time {time.perf_counter() - start:.0f} s"
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(doc, indent=1))
        (out / "report.txt").write_text(text + "\n")
    print(json.dumps(doc, indent=1) if args.json else text)
    if args.plot:
        from .plot import plot

        plot(result.latency, result.env, args.plot, link)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0 if doc["ok"] else 1
