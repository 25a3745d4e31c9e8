"""The patch registry: version gates, apply/revert, the environment switch and status rows.

A patch replaces attributes of torch classes. It is applied only when the running torch's base
version (``2.11.0+cu130`` counts as ``2.11.0``) lies in the patch's range and every replaced
method still has the parameters the patch was written against; otherwise it is refused with one
warning instead of failing later inside a compilation. The exact objects it replaced are kept,
so ``revert()`` restores torch bit for bit.

``apply_configured()`` does not import the classes it patches: a patch whose module is not
imported yet is applied right after that module's first import (``import_hook``), so
``import compile_ops`` stays cheap and the patch is still in place before Inductor runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from . import cache_key, import_hook

ENV_VAR = "COMPILE_OPS_PATCHES"
_MISSING = object()


class PatchWarning(UserWarning):
    """A patch was refused or a switch in COMPILE_OPS_PATCHES could not be honoured."""


class PatchStatus(NamedTuple):
    name: str
    state: str  # applied | off by env | off by default | other torch version | refused | reverted
    reason: str


def torch_base_version(version: str | None = None) -> Version:
    """``2.11.0+cu130`` -> ``2.11.0``: local build tags never change which patches apply."""
    return Version(Version(version or torch.__version__).base_version)


@dataclass(frozen=True)
class Replacement:
    """One attribute a patch replaces: ``make(original)`` returns the new function."""

    owner: str  # dotted path of the class, e.g. "torch._inductor.ir.StorageBox"
    attribute: str
    parameters: tuple[str, ...]  # parameter names of the method the patch was written against
    make: Callable[[Callable[..., Any]], Callable[..., Any]]

    @property
    def target(self) -> str:
        return f"{self.owner}.{self.attribute}"

    @property
    def module(self) -> str:
        return self.owner.rpartition(".")[0]

    def resolve_owner(self) -> Any:
        module, _, name = self.owner.rpartition(".")
        return getattr(importlib.import_module(module), name)


@dataclass
class Patch:
    """A revertible replacement of torch internals for a range of torch versions."""

    name: str
    summary: str
    torch_versions: str  # a PEP 440 specifier on the base version, e.g. ">=2.11,<2.12"
    replacements: tuple[Replacement, ...]
    default: bool
    default_reason: str  # why it is on or off by default; shown by status()
    _originals: dict[str, Any] = field(default_factory=dict, repr=False)
    _installed: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    _warned: bool = field(default=False, repr=False)
    _applied_by: str = field(default="", repr=False)
    _reverted: bool = field(default=False, repr=False)
    _pending: str | None = field(default=None, repr=False)  # why, while waiting for its module

    @property
    def replaces(self) -> str:
        return ", ".join(r.target for r in self.replacements)

    def matches_torch(self, version: str | None = None) -> bool:
        return torch_base_version(version) in SpecifierSet(self.torch_versions)

    def fingerprint(self) -> str:
        """Hash of the source that defines the replacements: any edit changes the cache key."""
        digest = hashlib.sha256()
        for path in sorted({inspect.getsourcefile(r.make) or "" for r in self.replacements}):
            with open(path, "rb") as f:
                digest.update(f.read())
        return digest.hexdigest()[:12]

    def refusal(self) -> str | None:
        """Why this torch cannot take the patch (missing or changed method), or None."""
        for r in self.replacements:
            try:
                owner = r.resolve_owner()
            except (ImportError, AttributeError) as e:
                return f"{r.owner} not found ({e})"
            current = owner.__dict__.get(r.attribute, _MISSING)
            if current is _MISSING:
                return f"{r.target} is not defined on {r.owner}"
            if self._installed.get(r.target) is current:
                continue
            try:
                params = tuple(inspect.signature(current).parameters)
            except (TypeError, ValueError):
                return f"{r.target} has no inspectable signature"
            if params != r.parameters:
                return (
                    f"{r.target} takes ({', '.join(params)}), "
                    f"the patch was written for ({', '.join(r.parameters)})"
                )
            module = getattr(current, "__module__", None)
            if module != owner.__module__:
                qualname = getattr(current, "__qualname__", repr(current))
                return f"{r.target} is already replaced by {module}.{qualname}"
        return None

    def is_applied(self) -> bool:
        if not self._installed:
            return False
        for r in self.replacements:
            owner = r.resolve_owner()
            if owner.__dict__.get(r.attribute, _MISSING) is not self._installed[r.target]:
                return False
        return True

    def apply(self, *, why: str = "applied by apply()") -> bool:
        """Install the patch; True when it is in place. Idempotent; refuses with one warning."""
        if not self.matches_torch():
            return False
        self.resolve_pending()  # importing its modules applies a pending patch
        if self.is_applied():
            return True
        reason = self.refusal()
        if reason is not None:
            self._warn(f"inductor patch {self.name!r} refused: {reason}; torch left unchanged")
            return False
        originals = {r.target: r.resolve_owner().__dict__[r.attribute] for r in self.replacements}
        installed = {r.target: r.make(originals[r.target]) for r in self.replacements}
        for r in self.replacements:
            installed[r.target].__wrapped__ = originals[r.target]  # type: ignore[attr-defined]
            setattr(r.resolve_owner(), r.attribute, installed[r.target])
        self._originals, self._installed = originals, installed
        self._applied_by, self._reverted = why, False
        _refresh_cache_key()
        return True

    def apply_when_imported(self, *, why: str) -> None:
        """Apply now if the patched modules are imported, else right after the first import.

        Until then the patch counts as applied in the cache key, which must be right before
        anything is compiled.
        """
        self._pending = why
        missing = next((r.module for r in self.replacements if r.module not in sys.modules), None)
        if missing is None:
            self._apply_pending()
            return
        _refresh_cache_key()
        import_hook.when_imported(missing, lambda _module: self._apply_pending())

    def is_pending(self) -> bool:
        return self._pending is not None

    def resolve_pending(self) -> None:
        """Import the patched modules now, which applies a pending patch (or refuses it)."""
        if self._pending is not None:
            for r in self.replacements:
                importlib.import_module(r.module)
            self._apply_pending()

    def _apply_pending(self) -> None:
        why, self._pending = self._pending, None
        if why is not None:
            self.apply(why=why)
        _refresh_cache_key()

    def revert(self) -> bool:
        """Put back the exact objects the patch replaced; True when it was applied before."""
        if self._pending is not None:
            self._pending = None
            _refresh_cache_key()
        if not self.is_applied():
            return False
        for r in self.replacements:
            setattr(r.resolve_owner(), r.attribute, self._originals.pop(r.target))
        self._installed.clear()
        self._reverted = True
        _refresh_cache_key()
        return True

    @contextlib.contextmanager
    def switched(self, on: bool) -> Iterator[None]:
        """Applied (``on``, where this torch takes it) or reverted for the block, then put back
        as it was: how a test or a benchmark compiles one way and then the other. A pending
        patch is resolved first, so "as it was" is what a compilation would have got."""
        self.resolve_pending()
        was_applied = self.is_applied()
        self.apply() if on else self.revert()
        try:
            yield
        finally:
            self.apply() if was_applied else self.revert()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, PatchWarning, stacklevel=3)


_REGISTRY: dict[str, Patch] = {}
_switches: dict[str, bool] = {}  # what COMPILE_OPS_PATCHES asked for, by patch name
_env_value: str = ""


def register(patch: Patch) -> Patch:
    if patch.name in _REGISTRY and _REGISTRY[patch.name] is not patch:
        raise ValueError(f"an inductor patch named {patch.name!r} is already registered")
    _REGISTRY[patch.name] = patch
    return patch


def unregister(name: str) -> None:
    """Revert and forget a patch (for patches registered at run time, e.g. in tests)."""
    get(name).revert()
    del _REGISTRY[name]
    _switches.pop(name, None)


def patches() -> list[Patch]:
    return list(_REGISTRY.values())


def get(name: str) -> Patch:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no inductor patch named {name!r}; known: {sorted(_REGISTRY)}") from None


def parse_switches(value: str, names: Iterable[str]) -> dict[str, bool]:
    """``"0"`` all off, ``"1"`` all on, ``"-a,+b"`` / ``"b"`` one by name; later tokens win."""
    names = list(names)
    switches: dict[str, bool] = {}
    unknown = []
    for token in value.replace(" ", ",").split(","):
        if not token:
            continue
        if token.lower() in ("0", "off", "none", "false"):
            switches = dict.fromkeys(names, False)
        elif token.lower() in ("1", "on", "all", "true"):
            switches = dict.fromkeys(names, True)
        else:
            on = not token.startswith("-")
            name = token.lstrip("+-")
            if name in names:
                switches[name] = on
            else:
                unknown.append(token)
    if unknown:
        warnings.warn(
            f"{ENV_VAR}={value!r}: unknown patch name(s) {unknown}; known: {names}. "
            "Use 0 (all off), 1 (all on), +name or -name.",
            PatchWarning,
            stacklevel=3,
        )
    return switches


def apply_configured(env: Mapping[str, str] | None = None) -> None:
    """Apply every patch that is on (by default or by COMPILE_OPS_PATCHES) and fits this torch.

    A patch of a module not imported yet is applied right after its first import; ``status()``
    imports it to tell.
    """
    global _env_value
    _env_value = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    _switches.clear()
    _switches.update(parse_switches(_env_value, _REGISTRY))
    for patch in patches():
        wanted = _switches.get(patch.name, patch.default)
        if not wanted:
            patch.revert()
            continue
        if not patch.matches_torch():
            if patch.name in _switches:
                patch._warn(
                    f"{ENV_VAR} asks for inductor patch {patch.name!r}, which is for torch "
                    f"{patch.torch_versions}; running {torch.__version__}, not applied"
                )
            continue
        if patch.name in _switches:
            why = f"on by {ENV_VAR}={_env_value}"
        else:
            why = f"on by default: {patch.default_reason}"
        patch.apply_when_imported(why=why)


def status() -> list[PatchStatus]:
    """One row per registered patch: its state and why (what ``compile-ops check`` prints).

    Imports the modules of patches that wait for them, so each row says what a compilation gets.
    """
    rows = []
    for p in patches():
        p.resolve_pending()
        if p.is_applied():
            rows.append(PatchStatus(p.name, "applied", p._applied_by))
        elif not p.matches_torch():
            rows.append(
                PatchStatus(
                    p.name,
                    "other torch version",
                    f"for torch {p.torch_versions}; running {torch.__version__}",
                )
            )
        elif (reason := p.refusal()) is not None:
            rows.append(PatchStatus(p.name, "refused", reason))
        elif _switches.get(p.name) is False:
            rows.append(PatchStatus(p.name, "off by env", f"{ENV_VAR}={_env_value}"))
        elif p._reverted:
            rows.append(PatchStatus(p.name, "reverted", "reverted by revert()"))
        elif not p.default:
            rows.append(PatchStatus(p.name, "off by default", p.default_reason))
        else:
            rows.append(PatchStatus(p.name, "not applied", "import compile_ops to apply"))
    return rows


def format_status(rows: list[PatchStatus] | None = None) -> str:
    rows = status() if rows is None else rows
    if not rows:
        return "no inductor patches registered"
    header = PatchStatus("patch", "state", "why")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    return "\n".join(
        f"{r.name.ljust(widths[0])}  {r.state.ljust(widths[1])}  {r.reason}"
        for r in [header, *rows]
    )


def _refresh_cache_key() -> None:
    applied = [f"{p.name}@{p.fingerprint()}" for p in patches() if p.is_pending() or p.is_applied()]
    cache_key.set_component("inductor_patches", "+".join(applied) or None)
