"""Out-of-tree op libraries for the fake_impls tests, each in a namespace of its own.

Op registrations are process-global, so every library gets a fresh namespace and is destroyed
after its test.
"""

import itertools
from collections.abc import Callable

import torch

_namespaces = itertools.count()


class ScratchLibrary:
    """Ops defined from ``kernels`` (schema -> CPU kernel) with no fake kernel, and a fragment,
    ``fakes``, that owns whatever fakes the test registers."""

    def __init__(self, prefix: str, kernels: dict[str, Callable] | None = None):
        self.ns = f"{prefix}_{next(_namespaces)}"
        self.lib = torch.library.Library(self.ns, "DEF")
        for schema, kernel in (kernels or {}).items():
            self.lib.define(schema)
            self.lib.impl(schema.split("(")[0], kernel, "CPU")
        self.fakes = torch.library.Library(self.ns, "FRAGMENT")
        self.ops = getattr(torch.ops, self.ns)

    def close(self) -> None:
        self.fakes._destroy()
        self.lib._destroy()
