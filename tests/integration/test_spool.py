"""delivery.mode spool and fallback against the fake SES: queueing, retries, chunks, restarts, limits."""

from __future__ import annotations

import smtplib
from collections import Counter

from relay.ses import errors
from relay.spool.senders import QUEUED, SPOOL_UNAVAILABLE
from relay.spool.store import QUEUED as QUEUED_STATE
from relay.suppression.base import Reason, SuppressionEntry
from testkit.fake_ses import Fault
from testkit.waiting import wait_until

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: spool\r\n\r\nHello.\r\n"
FAST_RETRY = {"retry_first": 0.2, "retry_max": 0.5}


def send(port: int, recipients: list[str], data: bytes = MESSAGE) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("test")
        assert client.mail("alice@example.com")[0] == 250
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, text = client.data(data)
    return code, text.decode()


def spool_counts(relay) -> dict[str, int]:
    return relay.call(relay.relay._spool.counts())


def delivered(fake) -> list[str]:
    """Every recipient of every SendEmail that SES accepted, in order."""
    return [address for request in fake.requests if request.outcome == "ok" for address in request.destinations]


def test_spool_mode_answers_queued_and_delivers_in_the_background(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool"})
    code, text = send(relay.smtp_port, ["bob@example.org"])
    assert code == 250
    queue_id = text.rsplit(" ", 1)[1]
    assert "250 " + text == QUEUED.format(queue_id=queue_id)
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="the spooled message was not sent")
    assert fake_ses.requests[0].raw_message == MESSAGE
    wait_until(lambda: sum(spool_counts(relay).values()) == 0, message="the spool still holds the message")
    assert relay.metric("ses_relay_deliveries_total", {"result": "sent"}) == 1


def test_fallback_with_ses_healthy_is_a_direct_send(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "fallback"})
    code, text = send(relay.smtp_port, ["bob@example.org"])
    assert (code, "250 " + text) == (250, errors.SENT.format(message_id=fake_ses.message_ids[-1]))
    assert sum(spool_counts(relay).values()) == 0


def test_fallback_spools_a_throttled_message_and_delivers_it_later(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "fallback", **FAST_RETRY})
    fake_ses.queue(Fault.error("TooManyRequestsException"))
    code, text = send(relay.smtp_port, ["bob@example.org"])
    assert code == 250 and "queued as" in text
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="not delivered after the 429")
    assert len(fake_ses.requests) == 2


def test_fallback_answers_a_permanent_refusal_at_once(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "fallback"})
    fake_ses.queue(Fault.error("MessageRejected", "Email address is not verified."))
    code, text = send(relay.smtp_port, ["bob@example.org"])
    assert code == 554 and "not verified" in text
    assert sum(spool_counts(relay).values()) == 0


def test_120_recipients_go_in_3_chunks_and_an_accepted_chunk_is_never_resent(fake_ses, relay_factory):
    relay = relay_factory(
        fake_ses.endpoint_url, smtp={"max_recipients": 120}, delivery={"mode": "fallback", **FAST_RETRY}
    )
    # Chunk 1 accepted, chunk 2 fails once; the retry must start at chunk 2.
    fake_ses.queue(Fault.delay(0), Fault.error("InternalFailure", status=500))
    recipients = [f"user{i:03d}@example.org" for i in range(120)]
    code, text = send(relay.smtp_port, recipients)
    assert code == 250 and "queued as" in text  # over 50 recipients: spooled whole, never sent in part
    wait_until(lambda: len(delivered(fake_ses)) == 120, timeout=20, message="not every chunk was sent")
    assert Counter(delivered(fake_ses)) == Counter(recipients)  # each exactly once
    ok = [request for request in fake_ses.requests if request.outcome == "ok"]
    assert [len(request.destinations) for request in ok] == [50, 50, 20]
    assert len(fake_ses.requests) == 4


def test_a_recipient_suppressed_while_queued_is_not_sent(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "retry_first": 1.5, "retry_max": 2})
    fake_ses.queue(Fault.error("InternalFailure", status=500))
    assert send(relay.smtp_port, ["bob@example.org", "carol@example.org"])[0] == 250
    wait_until(lambda: len(fake_ses.requests) == 1)
    relay.call(relay.store.put(SuppressionEntry("carol@example.org", Reason.BOUNCE, source="test")))
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="the retry did not skip carol")


def test_a_message_past_its_lifetime_becomes_a_dead_letter(fake_ses, relay_factory):
    relay = relay_factory(
        fake_ses.endpoint_url, delivery={"mode": "spool", "max_lifetime": 1.0, "retry_first": 0.3, "retry_max": 0.3}
    )
    fake_ses.queue(*[Fault.error("InternalFailure", status=500) for _ in range(50)])
    assert send(relay.smtp_port, ["bob@example.org"])[0] == 250
    wait_until(lambda: spool_counts(relay)["dead"] == 1, timeout=15, message="never became a dead letter")
    assert delivered(fake_ses) == []
    assert relay.metric("ses_relay_deliveries_total", {"result": "expired"}) == 1


def test_sending_paused_holds_the_queue_without_burning_attempts(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", **FAST_RETRY})
    fake_ses.queue(Fault.error("SendingPausedException"))
    assert send(relay.smtp_port, ["bob@example.org"])[0] == 250
    wait_until(lambda: relay.metric("ses_relay_deliveries_total", {"result": "paused"}) == 1)
    (entry,) = relay.call(relay.relay._spool.entries())
    assert entry.attempts == 0 and entry.next_attempt > entry.created + 60
    assert len(fake_ses.requests) == 1  # no retry storm while paused


def test_a_restart_picks_up_what_was_queued(fake_ses, relay_factory):
    first = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "retry_first": 60})
    fake_ses.queue(Fault.error("InternalFailure", status=500))
    assert send(first.smtp_port, ["bob@example.org"])[0] == 250
    wait_until(lambda: len(fake_ses.requests) == 1)
    first.stop()
    assert delivered(fake_ses) == []
    # The same state directory, so the same spool. The message waits for its retry (60 s); make it
    # due now, as `ses-relay queue retry` does.
    second = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "retry_first": 60})
    assert second.call(second.relay._spool.set_state(None, QUEUED_STATE, only=("deferred",))) == 1
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="not delivered after the restart")


def test_too_little_free_space_is_452_in_spool_mode_and_ses_s_4xx_in_fallback(fake_ses, relay_factory):
    spool = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "min_free_bytes": 10**18})
    code, text = send(spool.smtp_port, ["bob@example.org"])
    assert (code, "452 " + text) == (452, SPOOL_UNAVAILABLE)
    fallback = relay_factory(fake_ses.endpoint_url, delivery={"mode": "fallback", "min_free_bytes": 10**18})
    fake_ses.queue(Fault.error("TooManyRequestsException"))
    code, text = send(fallback.smtp_port, ["bob@example.org"])
    assert (code, "451 " + text) == (451, errors.THROTTLED)  # never 250 for what is neither sent nor on disk
    assert delivered(fake_ses) == []


def test_a_delivery_cut_off_at_shutdown_stays_queued_and_goes_out_after_the_restart(fake_ses, relay_factory):
    first = relay_factory(fake_ses.endpoint_url, smtp={"shutdown_grace": 1}, delivery={"mode": "spool"})
    fake_ses.queue(Fault.hang())
    assert send(first.smtp_port, ["bob@example.org"])[0] == 250
    wait_until(lambda: len(fake_ses.requests) == 1, message="the delivery did not start")
    first.stop()  # SES never answers: the send is cut off when the 1 s grace ends
    assert not first.thread.is_alive()
    second = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool"})
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="not sent after the restart")
    wait_until(lambda: sum(spool_counts(second).values()) == 0)


def _parse(raw: bytes):
    import email
    import email.policy

    return email.message_from_bytes(raw, policy=email.policy.default)


def test_a_permanent_failure_sends_a_dsn_to_the_envelope_sender(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "bounce_from": "bounces@example.com"})
    fake_ses.queue(Fault.error("MessageRejected", "Email address is not verified."))
    code, text = send(relay.smtp_port, ["bob@example.org"])
    queue_id = text.rsplit(" ", 1)[1]
    wait_until(lambda: delivered(fake_ses) == ["alice@example.com"], message="no DSN was sent")
    report = _parse(fake_ses.requests[-1].raw_message)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"] == "Mail Delivery System <bounces@example.com>"
    human, status, headers = report.iter_parts()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["X-Queue-ID"] == queue_id
    assert per_recipient["Final-Recipient"] == "rfc822; bob@example.org"
    assert (per_recipient["Action"], per_recipient["Status"]) == ("failed", "5.7.1")
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: spool" in headers.get_payload(decode=True) and b"Hello." not in fake_ses.requests[-1].raw_message
    assert relay.metric("ses_relay_dsns_queued_total") == 1
    wait_until(lambda: spool_counts(relay)["dead"] == 1 and spool_counts(relay)["queued"] == 0)


def test_no_dsn_for_the_null_sender_a_suppressed_sender_or_a_report(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "bounce_from": "bounces@example.com"})
    relay.call(relay.store.put(SuppressionEntry("suppressed@example.com", Reason.COMPLAINT, source="test")))
    cases = [
        ("", MESSAGE),
        ("suppressed@example.com", MESSAGE),
        ("alice@example.com", b"From: a@example.com\r\nContent-Type: multipart/report; report-type=delivery-status;"
                              b" boundary=x\r\n\r\n--x--\r\n"),
    ]
    for mail_from, data in cases:
        fake_ses.queue(Fault.error("MessageRejected", "Email address is not verified."))
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.ehlo("test")
            assert client.mail(mail_from)[0] == 250
            assert client.rcpt("bob@example.org")[0] == 250
            assert client.data(data)[0] == 250
    wait_until(lambda: spool_counts(relay)["dead"] == 3, message="not all three became dead letters")
    assert relay.metric("ses_relay_dsns_queued_total") == 0
    assert len(fake_ses.requests) == 3 and delivered(fake_ses) == []


def test_a_used_up_daily_quota_holds_the_queue_without_burning_attempts(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", **FAST_RETRY})
    fake_ses.queue(Fault.error("LimitExceededException", "Daily message quota exceeded."))
    assert send(relay.smtp_port, ["bob@example.org"])[0] == 250
    wait_until(lambda: relay.metric("ses_relay_deliveries_total", {"result": "quota"}) == 1)
    (entry,) = relay.call(relay.relay._spool.entries())
    assert entry.attempts == 0 and entry.next_attempt > entry.created + 60
    assert len(fake_ses.requests) == 1


def test_a_message_whose_body_is_gone_is_deferred_not_retried_every_second(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "retry_first": 60})
    fake_ses.queue(Fault.error("InternalFailure", status=500))
    big = MESSAGE + (b"x" * 76 + b"\r\n") * 4000  # over 256 KiB: the body is a file of its own
    code, text = send(relay.smtp_port, ["bob@example.org"], big)
    assert code == 250, text
    queue_id = text.rsplit(" ", 1)[1]
    wait_until(lambda: relay.metric("ses_relay_deliveries_total", {"result": "deferred"}) == 1)
    (relay.config.resolved_state_dir / "spool" / "bodies" / queue_id).unlink()
    relay.call(relay.relay._spool.set_state([queue_id], QUEUED_STATE, only=("deferred",)))
    wait_until(lambda: relay.metric("ses_relay_deliveries_total", {"result": "error"}) >= 1, timeout=15)
    (entry,) = relay.call(relay.relay._spool.entries())
    assert entry.state == "deferred" and "internal error" in entry.last_error
    assert entry.next_attempt > entry.created + 30  # backed off, not hammered every poll


def test_an_ses_outage_queues_everything_and_recovery_delivers_it_all(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "fallback", **FAST_RETRY})
    fake_ses.queue(*[Fault.error("ServiceUnavailable", status=503) for _ in range(12)])
    recipients = [f"user{i}@example.org" for i in range(8)]
    for recipient in recipients:
        code, text = send(relay.smtp_port, [recipient])
        assert code == 250, text
    wait_until(lambda: sorted(delivered(fake_ses)) == recipients, timeout=30, message="not all delivered")
    assert Counter(delivered(fake_ses)) == Counter(recipients)
    wait_until(lambda: sum(spool_counts(relay).values()) == 0)


def test_a_spool_that_cannot_write_answers_452_and_keeps_nothing(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool"})
    bodies = relay.config.resolved_state_dir / "spool" / "bodies"
    bodies.rmdir()
    bodies.write_text("not a directory")  # writing a body file now fails, as on a broken disk
    big = MESSAGE + (b"x" * 76 + b"\r\n") * 4000
    code, text = send(relay.smtp_port, ["bob@example.org"], big)
    assert (code, "452 " + text) == (452, SPOOL_UNAVAILABLE)
    assert sum(spool_counts(relay).values()) == 0
    assert send(relay.smtp_port, ["bob@example.org"])[0] == 250  # a small message is inline: still fine


def test_a_throttled_delivery_is_retried_in_a_moment_not_after_the_outage_backoff(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "retry_first": 600})
    fake_ses.queue(Fault.error("TooManyRequestsException"))
    assert send(relay.smtp_port, ["bob@example.org"])[0] == 250
    wait_until(lambda: delivered(fake_ses) == ["bob@example.org"], message="a 429 waited for the 600 s backoff")
    assert relay.metric("ses_relay_deliveries_total", {"result": "throttled"}) == 1


def test_a_message_held_during_its_delivery_sends_no_further_chunk(fake_ses, relay_factory):
    """`queue hold` on a message a worker is sending: the SES call under way finishes (Postfix's active
    queue does the same), no further chunk goes, and `queue release` sends the rest, none twice."""
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_recipients": 120}, delivery={"mode": "spool"})
    fake_ses.queue(Fault.delay(1.0))  # the first chunk's call takes a second: time to hold the message
    recipients = [f"user{i:03d}@example.org" for i in range(120)]
    code, text = send(relay.smtp_port, recipients)
    queue_id = text.rsplit(" ", 1)[1]
    wait_until(lambda: len(fake_ses.requests) == 1, message="the first chunk was not sent")
    spool = relay.relay._spool
    assert relay.call(spool.move([queue_id], "held", only=("queued", "deferred"))) == [queue_id]
    wait_until(lambda: relay.metric("ses_relay_deliveries_total", {"result": "sent"}) == 1)
    wait_until(lambda: relay.call(spool.get(queue_id))[0].chunks[0].ses_message_id is not None)
    assert len(fake_ses.requests) == 1 and len(delivered(fake_ses)) == 50
    entry, _ = relay.call(spool.get(queue_id))
    assert entry.state == "held"
    assert relay.call(spool.move([queue_id], "queued", only=("held",))) == [queue_id]  # queue release
    wait_until(lambda: len(delivered(fake_ses)) == 120, message="the rest was not sent after the release")
    assert Counter(delivered(fake_ses)) == Counter(recipients)
    wait_until(lambda: sum(spool_counts(relay).values()) == 0)


def test_mail_waiting_in_the_spool_is_not_overtaken_by_new_mail(fake_ses, relay_factory):
    """New mail is handed to the workers in memory only while nothing older waits in the spool: with
    one slow worker and more mail than the hand-off holds (4 per worker), SES sees the mail in order,
    also for a message that arrives once the hand-off has room again."""
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", "concurrency": 1})
    fake_ses.latency = 0.3
    subjects = [f"order {n:02d}" for n in range(10)]

    def send_one(client: smtplib.SMTP, subject: str) -> None:
        data = MESSAGE.replace(b"Subject: spool", b"Subject: " + subject.encode())
        assert client.sendmail("alice@example.com", ["bob@example.org"], data) == {}

    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        for subject in subjects[:8]:  # one sent, four handed over, three left in the spool
            send_one(client, subject)
        wait_until(lambda: len(fake_ses.requests) >= 2, message="the worker did not start")
        for subject in subjects[8:]:  # the hand-off has room now, but older mail waits in the spool
            send_one(client, subject)
    wait_until(lambda: len(delivered(fake_ses)) == len(subjects), timeout=20, message="not all delivered")
    sent = [r.raw_message.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for r in fake_ses.requests]
    assert sent == subjects
