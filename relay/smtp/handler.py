"""The aiosmtpd handler: decides each MAIL, RCPT and DATA.

Recipients are decided one by one at RCPT (syntax, count, suppression) so that a transaction that
reaches DATA is sent whole or not at all: never part of it followed by an error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.addresses import AddressError, check_address
from relay.guard import ReputationGuard
from relay.message import MessageError, prepare
from relay.metrics import RelayMetrics
from relay.sending import Accepted, OutgoingMessage, Sender, SendError
from relay.smtp import authz, replies
from relay.smtp.budget import Reservation
from relay.smtp.state import ServerState
from relay.suppression.base import Reason, StoreError, SuppressionStore, address_key
from relay.transaction import TransactionRecord, TransactionSink, new_queue_id

log = logging.getLogger("relay.smtp")

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
        self.record: TransactionRecord | None = None  # from MAIL FROM on
        self.reservation: Reservation | None = None  # memory held for the content (set by DATA)


class RelayHandler:
    def __init__(
        self,
        *,
        sender: Sender,
        store: SuppressionStore,
        metrics: RelayMetrics,
        state: ServerState,
        sinks: Sequence[TransactionSink],
        max_recipients: int,
        on_suppressed: str,
        guard: ReputationGuard,
    ) -> None:
        self._guard = guard
        self._sender = sender
        self._store = store
        self._metrics = metrics
        self._state = state
        self._sinks = tuple(sinks)
        self._max_recipients = max_recipients
        self._drop_suppressed = on_suppressed == "drop"
        # Label lookups resolved once: they are on the per-message path.
        self._transactions = {c: metrics.smtp_transactions.labels(f"{c}xx") for c in "2345"}

    def __dir__(self) -> list[str]:
        # aiosmtpd lists the handler's members on every connection, looking for handle_*/auth_*.
        return _HANDLER_HOOKS

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: RelayEnvelope, address: str, options: list[str]
    ) -> str:
        if self._state.shutting_down:
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
        if (refusal := authz.check_envelope_sender(session, address)) is not None:
            return refusal  # an authenticated user outside its allowed senders
        envelope.mail_from = address or NULL_SENDER
        envelope.mail_options.extend(options)
        envelope.record = TransactionRecord(
            new_queue_id(),
            _client(session),
            mail_from=envelope.mail_from,
            user=authz.authenticated_login(session),
        )
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
        """Owns `envelope.reservation` from here: it is given back when the bytes are no longer held."""
        record = envelope.record or TransactionRecord(new_queue_id(), _client(session))
        reservation = envelope.reservation
        raw = envelope.original_content or b""
        # From here the message is referenced only by `raw` and what is made from it.
        envelope.content = envelope.original_content = None
        dropped = set(envelope.dropped)
        recipients = [address for address in envelope.rcpt_tos if address not in dropped]
        record.recipients = len(recipients)
        record.rcpt_list = recipients
        record.dropped = len(envelope.dropped)
        record.size = len(raw)
        handed_over = False
        try:
            prepared = prepare(raw)
            authz.check_from_header(session, prepared)  # MessageError (554 5.7.1) for another's From:
            record.message_id = prepared.message_id
            record.subject = prepared.subject
            if prepared.raw is not raw:  # a header was removed: a second buffer, briefly both
                if reservation is not None and not reservation.add(len(prepared.raw)):
                    raise MessageError(self._refuse_memory())
                del raw
                if reservation is not None:
                    reservation.shrink(record.size)
            if not recipients:
                reply, outcome = replies.OK_ALL_DROPPED, "dropped"
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
                    queue_id=record.queue_id,
                    message_id=prepared.message_id,
                )
                del prepared
                handed_over = True
                accepted = await self._send(outgoing, record, reservation)
                record.ses_message_id = accepted.ses_message_id
                if accepted.ses_message_id is not None:
                    self._guard.record_sent(len(recipients))
                reply, outcome = accepted.reply, accepted.outcome
        except MessageError as exc:
            reply, outcome = exc.reply, "refused"
        except SendError as exc:
            reply, outcome = exc.reply, "failed"
            record.error = exc.code
            record.error_detail = exc.detail
        except asyncio.CancelledError:
            raise  # the client is gone or the relay stops; the send's own callback reports it
        except Exception:
            log.exception("unexpected error handling DATA (queue id %s)", record.queue_id)
            reply, outcome = replies.INTERNAL_ERROR, "failed"
            record.error = "internal"
        finally:
            if not handed_over and reservation is not None:
                reservation.release()
        record.reply_line = reply
        record.finish(reply, outcome)
        self._transactions[reply[0]].inc()
        self._emit(record)
        return reply

    def _refuse_memory(self) -> str:
        self._metrics.memory_budget_refusals.inc()
        return replies.MEMORY_BUDGET_SPENT

    def _emit(self, record: TransactionRecord) -> None:
        for sink in self._sinks:
            try:
                sink.record(record)
            except Exception:  # noqa: BLE001 - a sink must never change the reply
                log.exception("transaction sink %s failed", type(sink).__name__)

    async def _send(
        self, outgoing: OutgoingMessage, record: TransactionRecord, reservation: Reservation | None
    ) -> Accepted:
        # Shielded: if the client hangs up mid-send, the send still completes and is logged, so the
        # operator can see the duplicate the client's retry will cause.
        task = asyncio.ensure_future(self._sender.send(outgoing))
        self._state.sends[task] = record
        task.add_done_callback(functools.partial(self._send_done, reservation))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(functools.partial(self._orphan_done, record))
            raise

    def _send_done(self, reservation: Reservation | None, task: asyncio.Future) -> None:
        self._state.sends.pop(task, None)
        if reservation is not None:
            reservation.release()

    def _orphan_done(self, record: TransactionRecord, task: asyncio.Future) -> None:
        if task.cancelled():
            return  # abandoned at shutdown: already reported as "outcome unknown"
        error = task.exception()
        if error is None:
            accepted = task.result()
            record.ses_message_id = accepted.ses_message_id
            if accepted.ses_message_id is not None:
                self._guard.record_sent(record.recipients)
            record.finish(None, "client_gone_sent")
        else:
            record.error = getattr(error, "code", error.__class__.__name__)
            record.finish(None, "client_gone_failed")
        self._emit(record)

    def abandon_sends(self) -> int:
        """Shutdown grace is over: cancel the sends still out, report each as "outcome unknown"."""
        abandoned = list(self._state.sends.items())
        for task, record in abandoned:
            record.error = "abandoned"
            record.finish(None, "unknown")
            self._emit(record)
            task.cancel()
        return len(abandoned)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd calls this for an exception in any hook or command; the traceback is the only
        # trace a bug there leaves.
        log.error("SMTP session error: %s: %s", error.__class__.__name__, error, exc_info=error)
        return replies.INTERNAL_ERROR


def _client(session: Session) -> str | None:
    return session.peer[0] if session.peer else None


_HANDLER_HOOKS = sorted(name for name in vars(RelayHandler) if name.startswith(("handle_", "auth_")))
