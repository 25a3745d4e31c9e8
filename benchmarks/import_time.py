"""How long ``import compile_ops`` takes on top of ``import torch``, in fresh processes.

Each sample is a new interpreter that imports torch, then compile_ops, timing both; the median
over ``--runs`` samples is reported, with the spread (min-max). ``--ref REV`` measures the tree of
a git revision the same way, interleaved with this tree's samples (before/after in one run), and
``--top N`` lists the N modules that compile_ops' import pulls in beyond torch, by their own
cumulative time (``python -X importtime``), to show what is left to make lazy.

    python3 -m benchmarks.import_time --runs 9 --ref HEAD~1 --top 15

Output: one JSON object (also written to ``$OUT/import_time.json`` when ``OUT`` is set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import json, time\n"
    "t0 = time.perf_counter(); import torch\n"
    "t1 = time.perf_counter(); import compile_ops\n"
    "t2 = time.perf_counter()\n"
    "print(json.dumps({'torch_s': t1 - t0, 'compile_ops_s': t2 - t1}))\n"
)


def sample(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tree, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"import failed in {tree}:\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


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
        [sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True
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
    args = parser.parse_args(argv)

    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="import_time_") as tmp:
        if args.ref:
            trees[args.ref] = export(args.ref, Path(tmp))
        samples: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.runs):  # interleaved, so drifts of the machine hit both alike
            for name, tree in trees.items():
                samples[name].append(sample(tree))
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "python": sys.version.split()[0],
            "torch": metadata.version("torch"),
            "runs": args.runs,
            "trees": {
                name: {
                    "torch": summary([s["torch_s"] for s in rows]),
                    "compile_ops_over_torch": summary([s["compile_ops_s"] for s in rows]),
                }
                for name, rows in samples.items()
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
