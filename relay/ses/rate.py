"""A token bucket for SES's per-second send rate, so the relay waits instead of being throttled."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """`await acquire()` returns how long the caller waited. Burst = one second's worth of sends."""

    def __init__(self, rate: float, *, clock=time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()  # FIFO: waiters are served in arrival order

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self) -> float:
        self._refill()
        if self._tokens >= 1 and not self._lock.locked():
            self._tokens -= 1
            return 0.0
        started = self._clock()
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1:
                    self._tokens -= 1
                    return self._clock() - started
                await asyncio.sleep((1 - self._tokens) / self.rate)


class Unlimited:
    """Null object for `max_send_rate: null`."""

    rate = None

    async def acquire(self) -> float:
        return 0.0
