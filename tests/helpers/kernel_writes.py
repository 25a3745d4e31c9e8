"""What torch's analysis of a traced Triton kernel says each kernel writes, without a GPU.

``torch.compile`` traces a ``triton_op`` into ``triton_kernel_wrapper_functional`` nodes whose
``tensors_to_clone`` are the inputs the kernel is found to write: the compiled graph treats each
as mutated, and Inductor copies it before the launch wherever it cannot reinplace the write.
Tracing lowers each kernel to Triton's IR for the active driver's target, so a stand-in driver
that names an sm_90 GPU lets this run on a CPU.
"""

from __future__ import annotations

import torch


class _Hopper:
    """What torch asks of Triton's active driver to lower a kernel."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


class _Traced(Exception):
    pass


def traced_writes(fn, *args) -> list[tuple[str, set[str]]]:
    """``(kernel name, inputs it writes)`` for each Triton kernel of ``fn(*args)``, in the
    order ``torch.compile(fullgraph=True)`` traces them (tensor arguments marked unbacked, as
    the caller chose, stay so)."""
    import triton
    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    writes = []

    def record(gm, _):
        for node in gm.graph.nodes:
            if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
                kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__
                writes.append((kernel, set(node.kwargs["tensors_to_clone"])))
        raise _Traced  # traced is all that is wanted: nothing is compiled or run

    drivers = triton.runtime.driver
    previous = drivers._active  # None without a GPU, where reset_active() would raise
    drivers.set_active(_Hopper())
    torch._dynamo.reset()
    try:
        torch.compile(fn, backend=aot_autograd(fw_compiler=record), fullgraph=True)(*args)
    except Exception as error:  # Dynamo wraps what the backend raises
        if not _raised_by(error, _Traced):
            raise
    else:
        raise AssertionError("the traced graph never reached the backend")
    finally:
        drivers.set_active(previous)
        torch._dynamo.reset()
    return writes


def _raised_by(error: BaseException | None, kind: type) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False
