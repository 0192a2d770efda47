"""Apply parsed SES feedback to the suppression store.

Permanent bounces and complaints suppress at once. Transient bounces are counted and, when configured,
suppress after N within a window (kept in memory: a restart forgets the count, never an entry). That
memory is bounded: an address whose last transient bounce is older than the window is forgotten, and
past MAX_TRANSIENT_ADDRESSES the address bounced least recently is.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from relay.feedback.events import FeedbackEvent
from relay.guard import ReputationGuard
from relay.metrics import RelayMetrics
from relay.suppression.base import Reason, SuppressionEntry, SuppressionStore, address_key

log = logging.getLogger("relay.feedback")

MAX_TRANSIENT_ADDRESSES = 100_000  # addresses with recent transient bounces kept (~200 bytes each)


class FeedbackProcessor:
    def __init__(
        self,
        store: SuppressionStore,
        metrics: RelayMetrics,
        *,
        guard: ReputationGuard | None = None,
        transient_suppress_after: int | None = None,
        transient_window: float = 86400.0,
        transient_max_addresses: int = MAX_TRANSIENT_ADDRESSES,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[FeedbackEvent, str], None] | None = None,
    ) -> None:
        """`on_event(event, source)`: told of every event applied (the message trace joins them)."""
        self._on_event = on_event
        self._store = store
        self._metrics = metrics
        self._guard = guard
        self._transient_after = transient_suppress_after
        self._transient_window = transient_window
        self._transient_max = transient_max_addresses
        # key -> times of its transient bounces within the window; least recently bounced first
        self._transients: OrderedDict[str, deque[float]] = OrderedDict()
        self._clock = clock

    async def apply(self, event: FeedbackEvent, *, source: str) -> int:
        """Record the event; returns how many suppression entries it wrote. StoreError propagates."""
        self._metrics.feedback_events.labels(event.metric_type, event.metric_subtype, source).inc()
        if self._on_event is not None:
            try:
                self._on_event(event, source)
            except Exception:  # noqa: BLE001 - the trace must never stop a suppression
                log.exception("feedback event callback failed")
        if self._guard is not None and event.suppresses:
            if event.type == "Complaint":
                self._guard.record_complaints(len(event.recipients))
            else:
                self._guard.record_bounces(len(event.recipients))
        if event.suppresses:
            reason = Reason.COMPLAINT if event.type == "Complaint" else Reason.BOUNCE
            detail = f"{event.type} {event.subtype}" + (f": {event.detail}" if event.detail else "")
            entries = [
                SuppressionEntry(
                    address, reason, source=source, feedback_id=event.feedback_id, detail=detail[:500]
                )
                for address in event.recipients
            ]
        elif event.is_transient_bounce and self._transient_after:
            entries = [
                SuppressionEntry(
                    address,
                    Reason.BOUNCE,
                    source=source,
                    feedback_id=event.feedback_id,
                    detail=f"{self._transient_after} transient bounces within "
                    f"{self._transient_window:.0f}s; last {event.subtype}",
                )
                for address in event.recipients
                if self._transient_limit_reached(address)
            ]
        else:
            return 0
        if entries:
            await self._store.put_many(entries)
            for entry in entries:
                log.info(
                    "suppressed %s (%s, %s)",
                    entry.address,
                    entry.reason.value,
                    event.subtype,
                    extra={
                        "fields": {
                            "reason": entry.reason.value,
                            "source": source,
                            "feedback_id": event.feedback_id,
                            "ses_message_id": event.message_id,
                        }
                    },
                )
        return len(entries)

    def transient_addresses(self) -> int:
        """How many addresses the transient-bounce count remembers (after forgetting expired ones)."""
        self._forget_expired(self._clock())
        return len(self._transients)

    def _forget_expired(self, now: float) -> None:
        # Ordered by last bounce: once the front is inside the window, every later one is too.
        while self._transients:
            key, seen = next(iter(self._transients.items()))
            if now - seen[-1] <= self._transient_window:
                break
            del self._transients[key]

    def _transient_limit_reached(self, address: str) -> bool:
        now = self._clock()
        self._forget_expired(now)
        key = address_key(address)
        seen = self._transients.pop(key, None) or deque()
        seen.append(now)
        while now - seen[0] > self._transient_window:
            seen.popleft()
        if len(seen) >= (self._transient_after or 0):
            return True  # suppressed now: nothing left to count
        self._transients[key] = seen  # re-inserted at the end: the most recently bounced
        while len(self._transients) > self._transient_max:
            self._transients.popitem(last=False)
        return False


class RecentIds:
    """Bounded memory of MessageIds already applied: SNS and SQS may deliver a message more than once.

    Concurrent copies (SNS may POST a retry while the first attempt is still being applied) are
    handled by claiming the id before the first await: `claim()` is a check-and-record in one step on
    the event loop, so only one copy gets True; `release()` gives the id back when applying failed,
    so the retry SNS then sends is applied.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._ids

    def add(self, message_id: str) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def claim(self, message_id: str) -> bool:
        """Record the id; False when it was already there (applied, or being applied right now)."""
        if message_id in self._ids:
            return False
        self.add(message_id)
        return True

    def release(self, message_id: str) -> None:
        self._ids.pop(message_id, None)
