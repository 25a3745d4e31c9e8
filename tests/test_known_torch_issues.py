"""Bugs in torch itself that our fuzzers found; each test passes once torch fixes it."""

import pytest
import torch


def _one_row_matmul(x, w):
    v = x[: x.shape[0] // 2] * 1.0  # one row when x has two
    return (v * 0.5) @ w + v


def _one_inner_matmul(x, w):
    v = x[: x.shape[0] // 2] * 1.0
    return (v * 0.5).t() @ w  # the inner extent is that one row


SYMBOLIC_ONE = pytest.mark.xfail(
    reason="torch CPU Inductor: matmul with a symbolic extent of 1 (known-issues.md)"
)


@pytest.mark.parametrize(
    "fn, shapes",
    [
        pytest.param(_one_row_matmul, ((2, 5), (5, 5)), marks=SYMBOLIC_ONE, id="one-row"),
        pytest.param(_one_inner_matmul, ((2, 3), (1, 2)), marks=SYMBOLIC_ONE, id="one-inner"),
        # Controls: the same programs with extents of 2, the fuzzer's workaround, compile right.
        pytest.param(_one_row_matmul, ((4, 5), (5, 5)), id="two-rows"),
        pytest.param(_one_inner_matmul, ((4, 3), (2, 2)), id="two-inner"),
    ],
)
def test_matmul_with_a_symbolic_extent(fn, shapes):
    torch._dynamo.reset()
    x, w = (torch.randn(shape) for shape in shapes)
    torch.testing.assert_close(torch.compile(fn, dynamic=True)(x, w), fn(x, w))
