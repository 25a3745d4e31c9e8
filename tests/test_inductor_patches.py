"""Registry, environment switch and cache key, on any torch version (patching a local class)."""

import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.compiler.config as compiler_config
from torch._dynamo.utils import counters

import compile_ops
import inductor_patches
from inductor_patches import Patch, PatchWarning, Replacement, cache_key, import_hook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Target:
    def scale(self, x: int) -> int:
        return 2 * x


ORIGINAL = Target.__dict__["scale"]


def _times_three(original):
    def scale(self, x: int) -> int:
        return 3 * x

    return scale


# The source of a module that ``fresh_module`` writes and nothing has imported yet.
UNLOADED_TARGET = "class Target:\n    def scale(self, x):\n        return 2 * x\n"


def _patch(
    name="triple", versions=">=2.0", parameters=("self", "x"), default=True, module=__name__
):
    """A patch of ``module.Target.scale`` (this file's Target, or one in a module not loaded)."""
    return Patch(
        name=name,
        summary="scale by 3",
        torch_versions=versions,
        replacements=(Replacement(f"{module}.Target", "scale", parameters, _times_three),),
        default=default,
        default_reason="a test patch",
    )


@pytest.fixture
def registered():
    """Register test patches; afterwards unregister them and restore the cache-key tag."""
    names, tag = [], compiler_config.cache_key_tag

    def register(patch):
        names.append(patch.name)
        return inductor_patches.register(patch)

    yield register
    for name in names:
        inductor_patches.unregister(name)
    assert Target.__dict__["scale"] is ORIGINAL
    compiler_config.cache_key_tag = tag
    cache_key.refresh()


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.11.0+cu130", True),
        ("2.11.1+cpu", True),
        ("2.11.0a0+gitabc", True),
        ("2.12.0", False),
        ("2.10.9", False),
    ],
)
def test_version_range_compares_the_base_version(version, expected):
    assert _patch(versions=">=2.11,<2.12").matches_torch(version) is expected
    assert str(inductor_patches.torch_base_version("2.11.0+cu130")) == "2.11.0"


def test_apply_is_idempotent_and_revert_restores_the_exact_original(registered):
    patch = registered(_patch())
    assert patch.apply() and patch.is_applied()
    installed = Target.__dict__["scale"]
    assert patch.apply() and Target.__dict__["scale"] is installed
    assert Target().scale(5) == 15
    assert installed.__wrapped__ is ORIGINAL
    assert patch.revert() and not patch.is_applied()
    assert Target.__dict__["scale"] is ORIGINAL and Target().scale(5) == 10
    assert patch.revert() is False
    assert patch.apply() and Target().scale(5) == 15


def test_switched_sets_the_patch_for_the_block_and_puts_it_back(registered):
    patch = registered(_patch())
    for before in (False, True):
        patch.apply() if before else patch.revert()
        for on in (False, True):
            with patch.switched(on):
                assert patch.is_applied() is on and Target().scale(5) == (15 if on else 10)
            assert patch.is_applied() is before
    with pytest.raises(RuntimeError, match="inside"), patch.switched(False):
        raise RuntimeError("inside")
    assert patch.is_applied() and Target().scale(5) == 15


def test_changed_signature_is_refused_with_one_warning(registered):
    patch = registered(_patch(parameters=("self", "x", "y")))
    with pytest.warns(PatchWarning, match=r"refused: .*Target.scale takes \(self, x\)"):
        assert patch.apply() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert patch.apply() is False  # no second warning
    assert Target.__dict__["scale"] is ORIGINAL
    (row,) = [r for r in inductor_patches.status() if r.name == patch.name]
    assert row.state == "refused" and "takes (self, x)" in row.reason


def test_method_replaced_by_someone_else_is_refused(registered):
    patch = registered(_patch())

    def foreign(self, x):
        return x

    foreign.__module__ = "another_library"
    Target.scale = foreign
    try:
        with pytest.warns(PatchWarning, match="already replaced by another_library.*foreign"):
            assert patch.apply() is False
        assert Target.__dict__["scale"] is foreign
    finally:
        Target.scale = ORIGINAL


def test_other_torch_version_is_inactive_and_says_so(registered):
    patch = registered(_patch(versions="<1.0"))
    assert patch.apply() is False and Target.__dict__["scale"] is ORIGINAL
    inductor_patches.apply_configured({})
    (row,) = [r for r in inductor_patches.status() if r.name == patch.name]
    assert row.state == "other torch version"
    assert "<1.0" in row.reason and torch.__version__ in row.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", {}),
        ("0", {"a": False, "b": False}),
        ("1", {"a": True, "b": True}),
        ("-a", {"a": False}),
        ("+b, -a", {"a": False, "b": True}),
        ("0,b", {"a": False, "b": True}),
        ("b,none", {"a": False, "b": False}),
    ],
)
def test_env_switch_grammar(value, expected):
    assert inductor_patches.parse_switches(value, ["a", "b"]) == expected


def test_env_switch_warns_on_unknown_names():
    with pytest.warns(PatchWarning, match=r"unknown patch name\(s\) \['-realize_on_resue'\]"):
        assert inductor_patches.parse_switches("-realize_on_resue", ["a"]) == {}


def test_apply_configured_follows_defaults_and_env(registered):
    on, off = registered(_patch("on_patch")), registered(_patch("off_patch", default=False))
    inductor_patches.apply_configured({})
    rows = {r.name: r for r in inductor_patches.status()}
    assert rows["on_patch"] == ("on_patch", "applied", "on by default: a test patch")
    assert rows["off_patch"] == ("off_patch", "off by default", "a test patch")

    inductor_patches.apply_configured({"COMPILE_OPS_PATCHES": "0"})
    rows = {r.name: r for r in inductor_patches.status()}
    assert not on.is_applied() and rows["on_patch"].state == "off by env"
    assert rows["on_patch"].reason == "COMPILE_OPS_PATCHES=0"

    env = {"COMPILE_OPS_PATCHES": "-on_patch,+off_patch"}
    inductor_patches.apply_configured(env)
    rows = {r.name: r for r in inductor_patches.status()}
    assert off.is_applied() and not on.is_applied()
    assert rows["off_patch"] == (
        "off_patch",
        "applied",
        "on by COMPILE_OPS_PATCHES=-on_patch,+off_patch",
    )
    off.revert()
    assert {r.name: r.state for r in inductor_patches.status()}["off_patch"] == "reverted"
    inductor_patches.apply_configured({})


def test_cache_key_component_keeps_the_user_tag(registered):
    compiler_config.cache_key_tag = "mine"
    cache_key.set_component("pkg", "1.0")
    tag = compiler_config.cache_key_tag
    assert tag.startswith("minecompile_ops[") and "pkg=1.0" in tag
    compiler_config.cache_key_tag = "theirs"  # the user changes their own tag later
    cache_key.set_component("pkg", "1.1")
    tag = compiler_config.cache_key_tag
    assert tag.startswith("theirscompile_ops[") and "pkg=1.1" in tag and "pkg=1.0" not in tag
    cache_key.set_component("pkg", None)
    assert "pkg=" not in compiler_config.cache_key_tag
    with pytest.raises(ValueError, match="component name"):
        cache_key.set_component("a=b", "1")


def test_applied_patches_are_in_the_cache_key(registered):
    patch = registered(_patch())
    patch.apply()
    assert f"triple@{patch.fingerprint()}" in cache_key.components()["inductor_patches"]
    assert "triple@" in compiler_config.cache_key_tag
    patch.revert()
    assert "triple@" not in cache_key.components().get("inductor_patches", "")


def _compile_and_count(fn, x):
    torch._dynamo.reset()
    counters.clear()
    out = torch.compile(fn, fullgraph=True)(x)
    hits = (
        counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"]
    )
    return out, hits > 0


def _matmul(x):
    return x @ x.T  # an extern kernel only: the cache is exercised without a C++ build


def test_fx_graph_cache_misses_when_a_component_changes(tmp_path, monkeypatch, registered):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x = torch.randn(4, 8)
    with (
        torch._inductor.config.patch(fx_graph_cache=True),
        torch._functorch.config.patch(enable_autograd_cache=True),
    ):
        cache_key.set_component("pkg", "1.0")
        assert _compile_and_count(_matmul, x)[1] is False
        assert _compile_and_count(_matmul, x)[1] is True
        cache_key.set_component("pkg", "1.1")  # e.g. a package upgrade
        assert _compile_and_count(_matmul, x)[1] is False
        cache_key.set_component("pkg", "1.0")
        assert _compile_and_count(_matmul, x)[1] is True
        cache_key.set_component("pkg", None)


# ---------------------------------------------------------------- applied when Inductor loads


@pytest.fixture
def fresh_module(tmp_path, monkeypatch):
    """``fresh_module(source)`` -> the name of a module not imported yet, defined by source."""
    names = []

    def make(source: str) -> str:
        name = f"hooked_{os.urandom(4).hex()}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_when_imported_runs_after_the_first_import_and_leaves_no_trace(fresh_module):
    name = fresh_module("VALUE = 1\n")
    seen = []
    inductor_patches.when_imported(name, lambda m: seen.append(m.VALUE))
    assert seen == [] and import_hook.waiting(name)
    module = importlib.import_module(name)
    assert seen == [1] and not import_hook.waiting(name)
    assert isinstance(module.__loader__, importlib.machinery.SourceFileLoader)  # the original
    assert module.__spec__.loader is module.__loader__
    inductor_patches.when_imported(name, lambda m: seen.append(m.VALUE + 1))  # already imported
    assert seen == [1, 2]


def test_a_failing_callback_warns_and_the_import_goes_on(fresh_module):
    name = fresh_module("VALUE = 1\n")

    def broken(module):
        raise RuntimeError("boom")

    inductor_patches.when_imported(name, broken)
    with pytest.warns(inductor_patches.ImportHookWarning, match=r"broken.*RuntimeError: boom"):
        assert importlib.import_module(name).VALUE == 1


def test_patch_of_a_module_not_imported_yet_is_keyed_now_and_applied_on_import(
    fresh_module, registered
):
    name = fresh_module(UNLOADED_TARGET)
    patch = registered(_patch("late", module=name))
    inductor_patches.apply_configured({})
    assert name not in sys.modules and patch.is_pending()
    # Anything compiled from now on is keyed with the patch, though its class is not loaded yet.
    assert f"late@{patch.fingerprint()}" in compiler_config.cache_key_tag
    assert importlib.import_module(name).Target().scale(5) == 15
    assert patch.is_applied() and not patch.is_pending()
    (row,) = [r for r in inductor_patches.status() if r.name == "late"]
    assert row == ("late", "applied", "on by default: a test patch")


def test_switched_keeps_a_pending_patch_on(fresh_module, registered):
    """A patch still waiting for its module's import counts as on: after the block it is."""
    name = fresh_module(UNLOADED_TARGET)
    patch = registered(_patch("late_switched", module=name))
    inductor_patches.apply_configured({})
    assert patch.is_pending()
    with patch.switched(False):
        assert sys.modules[name].Target().scale(1) == 2
    assert patch.is_applied() and sys.modules[name].Target().scale(1) == 3


def test_status_imports_what_a_pending_patch_waits_for(fresh_module, registered):
    name = fresh_module(UNLOADED_TARGET)
    patch = registered(_patch("late_status", default=False, module=name))
    inductor_patches.apply_configured({"COMPILE_OPS_PATCHES": "+late_status"})
    assert name not in sys.modules
    (row,) = [r for r in inductor_patches.status() if r.name == "late_status"]
    assert row.state == "applied" and sys.modules[name].Target().scale(1) == 3
    patch.revert()
    assert sys.modules[name].Target().scale(1) == 2
    assert "late_status@" not in compiler_config.cache_key_tag


# A fresh process: what `import compile_ops` loads, keys and applies before the first compile.
FRESH_PROCESS = """
import json, sys
import compile_ops, inductor_patches, torch, torch.compiler.config as config
import torch.distributed as dist
state = {
    "inductor_loaded": sorted(m for m in sys.modules if m.startswith("torch._inductor.")
                              and m.split(".")[2] in ("ir", "graph", "lowering", "fx_passes")),
    "tag": config.cache_key_tag,
}
if sys.argv[1] == "compile":
    from torch._inductor.utils import run_and_get_code
    from inductor_patches.realize_on_reuse import decisions
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    def f(x, r):
        s = x + r  # stored by realize_on_reuse, recomputed by torch 2.11's rule
        return compile_ops.all_reduce(s * 2), s.sum(-1)
    x, r = torch.randn(8, 8), torch.randn(8, 8)
    _, codes = run_and_get_code(torch.compile(f, fullgraph=True), x, r)
    state["inplace_all_reduces"] = sum(c.count("compile_ops.all_reduce_.default(") for c in codes)
    state["decisions"] = decisions.counts()
    dist.destroy_process_group()
state["status"] = [list(row) for row in inductor_patches.status()]
print(json.dumps(state))
"""


def _fresh_process(tmp_path, mode: str, patches: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "COMPILE_OPS_PATCHES"}
    env.update(PYTHONPATH=ROOT, TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    env.update(TORCHINDUCTOR_COMPILE_THREADS="1")
    if patches is not None:
        env["COMPILE_OPS_PATCHES"] = patches
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, mode], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_import_compile_ops_loads_no_inductor_yet_patches_and_reinplaces_the_first_compile(
    tmp_path,
):
    patch = inductor_patches.get("realize_on_reuse")
    state = _fresh_process(tmp_path, "compile")
    assert state["inductor_loaded"] == []
    assert f"compile_ops={compile_ops.__version__}" in state["tag"]
    assert state["inplace_all_reduces"] == 1
    (row,) = [r for r in state["status"] if r[0] == "realize_on_reuse"]
    if patch.matches_torch() and patch.default:
        assert f"realize_on_reuse@{patch.fingerprint()}" in state["tag"]  # before any compile
        assert row[1:] == ["applied", f"on by default: {patch.default_reason}"]
        assert state["decisions"] == {"bytes:realize": 1}
    elif patch.matches_torch():
        assert row[1] == "off by default" and state["decisions"] == {}
    else:
        assert "inductor_patches=" not in state["tag"] and row[1] == "other torch version"
        assert state["decisions"] == {}


def test_import_compile_ops_leaves_a_patch_switched_off_out(tmp_path):
    state = _fresh_process(tmp_path, "status", patches="-realize_on_reuse")
    assert "realize_on_reuse@" not in state["tag"]
    (row,) = [r for r in state["status"] if r[0] == "realize_on_reuse"]
    if inductor_patches.get("realize_on_reuse").matches_torch():
        assert row[1:] == ["off by env", "COMPILE_OPS_PATCHES=-realize_on_reuse"]
    else:
        assert row[1] == "other torch version"
