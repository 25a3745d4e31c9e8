"""The commands: world set-up and its limits, streamed rows, JSON, the audit's verdicts, torchrun.

Cheap by design: the worlds started here are the shared pool of four (one MoE row) and the
torchrun check (two gloo ranks, one op).
"""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from compile_ops.cli import main
from compile_ops.cli import world as worlds
from compile_ops.cli.audit import format_reports
from compile_ops.cli.check import run_jobs
from compile_ops.cli.outcome import Job, Outcome
from compile_ops.cli.schema import SCHEMA
from compile_ops.cli.tables import Progress
from compile_ops.testing.cases import dtypes_for
from fake_impls.audit import DATA_DEPENDENT, FALLBACK, audit, fake_kernel

# In the test extra; a machine without it (the GPU runner) skips this file instead of failing.
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
aten = torch.ops.aten


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(
        filter(None, [*extra.pop("PYTHONPATH", "").split(os.pathsep), str(ROOT)])
    )
    return {**os.environ, **extra, "PYTHONPATH": path}


# ----------------------------------------------------------------------------------------------
# World set-up


def test_backend_comes_from_torchs_own_map():
    assert worlds.backend_for("cpu") == "gloo"
    assert worlds.backend_for("cuda") == "nccl"
    assert worlds.backend_for("xpu") == "xccl"


def test_world_size_is_capped_by_cores_before_any_process_starts(monkeypatch, capsys):
    def no_start(*args):
        raise AssertionError("a world was started")

    monkeypatch.setattr(worlds, "SpawnedWorld", no_start)
    monkeypatch.setattr(worlds, "usable_cores", lambda: 2)
    with pytest.raises(SystemExit, match=r"--world-size 64 would start 64 processes on 2 CPU"):
        main(["check", "--world-size", "64", "--backend", "gloo"])
    with pytest.raises(SystemExit, match="at least 1"):
        main(["check", "--world-size", "0", "--backend", "gloo"])
    # The explicit override gets through to starting the world.
    with pytest.raises(AssertionError, match="a world was started"):
        main(["check", "--world-size", "64", "--backend", "gloo", "--oversubscribe"])
    assert worlds.world_size_for(None, 2, "gloo", False, "x") == 2  # 2 always fits


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only message")
def test_accelerator_backend_without_an_accelerator_is_a_clear_error():
    with pytest.raises(SystemExit, match="--backend nccl needs an accelerator; none found"):
        main(["check", "--backend", "nccl"])


# ----------------------------------------------------------------------------------------------
# check: rows travel as fixed-size tensors and print as they finish


def test_outcome_round_trips_through_a_fixed_size_tensor():
    long_error = "ValueError: " + "é" * 2000
    for outcome in (Outcome(True, False, 3, 1.25, "boom"), Outcome(error=long_error)):
        packed = outcome.pack()
        assert packed.dtype == torch.uint8 and packed.shape == Outcome().pack().shape
        back = Outcome.unpack(packed)
        assert (back.eager_ok, back.compiled_ok, back.graph_breaks, back.seconds) == (
            outcome.eager_ok,
            outcome.compiled_ok,
            outcome.graph_breaks,
            outcome.seconds,
        )
        assert outcome.error.startswith(back.error.rstrip("\ufffd"))


def test_check_rows_cover_the_moe_model(world):
    from compile_ops.cli.check_moe import check_moe_case, grid_shape, layout_kinds

    assert layout_kinds(2) == ["tp", "ep"]
    assert layout_kinds(4) == ["tp", "ep", "tp_ep"]
    assert (grid_shape(4), grid_shape(6), grid_shape(5)) == ((2, 2), (2, 3), None)
    for outcome in world(4).run(check_moe_case, "all_to_all", "tp_ep", "cpu", "aot_eager"):
        assert outcome.error == ""
        assert (outcome.eager_ok, outcome.compiled_ok, outcome.graph_breaks) == (True, True, 0)


def test_check_runs_every_op_in_every_documented_dtype(world):
    from compile_ops.cli.check import check_dtypes, dtype_jobs
    from compile_ops.testing.cases import OPS, Case, dtypes_for

    jobs = dtype_jobs(2, "cpu", OPS)
    assert [j.name for j in jobs] == [f"{op} x {len(dtypes_for(op))} dtypes" for op in OPS]
    for job, op in zip(jobs, OPS, strict=True):
        assert [c.dtype for c in job.args[0]] == list(dtypes_for(op))
        for outcome in world(2).run(job.fn, *job.args):
            assert (outcome.eager_ok, outcome.error) == (True, ""), job.name
    # A dtype that fails is named in the row's error (complex is not documented for reductions).
    bad = [Case("all_reduce", 2, dtype=torch.float32), Case("all_reduce", 2, dtype=torch.complex64)]
    for outcome in world(2).run(check_dtypes, bad):
        assert not outcome.eager_ok
        assert outcome.error.startswith("complex64: ValueError: compile_ops.all_reduce: x.dtype")


class _ScriptedWorld(worlds.World):
    """Answers each job with a scripted outcome and records what was printed before it ran."""

    backend, size, is_lead = "gloo", 2, True

    def __init__(self, out: io.StringIO):
        self.out, self.seen = out, []

    def run(self, fn, *args):
        self.seen.append(self.out.getvalue())
        return [fn(*args)] * self.size


def _ok(name):
    return Outcome(True, True, 0, 0.5)


def _broken(name):
    return Outcome(True, False, 0, 0.5, "RuntimeError: no")


def test_check_prints_each_row_before_the_next_job_runs(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    world = _ScriptedWorld(out)
    jobs = [Job("collectives", f"case{i}", _ok if i != 1 else _broken, (i,)) for i in range(3)]
    rows = run_jobs(world, jobs, Progress(0, "check", stream=err))
    assert [r.ok for r in rows] == [True, False, True]
    # Before job i ran, the rows of jobs 0 .. i-1 had been printed.
    for i, printed in enumerate(world.seen):
        assert [f"case{j} " in printed for j in range(3)] == [j < i for j in range(3)]
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "section",
        "case",
        "world",
        "backend",
        "eager",
        "compiled",
        "breaks",
        "time",
    ]
    assert lines[3].split()[:6] == ["collectives", "case1", "2", "gloo", "ok", "FAIL"]
    # Not a terminal: progress is plain lines on stderr, n/total and elapsed seconds.
    assert err.getvalue().splitlines()[0].startswith("check [0/3] 0s  collectives case0")
    assert "\r" not in err.getvalue()


class _Stuck(RuntimeError):
    def __init__(self, message):
        super().__init__(message)
        self.failures = {0: "Traceback ...\nrank 0 gave no answer within 300s (deadlock or crash?)"}


class _FlakyWorld(_ScriptedWorld):
    def run(self, fn, *args):
        if args == (1,):
            raise _Stuck("check_case failed on ranks [0]:")
        return super().run(fn, *args)


def test_a_rank_that_does_not_answer_fails_its_row_not_the_run(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    jobs = [Job("collectives", f"case{i}", _ok, (i,)) for i in range(3)]
    rows = run_jobs(_FlakyWorld(out), jobs, Progress(0, "check", stream=io.StringIO()))
    assert [r.ok for r in rows] == [True, False, True]
    assert rows[1].error == "rank 0 gave no answer within 300s (deadlock or crash?)"
    assert "case1" in out.getvalue() and "case2" in out.getvalue()


def test_progress_on_a_terminal_is_one_line_rewritten():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    progress = Progress(2, "bench", stream=term)
    progress.status("latency all_reduce")
    progress.step()
    progress.status("overhead all_reduce")
    progress.clear()
    assert "\n" not in term.getvalue()
    assert term.getvalue().count("\r\033[K") == 3
    assert "bench [1/2]" in term.getvalue()


# ----------------------------------------------------------------------------------------------
# audit: decided by torch's own lookup, so a failure means a fullgraph compile breaks


def _compiles(op, *args, dynamic=False) -> bool:
    torch._dynamo.reset()
    try:
        torch.compile(lambda *a: op(*a), fullgraph=True, dynamic=dynamic, backend="eager")(*args)
    except Exception:
        return False
    return True


def test_audit_agrees_with_fullgraph_compiles_on_aten():
    x = torch.randn(4, 6)
    # Reported as failing before; they compile with fullgraph=True.
    assert fake_kernel(aten.view_as_real_copy.default) is not None
    assert _compiles(aten.view_as_real_copy.default, torch.randn(3, dtype=torch.complex64))
    for op, args in ((aten._aminmax.default, (x,)), (aten._add_relu.Scalar, (x, 2.0))):
        # No fake: FakeTensorMode runs the real kernel on zeros, so static shapes only.
        assert fake_kernel(op) == FALLBACK
        assert _compiles(op, *args) and not _compiles(op, *args, dynamic=True)
    # Still reported, and really breaks: FakeTensorMode refuses a data-dependent output.
    assert fake_kernel(aten.equal.default) == DATA_DEPENDENT
    assert not _compiles(aten.equal.default, x, x)


def test_audit_command_filters_failing_and_colours_only_on_a_terminal(capsys):
    lib = torch.library.Library("cli_audit_test", "DEF")
    try:
        lib.define("no_fake(Tensor x) -> Tensor")
        lib.impl("no_fake", lambda x: x * 2, "CPU")
        lib.define("with_fake(Tensor x) -> Tensor")
        lib.impl("with_fake", lambda x: x * 2, "CPU")
        torch.library.register_fake("cli_audit_test::with_fake", lambda x: torch.empty_like(x))

        assert main(["audit", "cli_audit_test"]) == 1
        full = capsys.readouterr().out
        assert "cli_audit_test::with_fake" in full and "\033[" not in full  # not a terminal
        assert main(["audit", "cli_audit_test", "--failing"]) == 1
        failing = capsys.readouterr().out
        assert "cli_audit_test::no_fake " in failing and "::with_fake" not in failing
        assert failing.splitlines()[-1] == "1 ok, 0 warn, 1 fail"  # counts cover every op

        painted = format_reports(audit("cli_audit_test"), paint=True)
        assert "\033[31mfail\033[0m" in painted
    finally:
        lib._destroy()


def test_audit_import_failure_is_one_line_and_exit_code_2(capsys):
    assert main(["audit", "anything", "--import", "no.such.module"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "compile-ops audit: --import no.such.module failed: ModuleNotFoundError: "
        "No module named 'no'"
    )


def test_audit_json_matches_the_schema(capsys):
    assert main(["audit", "compile_ops", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["command"] == "audit" and doc["counts"]["fail"] == 0
    assert {o["op"] for o in doc["ops"]} >= {"compile_ops::all_reduce", "compile_ops::broadcast_"}


# ----------------------------------------------------------------------------------------------
# Version, help


def test_version_and_help_import_no_command_module():
    code = textwrap.dedent(
        """
        import sys
        from compile_ops.cli import main
        assert main(["--version"]) == 0
        try:
            main(["--help"])
        except SystemExit as e:
            assert e.code == 0
        heavy = ["compile_ops.cli.check", "compile_ops.cli.bench", "compile_ops.cli.audit",
                 "compile_ops.testing.pool", "compile_ops.moe", "fake_impls.audit_cli"]
        print("LOADED", [m for m in heavy if m in sys.modules])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("compile-ops 0.1.0") and f"torch {torch.__version__}" in out
    assert "check" in out and "bench" in out and "audit" in out
    assert "LOADED []" in out


# ----------------------------------------------------------------------------------------------
# torchrun, in an environment where NumPy cannot be imported

# Every process started with this on PYTHONPATH (torchrun's launcher and each rank) finds no
# NumPy: the import system is asked, and says no, as in a venv where NumPy was never installed.
WITHOUT_NUMPY = """
import sys


class _WithoutNumPy:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, name):  # find_distributions (entry points), invalidate_caches, ...
        return getattr(self.finder, name)


sys.meta_path[:] = [_WithoutNumPy(f) for f in sys.meta_path]
"""


def test_check_under_torchrun_without_numpy(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(WITHOUT_NUMPY)
    env = _env(PYTHONPATH=str(tmp_path))
    probe = "import importlib.util, torch; print(importlib.util.find_spec('numpy'))"
    assert (
        subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        == "None"
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    command += ["-m", "compile_ops.cli", "check", "--ops", "all_reduce", "--no-moe", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads(done.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert (doc["command"], doc["ok"], doc["world_size"], doc["backend"]) == (
        "check",
        True,
        2,
        "gloo",
    )
    dtypes = f"all_reduce x {len(dtypes_for('all_reduce'))} dtypes"
    assert sorted((r["section"], r["name"], r["ok"]) for r in doc["rows"]) == [
        ("collectives", "all_reduce-w2-float32-sum", True),
        ("dtypes", dtypes, True),
    ]
    # torchrun's own launcher imports torch before any of our code: its warning is the only one.
    assert done.stderr.count("Failed to initialize NumPy") <= 1, done.stderr[-4000:]
