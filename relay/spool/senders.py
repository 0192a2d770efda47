"""The spool behind the `Sender` seam, so the SMTP handler needs no mode of its own.

- `SpoolSender` (delivery.mode: spool): write the message durably, answer "queued as <id>"; the
  delivery workers send it. Receiving never talks to SES (Postfix's model).
- `FallbackSender` (delivery.mode: fallback, the default): try SES during the transaction, so the
  client sees a permanent refusal ("identity not verified") at once; a temporary failure (throttled,
  unreachable, a rate-limit wait past its bound, outcome unknown) spools the message instead, and
  the client gets "queued as". A message of more than one SES call (over 50 recipients) is spooled
  whole: never a 5xx after part of it was sent. If SES failed and the spool cannot take it either,
  the client gets SES's 4xx: a 250 only for a message SES has or the disk has. While SES's 24-hour
  quota is nearly used (ses.quota_reserve), SES is not tried at all: the message is spooled, and the
  spool holds it until the quota has room.
"""

from __future__ import annotations

import logging

from relay.config import SES_MAX_RECIPIENTS
from relay.sending import Accepted, OutgoingMessage, Sender, TransientSendError
from relay.spool.delivery import (
    QUOTA_NEARLY_USED,
    QUOTA_RESERVE_CODE,
    DeliveryEngine,
    QuotaWatcher,
    outgoing_params,
)
from relay.spool.store import SpoolError, SqliteSpool
from relay.transaction import new_queue_id

log = logging.getLogger("relay.spool")

QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
SPOOL_UNAVAILABLE = "452 4.3.1 Insufficient system storage: the relay cannot queue mail now; try again later"


class SpoolSender:
    def __init__(self, spool: SqliteSpool, delivery: DeliveryEngine | None) -> None:
        self._spool = spool
        self._delivery = delivery

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def readiness(self) -> tuple[bool, str]:
        return (True, "ok") if self._spool.healthy() else (False, "spool not writable")

    async def send(self, message: OutgoingMessage, *, first_error: str | None = None) -> Accepted:
        queue_id = message.queue_id or new_queue_id()
        try:
            ready = await self._spool.put(
                queue_id,
                message.raw,
                mail_from=message.mail_from,
                recipients=message.recipients,
                params=outgoing_params(message),
                message_id=message.message_id,
                first_error=first_error,
            )
        except SpoolError as exc:
            raise TransientSendError(SPOOL_UNAVAILABLE, code="spool_unavailable", detail=str(exc)) from None
        if self._delivery is not None:
            self._delivery.offer(ready)
        return Accepted(QUEUED.format(queue_id=queue_id), outcome="queued")


class FallbackSender:
    def __init__(self, direct: Sender, spool: SpoolSender) -> None:
        self._direct = direct
        self._spool = spool
        self._quota = direct if isinstance(direct, QuotaWatcher) else None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def readiness(self) -> tuple[bool, str]:
        # Ready while either way can take mail: the spool covers SES being unreachable.
        spool_ok, spool_reason = self._spool.readiness()
        if not spool_ok:
            return False, spool_reason
        return True, "ok"

    async def send(self, message: OutgoingMessage) -> Accepted:
        if len(message.recipients) > SES_MAX_RECIPIENTS:
            return await self._spool.send(message)
        if self._quota is not None and self._quota.quota_hold(len(message.recipients)) is not None:
            return await self._queue(message, QUOTA_NEARLY_USED, QUOTA_RESERVE_CODE)
        try:
            return await self._direct.send(message)
        except TransientSendError as exc:
            try:
                accepted = await self._spool.send(message, first_error=exc.reply)
            except TransientSendError as spool_exc:
                log.error(
                    "SES failed (%s) and the spool cannot take the message: %s", exc.code, spool_exc.detail
                )
                raise exc from None
            log.info(
                "SES failed for now (%s); queued",
                exc.code,
                extra={
                    "fields": {"event": "fallback_queued", "queue_id": message.queue_id, "error": exc.code}
                },
            )
            return accepted

    async def _queue(self, message: OutgoingMessage, reason: str, code: str) -> Accepted:
        """Spool without trying SES. The spool's own refusal (452 4.3.1) is the answer when it cannot."""
        accepted = await self._spool.send(message, first_error=reason)
        log.info(
            "not tried at SES (%s); queued",
            code,
            extra={"fields": {"event": "fallback_queued", "queue_id": message.queue_id, "error": code}},
        )
        return accepted
