"""smtp.memory_budget: message bytes held in memory are bounded; past it DATA gets 452 4.3.1."""

from __future__ import annotations

import smtplib
import threading

from relay.smtp import replies
from relay.smtp.budget import STEP
from testkit.messages import grown, plain_message
from testkit.waiting import wait_until

MIB = 1024 * 1024
BUDGET = 2 * MIB + MIB // 4  # the smallest allowed for 1 MiB messages is 2.125 MiB


def _message(size: int, *, bcc: bool = False) -> bytes:
    headers = [b"Bcc: c@example.org"] if bcc else []
    return grown(plain_message("a@example.com", "b@example.org", "big", body=b"", headers=headers), size)


def _send(port: int, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("test")
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("b@example.org")[0] == 250
        return client.data(data)


def test_over_budget_is_452_then_mail_flows_and_the_budget_is_given_back(fake_ses, relay_factory):
    relay = relay_factory(
        fake_ses.endpoint_url, smtp={"max_message_size": MIB, "memory_budget": BUDGET}
    )
    fake_ses.latency = 1.5  # the first two messages stay in memory while "SES" answers
    message = _message(900_000)
    results: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(_send(relay.smtp_port, message))) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: relay.metric("ses_relay_message_memory_bytes") >= 2 * MIB - STEP)

    code, text = _send(relay.smtp_port, message)
    assert (code, text.decode()) == (452, replies.MEMORY_BUDGET_SPENT[4:])
    assert relay.metric("ses_relay_memory_budget_refusals_total") == 1

    for thread in threads:
        thread.join(30)
    assert [code for code, _ in results] == [250, 250]
    wait_until(lambda: relay.metric("ses_relay_message_memory_bytes") == 0)

    fake_ses.latency = 0.0
    assert _send(relay.smtp_port, message)[0] == 250
    assert len(fake_ses.message_ids) == 3
    wait_until(lambda: relay.metric("ses_relay_message_memory_bytes") == 0)


def test_a_message_of_the_maximum_size_with_a_bcc_header_fits_the_smallest_budget(fake_ses, relay_factory):
    """The copy made when Bcc is removed is counted, and the smallest budget allowed still takes it."""
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_message_size": MIB, "memory_budget": BUDGET})
    code, _ = _send(relay.smtp_port, _message(MIB - 4096, bcc=True))
    assert code == 250
    assert b"Bcc:" not in fake_ses.requests[-1].raw_message
    wait_until(lambda: relay.metric("ses_relay_message_memory_bytes") == 0)


def test_a_refused_message_is_read_to_its_end_and_the_session_goes_on(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_message_size": MIB, "memory_budget": BUDGET})
    fake_ses.latency = 1.5
    holders = [threading.Thread(target=_send, args=(relay.smtp_port, _message(900_000))) for _ in range(2)]
    for thread in holders:
        thread.start()
    wait_until(lambda: relay.metric("ses_relay_message_memory_bytes") >= 2 * MIB - STEP)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("test")
        client.mail("a@example.com")
        client.rcpt("b@example.org")
        assert client.data(_message(900_000))[0] == 452
        for thread in holders:
            thread.join(30)
        fake_ses.latency = 0.0
        client.mail("a@example.com")
        client.rcpt("b@example.org")
        assert client.data(_message(10_000))[0] == 250  # same connection, next transaction
