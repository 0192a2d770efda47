"""End to end: smtplib -> relay -> moto's SESv2 over HTTP; what moto accepted is checked byte for byte."""

from __future__ import annotations

import smtplib

import pytest

from relay.ses import errors
from relay.smtp import replies
from testkit.messages import plain_message

MESSAGE = (
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Cc: carol@example.net\r\n"
    b"Bcc: dave@example.com,\r\n"
    b" erin@example.com\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <orig-1@example.com>\r\n"
    b"X-SES-MESSAGE-TAGS: campaign=welcome\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"..a line that starts with a dot\r\n"
    b"Bcc: this line is body text and stays\r\n"
)
EXPECTED = MESSAGE.replace(b"Bcc: dave@example.com,\r\n erin@example.com\r\n", b"").replace(
    b"X-SES-MESSAGE-TAGS: campaign=welcome\r\n", b"").replace(b"\r\n..a line", b"\r\n.a line")
RECIPIENTS = ["bob@example.org", "carol@example.net", "dave@example.com", "erin@example.com"]


def send(port: int, sender: str, recipients: list[str], data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        code, _ = client.mail(sender)
        assert code == 250
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            assert code == 250, reply
        return client.data(data)


def test_message_reaches_ses_byte_for_byte_with_all_envelope_recipients(moto, relay_factory):
    relay = relay_factory(moto.endpoint_url)
    # smtplib does the dot-stuffing itself, so pass the message as the client would have it.
    code, reply = send(relay.smtp_port, "bounces@example.com", RECIPIENTS, MESSAGE.replace(b"\r\n..a", b"\r\n.a"))
    assert code == 250, reply
    (stored,) = moto.raw_messages()
    assert reply.decode() == errors.SENT.format(message_id=stored["id"])[4:]
    assert stored["raw_data"].encode() == EXPECTED
    assert b"Bcc:" not in stored["raw_data"].encode().split(b"\r\n\r\n")[0]
    assert stored["raw_data"].startswith("From: Alice Example <alice@example.com>\r\n")
    for recipient in RECIPIENTS:
        assert recipient in stored["destinations"]
    assert relay.metric("ses_relay_messages_sent_total") == 1
    assert relay.metric("ses_relay_recipients_sent_total") == 4
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "2xx"}) == 1
    assert relay.metric("ses_relay_message_bytes_sent_total") == len(EXPECTED)


def test_null_sender_is_accepted_and_sent(moto, relay_factory):
    relay = relay_factory(moto.endpoint_url)
    code, reply = send(relay.smtp_port, "", ["bob@example.org"],
                       plain_message("MAILER-DAEMON@example.com", subject="bounce"))
    assert code == 250, reply
    assert len(moto.raw_messages()) == 1


def test_unverified_sender_is_bounced_with_ses_reason(moto, relay_factory):
    relay = relay_factory(moto.endpoint_url)
    code, reply = send(relay.smtp_port, "a@unverified.example", ["bob@example.org"],
                       plain_message("a@unverified.example"))
    assert code == 554
    assert reply.startswith(b"5.7.1 Amazon SES rejected the message: ")
    assert b"unverified.example" in reply
    assert moto.raw_messages() == []
    assert relay.metric("ses_relay_ses_errors_total", {"code": "MessageRejected"}) == 1
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "5xx"}) == 1


def test_suppressed_recipient_is_refused_at_rcpt_and_others_are_sent(moto, relay_factory):
    from relay.suppression.base import Reason, SuppressionEntry

    relay = relay_factory(moto.endpoint_url)
    relay.call(relay.store.put(SuppressionEntry("Gone@Example.org", Reason.BOUNCE)))
    relay.call(relay.store.put(SuppressionEntry("angry@example.org", Reason.COMPLAINT)))
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        assert client.rcpt("gone@example.ORG") == (550, replies.SUPPRESSED_BOUNCE.format(
            address="gone@example.ORG")[4:].encode())
        code, reply = client.rcpt("angry@example.org")
        assert (code, reply[:5]) == (550, b"5.7.1")
        assert client.rcpt("bob@example.org")[0] == 250
        code, _ = client.data(plain_message())
        assert code == 250
    (stored,) = moto.raw_messages()
    assert "gone@example.org" not in [d.lower() for d in stored["destinations"]]
    assert relay.metric("ses_relay_suppression_hits_total", {"reason": "BOUNCE", "action": "reject"}) == 1
    assert relay.metric("ses_relay_recipients_rejected_total", {"reason": "suppressed_complaint"}) == 1


def test_drop_policy_accepts_suppressed_recipient_but_never_sends_to_it(moto, relay_factory):
    from relay.suppression.base import Reason, SuppressionEntry

    relay = relay_factory(moto.endpoint_url, suppression={"on_suppressed": "drop"})
    relay.call(relay.store.put(SuppressionEntry("gone@example.org", Reason.BOUNCE)))
    code, reply = send(relay.smtp_port, "alice@example.com", ["gone@example.org"],
                       plain_message(to="gone@example.org"))
    assert (code, reply.decode()) == (250, replies.OK_ALL_DROPPED[4:])
    assert moto.raw_messages() == []
    code, _ = send(relay.smtp_port, "alice@example.com", ["gone@example.org", "bob@example.org"],
                   plain_message(to="gone@example.org, bob@example.org"))
    assert code == 250
    (stored,) = moto.raw_messages()
    # moto adds header addresses to destinations; the envelope it got is the first entries
    assert stored["destinations"][0] == "bob@example.org"
    assert "gone@example.org" not in stored["destinations"][:1]
    assert relay.metric("ses_relay_suppression_hits_total", {"reason": "BOUNCE", "action": "drop"}) == 2


@pytest.mark.parametrize("count", [50])
def test_recipient_limit_answers_452_past_the_limit(moto, relay_factory, count):
    relay = relay_factory(moto.endpoint_url)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        for index in range(count):
            assert client.rcpt(f"user{index}@example.org")[0] == 250
        code, reply = client.rcpt("one-too-many@example.org")
        assert (code, reply.decode()) == (452, errors_free(replies.TOO_MANY_RECIPIENTS))
        code, _ = client.data(plain_message(to="undisclosed-recipients:;"))
        assert code == 250
    (stored,) = moto.raw_messages()
    assert stored["destinations"][:count] == [f"user{index}@example.org" for index in range(count)]
    assert "one-too-many@example.org" not in stored["destinations"]


def errors_free(reply: str) -> str:
    """Reply line without its 3-digit code, as smtplib returns it."""
    return reply[4:]


def test_no_credentials_answers_451_and_readyz_says_not_ready(moto, relay_factory, monkeypatch):
    import json
    import urllib.error
    import urllib.request

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    relay = relay_factory(moto.endpoint_url)
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(relay.http_url + "/readyz", timeout=10)
    assert failure.value.code == 503
    body = json.load(failure.value)
    failure.value.close()
    assert body["checks"]["sender"] == {"ok": False, "detail": "no AWS credentials"}
    code, reply = send(relay.smtp_port, "alice@example.com", ["bob@example.org"],
                       plain_message())
    assert (code, reply.decode()) == (451, errors.NO_CREDENTIALS[4:])
    assert moto.raw_messages() == []


def test_store_size_gauge_counts_existing_entries(moto, relay_config, tmp_path):
    import asyncio
    import time

    from relay.suppression.base import Reason, SuppressionEntry
    from relay.suppression.sqlite import SqliteStore
    from testkit.relay_thread import start_relay

    config = relay_config(moto.endpoint_url)

    async def fill():
        store = SqliteStore(config.suppression_path)
        await store.open()
        await store.put_many(SuppressionEntry(f"u{i}@example.org", Reason.BOUNCE) for i in range(7))
        await store.close()

    asyncio.run(fill())
    relay = start_relay(config)
    try:
        deadline = time.monotonic() + 10
        while relay.metric("ses_relay_suppression_entries") != 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert relay.metric("ses_relay_suppression_entries") == 7
    finally:
        relay.stop()
