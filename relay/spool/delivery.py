"""Delivery workers: take due messages from the spool and hand them to SES, chunk by chunk.

Postfix's qmgr + smtp in one small loop. The spool record is the contract: the receiving side only
writes it, this side only reads and updates it, and the queue CLI edits the same rows (a change is
seen at the next poll, within POLL_SECONDS).

A message just committed is also handed over in memory (`offer()`, like qmgr hearing of new mail),
so a free worker sends it without reading it back from the spool; the hand-off is small and bounded,
and while the spool holds older due mail (a backlog, or what overflowed the hand-off) nothing is
handed over, so new mail never overtakes waiting mail. A message handed to a worker (from memory or
from the spool) finishes its current SES call even if the queue CLI holds or deletes it meanwhile,
as in Postfix's active queue; the worker looks again before each further chunk.

Per message: suppression is checked again (a bounce may have arrived while it waited), then each
chunk not yet accepted is sent; a chunk SES accepted is recorded before the next is sent, so it is
never sent again. Outcomes (relay.ses.errors decides which is which):

- accepted: chunk done; all done -> the message leaves the spool;
- temporary (4xx): deferred with exponential backoff (delivery.retry_*), until delivery.max_lifetime,
  then a dead letter; "outcome unknown" is retried too and marked as a possible duplicate (SES has no
  idempotency token);
- sending paused: the whole queue waits (PAUSE_SECONDS) without burning attempts;
- permanent (5xx): a dead letter with SES's reason.

Before each chunk, a sender that knows SES's 24-hour quota (`QuotaWatcher`: SesSender) is asked
whether the chunk fits beyond ses.quota_reserve; when it does not, the queue holds until the quota
is read again, as it does after "daily quota exceeded", but without spending a call on SES.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.sending import ListManagement, OutgoingMessage, PermanentSendError, Sender, TransientSendError
from relay.ses.errors import DAILY_QUOTA_CODE, OUTCOME_UNKNOWN_CODE, PAUSED_CODES, is_rate_throttle
from relay.spool.dsn import build_dsn, header_block, is_report
from relay.spool.store import HELD, INLINE_MAX, Ready, SpoolEntry, SpoolError, SqliteSpool
from relay.suppression.base import StoreError, SuppressionStore
from relay.transaction import new_queue_id

log = logging.getLogger("relay.delivery")
attempt_log = logging.getLogger("relay.delivery.attempt")

POLL_SECONDS = 1.0  # the longest a due message (or a queue CLI change) waits to be noticed
HANDOFF_PER_WORKER = 4  # messages handed over in memory, waiting for a worker, per worker slot
HANDOFF_MAX_BYTES = 4 * 1024 * 1024  # their bodies at most (each is at most INLINE_MAX)
PAUSE_SECONDS = 300.0  # after "sending paused": SES needs an operator, not a retry storm
DELIVERY_RESULTS = ("sent", "deferred", "dead", "expired", "paused", "quota", "throttled", "error")
THROTTLE_RETRY_SECONDS = 1.0
QUOTA_HOLD_SECONDS = 600.0  # after the 24-hour quota ran out: it frees up as the day rolls on
QUOTA_RESERVE_CODE = "quota_reserve"  # held before SES was asked: the quota is nearly used
QUOTA_NEARLY_USED = (
    "451 4.4.5 The SES 24-hour sending quota is nearly used (ses.quota_reserve); "
    "held until it has room again"
)


@runtime_checkable
class QuotaWatcher(Protocol):
    """A sender that knows SES's 24-hour quota (relay.ses.client.SesSender)."""

    def quota_hold(self, recipients: int) -> float | None:
        """None: `recipients` fit now; else seconds until the quota can show room again."""
        ...

    def quota_remaining(self) -> float | None:
        """Recipients left as estimated now; None: unknown or unlimited."""
        ...


# (queue_id, result, chunk index or None, SES message id or None, error code or None); on the loop.
AttemptCallback = Callable[[str, str, int | None, str | None, str | None], None]


def outgoing_params(message: OutgoingMessage) -> dict[str, Any]:
    """What the spool keeps of an OutgoingMessage besides the bytes and the envelope."""
    lm = message.list_management
    return {
        "configuration_set": message.configuration_set,
        "tags": message.tags,
        "from_identity_arn": message.from_identity_arn,
        "feedback_identity_arn": message.feedback_identity_arn,
        "list_management": None if lm is None else {"contact_list": lm.contact_list, "topic": lm.topic},
    }


def _outgoing(entry: SpoolEntry, raw: Any, recipients: list[str]) -> OutgoingMessage:
    params = entry.params
    lm = params.get("list_management")
    return OutgoingMessage(
        raw=raw,
        recipients=recipients,
        mail_from=entry.mail_from,
        configuration_set=params.get("configuration_set"),
        tags=params.get("tags") or {},
        from_identity_arn=params.get("from_identity_arn"),
        feedback_identity_arn=params.get("feedback_identity_arn"),
        list_management=None if lm is None else ListManagement(lm["contact_list"], lm.get("topic")),
        queue_id=entry.id,
    )


class DeliveryEngine:
    def __init__(
        self,
        spool: SqliteSpool,
        sender: Sender,
        store: SuppressionStore,
        metrics: RelayMetrics,
        *,
        concurrency: int,
        retry: Backoff,
        max_lifetime: float,
        bounce_from: str | None = None,
        reporting_host: str = "localhost",
        clock=time.time,
        on_attempt: AttemptCallback | None = None,
    ) -> None:
        """`bounce_from`: the verified identity DSNs are sent from (None: no DSNs, dead letters only).
        `on_attempt(queue_id, result, chunk, ses_message_id, error)`: told of every attempt (the trace)."""
        self._on_attempt = on_attempt
        self._spool = spool
        self._sender = sender
        self._store = store
        self._metrics = metrics
        self._concurrency = concurrency
        self._retry = retry
        self._max_lifetime = max_lifetime
        self._clock = clock
        # Every result exists from the start at 0, so increase() in alert rules sees the first one.
        for result in DELIVERY_RESULTS:
            metrics.deliveries.labels(result)
        self._bounce_from = bounce_from
        self._reporting_host = reporting_host
        self._in_flight: dict[str, asyncio.Task] = {}
        self._handed: dict[str, Ready] = {}  # committed and handed over, not yet given to a worker
        self._handed_bytes = 0
        self._handoff_max = concurrency * HANDOFF_PER_WORKER
        self._spool_has_more = True  # due mail may be in the spool that was not handed over
        self._missed = 0  # messages not handed over (counted, so a poll knows if it raced one)
        self._next_poll = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._paused_until = 0.0
        self._quota = sender if isinstance(sender, QuotaWatcher) else None
        self._quota_holding = False  # a hold was logged; cleared (and logged) when sending resumes
        self._stopping = False

    def offer(self, ready: Ready | None) -> None:
        """A message was just committed (`ready`: with its body, or None when it is in a file): hand
        it to the next free worker, or, when the hand-off is full or older mail waits in the spool,
        leave it there for the next look."""
        if ready is not None and not self._stopping and not self._spool_has_more and self._has_room(ready):
            self._hand(ready)
        else:
            self._missed += 1
            self._spool_has_more = True
        self._wake.set()

    def _has_room(self, ready: Ready) -> bool:
        return (
            ready.body is not None
            and len(self._handed) < self._handoff_max
            and self._handed_bytes + len(ready.body) <= HANDOFF_MAX_BYTES
        )

    def _hand(self, ready: Ready) -> None:
        self._handed[ready.entry.id] = ready
        self._handed_bytes += len(ready.body or b"")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery")

    async def stop(self, deadline: float) -> None:
        """Take nothing new; let sends in flight finish until `deadline` (loop time); leave the rest
        queued (a send cut off there is retried after the restart and may then be a duplicate)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = list(self._in_flight.values())
        if pending:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                log.warning(
                    "%d delivery attempt(s) cut off at shutdown; they stay queued and may be sent twice",
                    len(still),
                    extra={"fields": {"event": "deliveries_abandoned", "count": len(still)}},
                )
                await asyncio.wait(still, timeout=1.0)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before looking: a wake during the look is not lost
            try:
                await self._dispatch()
            except (SpoolError, OSError) as exc:
                log.error("spool unreadable: %s", exc)
            except Exception:  # noqa: BLE001 - the loop must survive a bug in one round
                log.exception("delivery loop error")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    async def _dispatch(self) -> None:
        if self._clock() < self._paused_until:
            self._drop_handed()  # read back from the spool when sending resumes
            return
        free = self._concurrency - len(self._in_flight)
        while free > 0 and self._handed:
            queue_id = next(iter(self._handed))
            self._start(self._take_handed(queue_id))
            free -= 1
        now = asyncio.get_running_loop().time()
        if free <= 0 or not (self._spool_has_more or now >= self._next_poll):
            return
        # The spool: mail not handed over, mail that came due (retries), and the queue CLI's changes.
        # Read ahead to fill the hand-off too, so a backlog is read in batches, not one per free slot.
        self._next_poll = now + POLL_SECONDS
        missed = self._missed
        room = self._handoff_max - len(self._handed)
        found = await self._spool.due(limit=free + room, exclude={*self._in_flight, *self._handed})
        # Full answer: there may be more. A message not handed over during the query may have
        # committed after it ran: look again.
        self._spool_has_more = len(found) >= free + room or self._missed != missed
        for ready in found:
            queue_id = ready.entry.id
            if queue_id in self._in_flight or queue_id in self._handed:
                _close(ready.body)  # handed over while the query ran: that copy goes
            elif len(self._in_flight) < self._concurrency:
                self._start(ready)
            elif self._has_room(ready):
                self._hand(ready)
            else:
                _close(ready.body)  # read again at the next look
                self._spool_has_more = True

    def _start(self, ready: Ready) -> None:
        queue_id = ready.entry.id
        task = asyncio.create_task(self._deliver(ready), name=f"deliver-{queue_id}")
        self._in_flight[queue_id] = task
        task.add_done_callback(functools.partial(self._done, queue_id))

    def _take_handed(self, queue_id: str) -> Ready:
        ready = self._handed.pop(queue_id)
        self._handed_bytes -= len(ready.body or b"")
        return ready

    def _drop_handed(self) -> None:
        if self._handed:
            for ready in self._handed.values():
                _close(ready.body)
            self._handed.clear()
            self._handed_bytes = 0
            self._spool_has_more = True

    def _done(self, queue_id: str, task: asyncio.Task) -> None:
        self._in_flight.pop(queue_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery of %s failed unexpectedly", queue_id, exc_info=task.exception())
        if not self._stopping:
            self._wake.set()  # a slot is free

    async def _deliver(self, ready: Ready) -> None:
        entry = ready.entry
        try:
            await self._attempt(entry, ready.body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or a broken body must not be retried every poll
            log.exception("delivery of %s failed", entry.id)
            with contextlib.suppress(Exception):
                await self._spool.defer(
                    entry.id,
                    delay=self._retry.delay(entry.attempts + 1),
                    error=f"internal error: {exc.__class__.__name__}: {exc}",
                    possible_duplicate=False,
                )
            self._count("error", entry, error=exc.__class__.__name__)
        finally:
            _close(ready.body)

    async def _attempt(self, entry: SpoolEntry, raw: Any) -> None:
        now = self._clock()
        if now - entry.created > self._max_lifetime:
            reason = f"expired in the queue: {entry.last_error or 'not delivered'}"
            await self._spool.kill(entry.id, reason=reason, outcome="expired")
            self._count("expired", entry)
            await self._bounce(entry, reason, raw)
            return
        own_body = raw is None
        if own_body:
            raw = await self._spool.body(entry.id)  # raises what kept the spool from opening it
        try:
            # A chunk accepted before (maybe before a crash) is never sent again.
            pending = [chunk for chunk in entry.chunks if chunk.ses_message_id is None]
            for number, chunk in enumerate(pending, 1):
                recipients = await self._not_suppressed(entry, chunk.recipients)
                if recipients is None:
                    return  # store unreadable: postponed
                if recipients:
                    if await self._quota_held(entry, len(recipients)):
                        return
                    try:
                        accepted = await self._sender.send(_outgoing(entry, raw, recipients))
                    except TransientSendError as exc:
                        await self._transient(entry, exc)
                        return
                    except PermanentSendError as exc:
                        await self._spool.kill(entry.id, reason=exc.reply)
                        self._count("dead", entry, chunk=chunk.index, error=exc.code, detail=exc.detail)
                        await self._bounce(entry, exc.reply, raw)
                        return
                    chunk.ses_message_id = accepted.ses_message_id or "unknown"
                    self._count("sent", entry, chunk=chunk.index, ses_message_id=chunk.ses_message_id)
                else:
                    chunk.ses_message_id = "suppressed"
                if number < len(pending):
                    # Durable before the next chunk goes: a crash from here on never resends this one.
                    # After the last chunk the message leaves the spool instead: one commit, not two.
                    state = await self._spool.chunk_sent(entry.id, chunk.index, chunk.ses_message_id)
                    if state is None or state == HELD:
                        log.info(
                            "%s was %s by the queue CLI during delivery; its remaining chunks are not sent",
                            entry.id,
                            "deleted" if state is None else "held",
                            extra={"fields": {"event": "delivery_stopped", "queue_id": entry.id}},
                        )
                        return
            await self._spool.finish(entry.id, has_file=entry.size > INLINE_MAX)
        finally:
            if own_body:
                _close(raw)

    async def _bounce(self, entry: SpoolEntry, reason: str, raw: Any) -> None:
        """Queue a DSN to the envelope sender for the recipients not delivered (see relay.spool.dsn)."""
        sender = entry.mail_from.strip("<>")
        if self._bounce_from is None or not sender:
            return  # no DSNs configured, or the null sender: never a DSN about a DSN
        own_body = raw is None
        try:
            if own_body:
                raw = await self._spool.body(entry.id)
            headers = header_block(raw)
            if is_report(headers):
                return
            if await self._store.get(sender) is not None:
                log.info("no DSN for %s: the sender is on the suppression list", entry.id)
                return
            failed = [a for chunk in entry.chunks if chunk.ses_message_id is None for a in chunk.recipients]
            dsn = build_dsn(
                reporting_host=self._reporting_host,
                bounce_from=self._bounce_from,
                to=sender,
                queue_id=entry.id,
                recipients=failed or entry.recipients,
                reason=reason,
                arrival=entry.created,
                original_headers=headers,
            )
            ready = await self._spool.put(
                new_queue_id(), dsn, mail_from="<>", recipients=[sender], params={}, message_id=None
            )
        except (SpoolError, StoreError, OSError) as exc:
            log.error("could not queue the DSN for %s: %s", entry.id, exc)
            return
        finally:
            if own_body:
                _close(raw)
        self._metrics.dsns_queued.inc()
        self.offer(ready)

    async def _not_suppressed(self, entry: SpoolEntry, recipients: list[str]) -> list[str] | None:
        kept = []
        for address in recipients:
            try:
                suppressed = await self._store.get(address)
            except StoreError as exc:
                await self._spool.postpone(entry.id, delay=60.0, reason=f"suppression list unreadable: {exc}")
                return None
            if suppressed is None:
                kept.append(address)
            else:
                self._metrics.suppression_hits.labels(suppressed.reason.value, "drop_queued").inc()
                await self._spool.record(entry.id, "suppressed", f"{address}: {suppressed.reason.value}")
        return kept

    async def _quota_held(self, entry: SpoolEntry, recipients: int) -> bool:
        """Hold the queue, before SES is asked, while the 24-hour quota has no room for the chunk."""
        if self._quota is None:
            return False
        hold = self._quota.quota_hold(recipients)
        if hold is None:
            if self._quota_holding:
                self._quota_holding = False
                remaining = self._quota.quota_remaining()
                log.info(
                    "SES 24-hour quota has room again; delivery resumes",
                    extra={"fields": {"event": "quota_resumed", "quota_remaining": remaining}},
                )
            return False
        # Every message would wait the same way: hold the queue, spend no attempt.
        self._paused_until = max(self._paused_until, self._clock() + hold)
        await self._spool.postpone(entry.id, delay=hold, reason=QUOTA_NEARLY_USED)
        # Counted and traced per message, but logged once per hold, not once per waiting message.
        self._count("quota", entry, quiet=True, error=QUOTA_RESERVE_CODE)
        if not self._quota_holding:
            self._quota_holding = True
            remaining = self._quota.quota_remaining()
            log.warning(
                "SES 24-hour quota nearly used (%s recipients left): the queue holds until it has room",
                "unknown" if remaining is None else f"{remaining:.0f}",
                extra={
                    "fields": {
                        "event": "quota_hold",
                        "queue_id": entry.id,
                        "quota_remaining": remaining,
                        "retry_in": round(hold, 1),
                    }
                },
            )
        return True

    async def _transient(self, entry: SpoolEntry, exc: TransientSendError) -> None:
        if exc.code in PAUSED_CODES:
            # Hold the whole queue rather than burn every message's attempts.
            self._paused_until = self._clock() + PAUSE_SECONDS
            await self._spool.postpone(entry.id, delay=PAUSE_SECONDS, reason=exc.reply)
            self._count("paused", entry, error=exc.code)
            return
        if is_rate_throttle(exc):
            # Too fast for SES's per-second rate (the limiter has slowed down already): try again in a
            # moment, without an attempt. A backoff meant for outages would stall it for a minute.
            await self._spool.postpone(entry.id, delay=THROTTLE_RETRY_SECONDS, reason=exc.reply)
            self._count("throttled", entry, error=exc.code)
            return
        if exc.code == DAILY_QUOTA_CODE:
            # The 24-hour quota is used up: every message would fail the same way, so the queue
            # holds instead of collecting throttling errors and spending attempts.
            self._paused_until = self._clock() + QUOTA_HOLD_SECONDS
            await self._spool.postpone(entry.id, delay=QUOTA_HOLD_SECONDS, reason=exc.reply)
            self._count("quota", entry, error=exc.code)
            return
        unknown = exc.code == OUTCOME_UNKNOWN_CODE
        delay = self._retry.delay(entry.attempts + 1)
        await self._spool.defer(entry.id, delay=delay, error=exc.reply, possible_duplicate=unknown)
        self._count(
            "deferred",
            entry,
            error=exc.code,
            detail=exc.detail,
            retry_in=round(delay, 1),
            possible_duplicate=unknown,
        )

    def _count(self, result: str, entry: SpoolEntry, *, quiet: bool = False, **fields: Any) -> None:
        """Metric and trace for one attempt; unless `quiet`, its JSON log line too."""
        self._metrics.deliveries.labels(result).inc()
        if self._on_attempt is not None:
            try:
                self._on_attempt(
                    entry.id, result, fields.get("chunk"), fields.get("ses_message_id"), fields.get("error")
                )
            except Exception:  # noqa: BLE001 - the trace must never change a delivery
                log.exception("delivery attempt callback failed")
        if fields.get("possible_duplicate"):
            self._metrics.possible_duplicates.inc()
        if quiet:
            return
        attempt_log.info(
            "delivery attempt",
            extra={
                "fields": {
                    "event": "delivery",
                    "queue_id": entry.id,
                    "result": result,
                    "attempts": entry.attempts + 1,
                    **fields,
                }
            },
        )


def _close(body: Any) -> None:
    """Unmap a body read from a file (bytes need nothing)."""
    close = getattr(body, "close", None)
    if close is not None:
        close()
