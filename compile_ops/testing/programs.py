"""Small programs that mix collectives with local math: the unit of compiler fuzzing.

A program is a list of steps over named values. It renders itself as Python source, and that source
is what runs (on every rank, eagerly and compiled), so a failure's reproducer is exactly the code
that failed. The single-process reference interprets the same steps, computing each collective
with ``compile_ops.testing.reference`` over every rank's value.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import reference


@dataclass(frozen=True)
class Step:
    target: str
    expr: str  # a Python expression over earlier values (local steps)
    collective: str | None = None  # the op (collective steps)
    operand: str = ""
    kwargs: tuple[tuple[str, object], ...] = ()

    def line(self) -> str:
        if self.collective is None:
            return f"{self.target} = {self.expr}"
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs)
        return f"{self.target} = compile_ops.{self.collective}({self.operand}{args})"


@dataclass(frozen=True)
class Program:
    world_size: int
    tokens: int
    hidden: int
    steps: tuple[Step, ...]
    weights: tuple[tuple[int, int], ...] = ()  # shapes of w0, w1, ...
    seed: int = 0

    def source(self, device: str = "cpu") -> str:
        """The program as a module; its weights live on ``device`` (drawn on the CPU, so every
        device gets the same values), its inputs on the CPU."""
        lines = ["import torch", "import torch.nn.functional as F", "import compile_ops", ""]
        to_device = "" if device == "cpu" else f".to({device!r})"
        for i, (rows, cols) in enumerate(self.weights):
            lines.append(
                f"w{i} = (torch.randn({rows}, {cols}, generator=torch.Generator()"
                f".manual_seed({self.seed * 100 + i})) / {rows**0.5:.4f}){to_device}"
            )
        lines += ["", "", "def program(x):", "    v0 = x"]
        lines += [f"    {step.line()}" for step in self.steps]
        lines += [f"    return {self.result}", "", ""]
        lines += [
            "def inputs(rank):",
            f"    g = torch.Generator().manual_seed({self.seed * 1000} + rank)",
            f"    return (torch.randn({self.tokens}, {self.hidden}, generator=g),)",
            "",
            f"# on each of {self.world_size} ranks: program(*inputs(rank))",
        ]
        return "\n".join(lines)

    @property
    def result(self) -> str:
        return self.steps[-1].target if self.steps else "v0"

    def _namespace(self) -> dict:
        return _exec(self.source())

    def inputs(self, rank: int) -> tuple[torch.Tensor]:
        return self._namespace()["inputs"](rank)

    def function(self, device: str = "cpu") -> ProgramFunction:
        """The program as a function that pickles by its source (to ship it to worker ranks)."""
        return ProgramFunction(self.source(device))

    def reference(self, per_rank_inputs: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """Every rank's result, computed in this process step by step."""
        namespace = self._namespace()
        envs = [{**namespace, "v0": inputs[0]} for inputs in per_rank_inputs]
        for step in self.steps:
            if step.collective is None:
                for env in envs:
                    env[step.target] = eval(step.expr, env)
                continue
            values = [env[step.operand] for env in envs]
            outs = reference.expected(step.collective, values, **dict(step.kwargs))
            for env, out in zip(envs, outs, strict=True):
                env[step.target] = out
        return [env[self.result] for env in envs]


class ProgramFunction:
    """Callable here; unpickles as the plain function its source defines, which Dynamo traces."""

    def __init__(self, source: str):
        self.source = source
        self.__qualname__ = "program"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _exec(self.source)["program"](x)

    def __reduce__(self):
        return _program_function, (self.source,)


def _program_function(source: str):
    return _exec(source)["program"]


@functools.lru_cache(maxsize=256)
def _exec(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<compile_ops program>", "exec"), namespace)
    return namespace
