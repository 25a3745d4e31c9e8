"""The public names the docs promise exist where the docs say, and importing them is cheap."""

import subprocess
import sys
from pathlib import Path

import pytest

import compile_ops
import compile_ops.testing
from compile_ops.moe import All2AllManager

ROOT = Path(__file__).resolve().parent.parent


def test_every_exported_name_exists():
    for module in (compile_ops, compile_ops.testing):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], f"{module.__name__}.__all__ names {missing}"
    assert compile_ops.testing.assert_compiled_matches_eager.__module__ == (
        "compile_ops.testing.compare"
    )
    assert "GroupLike" in compile_ops.__all__


def test_version_is_the_one_pyproject_declares():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert compile_ops.__version__ == declared


def test_importing_the_test_kit_starts_nothing_and_needs_no_test_extra():
    probe = (
        "import multiprocessing, sys\n"
        "import compile_ops.testing\n"
        "assert multiprocessing.active_children() == [], multiprocessing.active_children()\n"
        "assert 'hypothesis' not in sys.modules, 'hypothesis was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_importing_compile_ops_loads_no_compiler_stack():
    """Dynamo, Inductor, sympy and Triton cost seconds to import and every rank pays for what
    ``import compile_ops`` loads; they load when something is compiled (see benchmarks/import_time.py
    for the time)."""
    heavy = ("torch._dynamo", "torch._inductor", "sympy", "triton", "hypothesis")
    probe = (
        "import sys, torch\n"
        f"before = {{m for m in {heavy!r} if m in sys.modules}}\n"
        "import compile_ops\n"
        "assert hasattr(torch.ops.compile_ops, 'all_reduce')\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules and m not in before))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_manager_without_dispatch_or_combine_cannot_be_made():
    assert All2AllManager.__abstractmethods__ == {"dispatch", "combine"}

    class GathersOnly(All2AllManager):
        name = "gathers-only"
        output_is_reduced = False

        def dispatch(self, x, topk_ids, topk_weights):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"abstract method.*combine"):
        GathersOnly(None, 1)
