"""The durable spool: messages the relay answered 250 for and has not delivered yet.

Layout, in the spool directory (one per relay instance: a Docker volume, a systemd StateDirectory):

- `spool.db`: sqlite in WAL mode with `synchronous=FULL`, one row per message (envelope, SES
  parameters, state, attempts, next try) and one per chunk of at most 50 recipients (one SES call
  each, with its own state, so a chunk SES accepted is never sent again, across crashes too);
- small bodies (up to INLINE_MAX) inline in the row; larger ones in `bodies/<id>`, written and
  fsync'd before the row is committed, read back through mmap so a 40 MB message is never held
  whole in memory for its delivery.

Why sqlite and not a file per message (Postfix's layout): a commit is the durability point, and one
commit can carry many messages. Transactions that finish at the same time share it (group commit):
`put()` queues its rows and waits; the writer thread commits everything queued since its last
commit in one transaction, one WAL fsync, then answers them all. A message costs a share of one
fsync instead of Postfix's own fsync per queue file. Large bodies still pay their own file fsync
(in parallel, off the writer thread) and the batch pays one directory fsync. Delivered messages
leave in the same transactions (`finish()` queues its delete like `put()` queues its rows), so
delivering costs no commit of its own.

The commit is the contract: no row, no 250; a body file without a row (a crash between the two) is
removed at the next open. All database work runs on one dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.files import fsync_directory

log = logging.getLogger("relay.spool")

INLINE_MAX = 256 * 1024  # bytes; larger bodies get a file of their own
FREE_SPACE_TTL = 1.0  # seconds a free-space reading is reused
CHUNK_SIZE = 50  # recipients per SES call (the SESv2 SendEmail limit)

QUEUED, DEFERRED, HELD, DEAD = "queued", "deferred", "held", "dead"
STATES = (QUEUED, DEFERRED, HELD, DEAD)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    mail_from TEXT NOT NULL,
    params TEXT NOT NULL,          -- JSON: configuration_set, tags, ARNs, list management
    message_id TEXT,               -- the client's Message-ID header, for operators
    size INTEGER NOT NULL,
    body BLOB,                     -- inline body, or NULL when it is in bodies/<id>
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    possible_duplicate INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt);
CREATE TABLE IF NOT EXISTS chunks (
    message TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    recipients TEXT NOT NULL,      -- JSON list
    ses_message_id TEXT,           -- set once SES accepted the chunk: it is never sent again
    PRIMARY KEY (message, idx)
);
CREATE TABLE IF NOT EXISTS attempts (
    message TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at REAL NOT NULL,
    chunk INTEGER,
    outcome TEXT NOT NULL,         -- sent | deferred | failed | suppressed | expired
    detail TEXT
);
"""


class SpoolError(Exception):
    """The spool cannot take (or give back) a message: disk full, read-only, corrupt database."""


@dataclass(slots=True)
class SpoolEntry:
    """A message as the spool keeps it (without its body)."""

    id: str
    created: float
    mail_from: str
    params: dict[str, Any]
    message_id: str | None
    size: int
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    possible_duplicate: bool
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def recipients(self) -> list[str]:
        return [address for chunk in self.chunks for address in chunk.recipients]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "mail_from": self.mail_from,
            "message_id": self.message_id,
            "size": self.size,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "possible_duplicate": self.possible_duplicate,
            "recipients": self.recipients,
            "chunks": [
                {"index": c.index, "recipients": c.recipients, "ses_message_id": c.ses_message_id}
                for c in self.chunks
            ],
            "params": self.params,
        }


@dataclass(slots=True)
class Chunk:
    index: int
    recipients: list[str]
    ses_message_id: str | None = None


@dataclass(slots=True)
class Ready:
    """A message for a delivery worker: its entry and its body (bytes, or a mmap of its file; None
    when the file could not be opened, so the worker asks `body()` and gets the error)."""

    entry: SpoolEntry
    body: bytes | mmap.mmap | None


@dataclass(slots=True)
class _Pending:
    row: tuple[Any, ...]
    chunks: list[tuple[Any, ...]]
    has_file: bool
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Finished:
    queue_id: str
    has_file: bool
    future: asyncio.Future[None]


def chunked(recipients: list[str], size: int = CHUNK_SIZE) -> list[list[str]]:
    return [recipients[i : i + size] for i in range(0, len(recipients), size)]


class SqliteSpool:
    def __init__(self, directory: Path, *, min_free_bytes: int = 0, clock=time.time) -> None:
        self.directory = Path(directory)
        self.bodies = self.directory / "bodies"
        self.min_free_bytes = min_free_bytes
        self._free = 0
        self._free_read_at = -FREE_SPACE_TTL
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-db")
        self._pending: list[_Pending] = []
        self._finished: list[_Finished] = []
        self._committer: asyncio.Task | None = None
        self._healthy = False
        self.commits = 0  # group commits done (tests and the benchmark read it)
        self.committed = 0  # messages committed

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._run(self._open_sync)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"spool {self.directory}: {exc}") from None
        self._healthy = True

    def _open_sync(self) -> None:
        self.bodies.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.directory / "spool.db", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns: the 250 relies on it
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")  # the queue admin CLI writes to the same file
        db.executescript(_SCHEMA)
        self._db = db
        # A body file without its row: the relay crashed between writing it and the commit, and
        # never answered 250 for it.
        known = {row[0] for row in db.execute("SELECT id FROM messages WHERE body IS NULL")}
        for path in self.bodies.iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.wait([self._committer], timeout=5)
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)
        self._healthy = False

    def healthy(self) -> bool:
        return self._healthy and self._db is not None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- receiving -------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free

    async def _free_bytes_recently(self) -> int:
        """Free space, read at most once a second: a statvfs per message is a thread hop per message."""
        now = time.monotonic()
        if now - self._free_read_at >= FREE_SPACE_TTL:
            self._free = await asyncio.get_running_loop().run_in_executor(None, self.free_bytes)
            self._free_read_at = now
        return self._free

    async def put(
        self,
        queue_id: str,
        raw: bytes | bytearray,
        *,
        mail_from: str,
        recipients: list[str],
        params: dict[str, Any],
        message_id: str | None,
        first_error: str | None = None,
    ) -> Ready | None:
        """Make the message durable; returns only once it is committed (then the client may get 250).

        Returns the message as committed with its body when that is inline (small), so delivery can
        send it without reading it back; None for a body in a file."""
        if self._db is None:
            raise SpoolError("spool is not open")
        loop = asyncio.get_running_loop()
        has_file = len(raw) > INLINE_MAX
        try:
            if self.min_free_bytes and await self._free_bytes_recently() < self.min_free_bytes + len(raw):
                raise SpoolError(
                    f"less than delivery.min_free_bytes ({self.min_free_bytes}) free in the spool"
                )
            if has_file:
                await loop.run_in_executor(None, self._write_body, queue_id, raw)
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool: {exc.strerror or exc}") from None
        now = self._clock()
        body = None if has_file else bytes(raw)
        row = (
            queue_id,
            now,
            mail_from,
            json.dumps(params, separators=(",", ":")),
            message_id,
            len(raw),
            body,
            QUEUED,
            0,
            now,
            first_error,
            0,
        )
        parts = chunked(recipients)
        chunks = [(queue_id, index, json.dumps(part)) for index, part in enumerate(parts)]
        pending = _Pending(row, chunks, has_file, loop.create_future())
        self._pending.append(pending)
        self._start_committer()
        await asyncio.shield(pending.future)
        if body is None:
            return None
        entry = SpoolEntry(
            id=queue_id,
            created=now,
            mail_from=mail_from,
            params=params,
            message_id=message_id,
            size=len(raw),
            state=QUEUED,
            attempts=0,
            next_attempt=now,
            last_error=first_error,
            possible_duplicate=False,
            chunks=[Chunk(index, part) for index, part in enumerate(parts)],
        )
        return Ready(entry, body)

    def _start_committer(self) -> None:
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="spool-commit")

    def _write_body(self, queue_id: str, raw: bytes | bytearray) -> None:
        path = self.bodies / queue_id
        with open(path, "wb") as file:
            file.write(raw)
            file.flush()
            os.fsync(file.fileno())

    async def _commit_pending(self) -> None:
        # Everything queued while the previous commit ran goes into the next one: group commit.
        while self._pending or self._finished:
            batch, self._pending = self._pending, []
            finished, self._finished = self._finished, []
            try:
                await self._run(self._commit_sync, batch, finished)
            except (OSError, sqlite3.Error) as exc:
                if batch and finished:
                    # A new message's insert failed: the deletes of delivered mail must not fail with
                    # it (the worker would defer a message SES has, and send it again): alone, next.
                    self._finished[:0] = finished
                    finished = []
                self._healthy = False
                log.error("spool commit failed: %s", exc)
                error = SpoolError(f"cannot commit to the spool: {exc}")
                for future in [i.future for i in batch] + [i.future for i in finished]:
                    if not future.done():
                        future.set_exception(error)
                await self._run(self._remove_bodies, [i.row[0] for i in batch if i.has_file])
                continue
            if batch:
                self._healthy = True
                self.commits += 1
                self.committed += len(batch)
            for future in [i.future for i in batch] + [i.future for i in finished]:
                if not future.done():
                    future.set_result(None)

    def _commit_sync(self, batch: list[_Pending], finished: list[_Finished]) -> None:
        assert self._db is not None
        if any(item.has_file for item in batch):
            fsync_directory(self.bodies)  # the new names are durable before the rows that point to them
        db = self._db
        # New messages need a full-sync commit (the 250 waits for it). Deletes alone do not: WAL
        # frames reach the disk in order, so the next full-sync commit makes them durable too; a
        # power cut before then can only bring a delivered message back, to be sent once more, never
        # lose one. One fsync per delivered message was half the spool's disk work. Except for a
        # body in a file: it is removed after the commit, so the delete must be on disk first (a
        # row back from a power cut without its body could never be sent).
        with_files = [item.queue_id for item in finished if item.has_file]
        full = bool(batch or with_files)
        if not full:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if batch:
                    db.executemany(
                        "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [i.row for i in batch]
                    )
                    db.executemany(
                        "INSERT INTO chunks (message, idx, recipients) VALUES (?,?,?)",
                        [chunk for item in batch for chunk in item.chunks],
                    )
                if finished:
                    db.executemany("DELETE FROM messages WHERE id = ?", [(i.queue_id,) for i in finished])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            if not full:
                db.execute("PRAGMA synchronous=FULL")  # every other write (defer, chunk sent) is durable
        self._remove_bodies(with_files)

    def _remove_bodies(self, ids: list[str]) -> None:
        for queue_id in ids:
            (self.bodies / queue_id).unlink(missing_ok=True)

    # -- delivery --------------------------------------------------------------------------------

    async def due(self, *, limit: int, exclude: set[str]) -> list[Ready]:
        """Up to `limit` messages due now (oldest first) that are not in `exclude`, with their bodies:
        one hop to the database thread for all of them."""
        return await self._run(self._due_sync, limit, frozenset(exclude))

    def _due_sync(self, limit: int, exclude: frozenset[str]) -> list[Ready]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT * FROM messages WHERE state IN (?, ?) AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT ?",
            (QUEUED, DEFERRED, self._clock(), limit + len(exclude)),
        ).fetchall()
        rows = [row for row in rows if row[0] not in exclude][:limit]
        ready = []
        for row, entry in zip(rows, self._entries_of(rows), strict=True):
            try:
                body = self._open_body(entry.id, row[6], entry.size)
            except OSError:
                body = None  # the worker's body() call raises it again, and the message is deferred
            ready.append(Ready(entry, body))
        return ready

    def _entries_of(self, rows: list[tuple[Any, ...]]) -> list[SpoolEntry]:
        """SpoolEntries for `messages` rows, their chunks read in one query for all of them."""
        assert self._db is not None
        entries = [self._bare_entry(row) for row in rows]
        if not entries:
            return entries
        by_id = {entry.id: entry for entry in entries}
        for message, idx, recipients, ses_id in self._db.execute(
            "SELECT message, idx, recipients, ses_message_id FROM chunks"
            " WHERE message IN (SELECT value FROM json_each(?)) ORDER BY message, idx",
            (json.dumps(list(by_id)),),
        ):
            by_id[message].chunks.append(Chunk(idx, json.loads(recipients), ses_id))
        return entries

    def _entry(self, row: tuple[Any, ...]) -> SpoolEntry:
        return self._entries_of([row])[0]

    @staticmethod
    def _bare_entry(row: tuple[Any, ...]) -> SpoolEntry:
        return SpoolEntry(
            id=row[0],
            created=row[1],
            mail_from=row[2],
            params=json.loads(row[3]),
            message_id=row[4],
            size=row[5],
            state=row[7],
            attempts=row[8],
            next_attempt=row[9],
            last_error=row[10],
            possible_duplicate=bool(row[11]),
        )

    async def next_due_time(self) -> float | None:
        return await self._run(self._next_due_sync)

    def _next_due_sync(self) -> float | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT MIN(next_attempt) FROM messages WHERE state IN (?, ?)", (QUEUED, DEFERRED)
        ).fetchone()
        return row[0] if row else None

    async def body(self, queue_id: str) -> bytes | mmap.mmap:
        """The message bytes: inline ones as bytes, a file's through mmap (paged in as it is sent)."""
        return await self._run(self._body_sync, queue_id)

    def _body_sync(self, queue_id: str) -> bytes | mmap.mmap:
        assert self._db is not None
        row = self._db.execute("SELECT body, size FROM messages WHERE id = ?", (queue_id,)).fetchone()
        if row is None:
            raise SpoolError(f"{queue_id}: not in the spool")
        return self._open_body(queue_id, row[0], row[1])

    def _open_body(self, queue_id: str, inline: bytes | None, size: int) -> bytes | mmap.mmap:
        if inline is not None:
            return bytes(inline)
        if size == 0:
            return b""
        with open(self.bodies / queue_id, "rb") as file:
            return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    async def chunk_sent(self, queue_id: str, index: int, ses_message_id: str) -> str | None:
        """Durable before the next chunk is sent: a crash after this never resends the chunk.

        Returns the message's state now (None: deleted), so a worker stops before the next chunk
        of a message the queue CLI held or deleted meanwhile."""
        return await self._run(self._chunk_sent_sync, queue_id, index, ses_message_id)

    def _chunk_sent_sync(self, queue_id: str, index: int, ses_message_id: str) -> str | None:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE chunks SET ses_message_id = ? WHERE message = ? AND idx = ?",
                (ses_message_id, queue_id, index),
            )
            self._attempt_row(queue_id, index, "sent", ses_message_id)
            row = self._db.execute("SELECT state FROM messages WHERE id = ?", (queue_id,)).fetchone()
        return None if row is None else row[0]

    async def finish(self, queue_id: str, *, has_file: bool) -> None:
        """Every chunk is sent (or had only suppressed recipients): the message leaves the spool. The
        delete joins the next group commit; `has_file`: its body is in bodies/ (entry.size > INLINE_MAX)."""
        if self._db is None:
            raise SpoolError("spool is not open")
        item = _Finished(queue_id, has_file, asyncio.get_running_loop().create_future())
        self._finished.append(item)
        self._start_committer()
        await asyncio.shield(item.future)

    async def defer(self, queue_id: str, *, delay: float, error: str, possible_duplicate: bool) -> None:
        await self._run(self._defer_sync, queue_id, delay, error, possible_duplicate)

    def _defer_sync(self, queue_id: str, delay: float, error: str, possible_duplicate: bool) -> None:
        assert self._db is not None
        now = self._clock()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE messages SET state = ?, attempts = attempts + 1, next_attempt = ?, last_error = ?,"
                " possible_duplicate = possible_duplicate OR ? WHERE id = ? AND state IN (?, ?)",
                (DEFERRED, now + delay, error, int(possible_duplicate), queue_id, QUEUED, DEFERRED),
            )
            self._attempt_row(queue_id, None, "deferred", error)

    async def postpone(self, queue_id: str, *, delay: float, reason: str) -> None:
        """Try later without counting an attempt (sending paused, the 24-hour quota used up)."""
        await self._run(self._postpone_sync, queue_id, delay, reason)

    def _postpone_sync(self, queue_id: str, delay: float, reason: str) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute(
                "UPDATE messages SET next_attempt = ?, last_error = ? WHERE id = ?",
                (self._clock() + delay, reason, queue_id),
            )

    async def kill(self, queue_id: str, *, reason: str, outcome: str = "failed") -> None:
        """Permanent failure or expiry: the message becomes a dead letter, kept for the operator."""
        await self._run(self._kill_sync, queue_id, reason, outcome)

    def _kill_sync(self, queue_id: str, reason: str, outcome: str) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE messages SET state = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
                (DEAD, reason, queue_id),
            )
            self._attempt_row(queue_id, None, outcome, reason)

    async def record(self, queue_id: str, outcome: str, detail: str, chunk: int | None = None) -> None:
        await self._run(self._record_sync, queue_id, outcome, detail, chunk)

    def _record_sync(self, queue_id: str, outcome: str, detail: str, chunk: int | None) -> None:
        assert self._db is not None
        with self._db:
            self._attempt_row(queue_id, chunk, outcome, detail)

    def _attempt_row(self, queue_id: str, chunk: int | None, outcome: str, detail: str | None) -> None:
        # Only while the message exists: `ses-relay queue delete` may remove it during a send.
        assert self._db is not None
        self._db.execute(
            "INSERT INTO attempts SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?)",
            (queue_id, self._clock(), chunk, outcome, detail, queue_id),
        )

    # -- administration (the queue CLI, the metrics) ---------------------------------------------

    async def counts(self) -> dict[str, int]:
        return await self._run(self._counts_sync)

    def _counts_sync(self) -> dict[str, int]:
        assert self._db is not None
        counts = dict.fromkeys(STATES, 0)
        for state, count in self._db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"):
            counts[state] = count
        return counts

    async def oldest(self) -> float | None:
        return await self._run(self._oldest_sync)

    def _oldest_sync(self) -> float | None:
        assert self._db is not None
        row = self._db.execute("SELECT MIN(created) FROM messages WHERE state != ?", (DEAD,)).fetchone()
        return row[0] if row else None

    async def entries(self, state: str | None = None) -> list[SpoolEntry]:
        return await self._run(self._entries_sync, state)

    def _entries_sync(self, state: str | None) -> list[SpoolEntry]:
        assert self._db is not None
        if state is None:
            rows = self._db.execute("SELECT * FROM messages ORDER BY created").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM messages WHERE state = ? ORDER BY created", (state,)
            ).fetchall()
        return self._entries_of(rows)

    async def get(self, queue_id: str) -> tuple[SpoolEntry, list[dict[str, Any]]] | None:
        return await self._run(self._get_sync, queue_id)

    def _get_sync(self, queue_id: str) -> tuple[SpoolEntry, list[dict[str, Any]]] | None:
        assert self._db is not None
        row = self._db.execute("SELECT * FROM messages WHERE id = ?", (queue_id,)).fetchone()
        if row is None:
            return None
        attempts = [
            {"at": at, "chunk": chunk, "outcome": outcome, "detail": detail}
            for at, chunk, outcome, detail in self._db.execute(
                "SELECT at, chunk, outcome, detail FROM attempts WHERE message = ? ORDER BY rowid",
                (queue_id,),
            )
        ]
        return self._entry(row), attempts

    async def set_state(self, queue_ids: list[str] | None, state: str, *, only: tuple[str, ...]) -> int:
        """hold / release / retry: move messages (all when `queue_ids` is None) in states `only`."""
        return await self._run(self._set_state_sync, queue_ids, state, only)

    def _set_state_sync(self, queue_ids: list[str] | None, state: str, only: tuple[str, ...]) -> int:
        assert self._db is not None
        marks = ",".join("?" * len(only))
        now = self._clock()
        with self._db:
            if queue_ids is None:
                cursor = self._db.execute(
                    f"UPDATE messages SET state = ?, next_attempt = ? WHERE state IN ({marks})",
                    (state, now, *only),
                )
            else:
                cursor = self._db.executemany(
                    f"UPDATE messages SET state = ?, next_attempt = ? WHERE id = ? AND state IN ({marks})",
                    [(state, now, queue_id, *only) for queue_id in queue_ids],
                )
        return cursor.rowcount

    async def delete(self, queue_ids: list[str] | None = None, *, state: str | None = None) -> int:
        """Remove messages by id, or all in `state` (e.g. the dead letters)."""
        if queue_ids is None:
            queue_ids = [entry.id for entry in await self.entries(state)]
        return await self._run(self._delete_sync, queue_ids)

    def _delete_sync(self, queue_ids: list[str]) -> int:
        assert self._db is not None
        with self._db:
            cursor = self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in queue_ids])
        self._remove_bodies(queue_ids)
        return cursor.rowcount

    # -- the queue CLI: another process, on a running relay or a stopped one ----------------------

    async def open_existing(self) -> None:
        """Open an existing spool for the queue CLI, creating nothing and removing nothing.

        Unlike `open()`, no sweep of body files without a row: on a running relay such a file may be
        a message that is being committed right now, and deleting it would lose mail that gets 250.
        """
        try:
            await self._run(self._open_existing_sync)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"spool {self.directory}: {exc}") from None

    def _open_existing_sync(self) -> None:
        path = self.directory / "spool.db"
        if not path.is_file():
            raise SpoolError(f"no spool at {path}")
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")  # the relay's group commits hold the write lock briefly
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")  # a deleted message takes its chunks and attempts along
        self._db = db

    async def page(
        self, state: str | None, *, after: int = 0, limit: int = 500
    ) -> tuple[list[SpoolEntry], int]:
        """Up to `limit` messages in arrival order after rowid `after`, without their bodies, and the
        rowid to continue from: a listing of a large queue holds one page in memory, not the queue."""
        return await self._run(self._page_sync, state, after, limit)

    def _page_sync(self, state: str | None, after: int, limit: int) -> tuple[list[SpoolEntry], int]:
        assert self._db is not None
        # The columns of `SELECT *` with NULL for the body, so `_entry` reads them, then the rowid.
        columns = (
            "id, created, mail_from, params, message_id, size, NULL, state, attempts, next_attempt,"
            " last_error, possible_duplicate, rowid"
        )
        if state is None:
            rows = self._db.execute(
                f"SELECT {columns} FROM messages WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, limit)
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {columns} FROM messages WHERE rowid > ? AND state = ? ORDER BY rowid LIMIT ?",
                (after, state, limit),
            ).fetchall()
        return self._entries_of([row[:-1] for row in rows]), (rows[-1][-1] if rows else after)

    async def header_block(self, queue_id: str, limit: int = 128 * 1024) -> tuple[bytes, bool] | None:
        """The message's header block (up to the blank line, at most `limit` bytes, never the body)
        and whether it was cut at `limit`; None when the message is not in the spool."""
        return await self._run(self._header_block_sync, queue_id, limit)

    def _header_block_sync(self, queue_id: str, limit: int) -> tuple[bytes, bool] | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT substr(body, 1, ?), body IS NULL, size FROM messages WHERE id = ?", (limit, queue_id)
        ).fetchone()
        if row is None:
            return None
        head, in_file, size = row
        if in_file and size:
            try:
                head = _read_head(self.bodies / queue_id, limit)
            except FileNotFoundError:
                return None  # delivered (or deleted) since the row was read
        head = bytes(head or b"")
        end = _header_end(head)
        if end is not None:
            return head[:end], False
        return head, len(head) >= limit and size > limit

    async def move(self, queue_ids: list[str] | None, state: str, *, only: tuple[str, ...]) -> list[str]:
        """hold / release / retry: like `set_state` (due now), but answers which messages moved."""
        return await self._run(self._move_sync, queue_ids, state, only)

    def _move_sync(self, queue_ids: list[str] | None, state: str, only: tuple[str, ...]) -> list[str]:
        assert self._db is not None
        marks = ",".join("?" * len(only))
        chosen = "1" if queue_ids is None else "id IN (SELECT value FROM json_each(?))"
        chosen_args = () if queue_ids is None else (json.dumps(queue_ids),)
        with self._db:
            rows = self._db.execute(
                f"UPDATE messages SET state = ?, next_attempt = ? WHERE {chosen} AND state IN ({marks})"
                " RETURNING id",
                (state, self._clock(), *chosen_args, *only),
            ).fetchall()
        return sorted(row[0] for row in rows)

    async def remove(self, queue_ids: list[str] | None, *, states: tuple[str, ...] = STATES) -> list[str]:
        """Delete messages (all when `queue_ids` is None) in `states`; answers which were deleted."""
        return await self._run(self._remove_sync, queue_ids, states)

    def _remove_sync(self, queue_ids: list[str] | None, states: tuple[str, ...]) -> list[str]:
        assert self._db is not None
        marks = ",".join("?" * len(states))
        chosen = "1" if queue_ids is None else "id IN (SELECT value FROM json_each(?))"
        chosen_args = () if queue_ids is None else (json.dumps(queue_ids),)
        with self._db:
            rows = self._db.execute(
                f"DELETE FROM messages WHERE {chosen} AND state IN ({marks}) RETURNING id",
                (*chosen_args, *states),
            ).fetchall()
        removed = sorted(row[0] for row in rows)
        self._remove_bodies(removed)
        return removed


def _header_end(data: bytes) -> int | None:
    """Where the header block ends (after the last header line's line end), or None if not in `data`."""
    if data.startswith((b"\r\n", b"\n")):
        return 0
    blanks = ((b"\r\n\r\n", 2), (b"\n\n", 1))  # CRLF as SMTP delivers it; bare LF, just in case
    ends = [found + cut for blank, cut in blanks if (found := data.find(blank)) >= 0]
    return min(ends) if ends else None


def _read_head(path: Path, limit: int) -> bytes:
    """Read a body file only as far as its header block (or `limit` bytes)."""
    head = b""
    with open(path, "rb") as file:
        while len(head) < limit:
            piece = file.read(min(64 * 1024, limit - len(head)))
            if not piece:
                break
            head += piece
            if _header_end(head) is not None:
                break
    return head
