"""Run a function right after a module is first imported, without importing it now.

Importing Inductor costs seconds, and most processes that import compile_ops (every rank, every
command) need it late or never. What must change in Inductor (a patched method, an entry in the
reinplacing pass's table) only has to be in place before Inductor's code uses it, and that code
lives in the module that defines it: so the change is made right after that module is executed,
before the import statement that loaded it returns. A finder at the front of ``sys.meta_path``
wraps the loader of each watched module for that one import and puts the original loader back.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

Callback = Callable[[ModuleType], None]

_lock = threading.RLock()
_waiting: dict[str, list[Callback]] = {}


class ImportHookWarning(UserWarning):
    """A function run after a module's import raised; the import itself went on."""


def when_imported(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` now if ``name`` is imported, else right after its first import."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _waiting.setdefault(name, []).append(callback)
            _install()
            return
    _run(name, module, [callback])


def waiting(name: str) -> bool:
    """Whether callbacks still wait for ``name`` to be imported."""
    return bool(_waiting.get(name))


def _run(name: str, module: ModuleType, callbacks: Sequence[Callback]) -> None:
    for callback in callbacks:
        try:
            callback(module)
        except Exception as e:  # the import of torch's module must not fail because of ours
            warnings.warn(
                f"{getattr(callback, '__qualname__', callback)!r}, run after importing {name}, "
                f"raised {type(e).__name__}: {e}",
                ImportHookWarning,
                stacklevel=2,
            )


class _Loader(importlib.abc.Loader):
    """The real loader, plus the callbacks once the module has been executed."""

    def __init__(self, spec: ModuleSpec) -> None:
        self.spec, self.loader = spec, spec.loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Leave no trace: the module keeps the loader it would have had without us.
        self.spec.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        with _lock:
            callbacks = _waiting.pop(self.spec.name, [])
        _run(self.spec.name, module, callbacks)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec)
                return spec
        return None


_finder = _Finder()


def _install() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
