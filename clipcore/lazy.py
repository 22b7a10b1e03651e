"""Lazy package exports: names imported from their module on first use, so that importing
a package root (``clipsep --help`` does) stays fast."""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of a package exporting ``exports``.

    Args:
        package: the package's ``__name__``.
        exports: ``{name: module that defines it}``.

    Usage, in ``clipsep/__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"Separator": "clipsep.separate"})
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted([*vars(importlib.import_module(package)), *exports])

    return __getattr__, __dir__
