"""Lazy re-exports: a package names its public API without importing heavy modules up front."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, api: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """Module-level ``__getattr__`` and ``__dir__`` serving ``api`` (public name -> defining module)."""

    def __getattr__(name: str):
        module = api.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(api) | {k for k in namespace if not k.startswith("_")})

    return __getattr__, __dir__
