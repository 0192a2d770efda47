"""The seam between the SMTP side and whatever delivers a message (SES, dry-run, spool).

A `Sender` either returns the provider's message id or raises one of the two error types. The error
carries the exact SMTP reply line to give the client, so the mapping from provider outcome to SMTP
reply lives in one place per provider (see `relay.ses.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class ListManagement:
    contact_list: str
    topic: str | None = None


@dataclass(slots=True)
class OutgoingMessage:
    """One transaction, ready to hand to a provider."""

    # The MIME message exactly as it goes to SES (Bcc and X-SES-* headers removed); the bytearray
    # DATA was read into when no header had to go (no copy).
    raw: bytes | bytearray
    recipients: list[str]  # envelope recipients: all of them, Bcc included
    mail_from: str  # envelope sender, "" for the null sender; logged, never sent as FromEmailAddress
    configuration_set: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    from_identity_arn: str | None = None
    feedback_identity_arn: str | None = None
    list_management: ListManagement | None = None
    queue_id: str | None = None  # the transaction's id: the spool files the message under it
    message_id: str | None = None  # the client's Message-ID header (SES replaces it), for operators


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a Sender answers for a message it took: the whole 250 line for the client, and SES's id.

    The sender picks the line because only it knows what "taken" means: sent by SES, saved by the
    dry run, queued in the spool.
    """

    reply: str
    ses_message_id: str | None = None  # None when it was queued, not sent
    outcome: str = "sent"  # for the transaction record: sent | saved (dry run) | queued


class SendError(Exception):
    """A send that did not happen (or may not have). `reply` is the full SMTP reply line."""

    def __init__(self, reply: str, *, code: str = "unknown", detail: str = "") -> None:
        super().__init__(reply)
        self.reply = reply
        self.code = code  # short machine-readable cause, used as a metric label (closed set)
        self.detail = detail  # provider text, for logs


class TransientSendError(SendError):
    """The client should keep the message and retry later (4xx)."""


class PermanentSendError(SendError):
    """Retrying cannot help; the client should bounce (5xx)."""


class Sender(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: OutgoingMessage) -> Accepted:
        """Deliver or queue the message, or raise a SendError."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz."""
        ...
