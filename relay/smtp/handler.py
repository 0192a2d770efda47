"""The aiosmtpd handler: decides each MAIL, RCPT and DATA.

Recipients are decided one by one at RCPT (syntax, count, suppression) so that a transaction that
reaches DATA is sent whole or not at all: never part of it followed by an error.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.guard import ReputationGuard
from relay.message import MessageError, prepare
from relay.metrics import RelayMetrics
from relay.sending import OutgoingMessage, Sender, SendError
from relay.smtp import replies
from relay.smtp.addresses import AddressError, check_address
from relay.suppression.base import Reason, StoreError, SuppressionStore, address_key

log = logging.getLogger("relay.smtp")
audit = logging.getLogger("relay.transaction")

NULL_SENDER = "<>"  # how the null reverse-path is kept in the envelope (aiosmtpd needs a truthy value)

_SUPPRESSED_REPLY = {
    Reason.BOUNCE: replies.SUPPRESSED_BOUNCE,
    Reason.COMPLAINT: replies.SUPPRESSED_COMPLAINT,
    Reason.MANUAL: replies.SUPPRESSED_MANUAL,
}


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope plus what the relay tracks per transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()  # normalised recipients seen, to ignore repeats
        # Suppressed recipients accepted and skipped (on_suppressed: drop). They stay in rcpt_tos too,
        # because aiosmtpd refuses DATA when rcpt_tos is empty.
        self.dropped: list[str] = []
        self.started = 0.0


class RelayHandler:
    def __init__(
        self,
        *,
        sender: Sender,
        store: SuppressionStore,
        metrics: RelayMetrics,
        max_recipients: int,
        on_suppressed: str,
        guard: ReputationGuard,
        dry_run: bool = False,
    ) -> None:
        self._guard = guard
        self._sender = sender
        self._store = store
        self._metrics = metrics
        self._max_recipients = max_recipients
        self._drop_suppressed = on_suppressed == "drop"
        self._ok_reply = replies.OK_DRY_RUN if dry_run else replies.OK_SENT
        self.shutting_down = False
        self.sends_in_flight = 0
        # Label lookups resolved once: they are on the per-message path.
        self._transactions = {c: metrics.smtp_transactions.labels(f"{c}xx") for c in "2345"}

    def __dir__(self) -> list[str]:
        # aiosmtpd lists the handler's members on every connection, looking for handle_*/auth_*.
        return _HANDLER_HOOKS

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: RelayEnvelope, address: str, options: list[str]
    ) -> str:
        if self.shutting_down:
            return replies.SHUTTING_DOWN
        paused = self._guard.pause_reason()
        if paused:
            self._metrics.guard_refusals.inc()
            return replies.GUARD_PAUSED.format(reason=paused)
        if address not in ("", NULL_SENDER):
            try:
                check_address(address)
            except AddressError as exc:
                return exc.reply
        envelope.mail_from = address or NULL_SENDER
        envelope.mail_options.extend(options)
        envelope.started = time.monotonic()
        return replies.OK_SENDER

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: RelayEnvelope, address: str, options: list[str]
    ) -> str:
        try:
            check_address(address)
        except AddressError as exc:
            self._metrics.recipients_rejected.labels("syntax").inc()
            return exc.reply
        key = address_key(address)
        if key in envelope.keys:
            return replies.OK_RECIPIENT  # a repeat: SES would send it twice, the client meant once
        if len(envelope.rcpt_tos) >= self._max_recipients:
            self._metrics.recipients_rejected.labels("too_many").inc()
            return replies.TOO_MANY_RECIPIENTS
        try:
            entry = await self._store.get(address)
        except StoreError as exc:
            log.error("suppression lookup failed: %s", exc)
            self._metrics.recipients_rejected.labels("store_error").inc()
            return replies.STORE_UNAVAILABLE
        envelope.keys.add(key)
        if entry is not None:
            action = "drop" if self._drop_suppressed else "reject"
            self._metrics.suppression_hits.labels(entry.reason.value, action).inc()
            if self._drop_suppressed:
                envelope.dropped.append(address)
                envelope.rcpt_tos.append(address)
                return replies.OK_RECIPIENT
            envelope.keys.discard(key)
            self._metrics.recipients_rejected.labels(f"suppressed_{entry.reason.value.lower()}").inc()
            return _SUPPRESSED_REPLY[entry.reason].format(address=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: RelayEnvelope) -> str:
        queue_id = secrets.token_hex(6)
        raw: bytes = envelope.original_content or b""
        dropped = set(envelope.dropped)
        recipients = [address for address in envelope.rcpt_tos if address not in dropped]
        record: dict[str, Any] = {
            "queue_id": queue_id,
            "client": session.peer[0] if session.peer else None,
            "mail_from": envelope.mail_from,
            "recipients": len(recipients),
            "dropped": len(envelope.dropped),
            "size": len(raw),
        }
        message_id = None
        try:
            prepared = prepare(raw)
            record["message_id"] = prepared.message_id
            if not recipients:
                reply = replies.OK_ALL_DROPPED
            else:
                outgoing = OutgoingMessage(
                    raw=prepared.raw,
                    recipients=recipients,
                    mail_from=envelope.mail_from or NULL_SENDER,
                    configuration_set=prepared.configuration_set,
                    tags=prepared.tags,
                    from_identity_arn=prepared.from_identity_arn,
                    feedback_identity_arn=prepared.feedback_identity_arn,
                    list_management=prepared.list_management,
                )
                message_id = await self._send(outgoing, record)
                self._guard.record_sent(len(recipients))
                reply = self._ok_reply.format(message_id=message_id)
        except MessageError as exc:
            reply = exc.reply
        except SendError as exc:
            reply = exc.reply
            record["error"] = exc.code
            record["error_detail"] = exc.detail
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error handling DATA (queue id %s)", queue_id)
            reply = replies.INTERNAL_ERROR
        record["ses_message_id"] = message_id
        record["reply"] = reply[:3]
        record["duration"] = round(time.monotonic() - envelope.started, 4) if envelope.started else None
        self._transactions[reply[0]].inc()
        audit.info("transaction", extra={"fields": record})
        return reply

    async def _send(self, outgoing: OutgoingMessage, record: dict[str, Any]) -> str:
        # Shielded: if the client hangs up mid-send, the send still completes and is logged, so the
        # operator can see the duplicate the client's retry will cause.
        self.sends_in_flight += 1
        task = asyncio.ensure_future(self._sender.send(outgoing))
        task.add_done_callback(self._send_done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: _log_orphan(t, record))
            raise

    def _send_done(self, task: asyncio.Future) -> None:
        self.sends_in_flight -= 1

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s: %s", error.__class__.__name__, error)
        return replies.INTERNAL_ERROR


_HANDLER_HOOKS = sorted(name for name in vars(RelayHandler) if name.startswith(("handle_", "auth_")))


def _log_orphan(task: asyncio.Future, record: dict[str, Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    fields = dict(record, reply=None, client_gone=True)
    if error is None:
        fields["ses_message_id"] = task.result()
        audit.warning(
            "client disconnected during send; SES accepted it, a retry will duplicate",
            extra={"fields": fields},
        )
    else:
        fields["error"] = getattr(error, "code", error.__class__.__name__)
        audit.warning("client disconnected during send; send failed", extra={"fields": fields})
