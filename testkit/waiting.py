"""One way to wait for a condition in a test: poll, and fail with a message when it never holds."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_INTERVAL = 0.02


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, message: str = "") -> None:
    """Poll `predicate` until it is truthy; AssertionError(`message`) if it is not within `timeout` seconds.

    The predicate is checked once more at the deadline, so a slow poll never loses a last-moment success.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(POLL_INTERVAL)
