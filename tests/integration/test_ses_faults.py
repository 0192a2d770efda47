"""Every row of the SES error table, end to end: smtplib -> relay -> the fake SES with a scripted fault.

Each fault must give the exact SMTP reply (code + enhanced code), the right metrics, and leave the
relay able to send the next message over the same pool (a fault never poisons a pooled connection).
"""

from __future__ import annotations

import base64
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from relay.ses import errors
from relay.ses.rate import RateLimiter
from testkit.fake_ses import SEND_EMAIL_PATH, FakeSES, Fault
from testkit.messages import grown
from testkit.net import free_port
from testkit.waiting import wait_until

SENDER = "bounces@example.com"
RECIPIENTS = ["bob@example.org", "carol@example.net"]
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: fault test\r\n"
    b"Message-ID: <fault-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


def send(port: int, data: bytes = MESSAGE, recipients: list[str] | None = None,
         sender: str = SENDER) -> tuple[int, bytes]:
    """One transaction over a fresh SMTP session; returns the DATA reply (code, text without code)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        code, reply = client.mail(sender)
        assert code == 250, reply
        for recipient in recipients or RECIPIENTS:
            code, reply = client.rcpt(recipient)
            assert code == 250, reply
        return client.data(data)


def text(reply_line: str) -> str:
    """A reply constant as smtplib returns it: without the 3-digit code and its space."""
    return reply_line[4:]


@dataclass(frozen=True)
class Row:
    fault: Fault
    code: int
    reply: str  # the full expected reply line
    metric_code: str  # ses_relay_ses_errors_total{code=...}


def _rejected(constant: str, code: str) -> str:
    return constant.format(detail=Fault.error(code).message)


TABLE = {
    "throttled-429": Row(Fault.error("TooManyRequestsException"), 451, errors.THROTTLED,
                         "TooManyRequestsException"),
    "daily-quota": Row(Fault.error("LimitExceededException"), 451, errors.THROTTLED, "LimitExceededException"),
    "sending-paused": Row(Fault.error("SendingPausedException"), 451, errors.SENDING_PAUSED,
                          "SendingPausedException"),
    "internal-failure-500": Row(Fault.error("InternalFailure"), 451, errors.SES_UNAVAILABLE, "InternalFailure"),
    "service-unavailable-503": Row(Fault.error("ServiceUnavailable"), 451, errors.SES_UNAVAILABLE,
                                   "ServiceUnavailable"),
    "bad-gateway-html-502": Row(Fault.http_status(502), 451, errors.SES_UNAVAILABLE, "http_5xx"),
    "reset-after-send": Row(Fault.reset(), 451, errors.OUTCOME_UNKNOWN, "timeout_after_send"),
    "access-denied": Row(Fault.error("AccessDeniedException"), 451,
                         errors.OPERATOR_ERROR.format(detail="AccessDeniedException"), "AccessDeniedException"),
    "unrecognized-client": Row(Fault.error("UnrecognizedClientException"), 451,
                               errors.OPERATOR_ERROR.format(detail="UnrecognizedClientException"),
                               "UnrecognizedClientException"),
    "configuration-set-not-found": Row(Fault.error("NotFoundException"), 451,
                                       errors.OPERATOR_ERROR.format(detail="NotFoundException"),
                                       "NotFoundException"),
    "message-rejected": Row(Fault.error("MessageRejected"), 554,
                            _rejected(errors.REJECTED, "MessageRejected"), "MessageRejected"),
    "mail-from-not-verified": Row(Fault.error("MailFromDomainNotVerifiedException"), 554,
                                  _rejected(errors.BAD_CONTENT, "MailFromDomainNotVerifiedException"),
                                  "MailFromDomainNotVerifiedException"),
    "account-suspended": Row(Fault.error("AccountSuspendedException"), 554,
                             _rejected(errors.ACCOUNT_SUSPENDED, "AccountSuspendedException"),
                             "AccountSuspendedException"),
}


def assert_recovers(relay, fake: FakeSES, sent_before: int) -> None:
    """The next message on the same relay is sent and answered with the fake's MessageId."""
    code, reply = send(relay.smtp_port)
    assert code == 250, reply
    ids = fake.message_ids
    assert len(ids) == sent_before + 1
    assert reply.decode() == text(errors.SENT.format(message_id=ids[-1]))
    assert fake.requests[-1].raw_message == MESSAGE
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "2xx"}) == 1


@pytest.mark.parametrize("row", TABLE.values(), ids=TABLE.keys())
def test_ses_fault_gives_exact_smtp_reply_and_relay_recovers(fake_ses, relay_factory, row: Row):
    relay = relay_factory(fake_ses.endpoint_url)
    fake_ses.queue(row.fault)

    code, reply = send(relay.smtp_port)

    assert row.reply[:3] == str(row.code)
    assert (code, reply.decode()) == (row.code, text(row.reply))
    # The request reached the fake, which answered with the fault: nothing was sent.
    (request,) = fake_ses.requests
    assert request.outcome == row.fault.outcome
    assert request.message_id is None
    assert fake_ses.message_ids == []
    assert fake_ses.sent == 0
    assert relay.metric("ses_relay_ses_errors_total", {"code": row.metric_code}) == 1
    result = f"{row.code // 100}xx"
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": result}) == 1
    assert relay.metric("ses_relay_messages_sent_total") == 0

    assert_recovers(relay, fake_ses, sent_before=0)


def test_message_rejected_reply_carries_ses_text(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    fake_ses.queue(Fault.error("MessageRejected", "Email address is not verified: bob@example.org"))
    code, reply = send(relay.smtp_port)
    assert (code, reply.decode()) == (
        554, text(errors.REJECTED.format(detail="Email address is not verified: bob@example.org")))
    assert fake_ses.message_ids == []


def test_connection_refused_is_not_sent_and_says_so(relay_factory):
    relay = relay_factory(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    code, reply = send(relay.smtp_port)
    assert (code, reply.decode()) == (451, text(errors.SES_UNAVAILABLE))
    assert relay.metric("ses_relay_ses_errors_total", {"code": "connection_error"}) == 1
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "4xx"}) == 1
    # Still answering the next client the same way (no wedged state).
    code, reply = send(relay.smtp_port)
    assert (code, reply.decode()) == (451, text(errors.SES_UNAVAILABLE))
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "4xx"}) == 2


def test_hanging_ses_times_out_as_outcome_unknown_and_relay_recovers(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, ses={"request_timeout": 1, "connect_timeout": 1})
    fake_ses.queue(Fault.hang())
    code, reply = send(relay.smtp_port)
    assert (code, reply.decode()) == (451, text(errors.OUTCOME_UNKNOWN))
    (request,) = fake_ses.requests
    assert request.outcome == "hang"
    assert fake_ses.message_ids == []
    assert relay.metric("ses_relay_ses_errors_total", {"code": "timeout_after_send"}) == 1
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "4xx"}) == 1
    assert_recovers(relay, fake_ses, sent_before=0)


def test_faults_on_a_warm_keepalive_pool_then_success(fake_ses, relay_factory):
    """A send warms the keep-alive pool; faults (resets included) hit pooled connections; then a send."""
    relay = relay_factory(fake_ses.endpoint_url)
    code, _ = send(relay.smtp_port)
    assert code == 250
    faults = [Fault.reset(), Fault.error("InternalFailure"), Fault.http_status(502), Fault.reset(),
              Fault.error("TooManyRequestsException")]
    fake_ses.queue(*faults)
    for fault in faults:
        code, _ = send(relay.smtp_port)
        assert code == 451, fault
    assert [r.outcome for r in fake_ses.requests] == ["ok"] + [f.outcome for f in faults]
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "4xx"}) == len(faults)
    code, reply = send(relay.smtp_port)
    assert code == 250, reply
    assert len(fake_ses.message_ids) == 2
    assert reply.decode() == text(errors.SENT.format(message_id=fake_ses.message_ids[-1]))
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "2xx"}) == 2


# -- what the fake received ---------------------------------------------------------------------


def test_request_is_signed_sesv2_raw_send_with_envelope_recipients(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    code, reply = send(relay.smtp_port)
    assert code == 250
    (request,) = fake_ses.requests
    assert reply.decode() == text(errors.SENT.format(message_id=request.message_id))
    assert request.method == "POST"
    assert request.path == SEND_EMAIL_PATH
    auth = request.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/us-east-1/ses/aws4_request" in auth
    body = request.body
    assert body is not None
    assert body["Destination"] == {"ToAddresses": RECIPIENTS}
    assert "FromEmailAddress" not in body
    assert "ConfigurationSetName" not in body
    assert "EmailTags" not in body
    assert base64.b64decode(body["Content"]["Raw"]["Data"]) == MESSAGE
    assert request.raw_message == MESSAGE


def test_configured_configuration_set_and_tags_are_sent(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, ses={"configuration_set": "cs1", "tags": {"env": "test"}})
    code, _ = send(relay.smtp_port)
    assert code == 250
    (request,) = fake_ses.requests
    assert request.body["ConfigurationSetName"] == "cs1"
    assert request.body["EmailTags"] == [{"Name": "env", "Value": "test"}]
    assert request.raw_message == MESSAGE


def test_message_headers_override_configuration_set_and_merge_tags(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, ses={"configuration_set": "cs1", "tags": {"env": "test"}})
    control = b"X-SES-CONFIGURATION-SET: cs2\r\nX-SES-MESSAGE-TAGS: campaign=welcome, team=growth\r\n"
    code, _ = send(relay.smtp_port, control + MESSAGE)
    assert code == 250
    (request,) = fake_ses.requests
    assert request.body["ConfigurationSetName"] == "cs2"
    tags = {t["Name"]: t["Value"] for t in request.body["EmailTags"]}
    assert tags == {"env": "test", "campaign": "welcome", "team": "growth"}
    assert len(request.body["EmailTags"]) == 3
    # The control headers are stripped; every other byte is as the client sent it.
    assert request.raw_message == MESSAGE
    assert b"X-SES-" not in request.raw_message


def test_message_tag_overrides_configured_tag_of_same_name(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, ses={"tags": {"env": "test"}})
    code, _ = send(relay.smtp_port, b"X-SES-MESSAGE-TAGS: env=prod\r\n" + MESSAGE)
    assert code == 250
    (request,) = fake_ses.requests
    assert request.body["EmailTags"] == [{"Name": "env", "Value": "prod"}]


# -- load and rate ------------------------------------------------------------------------------

CONCURRENT = 120


def test_more_than_100_sends_in_flight_at_once(relay_factory):
    with FakeSES(latency=0.5) as fake:
        relay = relay_factory(fake.endpoint_url, smtp={"max_connections": CONCURRENT + 10})
        at_data = threading.Barrier(CONCURRENT, timeout=60)
        peak = 0.0

        def one(index: int) -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as client:
                client.ehlo()
                assert client.mail(SENDER)[0] == 250
                assert client.rcpt(f"user{index}@example.org")[0] == 250
                at_data.wait()  # all sessions reach DATA together, so the sends overlap
                return client.data(MESSAGE)

        with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
            futures = [pool.submit(one, index) for index in range(CONCURRENT)]
            while not all(f.done() for f in futures):
                peak = max(peak, relay.metric("ses_relay_ses_requests_in_flight"))
                time.sleep(0.005)
            results = [f.result() for f in futures]

        assert [code for code, _ in results] == [250] * CONCURRENT
        assert len(fake.message_ids) == CONCURRENT
        assert sorted(r.destinations[0] for r in fake.requests) == sorted(
            f"user{index}@example.org" for index in range(CONCURRENT))
        assert {reply.decode() for _, reply in results} == {
            text(errors.SENT.format(message_id=m)) for m in fake.message_ids}
        assert peak >= 100, f"at most {peak} SendEmail calls were in flight at once"
        assert relay.metric("ses_relay_messages_sent_total") == CONCURRENT


def test_local_rate_limit_makes_sends_wait_instead_of_failing(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": 5})
    for _ in range(10):
        code, reply = send(relay.smtp_port)
        assert code == 250, reply
    assert len(fake_ses.message_ids) == 10
    assert all(r.outcome == "ok" for r in fake_ses.requests)
    assert relay.metric("ses_relay_rate_limiter_wait_seconds_count") > 0
    assert relay.metric("ses_relay_ses_errors_total", {"code": "TooManyRequestsException"}) == 0


def test_sends_whose_turn_is_past_max_rate_wait_are_refused_at_once_then_mail_flows(fake_ses, relay_factory):
    """1 msg/s and a 1.5 s bound: of five sends at once, the first goes, the second waits 1 s, the
    three due 2 s away are refused at once (451 4.4.5) without taking a turn, so the next send after
    the burst waits its one second and is sent."""
    relay = relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": 1, "max_rate_wait": 1.5})
    at_data = threading.Barrier(5, timeout=30)

    def one(index: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.ehlo()
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(f"user{index}@example.org")[0] == 250
            at_data.wait()  # the five sends reach the limiter together
            return client.data(MESSAGE)

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(one, range(5)))

    codes = sorted(code for code, _ in results)
    assert codes == [250, 250, 451, 451, 451]
    assert {reply.decode() for code, reply in results if code == 451} == {text(errors.RATE_WAIT)}
    assert relay.metric("ses_relay_rate_limiter_refusals_total") == 3
    assert len(fake_ses.requests) == 2  # a refused send never reaches SES
    assert relay.metric("ses_relay_ses_errors_total", {"code": "rate_wait"}) == 0  # not an SES error

    code, reply = send(relay.smtp_port)
    assert code == 250, reply
    assert len(fake_ses.message_ids) == 3
    assert relay.metric("ses_relay_rate_limiter_wait_seconds_count") == 2
    assert relay.metric("ses_relay_rate_limiter_refusals_total") == 3


def test_the_send_rate_counts_recipients_as_ses_does(fake_ses, relay_factory):
    """5 recipients/s and a 1.5 s bound, three 5-recipient messages at once: the first takes the
    whole one-second burst, the second waits a second, the third would wait two: refused at once.
    Counting one token per message, all three would have gone out at once."""
    relay = relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": 5, "max_rate_wait": 1.5})
    at_data = threading.Barrier(3, timeout=30)

    def five(index: int) -> int:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.ehlo()
            assert client.mail(SENDER)[0] == 250
            for i in range(5):
                assert client.rcpt(f"user{index}-{i}@example.org")[0] == 250
            at_data.wait()
            return client.data(MESSAGE)[0]

    with ThreadPoolExecutor(max_workers=3) as pool:
        codes = sorted(pool.map(five, range(3)))
    assert codes == [250, 250, 451]
    assert relay.metric("ses_relay_rate_limiter_wait_seconds_count") == 1
    assert relay.metric("ses_relay_rate_limiter_refusals_total") == 1


def test_a_429_lowers_the_local_send_rate(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": 10})
    assert relay.metric("ses_relay_send_rate_limit") == 10
    fake_ses.queue(Fault.error("TooManyRequestsException"))
    assert send(relay.smtp_port)[0] == 451
    assert relay.metric("ses_relay_send_rate_limit") == 10 * RateLimiter.DECREASE
    fake_ses.queue(Fault.error("LimitExceededException"))  # the daily quota: sending slower does not help
    assert send(relay.smtp_port)[0] == 451
    assert relay.metric("ses_relay_send_rate_limit") == 10 * RateLimiter.DECREASE


def test_send_rate_auto_follows_the_account_rate_as_it_changes(fake_ses, relay_factory, monkeypatch):
    from relay.ses import client as ses_client

    monkeypatch.setattr(ses_client, "ACCOUNT_REFRESH_SECONDS", 0.2)
    fake_ses.account_max_send_rate = 14.0
    relay = relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": "auto"})
    assert relay.metric("ses_relay_send_rate_limit") == 14
    fake_ses.account_max_send_rate = 3.0  # e.g. lowered after a review
    wait_until(lambda: relay.metric("ses_relay_send_rate_limit") == 3, message="the new account rate was not applied")


def test_send_rate_auto_applies_the_account_quota_from_getaccount(fake_ses, relay_factory):
    fake_ses.account_max_send_rate = 5.0
    relay = relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": "auto"})
    (account_call,) = [r for r in fake_ses.requests if r.method == "GET"]
    assert account_call.outcome == "ok"
    for _ in range(10):
        code, reply = send(relay.smtp_port)
        assert code == 250, reply
    assert len(fake_ses.message_ids) == 10
    assert relay.metric("ses_relay_rate_limiter_wait_seconds_count") > 0


def test_send_rate_auto_without_getaccount_permission_sends_unlimited(fake_ses, relay_factory):
    fake_ses.account_max_send_rate = None  # GetAccount: 403 AccessDeniedException
    relay = relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": "auto"})
    assert [r.outcome for r in fake_ses.requests if r.method == "GET"] == ["AccessDeniedException"]
    for _ in range(10):
        code, reply = send(relay.smtp_port)
        assert code == 250, reply
    assert relay.metric("ses_relay_rate_limiter_wait_seconds_count") == 0


def test_send_waiting_for_a_pool_slot_is_not_reported_as_ses_unavailable(relay_factory):
    with FakeSES(latency=1.2) as fake:
        relay = relay_factory(fake.endpoint_url,
                              ses={"max_connections": 2, "connect_timeout": 0.5, "request_timeout": 5})
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: send(relay.smtp_port), range(4)))
        assert relay.metric("ses_relay_ses_errors_total", {"code": "connection_error"}) == 0
        assert [code for code, _ in results] == [250] * 4
        assert len(fake.message_ids) == 4


def test_http_200_without_message_id_is_not_reported_as_sent(fake_ses, relay_factory):
    """A proxy page or wrong endpoint answering 200: we cannot know what happened, so no 250."""
    relay = relay_factory(fake_ses.endpoint_url)
    fake_ses.queue(Fault.http_status(200, body=b"<html>welcome</html>", content_type="text/html"))
    code, reply = send(relay.smtp_port)
    assert (code, reply.decode()) == (451, text(errors.OUTCOME_UNKNOWN))
    assert relay.metric("ses_relay_messages_sent_total") == 0
    assert relay.metric("ses_relay_ses_errors_total", {"code": "timeout_after_send"}) == 1
    assert_recovers(relay, fake_ses, sent_before=0)


# -- time limits: connect, upload (grows with the message), answer -------------------------------

# The fake reads a slow_read body at this rate. The message is big enough (about 20 MB of SendEmail
# body) that loopback's socket buffers (the relay's send buffer autotunes up to tcp_wmem's maximum,
# 4 MiB by default) hold only a part of it: the upload really is paced by the fake.
SLOW_UPLINK = 5_000_000  # bytes/s: the whole body takes about 4 s


@pytest.fixture(scope="module")
def big_message() -> bytes:
    """MESSAGE grown to 15 MiB (so it is streamed to SES, in 1 MiB chunks), in long lines: the SMTP
    side reads line by line."""
    line = b"0123456789" * 99 + b"\r\n"
    return grown(MESSAGE, len(MESSAGE) + 15 * 1024 * 1024, line)


def test_upload_slower_than_min_upload_rate_is_not_sent(relay_factory, big_message):
    """The upload limit expires while the body is still being written: SES never had the whole
    request, so the reply is 'not sent' (4.4.1) and the client may resend without duplicating."""
    with FakeSES() as fake:
        # Upload limit: 0.25 + 20 MB / 100 MB/s = 0.45 s, far less than the fake's 4 s.
        relay = relay_factory(fake.endpoint_url, ses={
            "connect_timeout": 0.25, "request_timeout": 2.5, "min_upload_rate": 100_000_000})
        fake.queue(Fault.slow_read(SLOW_UPLINK))
        code, reply = send(relay.smtp_port, big_message)
        assert (code, reply.decode()) == (451, text(errors.UPLOAD_TOO_SLOW))
        (request,) = fake.requests
        assert request.outcome == "incomplete"  # and stays so: the relay never handed over the rest
        assert fake.sent == 0
        assert relay.metric("ses_relay_ses_errors_total", {"code": "upload_timeout"}) == 1
        assert relay.metric("ses_relay_ses_errors_total", {"code": "timeout_after_send"}) == 0
        assert relay.metric("ses_relay_smtp_transactions_total", {"result": "4xx"}) == 1
        assert_recovers(relay, fake, sent_before=0)
    assert len(request.raw_body) < int(request.headers["Content-Length"])


def test_the_same_slow_upload_within_its_limit_is_sent(relay_factory, big_message):
    """The answer limit (2.5 s) and connect limit (0.25 s) together are shorter than the 4 s upload:
    one fixed limit for the whole call would cut it off. The upload limit, 0.25 + 20 MB / 2 MB/s,
    gives it time."""
    with FakeSES() as fake:
        relay = relay_factory(fake.endpoint_url, ses={
            "connect_timeout": 0.25, "request_timeout": 2.5, "min_upload_rate": 2_000_000})
        fake.queue(Fault.slow_read(SLOW_UPLINK))
        code, reply = send(relay.smtp_port, big_message)
        assert code == 250, reply
        (request,) = fake.requests
        assert request.outcome == "ok"
        assert reply.decode() == text(errors.SENT.format(message_id=request.message_id))
        assert request.raw_message == big_message
        assert relay.metric("ses_relay_messages_sent_total") == 1


def test_whole_body_then_no_answer_is_outcome_unknown(relay_factory, big_message):
    """The body is complete at the fake, which never answers: SES may have the message (4.4.2)."""
    with FakeSES() as fake:
        relay = relay_factory(fake.endpoint_url, ses={
            "connect_timeout": 0.25, "request_timeout": 1, "min_upload_rate": 2_000_000})
        fake.queue(Fault.hang())
        code, reply = send(relay.smtp_port, big_message)
        assert (code, reply.decode()) == (451, text(errors.OUTCOME_UNKNOWN))
        (request,) = fake.requests
        assert request.outcome == "hang"
        assert request.raw_message == big_message  # the whole request arrived
        assert relay.metric("ses_relay_ses_errors_total", {"code": "timeout_after_send"}) == 1
        assert relay.metric("ses_relay_ses_errors_total", {"code": "upload_timeout"}) == 0
        assert_recovers(relay, fake, sent_before=0)


def test_connection_reset_during_the_upload_is_not_sent(relay_factory, big_message):
    """SES (or a proxy) drops the connection after 1 MB of 20: it cannot act on the request."""
    with FakeSES() as fake:
        relay = relay_factory(fake.endpoint_url, ses={"min_upload_rate": 2_000_000})
        fake.queue(Fault.slow_read(SLOW_UPLINK, reset_after=1_000_000))
        code, reply = send(relay.smtp_port, big_message)
        assert (code, reply.decode()) == (451, text(errors.SES_UNAVAILABLE))
        (request,) = fake.requests
        assert request.outcome == "incomplete"
        assert fake.sent == 0
        assert relay.metric("ses_relay_ses_errors_total", {"code": "connection_error"}) == 1
        assert_recovers(relay, fake, sent_before=0)
