"""Version-gated, revertible Inductor patches.

Importing this package only registers the patches; ``apply_configured()`` (called by
``import compile_ops``) applies those that are on, by default or by ``COMPILE_OPS_PATCHES``,
and fit the running torch, as soon as Inductor's patched modules are imported (it imports
nothing itself). ``status()`` says for each patch whether it is applied and why.
This package imports nothing from ``compile_ops``.
"""

from . import cache_key, hinted_unbacked_fusion, import_hook, realize_on_reuse
from .cache_key import set_component as set_cache_key_component
from .import_hook import ImportHookWarning, when_imported
from .registry import (
    ENV_VAR,
    Patch,
    PatchStatus,
    PatchWarning,
    Replacement,
    apply_configured,
    format_status,
    get,
    parse_switches,
    patches,
    register,
    status,
    torch_base_version,
    unregister,
)

__all__ = [
    "ENV_VAR",
    "ImportHookWarning",
    "Patch",
    "PatchStatus",
    "PatchWarning",
    "Replacement",
    "apply_configured",
    "cache_key",
    "format_status",
    "get",
    "hinted_unbacked_fusion",
    "import_hook",
    "parse_switches",
    "patches",
    "realize_on_reuse",
    "register",
    "set_cache_key_component",
    "status",
    "torch_base_version",
    "unregister",
    "when_imported",
]
