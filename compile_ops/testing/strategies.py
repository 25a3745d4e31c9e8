"""Hypothesis strategies for collective inputs and for programs that mix collectives with math.

``cases(op)`` draws one call of one op on a whole world: world size, dtype, shape (zero-size and
size-1 dimensions included), dim anywhere (negative too), layout (contiguous, transposed, sliced),
uneven ``sizes``/splits that sum correctly, reduce op. ``programs()`` draws 2-6 step programs.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from compile_ops.ops import SPECS

from .cases import OPS, Case, dtypes_for
from .programs import Program, Step

REDUCING = tuple(name for name, spec in SPECS.items() if spec.reduces)


@st.composite
def cases(
    draw,
    op: str | st.SearchStrategy[str] | None = None,
    world_sizes: tuple[int, ...] = (1, 2, 3, 4),
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> Case:
    """One call of ``op`` (any op if None) on a whole world; ``dtypes`` defaults to every
    documented dtype the op takes."""
    if op is None:
        op = st.sampled_from(OPS)
    op = draw(op) if isinstance(op, st.SearchStrategy) else op
    n = draw(st.sampled_from(world_sizes))
    reduce_op = draw(st.sampled_from(("sum", "avg", "product", "min", "max")))
    dtype = draw(st.sampled_from(dtypes_for(op) if dtypes is None else dtypes))
    if op in REDUCING and reduce_op == "avg" and not dtype.is_floating_point:
        reduce_op = "sum"
    if dtype == torch.uint8 and op in REDUCING:
        reduce_op = draw(st.sampled_from(("max", "min")))  # small ints would wrap otherwise
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    dim = draw(st.integers(-ndim, ndim - 1))
    layout = draw(st.sampled_from(("contiguous", "transposed", "sliced")))
    params = SPECS[op].params
    extents = st.lists(st.integers(0, 4), min_size=n, max_size=n)
    sizes = tuple(draw(extents)) if "sizes" in params else None
    splits = None
    if "input_split_sizes" in params:
        splits = tuple(
            tuple(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))) for _ in range(n)
        )
    src = draw(st.integers(0, n - 1)) if {"src", "dst"} & set(params) else None
    return Case(
        op,
        n,
        dtype=dtype,
        dim=dim,
        reduce_op=reduce_op if op in REDUCING else "sum",
        layout=layout,
        shape=shape,
        sizes=sizes,
        splits=splits,
        src=src,
        seed=draw(st.integers(0, 2**16)),
    )


# -- programs -------------------------------------------------------------------------------------

_ACTIVATIONS = ("F.silu({v})", "torch.relu({v})", "torch.tanh({v})")
_MAX_ELEMENTS = 512


@st.composite
def programs(
    draw, world_sizes: tuple[int, ...] = (1, 2, 3, 4), min_steps: int = 2, max_steps: int = 6
) -> Program:
    n = draw(st.sampled_from(world_sizes))
    tokens = n * draw(st.integers(1, 3))
    hidden = draw(st.sampled_from((2, 4, 6, 8)))
    rows, cols = tokens, hidden
    current = "v0"
    values = {"v0": (rows, cols)}  # every named value and its shape
    steps: list[Step] = []
    weights: list[tuple[int, int]] = []
    for i in range(1, draw(st.integers(min_steps, max_steps)) + 1):
        target = f"v{i}"
        kinds = ["collective", "collective", "pointwise", "matmul", "reduce", "transpose", "reuse"]
        kind = draw(st.sampled_from(kinds))
        same_shape = [name for name, shape in values.items() if shape == (rows, cols)]
        if kind == "reuse" and len(same_shape) > 1:
            other = draw(st.sampled_from([s for s in same_shape if s != current]))
            steps.append(Step(target, f"{current} + {other}"))
        elif kind == "collective":
            step, (rows, cols) = _collective(draw, target, current, n, rows, cols)
            steps.append(step)
        elif kind == "matmul" and rows > 1 and cols > 1:
            # A product with an extent of 1 that is a symbolic expression (one row, or one column
            # after a transpose) hits a torch CPU Inductor bug (docs/known-issues.md); extents > 1
            # keep the fuzzer on our code.
            out_cols = draw(st.sampled_from((2, 4, 8)))
            weights.append((cols, out_cols))
            steps.append(Step(target, f"{current} @ w{len(weights) - 1}"))
            cols = out_cols
        elif kind == "reduce":
            expr = draw(
                st.sampled_from(
                    (
                        "{v} * torch.rsqrt({v}.pow(2).mean(-1, keepdim=True) + 1e-3)",
                        "{v} - {v}.mean(0, keepdim=True)",
                        "{v} + {v}.amax(-1, keepdim=True)",
                    )
                )
            )
            steps.append(Step(target, expr.format(v=current)))
        elif kind == "transpose":
            steps.append(Step(target, f"{current}.t()"))
            rows, cols = cols, rows
        else:  # pointwise
            act = draw(st.sampled_from(_ACTIVATIONS)).format(v=current)
            scale = draw(st.sampled_from((0.5, 2.0, -1.0)))
            steps.append(Step(target, f"{act} * {scale}"))
        current = target
        values[current] = (rows, cols)
    return Program(n, tokens, hidden, tuple(steps), tuple(weights), draw(st.integers(0, 2**16)))


def _collective(draw, target, operand, n, rows, cols):
    options = ["all_reduce", "broadcast", "all_to_all", "all_gather", "reduce_scatter"]
    op = draw(st.sampled_from(options))
    if op == "all_gather":
        dim = draw(st.sampled_from((0, 1, -1)))
        grown = (rows * n, cols) if dim == 0 else (rows, cols * n)
        if grown[0] * grown[1] <= _MAX_ELEMENTS:
            return Step(target, "", "all_gather", operand, (("dim", dim),)), grown
    if op == "reduce_scatter":
        for dim, extent in ((0, rows), (1, cols)):
            if extent % n == 0:
                kwargs = (("dim", dim), ("op", draw(st.sampled_from(("sum", "max", "avg")))))
                shrunk = (rows // n, cols) if dim == 0 else (rows, cols // n)
                return Step(target, "", "reduce_scatter", operand, kwargs), shrunk
    if op == "all_to_all" and rows % n == 0:
        kwargs = (("output_split_sizes", None), ("input_split_sizes", None))
        return Step(target, "", "all_to_all", operand, kwargs), (rows, cols)
    if op == "broadcast":
        src = draw(st.integers(0, n - 1))
        return Step(target, "", "broadcast", operand, (("src", src),)), (rows, cols)
    reduce_op = draw(st.sampled_from(("sum", "avg", "max", "min")))
    return Step(target, "", "all_reduce", operand, (("op", reduce_op),)), (rows, cols)
