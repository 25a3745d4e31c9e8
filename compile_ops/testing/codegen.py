"""Read Inductor's generated wrapper code (``torch._inductor.utils.run_and_get_code``): which
kernels run, and how many buffers each one loads and stores. Works for the C++ (CPU) and Triton
(GPU) backends, so the same property, e.g. "every RMSNorm kernel loads 2 activations", is checked
on CPU and measured on GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KERNEL_DEF = re.compile(
    r"^(\w+) = async_compile\.(?:cpp_pybinding|triton)\(.*?'''(.*?)'''", re.M | re.S
)
_SIGNATURE = re.compile(r"(?:void\s+kernel|def \w+)\((.*?)\)", re.S)


@dataclass(frozen=True)
class KernelLaunch:
    name: str
    loads: int  # buffers read (in_ptr*, in_out_ptr*)
    stores: int  # buffers written (out_ptr*, in_out_ptr*)

    @property
    def is_norm(self) -> bool:
        """An RMSNorm kernel (Inductor names fused kernels after their ops)."""
        return "rsqrt" in self.name and "mean" in self.name


def _kernel_buffers(code: str) -> dict[str, tuple[int, int]]:
    """Kernel name -> (loads, stores), from the pointer names of its generated signature."""
    kernels: dict[str, tuple[int, int]] = {}
    for name, source in _KERNEL_DEF.findall(code):
        signature = _SIGNATURE.search(source)
        params = signature.group(1) if signature else ""
        names = re.findall(r"\b(in_out_ptr|in_ptr|out_ptr)\d+", params)
        kernels[name] = (
            sum(n != "out_ptr" for n in names),
            sum(n != "in_ptr" for n in names),
        )
    return kernels


def kernel_launches(code: str) -> list[KernelLaunch]:
    """Kernels launched by the wrapper's ``call``, in launch order."""
    kernels = _kernel_buffers(code)
    body = code[code.find("def call(") :]
    launches = []
    for match in re.finditer(r"^\s*(\w+?)(?:\.run)?\(", body, re.M):
        name = match.group(1)
        if name in kernels:
            launches.append(KernelLaunch(name, *kernels[name]))
    return launches


def norm_loads(codes: list[str]) -> list[int]:
    """Buffers loaded by each RMSNorm kernel, in order, across all compiled graphs."""
    return [k.loads for code in codes for k in kernel_launches(code) if k.is_norm]


def comparable(code: str) -> str:
    """The code without what differs between two compilations of the same graph (the AOT id),
    so that equal strings mean the same kernels, launched the same way."""
    return re.sub(r"^# AOT ID: .*$", "", code, flags=re.M)
