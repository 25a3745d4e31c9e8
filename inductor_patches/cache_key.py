"""Extra components of torch.compile's cache key, so cached code never outlives what made it.

Inductor's FX graph cache (and the AOTAutograd cache built on the same key) hashes the graph,
inputs, torch build and Inductor config, but not a monkey-patch of Inductor's own methods nor the
version of a package that changes lowering. torch hashes ``torch.compiler.config.cache_key_tag``
into every one of those keys; this module appends named components to that tag and keeps the
user's own tag (from ``TORCH_COMPILE_CACHE_KEY_TAG`` or set in code) in front of them.
"""

from __future__ import annotations

import torch.compiler.config as compiler_config

_components: dict[str, str] = {}
_user_tag: str = ""
_written: str | None = None  # the tag as last set here; anything else was set by the user


def set_component(name: str, value: str | None) -> None:
    """Put ``name=value`` into the compile cache key; ``None`` takes it out again."""
    if not name or any(c in name for c in "=,[]"):
        raise ValueError(f"cache key component name {name!r} must be non-empty without =,[]")
    if value is None:
        _components.pop(name, None)
    else:
        _components[name] = str(value)
    refresh()


def components() -> dict[str, str]:
    return dict(_components)


def refresh() -> str:
    """Rewrite the tag; call after setting ``torch.compiler.config.cache_key_tag`` yourself."""
    global _user_tag, _written
    current = compiler_config.cache_key_tag
    if current != _written:
        _user_tag = current
    ours = ",".join(f"{k}={v}" for k, v in sorted(_components.items()))
    tag = _user_tag if not ours else f"{_user_tag}compile_ops[{ours}]"
    compiler_config.cache_key_tag = tag
    _written = tag
    return tag
