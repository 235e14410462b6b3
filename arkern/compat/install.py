"""Opt-in import shims: let ``import <package>`` resolve to an arkern compat module when <package> is absent.

A shim is a meta-path finder appended to the END of ``sys.meta_path``: Python's own finders (sys.path, site
packages) are always asked first, so an installed package is never shadowed, even one that appears on
sys.path after the shim was installed. Shim modules carry ``__arkern_shim__ = True``; installing logs which
implementation is active on the "arkern" logger and returns its name.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import types
from collections.abc import Mapping

log = logging.getLogger("arkern")

SHIM_ATTR = "__arkern_shim__"


class ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the modules of one shim package; each module is a copy of a dict of attributes."""

    def __init__(self, package: str, modules: Mapping[str, Mapping[str, object]]):
        self.package = package
        self.modules = dict(modules)

    def find_spec(self, fullname: str, path: object = None, target: types.ModuleType | None = None):
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == self.package)

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__.update(self.modules[module.__name__])
        setattr(module, SHIM_ATTR, True)


def _finder(package: str) -> ShimFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, ShimFinder) and f.package == package), None)


def active(package: str) -> str | None:
    """What ``import <package>`` gives now: "arkern" (the shim), the package's own name (the real one), or None.

    Does not import anything that is not imported yet.
    """
    module = sys.modules.get(package)
    if module is not None:
        return "arkern" if getattr(module, SHIM_ATTR, False) else package
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    return "arkern" if isinstance(spec.loader, ShimFinder) else package


def install_shim(package: str, modules: Mapping[str, Mapping[str, object]]) -> str:
    """Serve `modules` ({module name: attributes}) under `package` unless the real package is importable.

    Returns "arkern" when the shim is (now) active, else `package` (the installed package stays in charge).
    Idempotent.
    """
    current = active(package)
    if current == package:
        module = sys.modules.get(package)
        spec = module.__spec__ if module is not None else importlib.util.find_spec(package)
        where = getattr(spec, "origin", None) or "a namespace package"
        log.info("arkern: `import %s` resolves to the installed package (%s); the arkern shim is not used",
                 package, where)
        return package
    if current is None:
        sys.meta_path.append(ShimFinder(package, modules))
    log.info("arkern: `import %s` resolves to arkern (package not installed)", package)
    return "arkern"


def uninstall_shim(package: str) -> None:
    """Remove the shim finder of `package` and forget the shim modules already imported."""
    finder = _finder(package)
    if finder is not None:
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        if getattr(sys.modules[name], SHIM_ATTR, False):
            del sys.modules[name]
