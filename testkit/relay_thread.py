"""A real relay in a thread with its own event loop, exactly as `ses-relay serve` runs it.

Tests talk to it over real sockets with blocking clients (smtplib, swaks, Postfix, ...).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from relay.app import Relay
from relay.config import Config
from relay.metrics import RelayMetrics


@dataclass
class RunningRelay:
    relay: Relay
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    config: Config

    @property
    def smtp_port(self) -> int:
        return self.relay.smtp_addresses[0][1]

    @property
    def http_url(self) -> str:
        host, port = self.relay.http_address
        return f"http://{host}:{port}"

    @property
    def metrics(self) -> RelayMetrics:
        return self.relay.metrics

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the relay's loop (e.g. to edit its suppression store)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def store(self):
        return self.relay._store

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.relay.request_stop)
            self.thread.join(timeout=60)


def start_relay(config: Config, **relay_kwargs: Any) -> RunningRelay:
    relay = Relay(config, **relay_kwargs)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        try:
            await relay.start()
        except BaseException as exc:  # reported to the test thread below
            failure.append(exc)
            started.set()
            return
        started.set()
        await relay._stop_requested.wait()
        await relay.stop()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=run, name="relay", daemon=True)
    thread.start()
    if not started.wait(30):
        raise TimeoutError("relay did not start")
    if failure:
        thread.join(10)
        raise failure[0]
    return RunningRelay(relay, loop, thread, config)
