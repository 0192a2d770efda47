"""relay.backoff: the one retry policy (SQS receive, SES sync, DynamoDB batches, next the spool)."""

from __future__ import annotations

import random

import pytest

from relay.backoff import Backoff


def test_doubles_from_the_base_up_to_the_cap_without_jitter() -> None:
    policy = Backoff(5.0, 60.0)
    assert [policy.delay(n) for n in range(1, 8)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]


def test_no_cap_by_default_and_huge_retry_numbers_do_not_overflow() -> None:
    assert Backoff(1.0).delay(4) == 8.0
    assert Backoff(1.0, 60.0).delay(10_000) == 60.0
    assert Backoff(0.0, 2.0, jitter=0.5).delay(10_000) == 0.0


@pytest.mark.parametrize("jitter", [0.2, 0.5, 1.0])
def test_jitter_stays_within_its_share_of_the_delay(jitter: float) -> None:
    rng = random.Random(7)
    policy = Backoff(5.0, 60.0, jitter=jitter, rand=rng.random)
    for retry in range(1, 10):
        ceiling = policy.ceiling(retry)
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(ceiling * (1 - jitter) <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # it does vary: relays sharing a queue do not retry in step


def test_jitter_extremes_with_an_injected_random() -> None:
    assert Backoff(4.0, jitter=0.5, rand=lambda: 0.0).delay(1) == 4.0  # the full delay
    assert Backoff(4.0, jitter=0.5, rand=lambda: 0.999999).delay(1) == pytest.approx(2.0, abs=1e-5)
    assert Backoff(4.0, jitter=1.0, rand=lambda: 0.999999).delay(1) == pytest.approx(0.0, abs=1e-5)


def test_schedule_counts_failures_in_a_row_and_resets_on_success() -> None:
    schedule = Backoff(1.0, 4.0).schedule()
    assert [schedule.failed() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert schedule.failures == 4
    schedule.reset()
    assert schedule.failures == 0
    assert schedule.failed() == 1.0


@pytest.mark.parametrize(
    "kwargs", [{"base": -1.0}, {"base": 1.0, "cap": -1.0}, {"base": 1.0, "jitter": 1.5}, {"base": 1.0, "jitter": -0.1}]
)
def test_impossible_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        Backoff(1.0).delay(0)

