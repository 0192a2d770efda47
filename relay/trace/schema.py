"""The trace database: its tables, the keyed hash for private fields, and opening a connection.

Shared by the writer (relay.trace.store, in the server) and the readers (the CLI, the HTTP API):
sqlite in WAL mode, so `ses-relay trace` reads a running relay's store without stopping it.

Tables:
- messages: one row per SMTP transaction that reached DATA (accepted, queued or refused);
- recipients: (queue_id, key) where key is the normalised address, or its keyed hash;
- ses_ids: SES message id -> queue id and chunk (one per SendEmail call);
- steps: what happened afterwards, in time order: delivery attempts from the spool and SES feedback
  events. A feedback event whose SES id matches no message keeps queue_id NULL (matched = 0).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
from pathlib import Path

from relay.suppression.base import address_key

SCHEMA_VERSION = 1
KEY_FILE = "trace.key"  # in the state directory, next to trace.db
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    queue_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    client TEXT,
    user TEXT,
    mail_from TEXT,
    message_id TEXT,
    subject TEXT,
    subject_hash TEXT,
    size INTEGER,
    recipients INTEGER,
    dropped INTEGER,
    reply TEXT,
    outcome TEXT,
    error TEXT,
    error_detail TEXT,
    duration REAL,
    ses_message_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_received ON messages(received_at);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages(message_id);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id TEXT NOT NULL,
    key TEXT NOT NULL,
    address TEXT,
    PRIMARY KEY (queue_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_key ON recipients(key);
CREATE TABLE IF NOT EXISTS ses_ids (
    ses_message_id TEXT PRIMARY KEY,
    queue_id TEXT NOT NULL,
    chunk INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ses_ids_queue ON ses_ids(queue_id);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY,
    queue_id TEXT,
    ses_message_id TEXT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    matched INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS steps_queue ON steps(queue_id);
CREATE INDEX IF NOT EXISTS steps_ses ON steps(ses_message_id);
CREATE INDEX IF NOT EXISTS steps_at ON steps(at);
"""


class TraceError(Exception):
    """The trace store cannot be opened or read."""


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection in WAL mode; `create` makes the file and tables (the server), else it must exist."""
    path = Path(path)
    if not create and not path.exists():
        raise TraceError(f"no trace store at {path} (is trace.enabled on, and has the relay run?)")
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if create:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a trace row may be lost in a power cut, never the mail
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        else:
            db.execute("PRAGMA query_only=ON")
        return db
    except (OSError, sqlite3.Error) as exc:
        raise TraceError(f"trace store {path}: {exc}") from None


class Hasher:
    """HMAC-SHA256 with a secret key kept in the state directory (created 0600 on first use).

    Keyed, not a plain hash: a plain SHA-256 of an address is reversed by hashing a list of likely
    addresses; without the key file that is impossible. The CLI and the API hash the query with the
    same key, so a hashed recipient is still found by its address. A new key file makes the older
    hashes unsearchable (they age out with the retention).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_state_dir(cls, state_dir: Path, *, create: bool) -> Hasher:
        path = Path(state_dir) / KEY_FILE
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            if not create:
                raise TraceError(f"no trace key at {path}: hashed recipients cannot be searched") from None
        key = secrets.token_bytes(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return cls(path.read_bytes())
        except OSError as exc:
            raise TraceError(f"cannot create the trace key {path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return cls(key)

    def digest(self, text: str) -> str:
        return "hmac:" + hmac.new(self._key, text.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def address(self, address: str) -> str:
        return self.digest(address_key(address))


def recipient_key(address: str, hasher: Hasher | None) -> str:
    """How a recipient is stored and searched: the normalised address, or its keyed hash."""
    return hasher.address(address) if hasher is not None else address_key(address)
