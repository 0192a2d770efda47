"""SQLite suppression store: one local lookup per RCPT, shared with the CLI through WAL.

All sqlite calls run on one dedicated worker thread that owns the only connection, so the
event loop never blocks on disk I/O and the connection is never used from two threads.

The hop to that thread costs ~30x the lookup itself, so the server keeps recent answers (suppressed
or not) in a bounded in-memory cache, answered on the loop without touching sqlite:
- writes through this store empty the cache (before and after the write, so no read that raced the
  write is kept);
- writes by another process (the CLI, a second relay on the same file) change sqlite's
  `PRAGMA data_version`, which the worker checks every CACHE_CHECK_SECONDS while the cache holds
  anything, and which every cache miss reads along with its row: a change empties the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from relay.suppression.base import Reason, StoreError, SuppressionEntry, address_key

T = TypeVar("T")

SCHEMA_VERSION = 1  # PRAGMA user_version; bump and migrate in _create_or_migrate
BUSY_TIMEOUT_MS = 5000  # the CLI may write while the server does
PUT_CHUNK = 10_000  # rows per executemany: fast, bounded memory
PAGE_SIZE = 1000  # rows per fetch in iter_entries
# A write by another process is seen by lookups within this many seconds (this process's own
# writes at once).
CACHE_CHECK_SECONDS = 0.25

_COLUMNS = "key, address, reason, source, created_at, feedback_id, detail"
_CREATE = """
CREATE TABLE IF NOT EXISTS suppression (
    key TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    feedback_id TEXT,
    detail TEXT
) WITHOUT ROWID
"""
_UPSERT = f"INSERT OR REPLACE INTO suppression ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"


def _row(entry: SuppressionEntry) -> tuple[Any, ...]:
    return (
        entry.key,
        entry.address,
        str(entry.reason),
        entry.source,
        float(entry.created_at),
        entry.feedback_id,
        entry.detail,
    )


def _entry(row: tuple[Any, ...]) -> SuppressionEntry:
    _key, address, reason, source, created_at, feedback_id, detail = row
    return SuppressionEntry(
        address=address,
        reason=Reason(reason),
        source=source,
        created_at=created_at,
        feedback_id=feedback_id,
        detail=detail,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class SqliteStore:
    def __init__(self, path: Path, *, cache_entries: int = 0) -> None:
        """cache_entries: how many lookup answers to keep in memory (0: every lookup reads sqlite)."""
        self._path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        self._open = False
        self._cache_entries = cache_entries
        self._cache: dict[str, SuppressionEntry | None] = {}  # key -> answer, oldest first
        self._generation = 0  # bumped by this store's own writes
        self._data_version = 0  # sqlite's counter of commits by other connections, last seen
        self._watcher: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self._path

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="suppression-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except BaseException:
            executor.submit(self._close_sync)  # in case the open finished after a cancellation
            executor.shutdown(wait=True)
            raise
        self._executor = executor
        self._open = True
        self._data_version = 0  # counted per connection: a new one starts again
        self._forget()

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        self._open = False
        self._forget()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=True)

    def healthy(self) -> bool:
        return self._open

    def _fail(self, cause: BaseException | str) -> StoreError:
        text = cause if isinstance(cause, str) else _one_line(cause)
        return StoreError(f"suppression store {self._path}: {text}")

    def _open_sync(self) -> None:
        if self._path.is_dir():
            raise self._fail("path is a directory, not a database file")
        parent = self._path.parent
        if parent.exists() and not parent.is_dir():
            raise self._fail(f"{parent} is not a directory")
        try:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail(f"cannot create directory {parent}: {exc.strerror or exc}") from None
        conn: sqlite3.Connection | None = None
        try:
            # Autocommit mode; write transactions are explicit (BEGIN IMMEDIATE) so a concurrent
            # writer waits on busy_timeout instead of failing with "database is locked".
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._fail(f"cannot enable WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
            self._create_or_migrate(conn)
        except StoreError:
            if conn is not None:
                conn.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise self._fail(exc) from None
        self._conn = conn

    def _create_or_migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # serialise with another process creating the schema
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise self._fail(
                    f"schema version {version} is newer than this relay supports ({SCHEMA_VERSION}); upgrade"
                )
            if version < SCHEMA_VERSION:
                conn.execute(_CREATE)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # sqlite may already have rolled back on its own
                conn.execute("ROLLBACK")
            raise

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # --- plumbing --------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._open or self._executor is None:
            raise self._fail("store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:  # closed between the check in _run and the worker picking this up
            raise self._fail("store is not open")
        return self._conn

    # --- lookup cache ----------------------------------------------------------------------

    def _forget(self) -> None:
        """Empty the cache and make every read still in flight too old to be cached."""
        self._cache.clear()
        self._generation += 1

    def _saw_data_version(self, version: int) -> bool:
        """Record sqlite's data_version as read on the worker; False when that read is out of date."""
        if version > self._data_version:
            self._data_version = version
            self._forget()
            return True
        return version == self._data_version

    async def _watch_other_writers(self) -> None:
        # Runs while the cache holds anything (get() restarts it); a miss reads data_version anyway.
        while self._cache:
            await asyncio.sleep(CACHE_CHECK_SECONDS)
            if not self._cache:
                return
            try:
                self._saw_data_version(await self._run(self._data_version_sync))
            except StoreError:
                self._forget()  # cannot tell what changed: trust nothing cached

    def _data_version_sync(self) -> int:
        return int(self._db().execute("PRAGMA data_version").fetchone()[0])

    async def _writing(self, fn: Callable[..., T], *args: Any) -> T:
        self._forget()
        try:
            return await self._run(fn, *args)
        finally:
            self._forget()

    # --- operations (the *_sync methods run on the worker thread) -------------------------

    async def get(self, address: str) -> SuppressionEntry | None:
        key = address_key(address)
        if not self._cache_entries:
            entry, _version = await self._run(self._get_sync, key)
            return entry
        try:
            return self._cache[key]
        except KeyError:
            pass
        generation = self._generation
        entry, version = await self._run(self._get_sync, key)
        if self._saw_data_version(version) and generation == self._generation:
            # (a new data_version emptied the cache and bumped the generation: this read is the
            # first of the new version, but stays uncached; the next miss caches normally)
            if len(self._cache) >= self._cache_entries:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = entry
            if self._watcher is None or self._watcher.done():  # started here: on the loop that uses it
                self._watcher = asyncio.create_task(self._watch_other_writers(), name="suppression-cache")
        return entry

    def _get_sync(self, key: str) -> tuple[SuppressionEntry | None, int]:
        db = self._db()
        # data_version first: a commit landing between the two statements then shows up as a newer
        # version at the next check, never as a stale row filed under the new version.
        version = db.execute("PRAGMA data_version").fetchone()[0] if self._cache_entries else 0
        row = db.execute(f"SELECT {_COLUMNS} FROM suppression WHERE key = ?", (key,)).fetchone()
        return (None if row is None else _entry(row)), version

    async def put(self, entry: SuppressionEntry) -> None:
        await self._writing(self._put_sync, _row(entry))

    def _put_sync(self, row: tuple[Any, ...]) -> None:
        self._db().execute(_UPSERT, row)

    async def put_many(self, entries: Iterable[SuppressionEntry]) -> int:
        """One transaction for everything; returns the number of entries consumed (last duplicate wins).

        The iterable is consumed on the worker thread, chunk by chunk, so it is never materialised.
        """
        return await self._writing(self._put_many_sync, entries)

    def _put_many_sync(self, entries: Iterable[SuppressionEntry]) -> int:
        conn = self._db()
        rows = map(_row, entries)
        total = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            while chunk := list(islice(rows, PUT_CHUNK)):
                conn.executemany(_UPSERT, chunk)
                total += len(chunk)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # sqlite may already have rolled back on its own
                conn.execute("ROLLBACK")
            raise
        return total

    async def delete(self, address: str) -> bool:
        return await self._writing(self._delete_sync, address_key(address))

    def _delete_sync(self, key: str) -> bool:
        return self._db().execute("DELETE FROM suppression WHERE key = ?", (key,)).rowcount > 0

    async def count(self) -> int:
        return await self._run(self._count_sync)

    def _count_sync(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM suppression").fetchone()[0])

    async def approximate_count(self) -> int:
        return await self.count()  # exact: a local COUNT(*) is cheap enough once a minute

    async def iter_entries(self) -> AsyncIterator[SuppressionEntry]:
        # Keyset pagination: each page is its own short read, so no cursor or snapshot is held
        # open across awaits and the table is never loaded whole.
        after: str | None = None
        while True:
            rows = await self._run(self._page_sync, after)
            for row in rows:
                yield _entry(row)
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1][0]

    def _page_sync(self, after: str | None) -> list[tuple[Any, ...]]:
        params: tuple[str | int, ...]
        if after is None:
            sql, params = f"SELECT {_COLUMNS} FROM suppression ORDER BY key LIMIT ?", (PAGE_SIZE,)
        else:
            sql = f"SELECT {_COLUMNS} FROM suppression WHERE key > ? ORDER BY key LIMIT ?"
            params = (after, PAGE_SIZE)
        return self._db().execute(sql, params).fetchall()
