"""Sender-reputation guard: watch bounce and complaint rates and pause before SES does.

SES starts a review at a 5% bounce rate or 0.1% complaint rate and may pause sending at 10% / 0.5%.
The relay sees every send and, through the feedback loop, every bounce and complaint, so it keeps the
same rates over a sliding window (per-minute buckets, in memory: a restart starts a fresh window).
With `guard.enabled`, new mail is answered `451 4.3.2` while a rate is over its limit, so clients keep
their mail until an operator has looked; the rates are exported as gauges either way.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

from relay.metrics import RelayMetrics

log = logging.getLogger("relay.guard")
BUCKET_SECONDS = 60


class ReputationGuard:
    def __init__(
        self,
        metrics: RelayMetrics,
        *,
        enabled: bool,
        window: float,
        min_sends: int,
        max_bounce_rate: float,
        max_complaint_rate: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._enabled = enabled
        self._window = window
        self._min_sends = min_sends
        self._max_bounce = max_bounce_rate
        self._max_complaint = max_complaint_rate
        self._clock = clock
        # deque of [bucket_start, sends, bounces, complaints]
        self._buckets: deque[list[float]] = deque()
        self._totals = [0.0, 0.0, 0.0]  # running sums over the buckets: O(1) per MAIL FROM
        self._paused = False
        metrics.register_gauge_callback(
            "ses_relay_reputation_bounce_rate",
            "Hard-bounced recipients / recipients sent over the guard window",
            lambda: self.rates()[0],
        )
        metrics.register_gauge_callback(
            "ses_relay_reputation_complaint_rate",
            "Complaints / recipients sent over the guard window",
            lambda: self.rates()[1],
        )
        metrics.register_gauge_callback(
            "ses_relay_reputation_window_recipients_sent",
            "Recipients sent within the guard window",
            lambda: self.totals()[0],
        )
        metrics.register_gauge_callback(
            "ses_relay_guard_paused", "1 while the guard refuses new mail", lambda: float(self._paused)
        )

    def _bucket(self) -> list[float]:
        now = self._clock()
        start = math.floor(now / BUCKET_SECONDS) * BUCKET_SECONDS
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0, 0, 0])
        self._expire(now)
        return self._buckets[-1]

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + BUCKET_SECONDS <= now - self._window:
            _, sends, bounces, complaints = self._buckets.popleft()
            self._totals[0] -= sends
            self._totals[1] -= bounces
            self._totals[2] -= complaints

    def _record(self, index: int, count: int) -> None:
        self._bucket()[index + 1] += count
        self._totals[index] += count

    def record_sent(self, recipients: int) -> None:
        self._record(0, recipients)

    def record_bounces(self, recipients: int) -> None:
        self._record(1, recipients)

    def record_complaints(self, recipients: int) -> None:
        self._record(2, recipients)

    def totals(self) -> tuple[float, float, float]:
        self._expire(self._clock())
        sends, bounces, complaints = self._totals
        return sends, bounces, complaints

    def rates(self) -> tuple[float, float]:
        sends, bounces, complaints = self.totals()
        if not sends:
            return 0.0, 0.0
        return bounces / sends, complaints / sends

    def pause_reason(self) -> str | None:
        """Why new mail must wait, or None. Cheap enough for every MAIL FROM."""
        if not self._enabled:
            return None
        sends, bounces, complaints = self.totals()
        reason = None
        if sends >= self._min_sends:
            if bounces / sends >= self._max_bounce:
                reason = f"bounce rate {bounces / sends:.2%} over the last {self._window / 3600:g}h"
            elif complaints / sends >= self._max_complaint:
                reason = f"complaint rate {complaints / sends:.3%} over the last {self._window / 3600:g}h"
        if (reason is not None) != self._paused:
            self._paused = reason is not None
            if reason:
                log.error(
                    "reputation guard: pausing new mail: %s (limits: bounces %.2f%%, complaints %.3f%%)",
                    reason,
                    self._max_bounce * 100,
                    self._max_complaint * 100,
                )
            else:
                log.warning("reputation guard: rates back under the limits; accepting mail again")
        return reason
