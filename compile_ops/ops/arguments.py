"""Argument rules the public wrappers apply before any op is called.

Shared by the wrappers (collectives.py) and their functional-collective twins (funcol.py), so a
call is refused the same way, with the same message, whichever of the two serves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from packaging.version import Version
from torch.distributed import ProcessGroup

from fake_impls.collectives import REDUCE_OPS, error_class

from ..groups import GroupError, constant_result, refuse

# A reduction: one of REDUCE_OPS, or torch.distributed's ReduceOp (dist.ReduceOp.SUM, ...).
ReduceOpLike = str | dist.ReduceOp | dist.ReduceOp.RedOpType


def reduce_op_name(op: ReduceOpLike, fn: str) -> str:
    """``op`` as the ops spell it: a string as given, a ``ReduceOp`` by its lower-case name.

    A ReduceOp the ops lack (BAND, PREMUL_SUM, ...) becomes ``"ReduceOp.<NAME>"``, which the
    shape rule rejects with the list of supported reductions.
    """
    if isinstance(op, str):
        return op
    return _reduce_op_name(op, fn)


def _name_of_reduce_op(op: dist.ReduceOp | dist.ReduceOp.RedOpType, fn: str) -> str:
    name = getattr(getattr(op, "op", op), "name", None)  # a ReduceOp holds a RedOpType
    if not isinstance(name, str):
        refuse(
            f"compile_ops.{fn}: op must be a str or a torch.distributed.ReduceOp, "
            f"got {type(op).__name__}",
            "TypeError",
        )
    return name.lower() if name.lower() in REDUCE_OPS else f"ReduceOp.{name}"


# How Dynamo may see a ReduceOp differs by torch. 2.11 traces ``ReduceOp.op`` but cannot pass a
# ReduceOp to a function marked constant ("not a constant"). 2.14 can, and must: ``ReduceOp.op``
# is a new object at every access and its Dynamo guards on that object's identity, a guard that
# fails on the frame that made it. Both were tested; versions between them take 2.14's way.
_reduce_op_name = (
    constant_result(_name_of_reduce_op)
    if Version(torch.__version__).release >= (2, 12)
    else _name_of_reduce_op
)


def check_one_per_rank(op: str, pg: ProcessGroup, sizes: Sequence[int], name: str) -> None:
    """``sizes`` has one entry per rank of ``pg``."""
    _check_count(op, name, len(sizes), pg.size())


@constant_result
def _check_count(op: str, name: str, given: int, group_size: int) -> None:
    # Called, not traced, by Dynamo (its arguments are constants), so the error it raises reaches
    # the caller as it is (see error_class) instead of as Dynamo's "observed exception".
    if given != group_size:
        raise error_class(GroupError)(
            f"compile_ops.{op}: len({name}) is {given} but the group has {group_size} ranks"
        )


def all_to_all_splits(
    x: torch.Tensor,
    pg: ProcessGroup,
    output_split_sizes: Sequence[int] | None,
    input_split_sizes: Sequence[int] | None,
) -> tuple[list[int], list[int]]:
    """all_to_all's (output, input) splits: both as given, or, where neither is given, equal
    splits of dim 0 (as in ``all_to_all_single``); one entry per rank either way."""
    if output_split_sizes is None and input_split_sizes is None:
        n = pg.size()
        if x.shape[0] % n != 0:
            refuse(
                f"compile_ops.all_to_all: x.shape[0]={x.shape[0]} is not divisible by the group "
                f"size {n} (pass split sizes for uneven splits)",
                "ValueError",
            )
        output_split_sizes = input_split_sizes = [x.shape[0] // n] * n
    elif output_split_sizes is None or input_split_sizes is None:
        refuse(
            "compile_ops.all_to_all: give both output_split_sizes and input_split_sizes, or neither",
            "ValueError",
        )
    check_one_per_rank("all_to_all", pg, output_split_sizes, "output_split_sizes")
    check_one_per_rank("all_to_all", pg, input_split_sizes, "input_split_sizes")
    return list(output_split_sizes), list(input_split_sizes)
