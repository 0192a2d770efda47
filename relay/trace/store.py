"""The trace writer: per-message facts collected on the event loop, written in batches off it.

The per-message cost on the loop is one `deque.append` (the sink, the delivery callback and the
feedback callback all do only that). A background task hands what was collected to the store's own
thread every FLUSH_SECONDS, which writes it in one transaction; pruning (retention days, row cap)
runs on that same thread every PRUNE_SECONDS. Queries from the HTTP API run there too. The CLI
reads the same file through its own connection (WAL), see relay.trace.query.

If the relay crashes, at most the last FLUSH_SECONDS of trace rows are lost: never mail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from relay.config import TraceConfig
from relay.feedback.events import FeedbackEvent
from relay.metrics import RelayMetrics
from relay.startup import StartupError
from relay.trace import query
from relay.trace.schema import Hasher, TraceError, connect, recipient_key
from relay.transaction import TransactionRecord

log = logging.getLogger("relay.trace")

FLUSH_SECONDS = 0.5
PRUNE_SECONDS = 60.0
PRUNE_BATCH = 5000  # messages deleted per statement, so one prune never holds the lock for long
MAX_PENDING = 200_000  # items waiting for a flush; past it new ones are dropped (and counted)
SUBJECT_MAX = 500

_MESSAGE, _ATTEMPT, _EVENT = 0, 1, 2


class TraceStore:
    def __init__(
        self,
        path: Path,
        *,
        retention_days: float,
        max_rows: int,
        store_subject: bool = True,
        hasher: Hasher | None = None,
        subject_hasher: Hasher | None = None,
        key_dir: Path | None = None,
        hash_recipients: bool = False,
        metrics: RelayMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`hasher`: recipients are kept as keyed hashes; `subject_hasher`: with store_subject false,
        the Subject's keyed hash is kept (no hasher: nothing of the Subject). Or `key_dir`: the
        hasher's key is read (or made) there at open, for the recipients too with `hash_recipients`."""
        self._key_dir = key_dir
        self._hash_recipients = hash_recipients
        self.path = Path(path)
        self._retention = retention_days * 86400.0
        self._max_rows = max_rows
        self._store_subject = store_subject
        self._hasher = hasher
        self._subject_hasher = subject_hasher
        self._metrics = metrics
        self._clock = clock
        self._pending: deque[tuple[Any, ...]] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # used only on the executor's thread
        self._task: asyncio.Task | None = None
        self._last_prune = 0.0
        self.size_bytes = 0.0  # trace.db + its WAL, as of the last flush (a gauge)
        self.dropped = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """StartupError (one line) when the file or the key cannot be used."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-db")
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except (TraceError, sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise StartupError(f"message trace: {exc}") from None
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        self._task = asyncio.create_task(self._flush_loop(), name="trace-flush")

    def _open_sync(self) -> sqlite3.Connection:
        if self._key_dir is not None:
            hasher = Hasher.from_state_dir(self._key_dir, create=True)
            self._subject_hasher = hasher
            if self._hash_recipients:
                self._hasher = hasher
        db = connect(self.path, create=True)
        self._db = db
        self._prune_sync()
        return db

    async def close(self) -> None:
        """Writes what is still pending, then closes."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._flush_sync)
        finally:
            await loop.run_in_executor(self._executor, self._close_sync)
            self._executor.shutdown(wait=False)
            self._executor = None

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the seams: called on the event loop, must be cheap ----------------------------------

    def _push(self, item: tuple[Any, ...]) -> None:
        if len(self._pending) >= MAX_PENDING:  # the disk is stuck: the trace gives way, mail does not
            self.dropped += 1
            return
        self._pending.append(item)

    def record(self, record: TransactionRecord) -> None:
        """A TransactionSink: called once per finished SMTP transaction."""
        self._push((_MESSAGE, record))

    def on_attempt(
        self, queue_id: str, result: str, chunk: int | None, ses_message_id: str | None, error: str | None
    ) -> None:
        """DeliveryEngine's callback: one spool delivery attempt."""
        self._push((_ATTEMPT, queue_id, self._clock(), result, chunk, ses_message_id, error))

    def on_event(self, event: FeedbackEvent, source: str) -> None:
        """FeedbackProcessor's callback: one SES event (SNS or SQS)."""
        self._push((_EVENT, event, source, self._clock()))

    # -- the store's thread --------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await loop.run_in_executor(self._executor, self._flush_sync)
            except (sqlite3.Error, OSError, TraceError) as exc:
                log.error("could not write the message trace: %s", exc)

    async def flush(self) -> None:
        """Write what is pending now (tests; the background task does it every FLUSH_SECONDS)."""
        assert self._executor is not None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._flush_sync)

    def _flush_sync(self) -> None:
        db = self._db
        if db is None:
            return
        items = []
        while self._pending:
            items.append(self._pending.popleft())
        if items:
            unmatched = 0
            with _transaction(db):
                # In arrival order (an event may follow the send it is about), with each run of
                # messages written in one executemany per table: one call per row cost ~30 us.
                run: list[TransactionRecord] = []
                for item in items:
                    if item[0] == _MESSAGE:
                        run.append(item[1])
                        continue
                    if run:
                        self._write_messages(db, run)
                        run = []
                    if item[0] == _ATTEMPT:
                        self._write_attempt(db, *item[1:])
                    else:
                        unmatched += self._write_event(db, *item[1:])
                if run:
                    self._write_messages(db, run)
            if unmatched and self._metrics is not None:
                self._metrics.trace_events_unmatched.inc(unmatched)
        if self._clock() - self._last_prune >= PRUNE_SECONDS:
            self._prune_sync()
        self._measure()

    def _write_messages(self, db: sqlite3.Connection, records: list[TransactionRecord]) -> None:
        rows: list[tuple[Any, ...]] = []
        recipients: list[tuple[str, str, str | None]] = []
        links: list[tuple[str, str, int | None]] = []
        hashed = self._hasher is not None
        for r in records:
            subject = subject_hash = None
            if r.subject is not None:
                text = decode_subject(r.subject)
                if self._store_subject:
                    subject = text[:SUBJECT_MAX]
                elif self._subject_hasher is not None:
                    subject_hash = self._subject_hasher.digest(text)
            rows.append((
                r.queue_id, r.received_at, r.client, r.user, r.mail_from, r.message_id, subject,
                subject_hash, r.size, r.recipients, r.dropped, r.reply_line or r.reply, r.outcome, r.error,
                r.error_detail, r.duration, r.ses_message_id,
            ))
            recipients.extend(
                (r.queue_id, recipient_key(a, self._hasher), None if hashed else a) for a in r.rcpt_list
            )
            if r.ses_message_id:
                links.append((r.ses_message_id, r.queue_id, 0))
        db.executemany("INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        db.executemany("INSERT OR IGNORE INTO recipients VALUES (?,?,?)", recipients)
        self._link(db, links)

    @staticmethod
    def _link(db: sqlite3.Connection, links: list[tuple[str, str, int | None]]) -> None:
        """(ses_message_id, queue_id, chunk) rows for ses_ids."""
        if not links:
            return
        db.executemany("INSERT OR REPLACE INTO ses_ids VALUES (?,?,?)", links)
        # An event that came before its send was recorded is joined now (rare: looked for only when
        # some event is unmatched at all; the steps_queue index answers that at once).
        if db.execute("SELECT 1 FROM steps WHERE queue_id IS NULL LIMIT 1").fetchone() is None:
            return
        db.executemany(
            "UPDATE steps SET queue_id = ?, matched = 1 WHERE ses_message_id = ? AND queue_id IS NULL",
            [(queue_id, ses_message_id) for ses_message_id, queue_id, _ in links],
        )

    def _write_attempt(
        self,
        db: sqlite3.Connection,
        queue_id: str,
        at: float,
        result: str,
        chunk: int | None,
        ses_message_id: str | None,
        error: str | None,
    ) -> None:
        real_id = ses_message_id if ses_message_id not in (None, "unknown", "suppressed") else None
        detail = {"result": result, "chunk": chunk, "ses_message_id": ses_message_id, "error": error}
        db.execute(
            "INSERT INTO steps (queue_id, ses_message_id, at, kind, detail) VALUES (?,?,?,?,?)",
            (queue_id, real_id, at, "attempt", json.dumps(detail)),
        )
        if real_id is not None:
            self._link(db, [(real_id, queue_id, chunk)])

    def _write_event(self, db: sqlite3.Connection, event: FeedbackEvent, source: str, at: float) -> int:
        """Returns 1 when the event matched no message the relay knows."""
        queue_id = None
        if event.message_id:
            row = db.execute(
                "SELECT queue_id FROM ses_ids WHERE ses_message_id = ?", (event.message_id,)
            ).fetchone()
            queue_id = row[0] if row else None
        if self._hasher is not None:
            recipients = [self._hasher.address(a) for a in event.recipients]
        else:
            recipients = list(event.recipients)
        detail = {
            "type": event.type,
            "subtype": event.subtype,
            "recipients": recipients,
            "detail": event.detail,
            "feedback_id": event.feedback_id,
            "source": source,
            "mail_timestamp": event.timestamp,  # when SES took the mail, not when the event happened
        }
        if self._seen(db, event.message_id, detail):
            return 0
        db.execute(
            "INSERT INTO steps (queue_id, ses_message_id, at, kind, detail, matched) VALUES (?,?,?,?,?,?)",
            (queue_id, event.message_id, at, "feedback", json.dumps(detail), int(queue_id is not None)),
        )
        return int(queue_id is None)

    @staticmethod
    def _seen(db: sqlite3.Connection, ses_message_id: str | None, detail: dict[str, Any]) -> bool:
        """The same SES event already in the trace: SNS and SQS deliver at least once, and an SNS
        topic with both an HTTPS and an SQS subscription delivers each event by both. Opens and
        clicks carry nothing that tells a repeat from a second open, so each one is kept."""
        if not ses_message_id or detail["type"] in ("Open", "Click"):
            return False
        same = {k: v for k, v in detail.items() if k != "source"}
        for (text,) in db.execute(
            "SELECT detail FROM steps WHERE ses_message_id = ? AND kind = 'feedback'", (ses_message_id,)
        ):
            earlier = json.loads(text)
            earlier.pop("source", None)
            if earlier == same:
                return True
        return False

    def _prune_sync(self) -> None:
        """Retention: messages older than retention_days, then the oldest past max_rows, with
        everything that refers to them; feedback that matched no message by the same two limits."""
        db = self._db
        assert db is not None
        now = self._clock()
        self._last_prune = now
        cutoff = now - self._retention
        pruned = {"age": 0, "rows": 0}
        while True:
            ids = [row[0] for row in db.execute(
                "SELECT queue_id FROM messages WHERE received_at < ? ORDER BY received_at LIMIT ?",
                (cutoff, PRUNE_BATCH),
            )]
            if not ids:
                break
            self._delete_messages(db, ids)
            pruned["age"] += len(ids)
        while True:
            (count,) = db.execute("SELECT count(*) FROM messages").fetchone()
            excess = min(count - self._max_rows, PRUNE_BATCH)
            if excess <= 0:
                break
            ids = [row[0] for row in db.execute(
                "SELECT queue_id FROM messages ORDER BY received_at LIMIT ?", (excess,)
            )]
            self._delete_messages(db, ids)
            pruned["rows"] += len(ids)
        with _transaction(db):
            pruned["age"] += db.execute(
                "DELETE FROM steps WHERE queue_id IS NULL AND at < ?", (cutoff,)
            ).rowcount
            (count,) = db.execute("SELECT count(*) FROM steps WHERE queue_id IS NULL").fetchone()
            if count > self._max_rows:
                pruned["rows"] += db.execute(
                    "DELETE FROM steps WHERE id IN (SELECT id FROM steps WHERE queue_id IS NULL "
                    "ORDER BY at LIMIT ?)",
                    (count - self._max_rows,),
                ).rowcount
        if self._metrics is not None:
            for reason, number in pruned.items():
                if number:
                    self._metrics.trace_pruned.labels(reason).inc(number)

    @staticmethod
    def _delete_messages(db: sqlite3.Connection, ids: list[str]) -> None:
        marks = ",".join("?" * len(ids))
        with _transaction(db):
            for table in ("messages", "recipients", "ses_ids", "steps"):
                db.execute(f"DELETE FROM {table} WHERE queue_id IN ({marks})", ids)  # noqa: S608

    def _measure(self) -> None:
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += Path(str(self.path) + suffix).stat().st_size
        self.size_bytes = float(size)

    # -- queries for the HTTP API (on the store's thread, never on the loop) -------------------

    async def search(self, text: str, since: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return await self._query(query.search, text, since, limit)

    async def timeline(self, queue_id: str) -> dict[str, Any] | None:
        return await self._query(query.timeline, queue_id)

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._query(query.recent, limit)

    async def hourly(self, hours: int) -> list[dict[str, Any]]:
        return await self._query(query.hourly, hours, self._clock())

    async def _query(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise TraceError("the trace store is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: fn(self._db, self._hasher, *args)
        )


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def build_trace(
    settings: TraceConfig, path: Path, state_dir: Path, metrics: RelayMetrics
) -> TraceStore | None:
    """The configured trace store, not yet opened (no I/O); None when trace.enabled is false."""
    if not settings.enabled:
        return None
    return TraceStore(
        path,
        retention_days=settings.retention_days,
        max_rows=settings.max_rows,
        store_subject=settings.store_subject,
        key_dir=state_dir if settings.hash_recipients or not settings.store_subject else None,
        hash_recipients=settings.hash_recipients,
        metrics=metrics,
    )


async def open_trace(
    settings: TraceConfig, path: Path, state_dir: Path, metrics: RelayMetrics
) -> TraceStore | None:
    """The configured trace store, opened; None when trace.enabled is false."""
    if not settings.enabled:
        return None
    try:
        hasher = None
        if settings.hash_recipients or not settings.store_subject:
            hasher = Hasher.from_state_dir(state_dir, create=True)
        store = TraceStore(
            path,
            retention_days=settings.retention_days,
            max_rows=settings.max_rows,
            store_subject=settings.store_subject,
            hasher=hasher if settings.hash_recipients else None,
            subject_hasher=hasher,
            metrics=metrics,
        )
        await store.open()
    except (TraceError, sqlite3.Error, OSError) as exc:
        raise StartupError(f"message trace: {exc}") from None
    return store


# RFC 2047 encoded word: =?charset?B|Q?text?= (the charset may carry an RFC 2231 *language).
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def decode_subject(raw: bytes) -> str:
    """The Subject as text: unfolded, RFC 2047 encoded words decoded; bytes that are not UTF-8, and
    words that do not decode, kept as they are (replaced). Adjacent words in one charset are joined
    before decoding, as the email package does (mailers split a character over two words), and the
    whitespace between them dropped (RFC 2047 6.2). Not email.header: it is several times slower,
    and this runs once per message."""
    text = _FOLD.sub("", raw.decode("utf-8", "replace"))
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = b""  # decoded bytes of adjacent words in `pending_charset`, not yet turned into text
    pending_charset = ""
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending_charset:
            out.append(pending.decode(pending_charset, "replace"))
        pending, pending_charset = b"", ""

    for match in _ENCODED_WORD.finditer(text):
        gap = text[pos : match.start()]
        charset, encoding, payload = match.groups()
        charset = charset.split("*", 1)[0].lower()
        pos = match.end()
        try:
            "".encode(charset)  # LookupError for a charset Python does not know
            if encoding in "bB":
                data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
            else:
                data = binascii.a2b_qp(payload.encode("ascii"), header=True)  # "_" is a space
        except (LookupError, ValueError, UnicodeError):  # binascii.Error is a ValueError
            flush()
            out.append(gap + match.group(0))
            continue
        if pending_charset and (not gap or gap.isspace()):
            if charset != pending_charset:
                flush()
        else:
            flush()
            out.append(gap)
        pending += data
        pending_charset = charset
    flush()
    out.append(text[pos:])
    return "".join(out)
