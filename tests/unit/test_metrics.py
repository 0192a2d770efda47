"""Metrics: explicit registries, ses_relay_ names, counters exposed with _total, scrape-time gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from relay.metrics import RelayMetrics


def exposition(metrics: RelayMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def touch_every_labelled_child(metrics: RelayMetrics) -> None:
    """Labelled metrics expose no samples until a child exists."""
    metrics.smtp_sessions.labels("accepted").inc()
    metrics.smtp_transactions.labels("2xx").inc()
    metrics.recipients_rejected.labels("syntax").inc()
    metrics.suppression_hits.labels("BOUNCE", "reject").inc()
    metrics.ses_request_duration.labels("ok").observe(0.01)
    metrics.ses_errors.labels("throttling").inc()


def test_two_instances_in_one_process_do_not_conflict():
    first, second = RelayMetrics(), RelayMetrics()
    assert first.registry is not second.registry
    first.messages_sent.inc()
    first.messages_sent.inc()
    second.messages_sent.inc()
    assert first.registry.get_sample_value("ses_relay_messages_sent_total") == 2
    assert second.registry.get_sample_value("ses_relay_messages_sent_total") == 1


def test_an_explicit_registry_is_used_and_nothing_lands_in_the_default_registry():
    from prometheus_client import REGISTRY

    before = {family.name for family in REGISTRY.collect()}
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    assert metrics.registry is registry
    assert {family.name for family in REGISTRY.collect()} == before
    assert not any(name.startswith("ses_relay_") for name in before)


def test_every_metric_name_starts_with_ses_relay():
    metrics = RelayMetrics()
    touch_every_labelled_child(metrics)
    metrics.register_gauge_callback("ses_relay_suppression_entries", "Entries", lambda: 3)
    families = list(text_string_to_metric_families(exposition(metrics)))
    assert len(families) >= 14
    for family in families:
        assert family.name.startswith("ses_relay_"), family.name
        for sample in family.samples:
            assert sample.name.startswith("ses_relay_"), sample.name


def test_counters_end_in_total_in_the_exposition():
    metrics = RelayMetrics()
    touch_every_labelled_child(metrics)
    text = exposition(metrics)
    counter_types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE") and
                     line.endswith(" counter")]
    assert "ses_relay_messages_sent_total" in counter_types
    assert "ses_relay_smtp_sessions_total" in counter_types
    for name in counter_types:
        assert name.endswith("_total"), name
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            for sample in family.samples:
                assert sample.name.endswith(("_total", "_created")), sample.name
    assert "ses_relay_messages_sent_total 0.0" in text
    assert 'ses_relay_smtp_sessions_total{result="accepted"} 1.0' in text
    assert "_total_total" not in text


def test_build_info_carries_the_version():
    metrics = RelayMetrics()
    value = metrics.registry.get_sample_value("ses_relay_build_info", {"version": __version__,
                                                                       "python": __import__("platform").python_version()})
    assert value == 1.0


def test_gauge_callback_is_read_at_scrape_time():
    metrics = RelayMetrics()
    state = {"value": 1.0, "reads": 0}

    def read() -> float:
        state["reads"] += 1
        return state["value"]

    metrics.register_gauge_callback("ses_relay_test_depth", "A gauge computed at scrape time", read)
    assert "ses_relay_test_depth 1.0" in exposition(metrics)
    state["value"] = 42
    assert "ses_relay_test_depth 42.0" in exposition(metrics)
    assert metrics.registry.get_sample_value("ses_relay_test_depth") == 42
    state["value"] = 0
    assert "ses_relay_test_depth 0.0" in exposition(metrics)
    assert "# TYPE ses_relay_test_depth gauge" in exposition(metrics)
    assert state["reads"] >= 4


def test_gauge_callbacks_on_two_instances_are_independent():
    first, second = RelayMetrics(), RelayMetrics()
    first.register_gauge_callback("ses_relay_smtp_sends_in_flight", "x", lambda: 1)
    second.register_gauge_callback("ses_relay_smtp_sends_in_flight", "x", lambda: 2)
    assert first.registry.get_sample_value("ses_relay_smtp_sends_in_flight") == 1
    assert second.registry.get_sample_value("ses_relay_smtp_sends_in_flight") == 2
