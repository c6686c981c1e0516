"""Lazy package attributes: ``import attnvis.x`` stays fast, heavy modules load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_attributes(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose public ``names`` live in submodules.

    Args:
        package: the package's dotted name, for error messages and caching.
        names: public name → module that defines it.
    """
    import sys

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
