"""The queue holds BEFORE SES's 24-hour quota is used up (ses.quota_reserve), against the fake SES's GetAccount.

The relay reads Max24HourSend / SentLast24Hours, adds the recipients it sends itself, and keeps a reserve:
spool delivery holds without calling SES, fallback mode queues without trying SES live, and delivery resumes
once a later GetAccount read shows room (the refresh interval is shortened here instead of waiting 10 min).
"""

from __future__ import annotations

import math
import smtplib

import pytest

from relay.ses import client as ses_client
from relay.spool.delivery import QUOTA_NEARLY_USED
from testkit.fake_ses import SEND_EMAIL_PATH
from testkit.waiting import wait_until

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: quota\r\n\r\nHello.\r\n"
REMAINING = "ses_relay_ses_quota_remaining"


def send(port: int, recipient: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("test")
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt(recipient)[0] == 250
        code, text = client.data(MESSAGE)
    return code, text.decode()


def send_calls(fake) -> list:
    return [request for request in fake.requests if request.path == SEND_EMAIL_PATH]


def delivered(fake) -> list[str]:
    return [address for request in send_calls(fake) if request.outcome == "ok" for address in request.destinations]


def entries(relay) -> list:
    return relay.call(relay.relay._spool.entries())


@pytest.fixture
def fast_refresh(monkeypatch):
    """GetAccount re-read every 0.3 s, a hold ending 0.2 s after that: "the day rolled on" shows at once."""
    monkeypatch.setattr(ses_client, "ACCOUNT_REFRESH_SECONDS", 0.3)
    monkeypatch.setattr(ses_client, "QUOTA_READ_GRACE", 0.2)


def start(relay_factory, fake, mode: str, reserve: float):
    relay = relay_factory(fake.endpoint_url, ses={"quota_reserve": reserve}, delivery={"mode": mode})
    # The first quota read runs in the background when max_send_rate is not auto (as in these tests).
    wait_until(lambda: not math.isnan(relay.metrics.registry.get_sample_value(REMAINING)),
               message="the relay never read the quota")
    return relay


def test_spool_holds_near_the_quota_without_calling_ses_and_resumes_when_it_has_room(
    fake_ses, relay_factory, fast_refresh
):
    fake_ses.set_send_quota(max_24_hour_send=100, sent_last_24_hours=99)  # 1 left, the 1 % reserve is 1
    relay = start(relay_factory, fake_ses, "spool", 0.01)
    assert relay.metric(REMAINING) == 1
    recipients = ["bob@example.org", "carol@example.org", "dave@example.org"]
    for recipient in recipients:
        code, text = send(relay.smtp_port, recipient)
        assert code == 250 and "queued as" in text, text
    # Held over several refreshes (each message postponed more than once) and never sent.
    wait_until(lambda: relay.metric("ses_relay_deliveries_total", {"result": "quota"}) >= 6,
               message="the queue did not hold for the quota")
    held = entries(relay)
    assert len(held) == 3
    assert all(entry.last_error == QUOTA_NEARLY_USED and entry.attempts == 0 for entry in held)
    assert send_calls(fake_ses) == []

    fake_ses.set_send_quota(sent_last_24_hours=0)  # the day rolled on
    wait_until(lambda: sorted(delivered(fake_ses)) == recipients, message="delivery did not resume")
    wait_until(lambda: entries(relay) == [], message="the spool still holds messages")
    assert len(send_calls(fake_ses)) == 3


def test_fallback_near_the_quota_queues_without_a_live_send(fake_ses, relay_factory, fast_refresh):
    fake_ses.set_send_quota(max_24_hour_send=200, sent_last_24_hours=199)
    relay = start(relay_factory, fake_ses, "fallback", 0.01)
    code, text = send(relay.smtp_port, "bob@example.org")
    assert code == 250 and "queued as" in text, text
    (entry,) = entries(relay)
    assert entry.last_error == QUOTA_NEARLY_USED and entry.attempts == 0
    wait_until(lambda: relay.metric("ses_relay_deliveries_total", {"result": "quota"}) >= 2,
               message="the spool did not hold the queued message")
    assert send_calls(fake_ses) == []

    fake_ses.set_send_quota(sent_last_24_hours=0)
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="the queued message was not sent")
    wait_until(lambda: entries(relay) == [])


def test_the_relays_own_sends_count_between_reads_so_ses_never_refuses(fake_ses, relay_factory):
    # No re-read during the test (the default 10 minutes): only the relay's own count can stop it.
    fake_ses.count_quota = True  # the fake charges accepted recipients and refuses past the quota, as SES
    fake_ses.set_send_quota(max_24_hour_send=10, sent_last_24_hours=0)
    relay = start(relay_factory, fake_ses, "spool", 0.1)  # reserve: 1 recipient
    for i in range(12):
        code, text = send(relay.smtp_port, f"user{i:02d}@example.org")
        assert code == 250 and "queued as" in text, text
    # 9 go out (10 - reserve 1 leaves room for 9 single-recipient sends); 3 wait.
    wait_until(lambda: len(delivered(fake_ses)) == 9 and len(entries(relay)) == 3,
               message="the relay did not stop at the reserve")
    assert relay.metric("ses_relay_deliveries_total", {"result": "quota"}) >= 1  # the queue holds
    assert [request.outcome for request in send_calls(fake_ses)] == ["ok"] * 9  # no LimitExceeded
    assert relay.metric(REMAINING) == 1


def test_ses_saying_the_quota_is_used_up_zeroes_the_estimate_until_the_next_read(fake_ses, relay_factory):
    """Another sender on the account used the quota since the last read: SES's own refusal corrects the
    estimate, so fallback mode queues the next message without another doomed call to SES."""
    fake_ses.count_quota = True
    fake_ses.set_send_quota(max_24_hour_send=100, sent_last_24_hours=0)
    relay = start(relay_factory, fake_ses, "fallback", 0.01)
    assert relay.metric(REMAINING) == 100
    fake_ses.set_send_quota(sent_last_24_hours=100)  # used up elsewhere; the relay reads it in 10 minutes
    code, text = send(relay.smtp_port, "bob@example.org")
    assert code == 250 and "queued as" in text, text  # SES refused; spooled
    assert relay.metric(REMAINING) == 0
    code, text = send(relay.smtp_port, "carol@example.org")
    assert code == 250 and "queued as" in text, text
    assert [request.outcome for request in send_calls(fake_ses)] == ["LimitExceededException"]
    assert {entry.last_error for entry in entries(relay)} >= {QUOTA_NEARLY_USED}


def test_direct_mode_is_not_held_the_client_gets_ses_verdict(fake_ses, relay_factory):
    fake_ses.count_quota = True
    fake_ses.set_send_quota(max_24_hour_send=100, sent_last_24_hours=99)
    relay = start(relay_factory, fake_ses, "direct", 0.01)
    code, text = send(relay.smtp_port, "bob@example.org")
    assert code == 250 and "queued as" not in text, text  # the last recipient of the day: SES takes it
    code, text = send(relay.smtp_port, "carol@example.org")
    assert code == 451 and "4.4.5" in text, text  # and then refuses: the client keeps the mail
    assert [request.outcome for request in send_calls(fake_ses)] == ["ok", "LimitExceededException"]


def test_an_unlimited_quota_never_holds(fake_ses, relay_factory):
    fake_ses.set_send_quota(max_24_hour_send=-1, sent_last_24_hours=5000)
    relay = relay_factory(fake_ses.endpoint_url, ses={"quota_reserve": 0.5, "max_send_rate": "auto"},
                          delivery={"mode": "spool"})
    assert math.isnan(relay.metrics.registry.get_sample_value(REMAINING))
    assert send(relay.smtp_port, "bob@example.org")[0] == 250
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="an unlimited quota held the queue")
