"""Bugs in torch itself that our fuzzers found; each test passes once torch fixes it."""

import pytest
import torch


def _one_row_matmul(x, w):
    v = x[: x.shape[0] // 2] * 1.0
    return (v * 0.5) @ w + v


@pytest.mark.xfail(
    reason="torch CPU Inductor: one-row matmul under dynamic shapes (known-issues.md)"
)
def test_one_row_matmul_under_dynamic_shapes():
    torch._dynamo.reset()
    x, w = torch.randn(2, 5), torch.randn(5, 5)
    torch.testing.assert_close(
        torch.compile(_one_row_matmul, dynamic=True)(x, w), _one_row_matmul(x, w)
    )
