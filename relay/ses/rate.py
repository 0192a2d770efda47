"""A token bucket for SES's per-second send rate, so the relay waits instead of being throttled.

Reservation style (the "virtual scheduling" form of GCRA): the bucket is one number, the time at
which it would be full again. Each caller computes at once when its tokens are due and moves that
time on by its cost, so callers are served in arrival order without a lock or a queue, and "would
this caller wait longer than the bound?" is one comparison made before any sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class WaitTooLong(Exception):
    """The caller's turn is further away than the limiter's `max_wait`; nothing was reserved."""

    def __init__(self, wait: float, max_wait: float) -> None:
        super().__init__(f"next free send in {wait:.2f} s, more than the {max_wait:g} s allowed")
        self.wait = wait
        self.max_wait = max_wait


class RateLimiter:
    """`await acquire(cost)` returns how long the caller waited. Burst = one second's worth of sends.

    `max_wait` (seconds, None: unbounded) bounds the wait: a caller whose turn is later than that is
    refused at once with `WaitTooLong`, since every waiter holds its message in memory. A cost larger
    than the burst is let through once the bucket is full and leaves it in debt for the next callers.
    """

    def __init__(
        self,
        rate: float,
        *,
        max_wait: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if max_wait is not None and max_wait < 0:
            raise ValueError("max_wait must be >= 0 or None")
        self.rate = rate
        self.ceiling = rate  # the configured (or account) rate; `throttled()` goes below it for a while
        self.max_wait = max_wait
        self._capacity = max(1.0, rate)
        self._clock = clock
        self._sleep = sleep
        self._full_at = clock()  # when the bucket holds `capacity` tokens again; now or earlier: full
        self._raised_at = clock()
        self._throttled_at = float("-inf")

    async def acquire(self, cost: float = 1) -> float:
        if cost <= 0:
            raise ValueError("cost must be > 0")
        now = self._clock()
        # Tokens at time t: capacity - (full_at - t) * rate; the caller's cost is there from `due` on
        # (a cost above the burst: from when the bucket is full).
        due = max(now, self._full_at - (self._capacity - min(cost, self._capacity)) / self.rate)
        wait = due - now
        if self.max_wait is not None and wait > self.max_wait:
            raise WaitTooLong(wait, self.max_wait)  # refused before anything is reserved
        self._full_at = max(self._full_at, now) + cost / self.rate
        if wait <= 0:
            return 0.0
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            # Give the reservation back, so a cancelled caller leaves no debt. Callers behind it keep
            # their (now slightly late) turns: sending later than due never breaks the rate.
            self._full_at -= cost / self.rate
            raise
        return self._clock() - now


    # Adapting to SES (AIMD, as TCP does): a 429 takes the rate down to DECREASE of itself; each
    # second without one gives back RECOVERY of the ceiling. SES's 429 is exact ("over your rate"),
    # not a loss that hints at congestion, and the pacing is already at the account's rate: a gentle
    # cut costs a second or two of sending, where halving cost ten. The 429s of sends that were
    # already in flight when the first came back say nothing new: within SETTLE they count once.
    FLOOR = 0.5  # sends/s: never slower than this
    DECREASE = 0.75
    RECOVERY = 0.10
    SETTLE = 1.0  # seconds

    def throttled(self) -> None:
        now = self._clock()
        if now - self._throttled_at < self.SETTLE:
            return
        self._throttled_at = now
        self._set_rate(max(self.FLOOR, min(self.rate, self.ceiling) * self.DECREASE))
        self._raised_at = now

    def succeeded(self) -> None:
        if self.rate >= self.ceiling:
            return
        now = self._clock()
        seconds = now - self._raised_at
        if seconds >= 1.0:
            self._raised_at = now
            self._set_rate(min(self.ceiling, self.rate + self.ceiling * self.RECOVERY * seconds))

    def set_ceiling(self, rate: float) -> None:
        """A new account rate (GetAccount refreshed): the limit follows it, down at once, up gradually."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.ceiling = rate
        if self.rate > rate:
            self._set_rate(rate)

    def _set_rate(self, rate: float) -> None:
        self.rate = rate
        self._capacity = max(1.0, rate)


class Unlimited:
    """Null object for `max_send_rate: null`."""

    rate = None
    max_wait = None

    async def acquire(self, cost: float = 1) -> float:
        return 0.0

    def throttled(self) -> None:
        return None  # no known rate to go below: throttled sends are retried (spool) or answered 451

    def succeeded(self) -> None:
        return None
