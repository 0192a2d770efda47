"""What the SMTP server, its sessions and the handler share (uvicorn's ServerState).

Handed to each part explicitly, so no part reads another's attributes to learn whether the relay is
stopping or how many sends are still out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relay.smtp.budget import MemoryBudget

if TYPE_CHECKING:
    from relay.smtp.server import RelaySMTP
    from relay.transaction import TransactionRecord


@dataclass
class ServerState:
    budget: MemoryBudget
    shutting_down: bool = False
    sessions: set[RelaySMTP] = field(default_factory=set)
    # Sends handed to a Sender and not finished yet, with their transaction: at the end of the
    # shutdown grace, whatever is left here is abandoned and logged as "outcome unknown".
    sends: dict[asyncio.Future, TransactionRecord] = field(default_factory=dict)

    @property
    def sends_in_flight(self) -> int:
        return len(self.sends)
