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


@SYMBOLIC_ONE
@pytest.mark.parametrize(
    "fn, shapes",
    [(_one_row_matmul, ((2, 5), (5, 5))), (_one_inner_matmul, ((2, 3), (1, 2)))],
    ids=["one-row", "one-inner"],
)
def test_matmul_with_a_symbolic_extent_of_one(fn, shapes):
    torch._dynamo.reset()
    x, w = (torch.randn(shape) for shape in shapes)
    torch.testing.assert_close(torch.compile(fn, dynamic=True)(x, w), fn(x, w))


@pytest.mark.parametrize(
    "fn, shapes",
    [(_one_row_matmul, ((4, 5), (5, 5))), (_one_inner_matmul, ((4, 3), (2, 2)))],
    ids=["two-rows", "two-inner"],
)
def test_same_programs_with_extents_above_one_compile_correctly(fn, shapes):
    """The bug is the extent of 1: the fuzzer's workaround (extents > 1) stays on correct ground."""
    torch._dynamo.reset()
    x, w = (torch.randn(shape) for shape in shapes)
    torch.testing.assert_close(torch.compile(fn, dynamic=True)(x, w), fn(x, w))
