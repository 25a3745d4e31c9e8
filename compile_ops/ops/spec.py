"""One row per op: everything the package and its tests know about a collective.

A row (:class:`OpSpec`, listed in ``collectives.SPECS``) names the op's schema, its shape rule
(in ``fake_impls.collectives``), its eager kernel (``kernels.py``), its twin, its public wrapper,
and what the test kit needs to call it and check it: the wrapper's arguments it varies, how large
the input must be, opcheck samples and a single-process reference. From the rows come the
``torch.library`` registration (register.py), Inductor's reinplacing map (reinplace.py), the
audit's and opcheck's samples, the test kit's cases and strategies, and the test tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

Sample = tuple[tuple, dict[str, Any]]  # (args, kwargs) for torch.library.opcheck
Calls = Sequence[dict[str, Any]]  # per rank: the keyword arguments given to the wrapper

# The wrapper arguments a row may list in ``params`` (the test kit knows how to choose each).
PARAMS = frozenset({"op", "dim", "src", "dst", "sizes", "output_split_sizes", "input_split_sizes"})


def _same_extent(kwargs: dict[str, Any], rank: int, extent: int, world_size: int) -> int:
    return extent


@dataclass(frozen=True)
class OpSpec:
    """An op and its twin, as the package defines, registers and tests them.

    * ``schema``: the out-of-place signature after the name, e.g.
      ``"(Tensor x, str op, str group_name) -> Tensor"``: ``x`` first, ``group_name`` last, no
      alias annotations. The twin's schema follows from it.
    * ``shape``: the shape rule, called as ``shape(x, *args)`` with the schema's arguments
      between ``x`` and ``group_name``; it validates them and returns the result's shape.
    * ``twin``: ``"inplace"`` for ``<name>_(Tensor(a!) x, ...)`` (result shaped like ``x``; the
      reinplacing pass swaps it in where ``x`` is dead), ``"out"`` for ``<name>.out(..., *,
      Tensor(a!) out)``. ``kernel`` follows the same split (see kernels.py).
    * ``wrapper``: the public function ``compile_ops.<name>``; ``params`` are its keyword
      arguments the test kit varies (a subset of :data:`PARAMS`).
    * ``samples(group, rand)``: opcheck inputs (the out-of-place op's args) on this rank of
      ``group``; ``rand(*shape)`` makes a tensor. The twin's samples follow from them.
    * ``reference(inputs, calls)``: every rank's expected result from every rank's input and
      wrapper keyword arguments (``calls[r]``), computed in one process.
    * ``input_extent(kwargs, rank, extent, world_size)``: how long rank ``rank``'s input must be
      along the op's dim when called with ``kwargs``, for a case whose base length is ``extent``
      (default: ``extent``).
    """

    name: str
    schema: str
    shape: Callable[..., Sequence[Any]]
    kernel: Callable[..., None]
    twin: Literal["inplace", "out"]
    wrapper: Callable[..., torch.Tensor]
    params: tuple[str, ...]
    samples: Callable[[dist.ProcessGroup, Callable[..., torch.Tensor]], list[tuple]]
    reference: Callable[[Sequence[torch.Tensor], Calls], list[torch.Tensor]]
    input_extent: Callable[[dict[str, Any], int, int, int], int] = _same_extent

    def __post_init__(self) -> None:
        unknown = set(self.params) - PARAMS
        if unknown:
            raise ValueError(f"OpSpec {self.name}: unknown params {sorted(unknown)}")
        args = self.schema[1 : self.schema.index(")")].split(", ")
        if not (args[0] == "Tensor x" and args[-1] == "str group_name"):
            raise ValueError(
                f"OpSpec {self.name}: the schema must start with x, end with group_name"
            )

    @property
    def twin_name(self) -> str:
        """``all_reduce_`` or ``all_gather.out``."""
        return f"{self.name}_" if self.twin == "inplace" else f"{self.name}.out"

    @property
    def overloads(self) -> dict[str, str]:
        """``{overload name: full schema}`` for the op and its twin."""
        args = self.schema.rsplit(" -> ", 1)[0]
        if self.twin == "inplace":
            twin = args.replace("(Tensor x", "(Tensor(a!) x", 1) + " -> Tensor(a!)"
        else:
            twin = f"{args[:-1]}, *, Tensor(a!) out) -> Tensor(a!)"
        return {self.name: self.name + self.schema, self.twin_name: self.twin_name + twin}

    @property
    def list_arguments(self) -> tuple[int, ...]:
        """Positions of the list (``SymInt[]``) arguments among the shape rule's arguments."""
        args = self.schema[1 : self.schema.index(")")].split(", ")[1:-1]
        return tuple(i for i, arg in enumerate(args) if arg.startswith("SymInt[]"))

    @property
    def reduces(self) -> bool:
        return "op" in self.params

    @property
    def uneven(self) -> bool:
        """Whether ranks may contribute different extents (sizes or split lists)."""
        return "sizes" in self.params or "input_split_sizes" in self.params

    def opcheck_samples(
        self, group: dist.ProcessGroup, rand: Callable[..., torch.Tensor]
    ) -> dict[str, list[Sample]]:
        """``{overload name: [(args, kwargs), ...]}`` for the op and its twin."""
        plain = self.samples(group, rand)
        if self.twin == "inplace":
            twin = [((args[0].clone(), *args[1:]), {}) for args in plain]
        else:
            twin = [(args, {"out": args[0].new_empty(self.shape(*args[:-1]))}) for args in plain]
        return {self.name: [(args, {}) for args in plain], self.twin_name: twin}


def opcheck_samples(
    specs: Sequence[OpSpec], group: dist.ProcessGroup, device: str | None = None
) -> dict[str, list[Sample]]:
    """opcheck inputs for every overload of ``specs``, on this rank of ``group``.

    Every rank gets the same number of samples of the same shapes where the op needs it, so
    running them in order on every rank issues matching collectives. ``device`` defaults to the
    one the group serves (the CPU for gloo, else the accelerator).
    """
    if device is None:
        served = {d.type for d in group._device_types}
        device = "cpu" if "cpu" in served else torch.accelerator.current_accelerator().type
    gen = torch.Generator().manual_seed(group.rank())

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    out: dict[str, list[Sample]] = {}
    for spec in specs:
        out.update(spec.opcheck_samples(group, rand))
    return out
