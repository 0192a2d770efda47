"""Suppression stores. Backends are imported lazily so `import relay.suppression` costs nothing."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from relay.suppression.base import StoreError, SuppressionStore

if TYPE_CHECKING:
    # create_store loads the backends by name, so nothing else shows mypy that each one is a
    # SuppressionStore: these lines do (they never run, so the imports stay lazy).
    from relay.suppression.dynamodb import DynamoDbStore
    from relay.suppression.memory import MemoryStore
    from relay.suppression.sqlite import SqliteStore

    _sqlite: type[SuppressionStore] = SqliteStore
    _memory: type[SuppressionStore] = MemoryStore
    _dynamodb: type[SuppressionStore] = DynamoDbStore

# backend name -> "module:Class"
BACKENDS: dict[str, str] = {
    "sqlite": "relay.suppression.sqlite:SqliteStore",
    "memory": "relay.suppression.memory:MemoryStore",
    "dynamodb": "relay.suppression.dynamodb:DynamoDbStore",
}


def create_store(
    backend: str,
    *,
    path: Path | None = None,
    dynamodb_table: str | None = None,
    dynamodb_region: str | None = None,
    dynamodb_endpoint_url: str | None = None,
    cache_entries: int = 0,
) -> SuppressionStore:
    """Build (but do not open) the store.

    Raises StoreError for an unknown backend, or when sqlite lacks a path or dynamodb a table.
    The dynamodb_* options are ignored by the other backends; cache_entries is sqlite's only.
    """
    target = BACKENDS.get(backend)
    if target is None:
        raise StoreError(f"unknown suppression backend {backend!r}; known: {', '.join(sorted(BACKENDS))}")
    if backend == "sqlite" and path is None:
        raise StoreError("the sqlite suppression backend needs a path")
    if backend == "dynamodb" and not dynamodb_table:
        raise StoreError("the dynamodb suppression backend needs a table (suppression.dynamodb.table)")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if backend == "sqlite":
        return cls(path, cache_entries=cache_entries)
    if backend == "dynamodb":
        return cls(dynamodb_table, region=dynamodb_region, endpoint_url=dynamodb_endpoint_url)
    return cls()
