"""Names imported on first use, and the old import paths of modules that moved.

Packages export their public names lazily so that NumPy-only users (masks,
statistics) never pay for importing JAX: `lazy_exports` builds the module's
`__getattr__` and `__dir__` from one table of name -> defining module.

`alias_moved_modules` keeps the import paths of modules that moved into the
stage packages working (`import jlang.collect` is `jlang.stats.collect`, the
same module object, so monkeypatching either patches both; `python -m OLD`
runs the new module). The table of moved paths is in `jlang/__init__.py`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`: attribute `name` is imported from `exports[name]` when first used.

    An entry `name: f"{package}.{name}"` exports the submodule itself.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            module = importlib.import_module(exports[name])
            return module if exports[name] == f"{package}.{name}" else getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


class _AliasLoader(importlib.abc.Loader):
    """Loads an old module path as the module that now lives at `target`."""

    def __init__(self, target: str):
        self.target = target
        self._spec = None

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # importlib set the alias's spec on the module; it keeps its own

    def get_code(self, fullname: str):  # `python -m OLD` runs the new module's code
        return importlib.util.find_spec(self.target).loader.get_code(self.target)


class _MovedModules(importlib.abc.MetaPathFinder):
    def __init__(self, moved: Mapping[str, str]):
        self.moved = dict(moved)

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in self.moved:
            return None
        new = self.moved[fullname]
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new), origin=importlib.util.find_spec(new).origin)


def alias_moved_modules(moved: Mapping[str, str]) -> None:
    """Make every old dotted path in `moved` import the module at its new path (idempotent)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules(moved))
