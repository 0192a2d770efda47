"""Reputation guard: rates over a sliding window, pause and resume."""

from __future__ import annotations

from relay.guard import ReputationGuard
from relay.metrics import RelayMetrics


def make(clock, **kwargs):
    metrics = RelayMetrics()
    options = dict(enabled=True, window=3600, min_sends=100, max_bounce_rate=0.05, max_complaint_rate=0.001)
    options.update(kwargs)
    return ReputationGuard(metrics, clock=clock, **options), metrics


def test_rates_and_gauges():
    now = [10_000.0]
    guard, metrics = make(lambda: now[0])
    guard.record_sent(200)
    guard.record_bounces(4)
    guard.record_complaints(1)
    assert guard.rates() == (0.02, 0.005)
    assert metrics.registry.get_sample_value("ses_relay_reputation_bounce_rate") == 0.02
    assert metrics.registry.get_sample_value("ses_relay_reputation_window_recipients_sent") == 200


def test_pauses_over_bounce_limit_and_resumes_when_window_passes():
    now = [10_000.0]
    guard, metrics = make(lambda: now[0])
    guard.record_sent(100)
    guard.record_bounces(4)
    assert guard.pause_reason() is None  # 4%
    guard.record_bounces(1)
    reason = guard.pause_reason()
    assert reason is not None and "bounce rate 5.00%" in reason
    assert metrics.registry.get_sample_value("ses_relay_guard_paused") == 1.0
    now[0] += 3600 + 120  # the bad minute leaves the window
    guard.record_sent(100)
    assert guard.pause_reason() is None
    assert metrics.registry.get_sample_value("ses_relay_guard_paused") == 0.0
    assert guard.totals() == (100, 0, 0)


def test_complaint_limit_and_minimum_volume():
    now = [0.0]
    guard, _ = make(lambda: now[0])
    guard.record_sent(50)
    guard.record_complaints(5)
    assert guard.pause_reason() is None  # too few sends for a verdict
    guard.record_sent(950)
    reason = guard.pause_reason()
    assert reason is not None and reason.startswith("complaint rate 0.500%")


def test_disabled_guard_never_pauses_but_still_measures():
    now = [0.0]
    guard, _ = make(lambda: now[0], enabled=False)
    guard.record_sent(100)
    guard.record_bounces(100)
    assert guard.pause_reason() is None
    assert guard.rates() == (1.0, 0.0)
