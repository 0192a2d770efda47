"""The SES client's pure parts: the SendEmail body, the error table, the time limits, its SigV4, and the
24-hour quota estimate (the last against the fake SES's GetAccount).

The rate limiter's tests are in test_rate.py."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import math
import re
import smtplib
from collections.abc import Callable

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from relay.metrics import RelayMetrics
from relay.sending import ListManagement, OutgoingMessage, PermanentSendError, TransientSendError
from relay.ses import client as ses_client
from relay.ses import errors
from relay.ses.client import (
    SEND_EMAIL_PATH,
    SendQuota,
    SesSender,
    _CallPhases,
    _Request,
    _SigV4,
    _stream,
    build_request_body,
    request_body,
    upload_time_limit,
)
from testkit.fake_ses import ACCOUNT_PATH, Fault
from testkit.sigv4 import botocore_signature, botocore_signed_headers, parse_authorization

RAW = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"\r\n"
    b"binary-ish \x00\xff\xfe body\r\n"
)


def message(**fields) -> OutgoingMessage:
    fields.setdefault("raw", RAW)
    fields.setdefault("recipients", ["bob@example.org", "carol@example.net"])
    fields.setdefault("mail_from", "bounces@example.com")
    return OutgoingMessage(**fields)


def body_of(msg: OutgoingMessage, configuration_set: str | None = None,
            tags: dict[str, str] | None = None) -> dict:
    raw = build_request_body(msg, configuration_set, tags or {})
    assert isinstance(raw, bytes)
    raw.decode("ascii")  # the whole body is ASCII
    parsed = json.loads(raw)
    assert isinstance(parsed, dict)
    return parsed


# -- build_request_body -------------------------------------------------------------------------


def test_body_is_json_with_exact_base64_raw_and_envelope_recipients():
    body = body_of(message())
    assert base64.b64decode(body["Content"]["Raw"]["Data"], validate=True) == RAW
    assert body["Destination"] == {"ToAddresses": ["bob@example.org", "carol@example.net"]}
    assert set(body) == {"Content", "Destination"}
    assert body["Content"] == {"Raw": {"Data": base64.b64encode(RAW).decode()}}


def test_body_never_has_from_email_address():
    body = body_of(message(mail_from="someone@example.com", from_identity_arn="arn:aws:ses:x:1:identity/a"),
                   "cs", {"a": "b"})
    assert "FromEmailAddress" not in body
    assert body["FromEmailAddressIdentityArn"] == "arn:aws:ses:x:1:identity/a"
    assert "someone@example.com" not in json.dumps(body)


def test_defaults_apply_when_the_message_sets_nothing():
    body = body_of(message(), "cs1", {"env": "test", "team": "ops"})
    assert body["ConfigurationSetName"] == "cs1"
    assert body["EmailTags"] == [{"Name": "env", "Value": "test"}, {"Name": "team", "Value": "ops"}]


def test_per_message_configuration_set_and_tags_override_and_merge():
    msg = message(configuration_set="cs2", tags={"env": "prod", "campaign": "welcome"})
    body = body_of(msg, "cs1", {"env": "test", "team": "ops"})
    assert body["ConfigurationSetName"] == "cs2"
    tags = {t["Name"]: t["Value"] for t in body["EmailTags"]}
    assert tags == {"env": "prod", "team": "ops", "campaign": "welcome"}
    assert len(body["EmailTags"]) == 3


def test_no_configuration_set_or_tags_keys_when_there_are_none():
    body = body_of(message(), None, {})
    assert "ConfigurationSetName" not in body
    assert "EmailTags" not in body


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (ListManagement("newsletter"), {"ContactListName": "newsletter"}),
        (ListManagement("newsletter", "weekly"), {"ContactListName": "newsletter", "TopicName": "weekly"}),
    ],
)
def test_list_management_options(options, expected):
    assert body_of(message(list_management=options))["ListManagementOptions"] == expected
    assert "ListManagementOptions" not in body_of(message())


def test_feedback_forwarding_identity_arn():
    body = body_of(message(feedback_identity_arn="arn:aws:ses:us-east-1:1:identity/example.com"))
    assert body["FeedbackForwardingEmailAddressIdentityArn"] == "arn:aws:ses:us-east-1:1:identity/example.com"


def test_large_binary_message_round_trips():
    raw = bytes(range(256)) * 4096
    body = body_of(message(raw=raw))
    assert base64.b64decode(body["Content"]["Raw"]["Data"]) == raw


# -- the error table ----------------------------------------------------------------------------

DETAIL = "Some text from SES."

# (HTTP status, SES error code) -> expected (class, reply line)
TRANSIENT_CODES = [
    (429, "TooManyRequestsException", errors.THROTTLED),
    (400, "ThrottlingException", errors.THROTTLED),
    (400, "Throttling", errors.THROTTLED),
    (400, "LimitExceededException", errors.THROTTLED),
    (429, "", errors.THROTTLED),
    (400, "SendingPausedException", errors.SENDING_PAUSED),
    (400, "AccountSendingPausedException", errors.SENDING_PAUSED),
    (400, "ConfigurationSetSendingPausedException", errors.SENDING_PAUSED),
    (500, "InternalFailure", errors.SES_UNAVAILABLE),
    (503, "ServiceUnavailable", errors.SES_UNAVAILABLE),
    (502, "", errors.SES_UNAVAILABLE),
    (504, "", errors.SES_UNAVAILABLE),
]
OPERATOR_CODES = [
    (403, "AccessDeniedException"),
    (403, "AccessDenied"),
    (403, "UnrecognizedClientException"),
    (403, "InvalidSignatureException"),
    (403, "SignatureDoesNotMatch"),
    (403, "ExpiredTokenException"),
    (403, "InvalidClientTokenId"),
    (403, "IncompleteSignature"),
    (403, "MissingAuthenticationToken"),
    (404, "NotFoundException"),
    (400, "ConfigurationSetDoesNotExistException"),
    (404, "UnknownOperationException"),
]
PERMANENT_CODES = [
    (400, "MessageRejected", errors.REJECTED),
    (400, "AccountSuspendedException", errors.ACCOUNT_SUSPENDED),
    (400, "MailFromDomainNotVerifiedException", errors.BAD_CONTENT),
    (400, "BadRequestException", errors.BAD_CONTENT),
    (400, "InvalidParameterValue", errors.BAD_CONTENT),
]


@pytest.mark.parametrize(("status", "code", "reply"), TRANSIENT_CODES)
def test_transient_codes_are_451(status, code, reply):
    error = errors.classify_http_error(status, code, DETAIL)
    assert isinstance(error, TransientSendError)
    assert error.reply == reply
    assert error.reply.startswith("451 4.")
    assert error.detail == DETAIL
    expected_code = code or (str(status) if status == 429 else f"http_{status}")
    assert error.code == expected_code


@pytest.mark.parametrize(("status", "code"), OPERATOR_CODES)
def test_operator_errors_are_451_4_3_5_naming_the_code(status, code):
    error = errors.classify_http_error(status, code, DETAIL)
    assert isinstance(error, TransientSendError)
    assert error.reply == errors.OPERATOR_ERROR.format(detail=code)
    assert error.reply.startswith(errors.OPERATOR_ERROR.split("{")[0])
    assert error.code == code
    assert errors.metric_code(error.code) == code


@pytest.mark.parametrize("status", [401, 403])
def test_auth_statuses_without_a_code_are_operator_errors(status):
    error = errors.classify_http_error(status, "", DETAIL)
    assert isinstance(error, TransientSendError)
    assert error.reply == errors.OPERATOR_ERROR.format(detail=str(status))


@pytest.mark.parametrize(("status", "code", "reply"), PERMANENT_CODES)
def test_permanent_codes_are_554_with_ses_text(status, code, reply):
    error = errors.classify_http_error(status, code, DETAIL)
    assert isinstance(error, PermanentSendError)
    assert error.reply == reply.format(detail=DETAIL)
    assert error.reply.startswith("554 5.")
    assert error.code == code
    assert errors.metric_code(code) == code


def test_unknown_4xx_is_kept_at_the_client_not_bounced():
    error = errors.classify_http_error(400, "BrandNewException", "something new")
    assert isinstance(error, TransientSendError)
    assert error.reply.startswith(errors.OPERATOR_ERROR.split("{")[0])
    assert error.reply == errors.OPERATOR_ERROR.format(detail="BrandNewException: something new")
    assert not error.reply.startswith("5")
    assert errors.metric_code(error.code) == "other"


def test_unknown_4xx_without_a_code_is_451_too():
    error = errors.classify_http_error(413, "", "Request Entity Too Large")
    assert isinstance(error, TransientSendError)
    assert error.reply.startswith("451 4.3.5 ")
    assert error.code == "http_413"
    assert errors.metric_code(error.code) == "http_4xx"


def test_unknown_5xx_is_ses_unavailable():
    error = errors.classify_http_error(500, "SomethingBroke", "boom")
    assert isinstance(error, TransientSendError)
    assert error.reply == errors.SES_UNAVAILABLE
    assert errors.metric_code(error.code) == "other"
    error = errors.classify_http_error(599, "", "")
    assert (error.reply, errors.metric_code(error.code)) == (errors.SES_UNAVAILABLE, "http_5xx")


def test_provider_text_is_one_clean_ascii_line_in_the_reply():
    error = errors.classify_http_error(400, "MessageRejected", "Address\r\n 250 ok\tcaf\u00e9 " + "x" * 400)
    first = error.reply.split("\n")[0]
    assert error.reply == first
    assert "\r" not in error.reply
    assert error.reply.isascii()
    assert error.reply.startswith(errors.REJECTED.format(detail="Address 250 ok caf? x"))
    assert len(error.reply) == len(errors.REJECTED.format(detail="")) + 300
    empty = errors.classify_http_error(400, "MessageRejected", "   ")
    assert empty.reply == errors.REJECTED.format(detail="no reason given")


def test_failures_without_an_http_answer():
    assert errors.not_sent("refused").reply == errors.SES_UNAVAILABLE
    assert errors.not_sent("refused").code == "connection_error"
    assert errors.outcome_unknown("reset").reply == errors.OUTCOME_UNKNOWN
    assert errors.outcome_unknown("reset").code == "timeout_after_send"
    assert errors.no_credentials("none").reply == errors.NO_CREDENTIALS
    assert errors.upload_timeout("slow").reply == errors.UPLOAD_TOO_SLOW
    assert errors.upload_timeout("slow").code == "upload_timeout"
    assert errors.rate_wait("busy").reply == errors.RATE_WAIT
    assert errors.rate_wait("busy").code == "rate_wait"
    for error in (errors.not_sent("x"), errors.outcome_unknown("x"), errors.no_credentials("x"),
                  errors.upload_timeout("x"), errors.rate_wait("x")):
        assert isinstance(error, TransientSendError)
        assert errors.metric_code(error.code) == error.code


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("TooManyRequestsException", "TooManyRequestsException"),
        ("429", "429"),
        ("InternalFailure", "InternalFailure"),
        ("ServiceUnavailable", "ServiceUnavailable"),
        ("connection_error", "connection_error"),
        ("http_502", "http_5xx"),
        ("http_404", "http_4xx"),
        ("http_", "other"),
        ("http_abc", "other"),
        ("bob@example.org", "other"),
        ("", "other"),
    ],
)
def test_metric_code_is_a_closed_set(code, label):
    assert errors.metric_code(code) == label


def test_every_reply_constant_has_matching_code_and_enhanced_code_classes():
    for name in ("THROTTLED", "SENDING_PAUSED", "SES_UNAVAILABLE", "OUTCOME_UNKNOWN", "OPERATOR_ERROR",
                 "NO_CREDENTIALS", "REJECTED", "BAD_CONTENT", "ACCOUNT_SUSPENDED", "UPLOAD_TOO_SLOW",
                 "RATE_WAIT"):
        line = getattr(errors, name)
        assert re.match(r"^([45])\d\d \1\.\d{1,3}\.\d{1,3} \S", line), name


# -- time limits: connect, upload, answer --------------------------------------------------------


def test_upload_limit_grows_with_the_body_from_the_connect_limit():
    small = len(request_body(message(), None, {}))
    assert upload_time_limit(small, 262144, 5.0) == pytest.approx(5.0, abs=0.01)
    # 40 MiB raw is 53 MB of base64: at 256 KiB/s the upload may take 213 s more than the floor,
    # where one fixed 35 s limit for the whole call needed 12 Mbit/s.
    big = len(request_body(message(raw=b"x" * (40 * 1024 * 1024)), None, {}))
    assert big > 4 * 40 * 1024 * 1024 // 3
    assert upload_time_limit(big, 262144, 5.0) == pytest.approx(5.0 + big / 262144)
    assert 215 < upload_time_limit(big, 262144, 5.0) < 220
    assert upload_time_limit(big, 2 * 262144, 5.0) == pytest.approx(5.0 + big / 524288)


async def _drain(chunks: list[bytes]) -> list[tuple[bytes, str, float]]:
    """Take `chunks` through _stream as aiohttp does; for each: the phase and the deadline left."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5.0) as deadline:
        phases = _CallPhases(deadline, upload_limit=100.0, answer_limit=1000.0)
        assert phases.phase == "connect"
        seen = []
        async for chunk in _stream(iter(chunks), phases):
            seen.append((chunk, phases.phase, deadline.when() - loop.time()))
        phases.end()
    return seen


def test_each_phase_moves_the_deadline_and_only_the_last_chunk_starts_the_answer():
    seen = asyncio.run(_drain([b"prefix", b"data", b"suffix"]))
    assert [(chunk, phase) for chunk, phase, _ in seen] == [
        (b"prefix", "upload"), (b"data", "upload"), (b"suffix", "answer")]
    assert [round(left, -1) for _, _, left in seen] == [100, 100, 1000]


def test_a_one_chunk_body_goes_straight_to_the_answer_phase():
    (seen,) = asyncio.run(_drain([b"whole body"]))
    assert seen[:2] == (b"whole body", "answer")
    assert round(seen[2], -1) == 1000


def test_phases_never_move_an_expired_or_ended_deadline():
    """aiohttp's writer is a task of its own and may take a chunk after the call timed out or ended;
    moving that deadline would raise RuntimeError in the writer."""

    async def scenario() -> list[str]:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01) as expired:
                late = _CallPhases(expired, upload_limit=100.0, answer_limit=1000.0)
                try:
                    await asyncio.sleep(1)
                finally:
                    late.uploading()  # the deadline is expiring
        late.answering()
        async with asyncio.timeout(5.0) as deadline:
            ended = _CallPhases(deadline, upload_limit=100.0, answer_limit=1000.0)
            await asyncio.sleep(0)
        ended.end()
        ended.uploading()
        return [late.phase, ended.phase]

    assert asyncio.run(scenario()) == ["answer", "upload"]


# -- SigV4: the relay's signer against stock botocore ----------------------------------------------


def stock_headers(url: str, body: bytes, headers: dict[str, str], credentials: Credentials) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(credentials, "ses", "eu-west-1").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("token", [None, "session-token/with+odd=chars"])
@pytest.mark.parametrize("payload_hash", [None, "ab" * 32])
def test_signer_matches_stock_botocore_across_days_and_keys(monkeypatch, token, payload_hash):
    """The signing key is cached per day and secret: a new day or a new secret must re-derive it."""
    url = "https://email.eu-west-1.amazonaws.com" + SEND_EMAIL_PATH
    signer_for: dict[str, _SigV4] = {}
    for day, secret in [(1, "s1"), (1, "s1"), (2, "s1"), (2, "s2"), (1, "s2")]:
        now = datetime.datetime(2026, 3, day, 23, 59, 59)
        monkeypatch.setattr("botocore.auth.get_current_datetime", lambda now=now: now)
        credentials = Credentials("AKIDEXAMPLE", secret, token).get_frozen_credentials()
        body = json.dumps({"day": day, "secret": secret}).encode()
        headers = {"Content-Type": "application/json", "Host": "email.eu-west-1.amazonaws.com"}
        if payload_hash:
            headers["X-Amz-Content-SHA256"] = payload_hash
        expected = stock_headers(url, body, dict(headers), credentials)
        signer = signer_for.setdefault(token or "", _SigV4(credentials, "ses", "eu-west-1"))
        signer.credentials = credentials
        signer.add_auth(_Request("POST", url, body, headers))
        assert headers == expected
        assert ("X-Amz-Security-Token" in headers) == (token is not None)


# -- SigV4: recompute the signature of a real relay request with botocore ------------------------


def test_relay_request_signature_verifies_with_botocore(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("bounces@example.com")
        client.rcpt("bob@example.org")
        code, reply = client.data(RAW.replace(b"\x00", b""))
    assert code == 250, reply
    assert reply.decode() == errors.SENT.format(message_id=fake_ses.message_ids[0])[4:]
    (recorded,) = fake_ses.requests
    authorization = recorded.headers["Authorization"]
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=testing/(\d{8})/us-east-1/ses/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        authorization,
    )
    assert match is not None, authorization
    assert_signed_as_botocore_would(recorded, fake_ses.endpoint_url)
    assert recorded.path == SEND_EMAIL_PATH
    assert json.loads(recorded.raw_body) == recorded.body


def assert_signed_as_botocore_would(recorded, endpoint_url):
    """Recompute the recorded request's SigV4 signature with stock botocore."""
    signed = parse_authorization(recorded.headers["Authorization"])
    assert recorded.headers["X-Amz-Date"].startswith(signed.date)
    assert botocore_signed_headers(recorded, endpoint_url) == signed.signed_headers
    assert {"host", "x-amz-date"} <= set(signed.signed_header_names)
    assert signed.signature == botocore_signature(recorded, endpoint_url)


def test_getaccount_request_signature_verifies_with_botocore(fake_ses, relay_factory):
    relay_factory(fake_ses.endpoint_url, ses={"max_send_rate": "auto"})
    (recorded,) = fake_ses.requests
    assert (recorded.method, recorded.path, recorded.outcome) == ("GET", "/v2/email/account", "ok")
    assert_signed_as_botocore_would(recorded, fake_ses.endpoint_url)


def test_large_message_is_streamed_with_a_signed_payload_hash(fake_ses, relay_factory):
    """Over 1 MiB the body is sent in chunks, never joined: what arrives must still be exact and signed."""
    import hashlib

    body_lines = b"".join(b"line %07d " % i + b"x" * 60 + b"\r\n" for i in range(40_000))  # ~2.9 MB
    message = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: big\r\n\r\n" + body_lines
    relay = relay_factory(fake_ses.endpoint_url)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as client:
        client.ehlo()
        client.mail("alice@example.com")
        client.rcpt("bob@example.org")
        code, reply = client.data(message)
    assert code == 250, reply
    (recorded,) = fake_ses.requests
    assert recorded.raw_message == message
    assert recorded.headers["X-Amz-Content-SHA256"] == hashlib.sha256(recorded.raw_body).hexdigest()
    assert int(recorded.headers["Content-Length"]) == len(recorded.raw_body)
    assert "Transfer-Encoding" not in recorded.headers
    signed = parse_authorization(recorded.headers["Authorization"])
    assert "x-amz-content-sha256" in signed.signed_header_names
    assert botocore_signature(recorded, fake_ses.endpoint_url) == signed.signature


def test_request_body_chunks_equal_the_joined_body():
    from relay.ses.client import RequestBody

    for size in (0, 1, 2, 3, RequestBody.CHUNK - 1, RequestBody.CHUNK, RequestBody.CHUNK + 1, 3 * RequestBody.CHUNK + 2):
        raw = bytes(range(256)) * (size // 256) + bytes(size % 256)
        body = RequestBody(raw, b'{"Destination":{"ToAddresses":["a@b.c"]}}')
        joined = body.to_bytes()
        assert b"".join(body.chunks()) == joined
        assert len(body) == len(joined)
        assert json.loads(joined)["Content"]["Raw"]["Data"] == base64.b64encode(raw).decode()


# -- the 24-hour quota --------------------------------------------------------------------------


def test_quota_estimate_adds_the_relays_own_sends_between_reads():
    quota = SendQuota()
    assert quota.remaining() is None  # never read: no known limit
    quota.update({"Max24HourSend": 100.0, "SentLast24Hours": 40.0, "MaxSendRate": 14.0}, quota.mark())
    assert quota.remaining() == 60
    quota.sending(10)
    assert quota.remaining() == 50  # counted from the start of the call, not from SES's answer
    quota.done(10, taken=True)
    quota.sending(5)
    quota.done(5, taken=False)  # SES surely did not take them: given back
    assert quota.remaining() == 50
    # Read while 3 are in flight: SES's 52 may not include them yet, so they stay counted on top.
    quota.sending(3)
    mark = quota.mark()
    quota.update({"Max24HourSend": 100.0, "SentLast24Hours": 52.0}, mark)
    assert quota.remaining() == 45
    quota.done(3, taken=True)
    quota.sending(2)  # after the read: on top of SES's number
    quota.done(2, taken=True)
    assert quota.remaining() == 43


@pytest.mark.parametrize("send_quota", [
    {"Max24HourSend": -1.0, "SentLast24Hours": 1e6},  # SES's "unlimited"
    {"SentLast24Hours": 10.0},
    {"Max24HourSend": "many", "SentLast24Hours": 0},
    {"Max24HourSend": None},
    {"Max24HourSend": float("nan")},
    None,
])
def test_an_unlimited_or_unreadable_quota_is_no_limit(send_quota):
    quota = SendQuota()
    quota.update({"Max24HourSend": 10.0, "SentLast24Hours": 0.0}, quota.mark())
    quota.update(send_quota, quota.mark())
    quota.sending(1000)
    assert quota.remaining() is None


def quota_sender(fake, metrics: RelayMetrics, reserve: float) -> SesSender:
    return SesSender(region="us-east-1", endpoint_url=fake.endpoint_url, configuration_set=None, tags={},
                     max_send_rate="auto", connect_timeout=2, request_timeout=5, max_connections=4,
                     metrics=metrics, quota_reserve=reserve)


def recipients(n: int) -> list[str]:
    return [f"user{i}@example.org" for i in range(n)]


async def eventually(predicate: Callable[[], object]) -> None:
    """wait_until for a test running on the event loop it waits for: polled, at most 10 s."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within 10 s: {predicate!r}")


def test_sender_holds_at_the_reserve_counting_what_it_sent(fake_ses):
    fake_ses.set_send_quota(max_24_hour_send=20, sent_last_24_hours=10)  # 10 left; reserve 10 % = 2
    metrics = RelayMetrics()

    async def scenario() -> None:
        sender = quota_sender(fake_ses, metrics, 0.1)
        await sender.start()  # max_send_rate: auto reads GetAccount before the first send
        try:
            assert sender.quota_remaining() == 10
            assert sender.quota_hold(8) is None  # 8 + 2 fit
            assert sender.quota_hold(9) is not None
            await sender.send(message(recipients=recipients(5)))
            fake_ses.queue(Fault.error("MessageRejected"))
            with pytest.raises(PermanentSendError):
                await sender.send(message(recipients=recipients(3)))
            assert sender.quota_remaining() == 5  # the refused 3 given back
            assert metrics.registry.get_sample_value("ses_relay_ses_quota_remaining") == 5
            assert sender.quota_hold(3) is None
            hold = sender.quota_hold(4)
            assert hold is not None
            assert 0 < hold <= ses_client.ACCOUNT_REFRESH_SECONDS + ses_client.QUOTA_READ_GRACE
        finally:
            await sender.close()

    asyncio.run(scenario())


def test_reserve_zero_never_holds_and_an_unlimited_quota_reads_as_nan(fake_ses):
    metrics = RelayMetrics()

    async def scenario() -> None:
        fake_ses.set_send_quota(max_24_hour_send=5, sent_last_24_hours=5)
        sender = quota_sender(fake_ses, metrics, 0.0)
        await sender.start()
        try:
            assert sender.quota_remaining() == 0 and sender.quota_hold(1) is None
        finally:
            await sender.close()
        fake_ses.set_send_quota(max_24_hour_send=-1)
        sender = quota_sender(fake_ses, metrics, 0.5)
        await sender.start()
        try:
            assert sender.quota_remaining() is None and sender.quota_hold(50) is None
            assert math.isnan(metrics.registry.get_sample_value("ses_relay_ses_quota_remaining"))
        finally:
            await sender.close()

    asyncio.run(scenario())


def test_an_unreadable_getaccount_keeps_the_last_quota_and_logs_once(fake_ses, monkeypatch, caplog):
    monkeypatch.setattr(ses_client, "ACCOUNT_REFRESH_SECONDS", 0.05)
    fake_ses.set_send_quota(max_24_hour_send=20, sent_last_24_hours=19)

    def account_reads(outcome: str) -> int:
        return sum(1 for r in fake_ses.requests if r.path == ACCOUNT_PATH and r.outcome == outcome)

    async def scenario() -> None:
        sender = quota_sender(fake_ses, RelayMetrics(), 0.01)
        await sender.start()
        try:
            assert sender.quota_remaining() == 1
            fake_ses.account_max_send_rate = None  # GetAccount: 403 from now on
            await eventually(lambda: account_reads("AccessDeniedException") >= 3)
            assert sender.quota_remaining() == 1 and sender.quota_hold(1) is not None
            await sender.send(message(recipients=recipients(1)))  # never blocked by the quota itself
            fake_ses.account_max_send_rate = 14.0
            fake_ses.set_send_quota(sent_last_24_hours=0)  # readable again, the day rolled on
            await eventually(lambda: sender.quota_remaining() == 20)
            assert sender.quota_hold(1) is None
        finally:
            await sender.close()

    with caplog.at_level(logging.WARNING, logger="relay.ses"):
        asyncio.run(scenario())
    unreadable = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "ses_account_unreadable"]
    assert len(unreadable) == 1
