"""The audit, and fakes added with fake_impls.register to an out-of-tree library that lacks them."""

import pytest
import torch
import torch.distributed as dist
from helpers import collective_workers
from helpers.scratch_library import ScratchLibrary

import compile_ops  # noqa: F401 - defines torch.ops.compile_ops
import fake_impls
from compile_ops.cli import main as cli_main
from compile_ops.cli.audit import format_reports
from compile_ops.ops import SPECS
from fake_impls import FakeMismatch, audit
from fake_impls.register import qualname

# ----------------------------------------------------------------------------------------------
# Our own namespace


def test_audit_reports_compile_ops_all_green():
    assert not dist.is_initialized()
    reports = audit("compile_ops")
    names = {r.op for r in reports}
    for name in (
        "all_reduce",
        "all_gatherv.out",
        "reduce_scatterv",
        "all_to_all.out",
        "broadcast_",
    ):
        assert f"compile_ops::{name}" in names
    bad = [r for r in reports if r.status != "ok" or r.opcheck != "pass"]
    assert not bad, format_reports(bad)
    assert not dist.is_initialized(), "the audit left its world-of-one group behind"


def test_audit_on_every_rank_of_a_world_with_uneven_samples(world):
    for per_rank in world(2).run(collective_workers.audit_rows):
        assert [r for r in per_rank if r[1:3] != ("ok", "pass")] == []


# ----------------------------------------------------------------------------------------------
# An out-of-tree library: real CPU kernels, no fakes.


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _pad_rows(x, block):
    rows = -(-x.shape[0] // block) * block
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


def _route(logits, k):
    weights, ids = logits.float().softmax(-1).topk(k, dim=-1)
    return weights, ids.to(torch.int32)


def _col_major(x):
    return (2 * x).t().contiguous().t()


KERNELS = {
    "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor": _rms_norm,
    "pad_rows(Tensor x, int block) -> Tensor": _pad_rows,
    "route(Tensor logits, int k) -> (Tensor, Tensor)": _route,
    "col_major(Tensor x) -> Tensor": _col_major,
}


def fake_rms_norm(x, weight, eps):
    return torch.empty_like(x)


def fake_pad_rows(x, block):
    return x.new_empty(((x.shape[0] + block - 1) // block * block, *x.shape[1:]))


def fake_route(logits, k):
    n = logits.shape[0]
    return logits.new_empty((n, k), dtype=torch.float32), logits.new_empty(
        (n, k), dtype=torch.int32
    )


def fake_col_major(x):
    return x.new_empty((x.shape[1], x.shape[0])).t()


FAKES = {
    "rms_norm": fake_rms_norm,
    "pad_rows": fake_pad_rows,
    "route": fake_route,
    "col_major": fake_col_major,
}


class OutOfTree(ScratchLibrary):
    """The four ops above, without fakes, and how to call and register them."""

    def __init__(self):
        super().__init__("fake_impls_test", KERNELS)

    def op(self, name):
        return getattr(self.ops, name).default

    def samples(self, name):
        x, w = torch.randn(5, 8), torch.randn(8)
        return {
            "rms_norm": [((x, w, 1e-6), {})],
            "pad_rows": [((x, 4), {}), ((x[:4], 4), {})],
            "route": [((torch.randn(5, 6), 2), {})],
            "col_major": [((x,), {})],
        }[name]

    def register_all(self):
        for name, fake in FAKES.items():
            fake_impls.register(self.op(name), fake, samples=self.samples(name), lib=self.fakes)


@pytest.fixture
def lib():
    library = OutOfTree()
    yield library
    library.close()
    torch._dynamo.reset()


@pytest.fixture
def scratch():
    """An empty namespace a test defines its own ops in."""
    library = ScratchLibrary("fake_impls_test")
    yield library
    library.close()


def test_audit_finds_the_missing_fakes_and_registration_fixes_them(lib):
    samples = {name: lib.samples(name) for name in FAKES}
    before = audit(lib.ns, samples)
    assert {r.op: r.status for r in before} == {f"{lib.ns}::{n}": "fail" for n in FAKES}
    for r in before:
        assert r.fake is None and r.opcheck == "fail"
        assert "no fake kernel" in r.problems[0]

    assert cli_main(["audit", lib.ns]) == 1

    lib.register_all()

    after = audit(lib.ns, samples)
    assert [(r.status, r.fake, r.opcheck) for r in after] == [("ok", "register_fake", "pass")] * 4
    assert audit(lib.ns)[0].opcheck == "-"  # without samples: nothing run
    assert cli_main(["audit", lib.ns]) == 0


def test_cli_exit_codes(capsys):
    assert cli_main(["audit", "compile_ops"]) == 0
    overloads = 2 * len(SPECS) + 1  # every op, its twin, and broadcast's backward
    assert f"{overloads} ok, 0 warn, 0 fail" in capsys.readouterr().out
    assert cli_main(["audit", "no_such_namespace"]) == 2
    assert "has no operators" in capsys.readouterr().err


def _model(ops):
    def fn(x, w, logits):
        h = ops.pad_rows(ops.rms_norm(x, w, 1e-6), 4)
        weights, ids = ops.route(logits, 2)
        return ops.col_major(h) + 1, weights * 2, ids + 1

    return fn


def test_compiled_fullgraph_works_only_after_registration(lib):
    fn = _model(lib.ops)
    args = (torch.randn(6, 8), torch.randn(8), torch.randn(6, 4))

    torch._dynamo.reset()
    assert torch._dynamo.explain(fn)(*args).graph_break_count > 0
    with pytest.raises(torch._dynamo.exc.Unsupported, match="fake"):
        torch.compile(fn, fullgraph=True)(*args)

    lib.register_all()

    torch._dynamo.reset()
    assert torch._dynamo.explain(fn)(*args).graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)(*args)
    for got, want in zip(compiled, fn(*args), strict=True):
        torch.testing.assert_close(got, want)
        assert got.stride() == want.stride()


# Wrong fakes, each with the field that gives it away.


def forgets_padding(x, block):
    return x.new_empty(x.shape)


def int64_ids(logits, k):
    n = logits.shape[0]
    return logits.new_empty((n, k), dtype=torch.float32), logits.new_empty(
        (n, k), dtype=torch.int64
    )


def one_output(logits, k):
    return logits.new_empty((logits.shape[0], k), dtype=torch.float32)


def row_major(x):
    return x.new_empty((x.shape[0], x.shape[1]))


def returns_its_input(x, weight, eps):
    return x


def on_meta(x, weight, eps):
    return torch.empty(x.shape, device="meta")


@pytest.mark.parametrize(
    ("name", "fake", "error"),
    [
        (
            "pad_rows",
            forgets_padding,
            r"on sample 0: the fake .* shape \[5, 8\] but the kernel's has \[8, 8\]",
        ),
        ("route", int64_ids, r"output 1 has dtype torch.int64 but the kernel's has torch.int32"),
        ("route", one_output, r"returns a tensor of shape \[5, 2\], the kernel a tuple of 2"),
        ("col_major", row_major, r"strides \(8, 1\) but the kernel's has \(1, 5\)"),
        ("rms_norm", returns_its_input, r"the fake's output is an input or a view of one"),
        ("rms_norm", on_meta, r"device meta but the kernel's has cpu"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_register_rejects_a_wrong_fake(lib, name, fake, error):
    op = lib.op(name)
    with pytest.raises(FakeMismatch, match=error) as info:
        fake_impls.register(op, fake, samples=lib.samples(name), lib=lib.fakes)
    assert qualname(op) in str(info.value)
    [report] = [r for r in audit(lib.ns) if r.op == qualname(op)]
    assert report.fake is None, "a rejected fake was registered"
    fake_impls.register(
        op, FAKES[name], samples=lib.samples(name), lib=lib.fakes
    )  # the right one passes


def test_register_refuses_a_second_fake_and_requires_samples(lib):
    op = lib.op("rms_norm")
    with pytest.raises(ValueError, match="at least one sample"):
        fake_impls.register(op, fake_rms_norm, samples=[], lib=lib.fakes)
    fake_impls.register(op, fake_rms_norm, samples=lib.samples("rms_norm"), lib=lib.fakes)
    with pytest.raises(RuntimeError, match=r"already has an? fake impl"):
        fake_impls.register(op, fake_rms_norm, samples=lib.samples("rms_norm"), lib=lib.fakes)


def test_register_checks_a_kernel_that_returns_its_input(scratch):
    scratch.lib.define("scale(Tensor x) -> Tensor")  # declares a new tensor ...
    scratch.lib.impl("scale", lambda x: x.mul_(2), "CPU")  # ... but hands back its input
    with pytest.raises(FakeMismatch, match="the kernel's output is an input or a view of one"):
        fake_impls.check_fake(
            scratch.ops.scale.default, lambda x: torch.empty_like(x), [((torch.ones(3),), {})]
        )


def test_audit_flags_schemas_a_compiler_may_drop_and_unverified_real_kernels(scratch):
    scratch.lib.define("fill(Tensor x) -> ()")  # writes x, does not say so
    scratch.lib.impl("fill", lambda x: None, "CPU")
    scratch.lib.define("twice(Tensor x) -> Tensor")
    scratch.lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")
    fill, twice = audit(scratch.ns)
    assert (fill.status, fill.fake, fill.schema) == ("fail", None, "returns nothing")
    assert "no fake kernel" in fill.problems[0] and "dead code" in fill.problems[1]
    assert (twice.status, twice.fake) == ("warn", "real kernel")
    assert "meta tensors" in twice.problems[0]
    assert audit(scratch.ns, {"twice": [((torch.ones(2),), {})]})[1].status == "ok"
    with pytest.raises(ValueError, match="not an operator"):
        audit(scratch.ns, {"thrice": []})


def test_register_skips_data_dependent_sizes_but_checks_the_rest(scratch):
    scratch.lib.define("positive(Tensor x) -> Tensor")
    scratch.lib.impl("positive", lambda x: x[x > 0], "CPU")
    op = scratch.ops.positive.default
    sample = [((torch.tensor([1.0, -2.0, 3.0]),), {})]

    def fake(x):
        return x.new_empty(torch.library.get_ctx().new_dynamic_size())

    def fake_wrong_dtype(x):
        return x.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.float64)

    with pytest.raises(FakeMismatch, match=r"dtype torch\.float64"):
        fake_impls.check_fake(op, fake_wrong_dtype, sample)
    fake_impls.register(op, fake, samples=sample, lib=scratch.fakes)
    assert audit(scratch.ns, {"positive": sample})[0].status == "ok"
