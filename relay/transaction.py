"""The record of one mail transaction, built as the transaction goes and handed to sinks at the end.

The JSON log line is the first sink; the message trace store will be another. The record is keyed by
the queue id, given at MAIL FROM, so every later step (spool, delivery attempts, SES feedback) can
refer to the same transaction.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

audit = logging.getLogger("relay.transaction")


def new_queue_id() -> str:
    return secrets.token_hex(6)


@dataclass(slots=True)
class TransactionRecord:
    queue_id: str
    client: str | None
    started: float = field(default_factory=time.monotonic)
    mail_from: str | None = None
    recipients: int = 0  # recipients the message goes to (dropped ones not counted)
    dropped: int = 0  # suppressed recipients accepted and skipped (on_suppressed: drop)
    size: int = 0  # bytes as received
    message_id: str | None = None  # the client's Message-ID (SES replaces it)
    ses_message_id: str | None = None
    reply: str | None = None  # the reply code given, e.g. "250"; None if the client was gone
    error: str | None = None  # short machine-readable cause (closed set), see SendError.code
    error_detail: str | None = None  # provider text, for operators
    duration: float | None = None
    outcome: str = "pending"  # sent | refused | failed | unknown | client_gone_sent | ...
    # For the message trace (not in the log line: addresses and subjects stay out of the logs).
    received_at: float = field(default_factory=time.time)  # wall clock at MAIL FROM
    user: str | None = None  # the authenticated user (SMTP AUTH), None when none
    rcpt_list: list[str] = field(default_factory=list)  # the recipients the message goes to
    subject: bytes | None = None  # the raw Subject header value, as received
    reply_line: str | None = None  # the whole reply given (`reply` keeps only its code)

    def finish(self, reply: str | None, outcome: str) -> None:
        self.reply = reply[:3] if reply else None
        self.outcome = outcome
        self.duration = round(time.monotonic() - self.started, 4)

    def fields(self) -> dict[str, Any]:
        return {
            "event": "transaction",
            "queue_id": self.queue_id,
            "client": self.client,
            "user": self.user,
            "mail_from": self.mail_from,
            "recipients": self.recipients,
            "dropped": self.dropped,
            "size": self.size,
            "message_id": self.message_id,
            "ses_message_id": self.ses_message_id,
            "reply": self.reply,
            "outcome": self.outcome,
            "error": self.error,
            "error_detail": self.error_detail,
            "duration": self.duration,
        }


class TransactionSink(Protocol):
    def record(self, record: TransactionRecord) -> None:
        """Called once per finished transaction, on the event loop: must not block."""
        ...


class LogSink:
    """One JSON log line per transaction (`event: transaction`)."""

    _MESSAGES = {
        "client_gone_sent": "client disconnected during send; SES accepted it, a retry will duplicate",
        "client_gone_failed": "client disconnected during send; send failed",
        "unknown": "send abandoned at shutdown; outcome unknown, a retry may duplicate",
    }

    def record(self, record: TransactionRecord) -> None:
        message = self._MESSAGES.get(record.outcome)
        if message is None:
            audit.info("transaction", extra={"fields": record.fields()})
        else:
            audit.warning(message, extra={"fields": record.fields()})
