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

from relay import notify
from relay.backoff import Backoff
from relay.config import Config, parse_host_port
from relay.console.routes import ConsoleSources
from relay.dryrun import DryRunSender
from relay.feedback.processor import FeedbackProcessor
from relay.guard import ReputationGuard
from relay.metrics import RelayMetrics
from relay.reload import Loader, Reloader, reload_users
from relay.sending import Sender
from relay.ses.client import SesSender
from relay.smtp.auth import Authenticator, load_users
from relay.smtp.budget import MemoryBudget
from relay.smtp.handler import RelayHandler
from relay.smtp.policy import ConnectionPolicy, parse_networks
from relay.smtp.proxy import TrustedProxies
from relay.smtp.server import SmtpServer
from relay.smtp.state import ServerState
from relay.smtp.tls import CertificateStore
from relay.spool.delivery import DeliveryEngine
from relay.spool.senders import FallbackSender, SpoolSender
from relay.spool.store import SpoolError, SqliteSpool
from relay.startup import StartupError
from relay.suppression import create_store
from relay.suppression.base import StoreError, SuppressionStore
from relay.trace.store import TraceStore, build_trace
from relay.transaction import LogSink
from relay.web import RequestHandler, Role, build_app

if TYPE_CHECKING:
    from relay.feedback.sqs import SqsPoller

log = logging.getLogger("relay")
STORE_SIZE_INTERVAL = 60.0
SPOOL_GAUGE_INTERVAL = 5.0
# After the SMTP drain, how long the other parts (SQS poller, HTTP, sender, store) get to stop,
# all together. With relay.runner's EXIT_WAIT, a stop takes at most shutdown_grace + ~8 s.
PARTS_STOP_TIMEOUT = 4.0

__all__ = ["Relay", "StartupError", "build_sender", "build_store", "open_store"]


def build_sender(config: Config, metrics: RelayMetrics) -> Sender:
    """The sender that talks to SES (or the dry run); the spool, when configured, wraps it."""
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
        quota_reserve=ses.quota_reserve,
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
        self._sender: Sender | None = None  # what the SMTP handler calls
        self._direct: Sender | None = None  # SES (or the dry run); the spool's delivery uses it too
        self._spool: SqliteSpool | None = None
        self._delivery: DeliveryEngine | None = None
        self._spool_counts: dict[str, float] = {}
        self._spool_oldest = 0.0
        self._smtp: SmtpServer | None = None
        self._tls: CertificateStore | None = None
        self._web: web.AppRunner | None = None
        self._web_public: web.AppRunner | None = None  # http.public_listen: /sns and /healthz only
        self.http_public_address: tuple[str, int] | None = None
        self._authenticator: Authenticator | None = None
        self._listening = False
        self._store_size = 0.0
        self._tasks: set[asyncio.Task] = set()  # background loops, cancelled and awaited on stop
        self._trace: TraceStore | None = None  # None when trace.enabled is false
        self.metrics.register_gauge_callback(
            "ses_relay_trace_store_bytes",
            "Size of the message trace store (trace.db and its WAL) on disk; 0 when disabled",
            lambda: self._trace.size_bytes if self._trace is not None else 0.0,
        )
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
            "ses_relay_send_rate_limit",
            "The local send-rate limit now, in recipients/s (lowered after a 429, then recovering); 0: none",
            lambda: float(getattr(self._direct, "send_rate", 0.0)),
        )
        self.metrics.register_labelled_gauge_callback(
            "ses_relay_spool_messages",
            "Messages in the spool by state (refreshed every 5 s)",
            "state",
            lambda: self._spool_counts,
        )
        self.metrics.register_gauge_callback(
            "ses_relay_spool_oldest_age_seconds",
            "Age of the oldest message in the spool that is not a dead letter (0: none)",
            lambda: self._spool_oldest,
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
        self._readiness = {  # /readyz and the ses_relay_ready gauge
            "smtp": lambda: (self._listening, "listening" if self._listening else "not listening"),
            "suppression_store": lambda: (bool(self._store and self._store.healthy()), "open"),
            "sender": lambda: self._direct.readiness() if self._direct else (False, "not started"),
            "spool": lambda: self._spool_readiness(),
        }
        self.metrics.register_gauge_callback(
            "ses_relay_ready",
            "1 when /readyz answers 200: SMTP listening, store open, sender ready",
            lambda: float(all(check()[0] for check in self._readiness.values())),
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
            self._trace = build_trace(  # opened once the sender started
                config.trace, config.trace_path, config.resolved_state_dir, self.metrics
            )
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
                on_event=self._trace.on_event if self._trace is not None else None,
            )
            self._direct = build_sender(config, self.metrics)
            await self._direct.start()
            self._sender = await self._start_spool(self._direct)
            if self._trace is not None:
                await self._trace.open()
            handler = RelayHandler(
                sender=self._sender,
                store=self._store,
                metrics=self.metrics,
                state=self.state,
                sinks=[LogSink(), *([self._trace] if self._trace is not None else [])],
                max_recipients=config.smtp.max_recipients,
                on_suppressed=config.suppression.on_suppressed,
                guard=guard,
            )
            smtp = config.smtp
            if smtp.tls.cert is not None and smtp.tls.key is not None:
                self._tls = CertificateStore(smtp.tls.cert, smtp.tls.key)  # StartupError if unusable
            users = load_users(smtp.auth.users_file) if smtp.auth.users_file else None
            self._authenticator = Authenticator(users) if users is not None else None
            self._smtp = SmtpServer(
                handler,
                state=self.state,
                policy=ConnectionPolicy(
                    smtp.allowed_networks,
                    smtp.max_connections,
                    auth_required=smtp.auth.required,
                    max_connections_per_client=smtp.max_connections_per_client,
                ),
                hostname=smtp.hostname,
                max_message_size=smtp.max_message_size,
                idle_timeout=smtp.idle_timeout,
                command_call_limit=smtp.command_call_limit,
                metrics=self.metrics,
                tls=self._tls,
                authenticator=self._authenticator,
                auth_require_tls=smtp.tls.require_for_auth,
                max_transactions_per_connection=smtp.max_transactions_per_connection,
                data_timeout=smtp.data_timeout,
                max_header_count=smtp.max_header_count,
                max_header_bytes=smtp.max_header_bytes,
                trusted_proxies=TrustedProxies(smtp.trusted_proxies),
                proxy_timeout=smtp.proxy_timeout,
            )
            await self._start_http()
            # (address, implicit TLS, PROXY header): smtp_addresses keeps this order.
            listeners = [
                *((i, False, False) for i in smtp.listen),
                *((i, True, False) for i in smtp.tls.implicit_listen),
                *((i, False, True) for i in smtp.proxy_listen),
            ]
            for item, implicit_tls, proxy in listeners:
                host, port = parse_host_port(item)
                try:
                    self.smtp_addresses.append(
                        await self._smtp.listen(host, port, implicit_tls=implicit_tls, proxy=proxy)
                    )
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
        if self._delivery is not None:
            await self._delivery.start()
            self._tasks.add(asyncio.create_task(self._refresh_spool_gauges(), name="spool-gauges"))
        self._tasks.add(asyncio.create_task(self._refresh_store_size(), name="store-size"))
        if self._tls is not None:
            self._tasks.add(asyncio.create_task(self._tls.watch(), name="tls-certificate-watch"))
        if config.suppression.ses_sync_interval and not config.ses.dry_run:
            self._tasks.add(asyncio.create_task(self._periodic_ses_sync(), name="ses-suppression-sync"))
        log.info(
            "ses-relay listening",
            extra={
                "fields": {
                    "event": "listening",
                    "smtp": [f"{h}:{p}" for h, p in self.smtp_addresses],
                    "http": f"{self.http_address[0]}:{self.http_address[1]}" if self.http_address else None,
                    "http_public": (
                        f"{self.http_public_address[0]}:{self.http_public_address[1]}"
                        if self.http_public_address else None
                    ),
                    "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                    "mode": "dry-run" if config.ses.dry_run else config.delivery.mode,
                }
            },
        )

    async def _start_spool(self, direct: Sender) -> Sender:
        """direct mode (and the dry run): the handler calls SES itself. spool / fallback: the spool."""
        config = self.config
        if config.delivery.mode == "direct" or config.ses.dry_run:
            return direct
        assert self._store is not None
        delivery = config.delivery
        self._spool = SqliteSpool(config.spool_path, min_free_bytes=delivery.min_free_bytes)
        try:
            await self._spool.open()
        except SpoolError as exc:
            raise StartupError(str(exc)) from None
        self._delivery = DeliveryEngine(
            self._spool,
            direct,
            self._store,
            self.metrics,
            concurrency=delivery.concurrency,
            retry=Backoff(delivery.retry_first, delivery.retry_max, jitter=0.2),
            max_lifetime=delivery.max_lifetime,
            bounce_from=delivery.bounce_from,
            reporting_host=config.smtp.hostname,
            on_attempt=self._trace.on_attempt if self._trace is not None else None,
        )
        spool_sender = SpoolSender(self._spool, self._delivery)
        if delivery.mode == "spool":
            return spool_sender
        return FallbackSender(direct, spool_sender)

    async def _refresh_spool_gauges(self) -> None:
        while self._spool is not None:
            try:
                self._spool_counts = {k: float(v) for k, v in (await self._spool.counts()).items()}
                oldest = await self._spool.oldest()
                self._spool_oldest = time.time() - oldest if oldest else 0.0
            except Exception as exc:  # noqa: BLE001 - a metric must never take the relay down
                log.warning("could not read the spool for its gauges: %s", exc)
            await asyncio.sleep(SPOOL_GAUGE_INTERVAL)

    async def _start_http(self) -> None:
        """http.listen serves every route; with http.public_listen set, /sns moves there (with
        /healthz), so the side that faces the internet has nothing else (DESIGN 9)."""
        http = self.config.http
        sns = self._sns_route()
        if http.listen:
            role: Role = "admin" if http.public_listen else "all"
            self._web, self.http_address = await self._start_http_site(http.listen, role, sns)
        if http.public_listen:
            self._web_public, self.http_public_address = await self._start_http_site(
                http.public_listen, "public", sns
            )

    def _sns_route(self) -> RequestHandler | None:
        if not self.config.feedback.sns.enabled:
            return None
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
        return sns_handler(verifier, self._feedback, self.metrics, http_get=fetch)

    async def _start_http_site(
        self, listen: str, role: Role, sns: RequestHandler | None
    ) -> tuple[web.AppRunner, tuple[str, int]]:
        host, port = parse_host_port(listen)
        runner = web.AppRunner(
            build_app(
                self.metrics.registry,
                self._readiness,
                sns,
                trace=self._trace,
                role=role,
                console=self._console_sources() if self.config.http.console else None,
                admin_networks=parse_networks(self.config.http.admin_allowed_networks),
            ),
            access_log=None,
            handle_signals=False,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen for HTTP on {listen}: {exc.strerror or exc}") from None
        bound = runner.addresses[0]  # the real port when the config says 0
        return runner, (bound[0], bound[1])

    def _console_sources(self) -> ConsoleSources:
        # Getters: the console reads whatever part is open at the time of each request.
        return ConsoleSources(
            trace=lambda: self._trace, spool=lambda: self._spool, suppression=lambda: self._store
        )

    def _spool_readiness(self) -> tuple[bool, str]:
        if self._spool is None:
            used = self.config.delivery.mode != "direct" and not self.config.ses.dry_run
            return True, "closed" if used else "not used"
        return (True, "writable") if self._spool.healthy() else (False, "spool not writable")

    def _reload_requested(self, reloader: Reloader) -> None:
        reloader.request()
        if self._tls is not None:
            self._tls.request_reload()  # new certificate for new connections; open ones keep theirs
        users_file = self.config.smtp.auth.users_file
        if self._authenticator is not None and users_file is not None:
            task = asyncio.create_task(reload_users(users_file, self._authenticator), name="users-reload")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        if self._delivery is not None:
            # Sends in flight get what is left of the grace (none after a second signal).
            await self._delivery.stop(loop.time() if self._hurry.is_set() else deadline)
            self._delivery = None
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
        if self._web_public is not None:
            steps.append(("public HTTP listener", self._web_public.cleanup()))
            self._web_public = None
        self._sender = None
        if self._direct is not None:
            steps.append(("sender", self._direct.close()))
            self._direct = None
        if self._spool is not None:
            steps.append(("spool", self._spool.close()))
            self._spool = None
        if self._trace is not None:  # writes what is pending, then closes
            steps.append(("trace store", self._trace.close()))
            self._trace = None
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

    async def run(self, reload_config: Loader | None = None) -> None:
        """`reload_config` re-reads the configuration on SIGHUP (relay.reload applies what it can)."""
        await self.start()
        loop = asyncio.get_running_loop()
        reloader = Reloader(self.config, reload_config)
        installed = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
                installed.append(signum)
            loop.add_signal_handler(signal.SIGHUP, self._reload_requested, reloader)
            installed.append(signal.SIGHUP)
        # Only now: systemd may send SIGTERM or SIGHUP as soon as it reads READY=1.
        notify.ready("listening on " + ", ".join(f"{h}:{p}" for h, p in self.smtp_addresses))
        try:
            await self._stop_requested.wait()
            notify.stopping("draining open transactions")
            log.info(
                "stopping: no new connections; waiting up to %ss for open transactions",
                self.config.smtp.shutdown_grace,
                extra={"fields": {"event": "stopping"}},
            )
        finally:
            try:
                await reloader.close()
                await self.stop()  # the handlers stay: a second signal during the drain hurries it
            finally:
                for signum in installed:
                    loop.remove_signal_handler(signum)
        log.info("stopped", extra={"fields": {"event": "stopped"}})
