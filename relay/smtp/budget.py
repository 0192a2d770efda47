"""A budget for message bytes held in memory, shared by every SMTP transaction.

Without it, 100 connections each sending a 40 MiB message (plus the copy made when a Bcc header is
removed) hold several GiB. The DATA reader takes bytes from the budget as the message grows; when
the budget is spent the transaction is answered `452 4.3.1` and the client retries later, instead of
the process growing until the kernel kills it. Bytes go back when the transaction is finished with
them: after the reply, or after a send the client hung up on.
"""

from __future__ import annotations

# The reader takes bytes in steps of this size, so the accounting costs nothing per line.
STEP = 256 * 1024


def held_for(size: int) -> int:
    """What a message of `size` bytes costs while the relay has it: the bytes, plus an eighth for what
    sending it takes besides (base64 chunks, SigV4 hashing, the HTTP writer's buffers, allocator
    slack). Without that share, a burst of 30 x 40 MB peaked 4-13 % above budget + idle RSS."""
    return size + size // 8


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        self.limit = limit
        self.in_use = 0
        self.peak = 0

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _take(self, amount: int) -> bool:
        if self.in_use + amount > self.limit:
            return False
        self.in_use += amount
        self.peak = max(self.peak, self.in_use)
        return True

    def _give(self, amount: int) -> None:
        self.in_use -= amount


class Reservation:
    """The bytes one transaction holds. `cover(n)` makes sure n bytes are held; `release()` is idempotent."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held = 0

    def cover(self, size: int) -> bool:
        """Hold at least `size` bytes (rounded up to STEP). False: the budget is spent; nothing changes."""
        if size <= self.held:
            return True
        wanted = min(-(-size // STEP) * STEP, max(size, self._budget.limit))
        if not self._budget._take(wanted - self.held):
            return False
        self.held = wanted
        return True

    def add(self, size: int) -> bool:
        """Hold `size` more bytes (a second buffer, e.g. the copy without the Bcc header)."""
        return self.cover(self.held + size)

    def shrink(self, size: int) -> None:
        """Give back `size` bytes (a buffer that was freed)."""
        size = min(size, self.held)
        self._budget._give(size)
        self.held -= size

    def release(self) -> None:
        if self.held:
            self._budget._give(self.held)
            self.held = 0
