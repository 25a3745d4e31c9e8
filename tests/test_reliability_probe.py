"""A small subset of the reliability probe (benchmarks/reliability_probe.py), so it cannot rot.

World 2, debug mode on, eager and compiled: one cross-rank mismatch of each kind, bad inputs
(among them errors of the public functions, which compiled code must report as eager code does),
a valid call whose ranks name one group differently, a gradient, stale and destroyed groups and
the pool's abuses. Each case must land in the class stated here; none may give a wrong result, hang or
crash. The full probe (both worlds, debug off and on, every case) runs by hand; its counts are
in docs/benchmarks.md.
"""

import sys
from pathlib import Path

import pytest

# The ranks unpickle the probe's functions by module name: the directory must be on sys.path
# before the probe's world is started (spawned ranks inherit it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reliability_probe

EXPECTED = {
    "mismatch: all_to_all rows": "clear",
    "mismatch: all_reduce op": "clear",
    "mismatch: all_gather dim": "clear",
    "mismatch: all_reduce shape": "clear",
    "mismatch: all_reduce dtype float32/int32": "clear",
    "mismatch: all_gatherv sizes": "clear",
    "mismatch: reduce_scatterv sizes": "clear",
    "mismatch: broadcast src": "clear",
    "mismatch: gather dst": "clear",
    "mismatch: collective": "clear",
    "bad input: all_to_all split sum": "clear",
    # Raised by the public function while Dynamo traces it: still the package's error, compiled.
    "bad input: all_to_all one split list": "clear",
    "bad input: all_reduce op=3": "clear",
    "bad input: all_reduce group='probe_missing'": "clear",
    "group: alias of a destroyed group": "clear",
    "valid: all_reduce group=mixed": "correct",
    "autograd: all_gatherv uneven": "correct",
    "group: stale subgroup after re-init": "clear",
}
POOL_ABUSES = 5


@pytest.fixture(scope="module")
def records():
    # A generous group timeout: none of these cases may wait at all, and a loaded CI machine
    # must not turn a slow compile on one rank into a timeout on the other.
    return reliability_probe.probe(
        (2,), (True,), select=lambda key: key in EXPECTED or key == "pool", group_timeout=60.0
    )


def test_the_probe_subset_runs_every_case_in_both_modes(records):
    seen = {(f"{r.kind}: {r.name}", r.mode) for r in records if r.kind != "pool"}
    assert seen == {(key, mode) for key in EXPECTED for mode in ("eager", "compiled")}
    assert sum(r.kind == "pool" for r in records) == POOL_ABUSES


def test_debug_mode_lets_no_wrong_result_hang_or_crash_through(records):
    bad = [r for r in records if r.outcome in ("wrong", "hang", "crash")]
    assert not bad, "\n".join(f"{r.mode} {r.kind}: {r.name}: {r.outcome}: {r.detail}" for r in bad)


def test_each_case_lands_in_its_class(records):
    got = {(f"{r.kind}: {r.name}", r.mode): (r.outcome, r.detail) for r in records}
    for (key, mode), (outcome, detail) in got.items():
        want = "clear" if key.startswith("pool") else EXPECTED.get(key, "clear")
        assert outcome == want, f"{mode} {key}: {outcome} ({detail})"
