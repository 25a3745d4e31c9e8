"""The test kit: run a function on a real world of ranks, eagerly and compiled, and compare.

``assert_compiled_matches_eager`` is the entry point (docs/testing.md); the pool runs any
function on every rank. Two submodules are imported by name: ``reference`` (single-process
references of every collective) and ``strategies`` (hypothesis strategies; needs the ``test``
extra). Importing this package starts no process: a pool starts its world on first use.
"""

from .compare import MismatchError, assert_compiled_matches_eager, default_tolerance
from .pool import ExchangeError, WorkerError, WorkerPool, WorkerTimeout, get_pool

__all__ = [
    "ExchangeError",
    "MismatchError",
    "WorkerError",
    "WorkerPool",
    "WorkerTimeout",
    "assert_compiled_matches_eager",
    "default_tolerance",
    "get_pool",
]
