"""One retry policy: exponential backoff from a base delay, capped, with optional jitter.

Used by the SQS receive loop, the SES suppression-list sync and DynamoDB batch writes (and next by
the spool's delivery retries). The policy is a value; `Backoff.delay(n)` is pure, so a caller that
persists its attempt count (a spool record) needs no state here, and `schedule()` gives the small
stateful counter a retry loop wants (failed -> next delay, success -> reset).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "BackoffSchedule"]


@dataclass(frozen=True)
class Backoff:
    """The n-th retry in a row waits min(cap, base * 2**(n-1)), less a random share of it.

    jitter is that share: 0 waits exactly the exponential delay, 0.5 is "equal jitter" (between half
    and all of it), 1 is "full jitter" (anywhere from 0). Several processes retrying the same service
    then do not retry in step. `rand` returns a float in [0, 1); tests inject a fixed one.
    """

    base: float
    cap: float = math.inf
    jitter: float = 0.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be between 0 and 1")

    def ceiling(self, retry: int) -> float:
        """The delay before retry number `retry` (1: the first retry) without jitter."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        # 2**1000 is still a float; past that only the cap matters.
        return min(self.cap, self.base * 2.0 ** min(retry - 1, 1000))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1: the first retry)."""
        ceiling = self.ceiling(retry)
        return ceiling * (1.0 - self.jitter * self.rand())

    def schedule(self) -> BackoffSchedule:
        return BackoffSchedule(self)


class BackoffSchedule:
    """Failures in a row for one retry loop: `failed()` returns the next delay, `reset()` on success."""

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        return self.policy.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0
