"""The composition root: builds every part from the Config, starts them in order, stops them gracefully.

Only this module sees the whole Config; every other part gets narrow arguments.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from relay.config import Config, parse_host_port
from relay.dryrun import DryRunSender
from relay.feedback.processor import FeedbackProcessor
from relay.guard import ReputationGuard
from relay.metrics import RelayMetrics
from relay.sending import Sender
from relay.ses.client import SesSender
from relay.smtp.budget import MemoryBudget
from relay.smtp.handler import RelayHandler
from relay.smtp.policy import ConnectionPolicy
from relay.smtp.server import SmtpServer
from relay.smtp.state import ServerState
from relay.startup import StartupError
from relay.suppression import create_store
from relay.suppression.base import StoreError, SuppressionStore
from relay.transaction import LogSink
from relay.web import build_app

if TYPE_CHECKING:
    from relay.feedback.sqs import SqsPoller

log = logging.getLogger("relay")
STORE_SIZE_INTERVAL = 60.0
# After the SMTP drain, how long the other parts (SQS poller, HTTP, sender, store) get to stop,
# all together. With relay.runner's EXIT_WAIT, a stop takes at most shutdown_grace + ~8 s.
PARTS_STOP_TIMEOUT = 4.0

__all__ = ["Relay", "StartupError", "build_sender", "build_store", "open_store"]


def build_sender(config: Config, metrics: RelayMetrics) -> Sender:
    if config.ses.dry_run:
        return DryRunSender(config.dry_run_dir)
    ses = config.ses
    return SesSender(
        region=ses.region,
        endpoint_url=ses.endpoint_url,
        configuration_set=ses.configuration_set,
        tags=ses.tags,
        max_send_rate=ses.max_send_rate,
        connect_timeout=ses.connect_timeout,
        request_timeout=ses.request_timeout,
        max_connections=ses.max_connections,
        min_upload_rate=ses.min_upload_rate,
        max_rate_wait=ses.max_rate_wait,
        metrics=metrics,
    )


def build_store(config: Config, *, serving: bool = False) -> SuppressionStore:
    """The configured store, not yet opened. Only the server caches lookups (suppression.cache_entries):
    a CLI command is short-lived and must read what is on disk."""
    settings = config.suppression
    return create_store(
        settings.backend,
        path=config.suppression_path if settings.backend == "sqlite" else None,
        dynamodb_table=settings.dynamodb.table,
        dynamodb_region=settings.dynamodb.region or config.ses.region,
        dynamodb_endpoint_url=settings.dynamodb.endpoint_url,
        cache_entries=settings.cache_entries if serving else 0,
    )


async def open_store(config: Config, *, serving: bool = False) -> SuppressionStore:
    store = build_store(config, serving=serving)
    try:
        await store.open()
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    return store


class Relay:
    """Start with `await start()`, stop with `await stop()`; `run()` does both around signal handling."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: RelayMetrics | None = None,
        sns_http_get: Callable[[str], Awaitable[bytes]] | None = None,
    ) -> None:
        """`sns_http_get` fetches SNS signing certificates and confirms subscriptions. Tests inject one
        that serves their own test CA; there is deliberately no config key for it."""
        self.config = config
        self.metrics = metrics or RelayMetrics()
        self._sns_http_get = sns_http_get
        self._feedback: FeedbackProcessor | None = None
        self._sqs: SqsPoller | None = None
        self.smtp_addresses: list[tuple[str, int]] = []
        self.http_address: tuple[str, int] | None = None
        self._stop_requested = asyncio.Event()
        self._hurry = asyncio.Event()  # a second signal: skip the rest of the grace period
        self._store: SuppressionStore | None = None
        self._sender: Sender | None = None
        self._smtp: SmtpServer | None = None
        self._web: web.AppRunner | None = None
        self._listening = False
        self._store_size = 0.0
        self._tasks: set[asyncio.Task] = set()  # background loops, cancelled and awaited on stop
        self.state = ServerState(budget=MemoryBudget(config.smtp.memory_budget))
        self._ses_sync_entries = 0.0
        self._ses_sync_last = 0.0
        self.metrics.register_gauge_callback(
            "ses_relay_ses_sync_last_success_timestamp_seconds",
            "When the last pull of the SES account suppression list finished (0: never)",
            lambda: self._ses_sync_last,
        )
        self.metrics.register_gauge_callback(
            "ses_relay_ses_sync_last_entries",
            "Entries copied by the last SES suppression list pull",
            lambda: self._ses_sync_entries,
        )
        self.metrics.register_gauge_callback(
            "ses_relay_smtp_sends_in_flight",
            "DATA transactions waiting for the sender",
            lambda: self.state.sends_in_flight,
        )
        self.metrics.register_gauge_callback(
            "ses_relay_message_memory_bytes",
            "Message bytes held in memory by SMTP transactions (bounded by smtp.memory_budget)",
            lambda: self.state.budget.in_use,
        )
        self.metrics.register_gauge_callback(
            "ses_relay_message_memory_budget_bytes",
            "smtp.memory_budget: the most message bytes held in memory at once",
            lambda: self.state.budget.limit,
        )
        self.metrics.register_gauge_callback(
            "ses_relay_suppression_entries",
            "Entries in the suppression store, refreshed every minute; for DynamoDB the table's "
            "ItemCount, which AWS updates about every 6 h",
            lambda: self._store_size,
        )

    async def start(self) -> None:
        config = self.config
        try:
            self._store = await open_store(config, serving=True)
            guard = ReputationGuard(
                self.metrics,
                enabled=config.guard.enabled,
                window=config.guard.window,
                min_sends=config.guard.min_sends,
                max_bounce_rate=config.guard.max_bounce_rate,
                max_complaint_rate=config.guard.max_complaint_rate,
            )
            transient = config.feedback.transient_bounces
            self._feedback = FeedbackProcessor(
                self._store,
                self.metrics,
                guard=guard,
                transient_suppress_after=transient.suppress_after,
                transient_window=transient.window,
            )
            self._sender = build_sender(config, self.metrics)
            await self._sender.start()
            handler = RelayHandler(
                sender=self._sender,
                store=self._store,
                metrics=self.metrics,
                state=self.state,
                sinks=[LogSink()],
                max_recipients=config.smtp.max_recipients,
                on_suppressed=config.suppression.on_suppressed,
                guard=guard,
            )
            self._smtp = SmtpServer(
                handler,
                state=self.state,
                policy=ConnectionPolicy(config.smtp.allowed_networks, config.smtp.max_connections),
                hostname=config.smtp.hostname,
                max_message_size=config.smtp.max_message_size,
                idle_timeout=config.smtp.idle_timeout,
                command_call_limit=config.smtp.command_call_limit,
                metrics=self.metrics,
            )
            if config.http.listen:
                await self._start_http(config.http.listen)
            for item in config.smtp.listen:
                host, port = parse_host_port(item)
                try:
                    self.smtp_addresses.append(await self._smtp.listen(host, port))
                except OSError as exc:
                    raise StartupError(f"cannot listen for SMTP on {item}: {exc.strerror or exc}") from None
            sqs = config.feedback.sqs
            if sqs.queue_url:
                from relay.feedback.sqs import SqsPoller  # boto3's SQS model: only when used

                self._sqs = SqsPoller(
                    sqs.queue_url,
                    self._feedback,
                    self.metrics,
                    region=sqs.region,
                    endpoint_url=sqs.endpoint_url,
                    wait_time=sqs.wait_time,
                )
                await self._sqs.start()
        except BaseException:
            await self.stop()
            raise
        self._listening = True
        self._tasks.add(asyncio.create_task(self._refresh_store_size(), name="store-size"))
        if config.suppression.ses_sync_interval and not config.ses.dry_run:
            self._tasks.add(asyncio.create_task(self._periodic_ses_sync(), name="ses-suppression-sync"))
        log.info(
            "ses-relay listening",
            extra={
                "fields": {
                    "event": "listening",
                    "smtp": [f"{h}:{p}" for h, p in self.smtp_addresses],
                    "http": f"{self.http_address[0]}:{self.http_address[1]}" if self.http_address else None,
                    "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                    "mode": "dry-run" if config.ses.dry_run else config.delivery.mode,
                }
            },
        )

    async def _start_http(self, listen: str) -> None:
        host, port = parse_host_port(listen)
        checks = {
            "smtp": lambda: (self._listening, "listening" if self._listening else "not listening"),
            "suppression_store": lambda: (bool(self._store and self._store.healthy()), "open"),
            "sender": lambda: self._sender.readiness() if self._sender else (False, "not started"),
        }
        sns = None
        if self.config.feedback.sns.enabled:
            assert self._feedback is not None  # built before the HTTP side starts
            # Imported only when enabled: the SNS side pulls in cryptography (~10 MB resident).
            from relay.feedback.sns import SnsVerifier, https_get
            from relay.feedback.webhook import sns_handler

            fetch = self._sns_http_get or https_get
            verifier = SnsVerifier(
                self.config.feedback.sns.topic_arns,
                fetch_certificate=fetch,
                max_age=self.config.feedback.sns.max_age,
            )
            sns = sns_handler(verifier, self._feedback, self.metrics, http_get=fetch)
        self._web = web.AppRunner(
            build_app(self.metrics.registry, checks, sns), access_log=None, handle_signals=False
        )
        await self._web.setup()
        site = web.TCPSite(self._web, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP on {listen}: {exc.strerror or exc}") from None
        bound = self._web.addresses[0]  # the real port when the config says 0
        self.http_address = (bound[0], bound[1])

    def request_stop(self) -> None:
        """Safe from a signal handler: only sets flags. A second request skips the rest of the
        shutdown grace (the operator pressed Ctrl-C twice, or systemd is about to kill us)."""
        if self._stop_requested.is_set():
            if not self._hurry.is_set():
                log.warning("second stop request: abandoning the transactions still open")
            self._hurry.set()
        self._stop_requested.set()

    async def _refresh_store_size(self) -> None:
        """Counting a large table is not free: do it in the background, scrapes read the last value."""
        while self._store is not None:
            try:
                self._store_size = float(await self._store.approximate_count())
            except Exception as exc:  # noqa: BLE001 - a metric must never take the relay down
                log.warning("could not count the suppression store: %s", exc)
            await asyncio.sleep(STORE_SIZE_INTERVAL)

    async def _periodic_ses_sync(self) -> None:
        """Keep the local list a superset of the SES account list (SES drops, and charges for, those)."""
        from relay.suppression.ses_sync import SyncError, sesv2_client_factory, sync_from_ses

        config = self.config
        factory = sesv2_client_factory(config.ses.region, config.ses.endpoint_url)
        state = config.resolved_state_dir / "ses-sync.serve.state"
        while self._store is not None:
            try:
                result = await sync_from_ses(self._store, factory, state_path=state)
                self._ses_sync_entries = float(result.imported)
                self._ses_sync_last = time.time()
                log.info("synced %d entries from the SES suppression list", result.imported)
            except (SyncError, StoreError) as exc:
                log.error("SES suppression list sync failed (will retry): %s", exc)
            await asyncio.sleep(config.suppression.ses_sync_interval or 3600)

    async def stop(self) -> None:
        """Bounded: returns within smtp.shutdown_grace + PARTS_STOP_TIMEOUT from any state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.smtp.shutdown_grace
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        self._listening = False
        if self._smtp is not None:
            self._smtp.stop_accepting()
            await self._smtp.drain(deadline, self._hurry)
            self._smtp = None
        await self._stop_parts(tasks)

    async def _stop_parts(self, tasks: set[asyncio.Task]) -> None:
        steps: list[tuple[str, Awaitable[object]]] = []
        if tasks:
            steps.append(("background tasks", asyncio.gather(*tasks, return_exceptions=True)))
        if self._sqs is not None:
            steps.append(("SQS poller", self._sqs.stop()))
            self._sqs = None
        if self._web is not None:
            steps.append(("HTTP listener", self._web.cleanup()))
            self._web = None
        if self._sender is not None:
            steps.append(("sender", self._sender.close()))
            self._sender = None
        if self._store is not None:
            steps.append(("suppression store", self._store.close()))
            self._store = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PARTS_STOP_TIMEOUT
        for name, step in steps:
            try:
                async with asyncio.timeout_at(max(deadline, loop.time() + 0.1)):
                    await step
            except TimeoutError:
                log.warning("%s did not stop within %ss; leaving it", name, PARTS_STOP_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - stopping the rest matters more
                log.warning("stopping the %s failed: %s", name, exc, exc_info=exc)

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        installed = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
                installed.append(signum)
        try:
            await self._stop_requested.wait()
            log.info(
                "stopping: no new connections; waiting up to %ss for open transactions",
                self.config.smtp.shutdown_grace,
                extra={"fields": {"event": "stopping"}},
            )
        finally:
            try:
                await self.stop()  # the handlers stay: a second signal during the drain hurries it
            finally:
                for signum in installed:
                    loop.remove_signal_handler(signum)
        log.info("stopped", extra={"fields": {"event": "stopped"}})
