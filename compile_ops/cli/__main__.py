"""``python -m compile_ops.cli``: the same as the ``compile-ops`` command (and what torchrun runs)."""

from . import entry

entry()
