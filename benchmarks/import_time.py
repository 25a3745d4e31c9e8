"""How long ``import compile_ops`` takes on top of ``import torch``, in fresh processes.

Each sample is a new interpreter that imports torch, then compile_ops, timing both; the median
over ``--runs`` samples is reported, with the spread (min-max). ``--ref REV`` measures the tree of
a git revision the same way, interleaved with this tree's samples (before/after in one run), and
``--top N`` lists the N modules that compile_ops' import pulls in beyond torch, by their own
cumulative time (``python -X importtime``), to show what is left to make lazy. ``--cli`` also
times whole commands, wall clock from start to exit: ``python -m compile_ops.cli --help`` for each
tree, and ``python -c "import torch"`` as the floor that any command importing torch pays.

    python3 -m benchmarks.import_time --runs 9 --ref HEAD~1 --top 15 --cli

Output: one JSON object (also written to ``$OUT/import_time.json`` when ``OUT`` is set).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Wall and CPU time (this process's user + system) of each import. On a shared machine the CPU
# time is the steadier of the two: it does not count the time other processes hold the cores.
PROBE = (
    "import json, time\n"
    "t0, c0 = time.perf_counter(), time.process_time(); import torch\n"
    "t1, c1 = time.perf_counter(), time.process_time(); import compile_ops\n"
    "t2, c2 = time.perf_counter(), time.process_time()\n"
    "print(json.dumps({'torch_s': t1 - t0, 'compile_ops_s': t2 - t1,\n"
    "                  'torch_cpu_s': c1 - c0, 'compile_ops_cpu_s': c2 - c1}))\n"
)


def sample(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tree, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"import failed in {tree}:\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


HELP = ["-m", "compile_ops.cli", "--help"]
TORCH_ONLY = ["-c", "import torch"]


def wall(tree: Path, args: list[str]) -> tuple[float, float]:
    """Wall seconds from starting ``python ARGS`` in ``tree`` to its exit, and its CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=tree, capture_output=True, check=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return elapsed, cpu


def summary(values: list[float]) -> dict:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "samples_s": values,
    }


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` (tracked files only), unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True
    ).stdout
    tar_path = into / "tree.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def heaviest_imports(tree: Path, top: int) -> list[dict]:
    """Modules first imported by ``import compile_ops`` (torch already imported), heaviest first."""
    code = "import torch, sys; sys.stderr.write('@@MARK\\n'); import compile_ops"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        cwd=tree,  # `-c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
    ).stderr
    rows = []
    for line in err.split("@@MARK", 1)[-1].splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        rows.append({"module": name, "cumulative_s": int(cumulative) / 1e6})
    return sorted(rows, key=lambda r: -r["cumulative_s"])[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--ref", help="also measure this git revision (before/after)")
    parser.add_argument("--top", type=int, default=0, help="list the N heaviest imports")
    parser.add_argument("--cli", action="store_true", help="also time `compile-ops --help`")
    args = parser.parse_args(argv)

    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="import_time_") as tmp:
        if args.ref:
            trees[args.ref] = export(args.ref, Path(tmp))
        samples: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.runs):  # interleaved, so drifts of the machine hit both alike
            for name, tree in trees.items():
                samples[name].append(sample(tree))
                if args.cli:
                    samples[name][-1]["help_s"], samples[name][-1]["help_cpu_s"] = wall(tree, HELP)
            if args.cli:
                floor = wall(ROOT, TORCH_ONLY)
                samples["this tree"][-1]["torch_process_s"] = floor[0]
                samples["this tree"][-1]["torch_process_cpu_s"] = floor[1]
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "python": sys.version.split()[0],
            "torch": metadata.version("torch"),
            "runs": args.runs,
            "trees": {
                name: {
                    "torch": summary([s["torch_s"] for s in rows]),
                    "compile_ops_over_torch": summary([s["compile_ops_s"] for s in rows]),
                    "torch_cpu": summary([s["torch_cpu_s"] for s in rows]),
                    "compile_ops_over_torch_cpu": summary([s["compile_ops_cpu_s"] for s in rows]),
                }
                for name, rows in samples.items()
            },
        }
        if args.cli:
            mine = samples["this tree"]
            result["cli_help"] = {
                "command": " ".join(["python", *HELP]),
                "wall": {
                    "python -c 'import torch'": summary([s["torch_process_s"] for s in mine]),
                    **{n: summary([s["help_s"] for s in rows]) for n, rows in samples.items()},
                },
                "cpu": {
                    "python -c 'import torch'": summary([s["torch_process_cpu_s"] for s in mine]),
                    **{n: summary([s["help_cpu_s"] for s in rows]) for n, rows in samples.items()},
                },
            }
        if args.top:
            result["heaviest_imports"] = {
                name: heaviest_imports(tree, args.top) for name, tree in trees.items()
            }
    text = json.dumps(result, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "import_time.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
