"""In-process suppression store: for tests and for running without persistence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from relay.suppression.base import StoreError, SuppressionEntry, address_key


class MemoryStore:
    def __init__(self) -> None:
        self._entries: dict[str, SuppressionEntry] = {}
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        # Data survives close()/open() on the same instance, like a file would.
        self._open = False

    def _check_open(self) -> None:
        # Same contract as the sqlite store, so tests on memory catch a missing open().
        if not self._open:
            raise StoreError("memory suppression store is not open")

    async def get(self, address: str) -> SuppressionEntry | None:
        self._check_open()
        return self._entries.get(address_key(address))

    async def put(self, entry: SuppressionEntry) -> None:
        self._check_open()
        self._entries[entry.key] = entry

    async def put_many(self, entries: Iterable[SuppressionEntry]) -> int:
        """Returns the number of entries consumed (a duplicate key counts each time; the last one wins).

        All or nothing, like the sqlite transaction: if the iterable raises, nothing is written.
        """
        self._check_open()
        staged: dict[str, SuppressionEntry] = {}
        n = 0
        for entry in entries:
            staged[entry.key] = entry
            n += 1
        self._entries.update(staged)
        return n

    async def delete(self, address: str) -> bool:
        self._check_open()
        return self._entries.pop(address_key(address), None) is not None

    async def count(self) -> int:
        self._check_open()
        return len(self._entries)

    async def approximate_count(self) -> int:
        return await self.count()  # exact and free

    async def iter_entries(self) -> AsyncIterator[SuppressionEntry]:
        self._check_open()
        # Snapshot so callers may modify the store while iterating.
        for key in sorted(self._entries):
            entry = self._entries.get(key)
            if entry is not None:
                yield entry

    def healthy(self) -> bool:
        return self._open
