"""Suppression store contract: one lookup per RCPT, so lookups must be local and cheap."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Reason(StrEnum):
    BOUNCE = "BOUNCE"
    COMPLAINT = "COMPLAINT"
    MANUAL = "MANUAL"


def address_key(address: str) -> str:
    """The lookup key for an address.

    SES treats the domain case-insensitively and, in practice, matches local parts
    case-insensitively too; the entry keeps the address as given, the key folds case.
    """
    return address.strip().lower()


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    address: str  # as given (display form)
    reason: Reason
    source: str = "manual"  # manual | import | sns | sqs | ses-sync | ...
    created_at: float = field(default_factory=time.time)  # unix seconds
    feedback_id: str | None = None  # SES feedback id when the entry came from SES
    detail: str | None = None  # e.g. bounce subtype or diagnostic, for operators

    @property
    def key(self) -> str:
        return address_key(self.address)


class SuppressionStore(Protocol):
    """Implementations: relay.suppression.memory.MemoryStore, relay.suppression.sqlite.SqliteStore,
    relay.suppression.dynamodb.DynamoDbStore."""

    async def open(self) -> None:
        """Open or create the store. Raises StoreError with a one-line reason on failure."""
        ...

    async def close(self) -> None: ...

    async def get(self, address: str) -> SuppressionEntry | None: ...

    async def put(self, entry: SuppressionEntry) -> None:
        """Insert or replace the entry for entry.key."""
        ...

    async def put_many(self, entries: Iterable[SuppressionEntry]) -> int:
        """Insert or replace many entries in one go; returns how many were written."""
        ...

    async def delete(self, address: str) -> bool:
        """Remove the entry; True when there was one."""
        ...

    async def count(self) -> int:
        """Exactly how many entries there are; may read the whole store (DynamoDB: a full Scan)."""
        ...

    async def approximate_count(self) -> int:
        """A cheap size for gauges, called every minute while serving: never reads the whole store.

        Exact for sqlite and memory; DynamoDB reports DescribeTable's ItemCount, which AWS refreshes
        about every six hours.
        """
        ...

    def iter_entries(self) -> AsyncIterator[SuppressionEntry]:
        """Every entry once, streamed (never the whole store in memory).

        sqlite and memory yield them ordered by key; DynamoDB in its own (hash) order.
        """
        ...

    def healthy(self) -> bool:
        """True while the store is open and usable (for /readyz)."""
        ...


class StoreError(Exception):
    """The store cannot be opened or used; the message is a one-line reason."""
