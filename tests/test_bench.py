"""The benchmark harness on CPU over gloo, and the copy-free claim on Inductor's generated code.

No timing is asserted here: performance is measured by ``compile-ops bench``, not by tests.
"""

import argparse
import json
import math
import re
import sys

import pytest
from helpers import workers

import compile_ops
from compile_ops.cli import bench, main
from compile_ops.cli.bench import config, report, studies
from compile_ops.cli.schema import SCHEMA
from compile_ops.testing.pool import get_pool

TINY = config.Config(ops=("all_reduce",), dtypes=("fp32",), sizes=(4096,), reps=2, block_ms=0.2)


@pytest.fixture(scope="module")
def results():
    return get_pool(2).run(studies.run_rank, TINY)


def test_every_rank_measures_every_contender(results):
    for result in results:
        assert result.errors == []
        assert {(r["op"], r["variant"]) for r in result.latency} == {
            (op, v) for op in TINY.ops for v in ("raw", "funcol", "eager", "compiled")
        }
        assert {(r["op"], r["variant"]) for r in result.overhead} == {
            (op, v) for op in TINY.ops for v in ("raw", "math", "math+ours", "math+funcol")
        }
        assert "_c10d_functional+wait" in {r["variant"] for r in result.dispatch}
        for row in result.latency + result.overhead + result.dispatch:
            assert math.isfinite(row["median_us"]) and row["median_us"] > 0
            assert row["p25_us"] <= row["median_us"] <= row["p75_us"]
            assert row["blocks"] == TINY.reps


def test_report_is_a_well_formed_table(results):
    text = report.report(results[0])
    assert "backend gloo, world 2" in text
    lines = text.splitlines()
    for title in ("Latency per call", "Bus bandwidth", "Compiled overhead", "Eager per-call cost"):
        start = next(i for i, line in enumerate(lines) if line.startswith(title))
        header, rule = lines[start + 1], lines[start + 2]
        assert set(rule) <= {"-", " "}, rule
        # every column of the header has its own rule segment
        assert len(rule.split()) == len(re.split(r"\s{2,}", header.strip()))
    for op in TINY.ops:
        row = next(line for line in lines if line.startswith(op) and "4 KiB" in line)
        assert re.search(r"\d+\.\d ±\d+% \d+\.\d\dx", row), row
    assert any("compiled overhead <= raw + 5 µs" in line for line in lines)
    assert any("eager tiny all_reduce <= 0.8x" in line for line in lines)


def test_bus_bandwidth_follows_nccl_tests():
    # 1 MB per rank in 1000 µs is 1 GB/s of algorithm bandwidth; the bus factors at world 4:
    assert report.bus_bandwidth_gbps("all_reduce", 10**6, 4, 1000.0) == pytest.approx(1.5)
    assert report.bus_bandwidth_gbps("reduce_scatter", 10**6, 4, 1000.0) == pytest.approx(0.75)
    assert report.bus_bandwidth_gbps("all_to_all", 10**6, 4, 1000.0) == pytest.approx(0.75)
    # all_gather: the input is one of the 4 output chunks, 3 of which come over the link
    assert report.bus_bandwidth_gbps("all_gather", 10**6, 4, 1000.0) == pytest.approx(3.0)
    assert report.bus_bandwidth_gbps("all_reduce", 10**6, 1, 1000.0) == 0.0


def _overhead_rows(raw, math, ours, graph_math=None, graph_ours=None):
    times = {"raw": raw, "math": math, "math+ours": ours, "math+funcol": ours}
    if graph_math is not None:
        times |= {"graph math": graph_math, "graph math+ours": graph_ours}
    return [
        {"op": "all_reduce", "dtype": "bf16", "bytes": 64 << 20, "variant": v, "median_us": t}
        for v, t in times.items()
    ]


def test_memory_pass_target_is_judged_on_device_time_where_graphs_ran():
    # Launched: the op adds 150 µs to a 100 µs transfer (the host's cost); in a graph, 101 µs.
    launched_only = studies.Result(env={}, overhead=_overhead_rows(100.0, 50.0, 200.0))
    with_graphs = studies.Result(env={}, overhead=_overhead_rows(100.0, 50.0, 200.0, 40.0, 141.0))
    (line,) = [s for s in report.summary_lines(launched_only) if "extra pass" in s]
    assert "(launched)" in line and "+50.0 µs (MISSED)" in line, line
    (line,) = [s for s in report.summary_lines(with_graphs) if "extra pass" in s]
    assert "(in graph)" in line and "+1.0 µs (met)" in line, line
    # A copy in the graph (one more pass over 64 MiB) shows as device time and misses.
    copying = studies.Result(env={}, overhead=_overhead_rows(100.0, 50.0, 200.0, 40.0, 205.0))
    (line,) = [s for s in report.summary_lines(copying) if "extra pass" in s]
    assert "(in graph)" in line and "+65.0 µs (MISSED)" in line, line


def test_quick_configuration_and_flags():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    quick = config.config_from(parser.parse_args(["--quick"]), "gloo")
    assert quick.dtypes == ("fp32",) and len(quick.sizes) == 2
    full = config.config_from(parser.parse_args([]), "nccl")
    assert full.sizes[0] == 4 << 10 and full.sizes[-1] == 256 << 20
    assert set(full.dtypes) == {"bf16", "fp32"}
    custom = config.config_from(
        parser.parse_args(["--sizes", "4K,2M", "--ops", "all_reduce"]), "gloo"
    )
    assert custom.sizes == (4 << 10, 2 << 20) and custom.ops == ("all_reduce",)
    with pytest.raises(SystemExit, match="--ops"):
        config.config_from(parser.parse_args(["--ops", "all_reduce,allreduce"]), "gloo")


# ----------------------------------------------------------------------------------------------
# Generated code: where the input of an op with an in-place twin is dead, Inductor must call the
# twin on the producer's buffer. The out-of-place op would copy inside its kernel (invisible in
# the generated code), so the check is on which op is called, plus no copy/clone anywhere.


@pytest.mark.parametrize("op_name", sorted(compile_ops.reinplace.INPLACE_TWINS))
def test_dead_input_is_reused_without_a_copy(world, op_name):
    code = world(2).run(workers.generated_code, op_name, False)[0][0]
    call = code[code.index("def call(") : code.index("\nrunner = ")]
    assert f"torch.ops.compile_ops.{op_name}_.default(" in call, call
    assert f"torch.ops.compile_ops.{op_name}.default(" not in call, call
    assert not re.search(r"clone|copy", call), call


# ----------------------------------------------------------------------------------------------
# JSON, --from, --plot, --strict


def test_bench_document_matches_the_schema(results):
    import jsonschema

    doc = bench.bench_document(results[0], strict=False, link_gbps=None)
    jsonschema.validate(json.loads(json.dumps(doc)), SCHEMA)
    assert doc["command"] == "bench" and doc["ok"] is True
    assert {t["target"] for t in doc["targets"]} >= {"compiled overhead <= raw + 5 µs"}


def _timing(us):
    return {
        "median_us": us,
        "p25_us": us * 0.9,
        "p75_us": us * 1.1,
        "blocks": 5,
        "calls_per_block": 10,
    }


def _synthetic(tmp_path, overhead_us=1.0, errors=()):
    """A saved results.json: world 2, all_reduce fp32 at three sizes, every contender."""
    latency = [
        {"op": "all_reduce", "dtype": "fp32", "bytes": n, "variant": v, **_timing(10 + n / 1e4 * k)}
        for n in (4096, 65536, 1 << 20)
        for k, v in enumerate(("raw", "funcol", "eager", "compiled", "graph"), start=1)
    ]
    overhead = [
        {"op": "all_reduce", "dtype": "fp32", "bytes": 4096, "variant": v, **_timing(us)}
        for v, us in (
            ("raw", 10.0),
            ("math", 5.0),
            ("math+ours", 5 + overhead_us),
            ("math+funcol", 20.0),
        )
    ]
    env = {"world": "2", "backend": "gloo", "device": "2-core CPU", "torch": "x", "date": "today"}
    result = studies.Result(env=env, latency=latency, overhead=overhead, errors=list(errors))
    path = tmp_path / "results.json"
    path.write_text(json.dumps(bench.bench_document(result, strict=False, link_gbps=25.0)))
    return path


def test_plot_from_saved_results(tmp_path, capsys):
    png = tmp_path / "out" / "bench.png"
    assert main(["bench", "--from", str(_synthetic(tmp_path)), "--plot", str(png), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["link_gbps"] == 25.0 and len(doc["latency"]) == 15
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit, match=r"pip install 'compile-ops\[plot\]'"):
        main(["bench", "--from", str(_synthetic(tmp_path)), "--plot", str(tmp_path / "x.png")])


def test_missed_target_fails_only_with_strict_and_errors_always(tmp_path, capsys):
    slow = _synthetic(tmp_path, overhead_us=40.0)  # raw 10 µs + 5 µs slack: missed
    assert main(["bench", "--from", str(slow)]) == 0
    assert "compiled overhead <= raw + 5 µs: 0/1 met" in capsys.readouterr().out
    assert main(["bench", "--from", str(slow), "--strict"]) == 1
    broken = _synthetic(tmp_path, errors=["latency all_reduce: RuntimeError: boom"])
    assert main(["bench", "--from", str(broken)]) == 1
    (tmp_path / "other.json").write_text(
        json.dumps({"schema": "compile-ops/1", "command": "check"})
    )
    with pytest.raises(SystemExit, match="not a bench document"):
        main(["bench", "--from", str(tmp_path / "other.json")])
