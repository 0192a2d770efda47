"""Prometheus metrics on an explicit registry (nothing registers at import time).

Labels come from small closed sets (result class, reason, SES error code); never an address or id.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric

from relay import __version__

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("ses_relay_build", "Version of the running relay", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.smtp_sessions = Counter(
            "ses_relay_smtp_sessions_total", "SMTP connections by outcome at connect", ["result"], registry=r
        )  # accepted | rejected_network | rejected_busy | rejected_client_limit
        self.smtp_active_sessions = Gauge(
            "ses_relay_smtp_active_sessions", "SMTP connections currently open", registry=r
        )
        self.smtp_transactions = Counter(
            "ses_relay_smtp_transactions_total",
            "Mail transactions (DATA) by reply class",
            ["result"],
            registry=r,
        )  # 2xx | 4xx | 5xx
        self.recipients_rejected = Counter(
            "ses_relay_recipients_rejected_total", "RCPT TO refused, by reason", ["reason"], registry=r
        )  # syntax | too_many | suppressed_bounce | suppressed_complaint | ...
        self.suppression_hits = Counter(
            "ses_relay_suppression_hits_total",
            "Recipients found on the suppression list",
            ["reason", "action"],
            registry=r,
        )  # reason: BOUNCE|COMPLAINT|MANUAL, action: reject|drop
        self.messages_sent = Counter(
            "ses_relay_messages_sent_total", "Messages accepted by Amazon SES", registry=r
        )
        self.message_bytes_sent = Counter(
            "ses_relay_message_bytes_sent_total", "Raw message bytes accepted by Amazon SES", registry=r
        )
        self.recipients_sent = Counter(
            "ses_relay_recipients_sent_total", "Envelope recipients of messages accepted by SES", registry=r
        )
        self.ses_request_duration = Histogram(
            "ses_relay_ses_request_duration_seconds",
            "SendEmail call latency, by outcome",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # ok | error
        self.ses_errors = Counter(
            "ses_relay_ses_errors_total", "Failed SendEmail calls by SES error code", ["code"], registry=r
        )
        self.ses_in_flight = Gauge(
            "ses_relay_ses_requests_in_flight", "SendEmail calls waiting for SES", registry=r
        )
        self.rate_limiter_wait = Histogram(
            "ses_relay_rate_limiter_wait_seconds",
            "Time a send waited for the local send-rate limit",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.rate_limiter_refusals = Counter(
            "ses_relay_rate_limiter_refusals_total",
            "Sends refused at once (451 4.4.5): their turn at the local send-rate limit was further "
            "away than ses.max_rate_wait",
            registry=r,
        )
        # Read at scrape time from the SES sender (set_function); NaN until it knows the quota.
        self.ses_quota_remaining = Gauge(
            "ses_relay_ses_quota_remaining",
            "Recipients left in the SES 24-hour sending quota as the relay estimates it (GetAccount "
            "plus its own sends since); NaN: unknown or unlimited",
            registry=r,
        )
        self.ses_quota_remaining.set(float("nan"))

        self.feedback_events = Counter(
            "ses_relay_feedback_events_total",
            "SES feedback events received, by type and subtype",
            ["type", "subtype", "source"],
            registry=r,
        )  # source: sns | sqs
        self.sns_rejected = Counter(
            "ses_relay_sns_messages_rejected_total", "SNS messages refused, by reason", ["reason"], registry=r
        )
        self.sqs_errors = Counter(
            "ses_relay_sqs_errors_total", "SQS polling problems, by kind", ["kind"], registry=r
        )

        self.deliveries = Counter(
            "ses_relay_deliveries_total",
            "Spool delivery attempts by result",
            ["result"],
            registry=r,
        )  # sent | deferred | dead | expired | paused
        self.dsns_queued = Counter(
            "ses_relay_dsns_queued_total",
            "Delivery status notifications queued to envelope senders (delivery.bounce_from)",
            registry=r,
        )
        self.possible_duplicates = Counter(
            "ses_relay_possible_duplicates_total",
            "Spooled messages retried after SES may already have taken them (no answer after sending)",
            registry=r,
        )
        self.memory_budget_refusals = Counter(
            "ses_relay_memory_budget_refusals_total",
            "DATA answered 452 4.3.1 because smtp.memory_budget was spent",
            registry=r,
        )
        self.smtp_auth = Counter(
            "ses_relay_smtp_auth_total", "SMTP AUTH attempts by result", ["result"], registry=r
        )  # ok | failed | locked_out
        self.smtp_refusals = Counter(
            "ses_relay_smtp_refusals_total",
            "SMTP commands or messages refused by a security check or limit, by reason",
            ["reason"],
            registry=r,
        )  # bare_newline | command_too_long | line_too_long | header_count | header_bytes |
        # data_timeout | transactions_per_connection | connections_per_client | proxy_untrusted
        self.guard_refusals = Counter(
            "ses_relay_guard_refusals_total", "MAIL FROM answered 451 by the reputation guard", registry=r
        )
        # Message trace (relay.trace); the store's size is a callback gauge registered by the app.
        self.trace_pruned = Counter(
            "ses_relay_trace_pruned_total",
            "Message trace rows removed by retention, by limit (age: trace.retention_days, rows: "
            "trace.max_rows)",
            ["reason"],
            registry=r,
        )  # age | rows
        self.trace_events_unmatched = Counter(
            "ses_relay_trace_events_unmatched_total",
            "SES feedback events whose SES message id matched no message in the trace (kept, marked)",
            registry=r,
        )

    def register_gauge_callback(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge computed at scrape time (store size, spool depth)."""
        self.registry.register(_CallbackCollector(name, documentation, read))

    def register_labelled_gauge_callback(
        self, name: str, documentation: str, label: str, read: Callable[[], dict[str, float]]
    ) -> None:
        """A gauge with one label, computed at scrape time: {label value: gauge value}."""
        self.registry.register(_LabelledCallbackCollector(name, documentation, label, read))


class _CallbackCollector:
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name, self._documentation, self._read = name, documentation, read

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._documentation, value=self._read())


class _LabelledCallbackCollector:
    def __init__(
        self, name: str, documentation: str, label: str, read: Callable[[], dict[str, float]]
    ) -> None:
        self._name, self._documentation, self._label, self._read = name, documentation, label, read

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation, labels=[self._label])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, number in sorted(self._read().items()):
            family.add_metric([value], number)
        yield family
