"""compile-ops: collectives and MoE ops that stay correct and fast under torch.compile.

``import compile_ops`` registers the ``torch.ops.compile_ops`` namespace with fake kernels,
teaches Inductor's reinplacing pass the in-place twins and applies the Inductor patches that are
on (see ``inductor_patches`` and docs/patches.md). It imports neither Dynamo nor Inductor (nor
sympy, which they pull in), whose imports cost seconds on a CPU and would be paid by every rank:
the last two steps happen right after Inductor's modules are first imported, before anything is
compiled. ``benchmarks/import_time.py`` measures what the import costs.
"""

import re
import warnings
from importlib import metadata
from pathlib import Path

# torch warns at import when NumPy is missing; nothing in compile-ops needs NumPy, so a process
# that imports torch through us (the commands, every rank they start) stays quiet about it.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

import inductor_patches

from . import reinplace
from .groups import (
    GroupError,
    GroupLike,
    register_group,
    registered_groups,
    resolve_group,
    unregister_group,
)
from .ops import REDUCE_OPS, collectives
from .ops.autograd import GradientError, copy_to_group, reduce_from_group
from .ops.collectives import *  # noqa: F403  (every op's public wrapper: collectives.__all__)
from .ops.consistency import (
    RankMismatchError,
    debug_mode,
    is_debug_mode,
    set_debug_mode,
)
from .ops.funcol import functional_collectives_enabled, use_functional_collectives


def _read_version() -> str:
    """The version pyproject.toml declares: from the installed metadata, or, in a source tree
    that is not installed (on ``sys.path`` only), from pyproject.toml itself."""
    try:
        return metadata.version("compile-ops")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        # A regular expression, not tomllib: that is Python >= 3.11, and we support 3.10.
        found = pyproject.is_file() and re.search(
            r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE
        )
        return found.group(1) if found else "0+unknown"


__version__ = _read_version()

# Code compiled by another compile-ops version or patch set is never served from the cache.
inductor_patches.set_cache_key_component("compile_ops", __version__)
inductor_patches.apply_configured()
inductor_patches.when_imported(
    "torch._inductor.fx_passes.reinplace", lambda _module: reinplace.register()
)

__all__ = [
    *collectives.__all__,
    "REDUCE_OPS",
    "GradientError",
    "GroupError",
    "GroupLike",
    "RankMismatchError",
    "copy_to_group",
    "debug_mode",
    "functional_collectives_enabled",
    "is_debug_mode",
    "reduce_from_group",
    "register_group",
    "registered_groups",
    "resolve_group",
    "set_debug_mode",
    "unregister_group",
    "use_functional_collectives",
]
