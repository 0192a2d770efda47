"""Suppression stores. Backends are imported lazily so `import relay.suppression` costs nothing."""

from __future__ import annotations

import importlib
from pathlib import Path

from relay.suppression.base import StoreError, SuppressionStore

# backend name -> "module:Class"; a "dynamodb" backend comes later.
BACKENDS: dict[str, str] = {
    "sqlite": "relay.suppression.sqlite:SqliteStore",
    "memory": "relay.suppression.memory:MemoryStore",
}


def create_store(backend: str, *, path: Path | None) -> SuppressionStore:
    """Build (but do not open) the store. Raises StoreError for an unknown backend or a missing path."""
    target = BACKENDS.get(backend)
    if target is None:
        raise StoreError(f"unknown suppression backend {backend!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if backend == "sqlite":
        if path is None:
            raise StoreError("the sqlite suppression backend needs a path")
        return cls(path)
    return cls()
