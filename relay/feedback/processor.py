"""Apply parsed SES feedback to the suppression store.

Permanent bounces and complaints suppress at once. Transient bounces are counted and, when configured,
suppress after N within a window (kept in memory: a restart forgets the count, never an entry).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict, deque

from relay.feedback.events import FeedbackEvent
from relay.guard import ReputationGuard
from relay.metrics import RelayMetrics
from relay.suppression.base import Reason, SuppressionEntry, SuppressionStore, address_key

log = logging.getLogger("relay.feedback")


class FeedbackProcessor:
    def __init__(
        self,
        store: SuppressionStore,
        metrics: RelayMetrics,
        *,
        guard: ReputationGuard | None = None,
        transient_suppress_after: int | None = None,
        transient_window: float = 86400.0,
        clock=time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._guard = guard
        self._transient_after = transient_suppress_after
        self._transient_window = transient_window
        self._transients: dict[str, deque[float]] = defaultdict(deque)
        self._clock = clock

    async def apply(self, event: FeedbackEvent, *, source: str) -> int:
        """Record the event; returns how many suppression entries it wrote. StoreError propagates."""
        self._metrics.feedback_events.labels(event.metric_type, event.metric_subtype, source).inc()
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

    def _transient_limit_reached(self, address: str) -> bool:
        now = self._clock()
        seen = self._transients[address_key(address)]
        seen.append(now)
        while seen and now - seen[0] > self._transient_window:
            seen.popleft()
        if len(seen) >= (self._transient_after or 0):
            del self._transients[address_key(address)]
            return True
        return False


class RecentIds:
    """Bounded memory of MessageIds already applied: SNS and SQS may deliver a message more than once."""

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
