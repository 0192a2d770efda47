"""Tests for testkit/fake_ses.py, driven through a real, unmodified botocore sesv2 client."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import botocore.config
import botocore.exceptions
import pytest

from testkit.boto import sesv2_client
from testkit.fake_ses import ERROR_STATUS, SEND_EMAIL_PATH, FakeSES, Fault, read_accepted_log

REPO_ROOT = Path(__file__).resolve().parents[2]

RAW = (
    b"From: sender@example.com\r\n"
    b"To: rcpt@example.org\r\n"
    b"Subject: hello \xc3\xa9\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Body line\r\n\x00\xff binary-ish\r\n"
)


def send(client, raw: bytes = RAW, to: list[str] | None = None, **extra):
    return client.send_email(
        FromEmailAddress="sender@example.com",
        Destination={"ToAddresses": to if to is not None else ["rcpt@example.org"]},
        Content={"Raw": {"Data": raw}},
        **extra,
    )


@pytest.fixture
def fake() -> Iterator[FakeSES]:
    with FakeSES() as f:
        yield f


@pytest.fixture
def ses(fake: FakeSES):
    client = sesv2_client(fake)
    yield client
    client.close()


def raw_post(port: int, body: bytes, path: str = SEND_EMAIL_PATH, headers: dict[str, str] | None = None):
    """POST without botocore; returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/ses/aws4_request, x"}


# --------------------------------------------------------------------------- success path


def test_send_raw_message_records_everything(fake: FakeSES, ses) -> None:
    resp = send(
        ses,
        to=["a@example.org", "b@example.org"],
        ConfigurationSetName="relay",
        EmailTags=[{"Name": "source", "Value": "test"}],
    )

    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    message_id = resp["MessageId"]
    assert message_id.startswith("0100018f-") and message_id.endswith("-000000")
    assert fake.message_ids == [message_id]
    assert fake.sent == 1 and fake.received == 1

    [req] = fake.requests
    assert req.method == "POST"
    assert req.path == "/v2/email/outbound-emails"
    assert req.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/ses/aws4_request" in req.headers["Authorization"]
    assert req.raw_message == RAW
    assert req.body["Destination"] == {"ToAddresses": ["a@example.org", "b@example.org"]}
    assert req.destinations == ["a@example.org", "b@example.org"]
    assert req.body["ConfigurationSetName"] == "relay"
    assert req.body["EmailTags"] == [{"Name": "source", "Value": "test"}]
    assert req.outcome == "ok"
    assert req.message_id == message_id


def test_message_ids_are_unique(fake: FakeSES, ses) -> None:
    ids = [send(ses)["MessageId"] for _ in range(5)]
    assert len(set(ids)) == 5
    assert fake.message_ids == ids
    assert fake.sent == 5


def test_cc_and_bcc_count_as_destinations(fake: FakeSES, ses) -> None:
    ses.send_email(
        Destination={"CcAddresses": ["c@example.org"], "BccAddresses": ["d@example.org"]},
        Content={"Raw": {"Data": RAW}},
    )
    assert fake.requests[0].destinations == ["c@example.org", "d@example.org"]
    assert fake.requests[0].outcome == "ok"


# --------------------------------------------------------------------------- scripted errors


@pytest.mark.parametrize("code", sorted(c for c in ERROR_STATUS if c != "UnknownOperationException"))
def test_scripted_error_surfaces_in_botocore(fake: FakeSES, ses, code: str) -> None:
    fake.queue(Fault.error(code, f"scripted {code} text"))

    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        send(ses)

    err = excinfo.value.response
    assert err["Error"]["Code"] == code
    assert err["Error"]["Message"] == f"scripted {code} text"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == ERROR_STATUS[code]
    assert excinfo.value.operation_name == "SendEmail"
    assert fake.requests[0].outcome == code
    assert fake.sent == 0


def test_expected_status_table() -> None:
    assert ERROR_STATUS["TooManyRequestsException"] == 429
    assert ERROR_STATUS["NotFoundException"] == 404
    assert ERROR_STATUS["AccessDeniedException"] == 403
    assert ERROR_STATUS["InternalFailure"] == 500
    assert ERROR_STATUS["ServiceUnavailable"] == 503
    assert ERROR_STATUS["MessageRejected"] == 400


def test_modeled_error_maps_to_client_exception_class(fake: FakeSES, ses) -> None:
    fake.queue(Fault.error("MessageRejected", "Email address is not verified."))
    with pytest.raises(ses.exceptions.MessageRejected) as excinfo:
        send(ses)
    assert excinfo.value.response["Error"]["Message"] == "Email address is not verified."


def test_error_defaults_and_status_override(fake: FakeSES, ses) -> None:
    fake.queue(Fault.error("TooManyRequestsException"), Fault.error("SomethingNew", "x", status=418))
    with pytest.raises(botocore.exceptions.ClientError) as first:
        send(ses)
    with pytest.raises(botocore.exceptions.ClientError) as second:
        send(ses)
    assert first.value.response["Error"]["Message"] == "Maximum sending rate exceeded."
    assert first.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert second.value.response["Error"]["Code"] == "SomethingNew"
    assert second.value.response["ResponseMetadata"]["HTTPStatusCode"] == 418


def test_faults_are_consumed_in_order_then_success(fake: FakeSES, ses) -> None:
    fake.queue(Fault.error("InternalFailure"), Fault.error("ServiceUnavailable"))
    assert fake.pending_faults == 2
    codes = []
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            send(ses)
        codes.append(excinfo.value.response["Error"]["Code"])
    assert codes == ["InternalFailure", "ServiceUnavailable"]
    assert send(ses)["MessageId"]
    assert fake.pending_faults == 0
    assert [r.outcome for r in fake.requests] == ["InternalFailure", "ServiceUnavailable", "ok"]
    assert (fake.received, fake.sent) == (3, 1)


def test_raw_http_status_fault(fake: FakeSES, ses) -> None:
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    fake.queue(Fault.http_status(502, body=html))
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        send(ses)
    err = excinfo.value.response
    # No x-amzn-ErrorType and an HTML 5xx body: botocore's generic error parsing uses the status
    # code as Code and the HTTP reason phrase as Message.
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert err["Error"]["Code"] == "502"
    assert err["Error"]["Message"] == "Bad Gateway"
    assert fake.requests[0].outcome == "http_502"


# --------------------------------------------------------------------------- transport faults


def test_delay_then_success(fake: FakeSES, ses) -> None:
    fake.queue(Fault.delay(0.2))
    resp = send(ses)
    assert resp["MessageId"] == fake.message_ids[0]
    assert fake.requests[0].outcome == "ok"
    assert fake.sent == 1


def test_delayed_request_answers_after_a_later_one(fake: FakeSES) -> None:
    fake.queue(Fault.delay(1.0))
    order: list[str] = []
    slow_client, fast_client = sesv2_client(fake), sesv2_client(fake)
    try:
        slow = threading.Thread(target=lambda: (send(slow_client), order.append("slow")))
        slow.start()
        deadline = time.monotonic() + 5
        while fake.received < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        send(fast_client)
        order.append("fast")
        slow.join(10)
        assert order == ["fast", "slow"]
    finally:
        slow_client.close()
        fast_client.close()


def test_reset_raises_connection_closed(fake: FakeSES, ses) -> None:
    fake.queue(Fault.reset())
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        send(ses)
    assert fake.requests[0].outcome == "reset"
    assert fake.requests[0].raw_message == RAW  # the request was read in full first
    assert fake.sent == 0
    # The server keeps serving afterwards.
    assert send(ses)["MessageId"] == fake.message_ids[0]


def test_hang_raises_read_timeout(fake: FakeSES) -> None:
    fake.queue(Fault.hang())
    client = sesv2_client(fake, read_timeout=0.5, connect_timeout=2)
    try:
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            send(client)
        assert fake.requests[0].outcome == "hang"
        assert send(client)["MessageId"]
    finally:
        client.close()


def test_slow_read_reads_the_body_at_its_rate_then_answers(fake: FakeSES, ses) -> None:
    fake.queue(Fault.slow_read(20_000))
    raw = RAW * 20  # about 3 KB of base64: a few of the fake's reads
    assert send(ses, raw)["MessageId"] == fake.message_ids[0]
    [req] = fake.requests
    assert req.outcome == "ok"
    assert req.raw_message == raw
    assert len(req.raw_body) == int(req.headers["Content-Length"])
    assert fake.pending_faults == 0  # it was this request's one fault
    assert send(ses)["MessageId"] == fake.message_ids[1]


def test_slow_read_with_reset_after_leaves_an_incomplete_request(fake: FakeSES, ses) -> None:
    fake.queue(Fault.slow_read(50_000, reset_after=1_000))
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        send(ses, RAW * 50)
    [req] = fake.requests
    assert req.outcome == "incomplete"
    assert 1_000 <= len(req.raw_body) < int(req.headers["Content-Length"])
    assert fake.sent == 0
    assert send(ses)["MessageId"] == fake.message_ids[0]


def test_slow_read_waits_for_a_signed_send_email_request(fake: FakeSES) -> None:
    fake.queue(Fault.slow_read(1_000_000))
    assert raw_post(fake.port, b"{}", path="/v2/email/identities", headers=AUTH)[0] == 404
    assert raw_post(fake.port, b"{}")[0] == 403
    assert fake.pending_faults == 1
    with pytest.raises(ValueError):
        Fault.slow_read(0)


def test_stop_with_hung_request_in_flight() -> None:
    fake = FakeSES()
    fake.start()
    fake.queue(Fault.hang())
    client = sesv2_client(fake, read_timeout=30, connect_timeout=2)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            send(client)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while fake.received < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.received == 1
        started = time.monotonic()
        fake.stop()
        t.join(10)
        assert not t.is_alive()
        assert time.monotonic() - started < 10  # stop() did not wait for the read timeout
        assert len(errors) == 1
        assert isinstance(errors[0], botocore.exceptions.ConnectionClosedError)
    finally:
        fake.stop()
        client.close()


# --------------------------------------------------------------------------- rate limit, auth, validation


def test_max_rate_throttles() -> None:
    with FakeSES(max_rate=2) as fake:
        client = sesv2_client(fake)
        try:
            outcomes = []
            for _ in range(10):
                try:
                    send(client)
                    outcomes.append("ok")
                except botocore.exceptions.ClientError as exc:
                    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 429
                    assert exc.response["Error"]["Message"] == "Maximum sending rate exceeded."
                    outcomes.append(exc.response["Error"]["Code"])
        finally:
            client.close()
    assert outcomes[:2] == ["ok", "ok"]  # burst of max(1, max_rate)
    assert "TooManyRequestsException" in outcomes
    assert fake.sent == outcomes.count("ok")
    assert fake.received == 10


def test_missing_auth_is_unrecognized_client(fake: FakeSES) -> None:
    body = json.dumps(
        {"Destination": {"ToAddresses": ["x@example.org"]}, "Content": {"Raw": {"Data": "aGk="}}}
    ).encode()
    status, headers, data = raw_post(fake.port, body)
    assert status == 403
    assert headers["x-amzn-ErrorType"].split(":", 1)[0] == "UnrecognizedClientException"
    assert json.loads(data)["message"]
    assert fake.requests[0].outcome == "UnrecognizedClientException"

    status, _, _ = raw_post(fake.port, body, headers={"Authorization": "Bearer abc"})
    assert status == 403
    status, _, data = raw_post(fake.port, body, headers=AUTH)
    assert status == 200 and "MessageId" in json.loads(data)
    assert fake.sent == 1


def test_auth_not_required() -> None:
    with FakeSES(require_auth=False) as fake:
        body = json.dumps(
            {"Destination": {"ToAddresses": ["x@example.org"]}, "Content": {"Raw": {"Data": "aGk="}}}
        ).encode()
        status, headers, data = raw_post(fake.port, body)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(data)["MessageId"] == fake.message_ids[0]
    assert fake.requests[0].raw_message == b"hi"


def test_unknown_path(fake: FakeSES) -> None:
    status, headers, _ = raw_post(fake.port, b"{}", path="/v2/email/identities", headers=AUTH)
    assert status == 404
    assert headers["x-amzn-ErrorType"].startswith("UnknownOperationException:")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "json"),
        (b"[]", "JSON object"),
        (json.dumps({"Destination": {"ToAddresses": ["a@b.c"]}}).encode(), "Content.Raw.Data"),
        (
            json.dumps(
                {"Destination": {"ToAddresses": ["a@b.c"]}, "Content": {"Raw": {"Data": "@@@"}}}
            ).encode(),
            "base64",
        ),
        (json.dumps({"Destination": {}, "Content": {"Raw": {"Data": "aGk="}}}).encode(), "recipients"),
        (json.dumps({"Content": {"Raw": {"Data": "aGk="}}}).encode(), "recipients"),
        (
            json.dumps(
                {
                    "Destination": {"ToAddresses": [f"r{i}@example.org" for i in range(51)]},
                    "Content": {"Raw": {"Data": "aGk="}},
                }
            ).encode(),
            "Recipient count exceeds 50.",
        ),
    ],
)
def test_bad_requests(fake: FakeSES, body: bytes, fragment: str) -> None:
    status, headers, data = raw_post(fake.port, body, headers=AUTH)
    assert status == 400
    assert headers["x-amzn-ErrorType"].split(":", 1)[0] == "BadRequestException"
    assert fragment in json.loads(data)["message"]
    assert fake.requests[0].outcome == "BadRequestException"
    assert fake.sent == 0


def test_fifty_recipients_allowed_fifty_one_rejected_via_botocore(fake: FakeSES, ses) -> None:
    send(ses, to=[f"r{i}@example.org" for i in range(50)])
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        send(ses, to=[f"r{i}@example.org" for i in range(51)])
    assert excinfo.value.response["Error"]["Code"] == "BadRequestException"
    assert excinfo.value.response["Error"]["Message"] == "Recipient count exceeds 50."


def test_record_false_only_counts() -> None:
    with FakeSES(record=False) as fake:
        client = sesv2_client(fake)
        try:
            assert send(client)["MessageId"]
            fake.queue(Fault.error("SendingPausedException"))
            with pytest.raises(botocore.exceptions.ClientError):
                send(client)
        finally:
            client.close()
    assert (fake.received, fake.sent) == (2, 1)
    assert fake.requests == [] and fake.message_ids == []


def test_latency_success() -> None:
    with FakeSES(latency=0.05) as slow:
        client = sesv2_client(slow)
        try:
            assert send(client)["MessageId"] == slow.message_ids[0]
        finally:
            client.close()


# --------------------------------------------------------------------------- lifecycle and CLI


def test_start_stop_lifecycle() -> None:
    fake = FakeSES()
    with pytest.raises(RuntimeError):
        _ = fake.endpoint_url
    port = fake.start()
    assert fake.endpoint_url == f"http://127.0.0.1:{port}"
    with pytest.raises(RuntimeError):
        fake.start()
    fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(OSError):
        raw_post(port, b"{}")


def test_start_on_busy_port_raises() -> None:
    with FakeSES() as first:
        second = FakeSES()
        with pytest.raises(OSError):
            second.start(first.port)


def test_cli_serves_and_reports_counts() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "testkit.fake_ses", "--port", "0", "--latency", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        body = json.dumps({"Destination": {"ToAddresses": ["a@b.c"]}, "Content": {"Raw": {"Data": "aGk="}}})
        assert raw_post(port, body.encode(), headers=AUTH)[0] == 200
        assert raw_post(port, body.encode(), headers=AUTH)[0] == 200
        assert raw_post(port, body.encode())[0] == 403
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"received": 3, "sent": 2}


def test_accepted_log_has_one_line_per_accepted_send(tmp_path: Path) -> None:
    log = tmp_path / "accepted.jsonl"
    with FakeSES(record=False, accepted_log=log) as fake:
        client = sesv2_client(fake)
        try:
            one = b"Message-ID: <one@test>\r\nSubject: a\r\n\r\nbody\r\n"
            first = send(client, raw=one)["MessageId"]
            fake.queue(Fault.error("TooManyRequestsException"))
            with pytest.raises(botocore.exceptions.ClientError):
                send(client, raw=b"Message-ID: <refused@test>\r\n\r\nx\r\n")
            # Read while the fake still runs: the line is there as soon as the 200 is.
            assert read_accepted_log(log) == [
                {"ses_message_id": first, "message_id": "<one@test>",
                 "sha256": hashlib.sha256(one).hexdigest(), "destinations": ["rcpt@example.org"]}
            ]
            second = send(client, raw=RAW, to=["a@example.org", "b@example.org"])["MessageId"]
        finally:
            client.close()
    assert read_accepted_log(log)[1] == {
        "ses_message_id": second, "message_id": None, "sha256": hashlib.sha256(RAW).hexdigest(),
        "destinations": ["a@example.org", "b@example.org"],
    }


def test_cli_accepted_log(tmp_path: Path) -> None:
    log = tmp_path / "accepted.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "testkit.fake_ses", "--port", "0", "--accepted-log", str(log)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline()
        port = int(line.rsplit(":", 1)[1])
        data = "TWVzc2FnZS1JRDogPGNsaUB0ZXN0Pg0KDQp4DQo="  # "Message-ID: <cli@test>\r\n\r\nx\r\n"
        body = json.dumps({"Destination": {"ToAddresses": ["a@b.c"]}, "Content": {"Raw": {"Data": data}}})
        status, _, answer = raw_post(port, body.encode(), headers=AUTH)
        assert status == 200
        assert read_accepted_log(log) == [
            {"ses_message_id": json.loads(answer)["MessageId"], "message_id": "<cli@test>",
             "sha256": hashlib.sha256(b"Message-ID: <cli@test>\r\n\r\nx\r\n").hexdigest(),
             "destinations": ["a@b.c"]}
        ]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


# --------------------------------------------------------------------------- account and setup reads


def raw_get(port: int, path: str, headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_get_account_reports_the_account(fake: FakeSES, ses) -> None:
    fake.account["ProductionAccessEnabled"] = False
    fake.account_max_send_rate = 3.0
    account = ses.get_account()
    assert account["ProductionAccessEnabled"] is False
    assert account["SendingEnabled"] is True
    assert account["EnforcementStatus"] == "HEALTHY"
    assert account["SendQuota"] == {"Max24HourSend": 50000.0, "SentLast24Hours": 0.0, "MaxSendRate": 3.0}


def test_get_email_identity(fake: FakeSES, ses) -> None:
    fake.add_identity("Example.com", dkim="PENDING")
    fake.add_identity("ops@other.example", verified=False)
    domain = ses.get_email_identity(EmailIdentity="example.com")  # domains match case-insensitively
    assert domain["IdentityType"] == "DOMAIN"
    assert domain["VerifiedForSendingStatus"] is True
    assert domain["DkimAttributes"]["Status"] == "PENDING"
    address = ses.get_email_identity(EmailIdentity="ops@other.example")  # "@" is percent-encoded
    assert address["IdentityType"] == "EMAIL_ADDRESS"
    assert address["VerifiedForSendingStatus"] is False
    assert address["VerificationStatus"] == "PENDING"
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_email_identity(EmailIdentity="nobody.example")


def test_configuration_set_and_its_event_destinations(fake: FakeSES, ses) -> None:
    destination = {
        "Name": "to-sns",
        "Enabled": True,
        "MatchingEventTypes": ["BOUNCE", "COMPLAINT"],
        "SnsDestination": {"TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-feedback"},
    }
    fake.add_configuration_set("relay", sending_enabled=False, event_destinations=[destination])
    found = ses.get_configuration_set(ConfigurationSetName="relay")
    assert found["ConfigurationSetName"] == "relay"
    assert found["SendingOptions"] == {"SendingEnabled": False}
    listed = ses.get_configuration_set_event_destinations(ConfigurationSetName="relay")
    assert listed["EventDestinations"] == [destination]
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_configuration_set(ConfigurationSetName="other")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_configuration_set_event_destinations(ConfigurationSetName="other")


def test_setup_reads_need_auth_and_leave_queued_faults_alone(fake: FakeSES) -> None:
    fake.add_identity("example.com")
    fake.queue(Fault.error("InternalFailure"))
    status, headers, _ = raw_get(fake.port, "/v2/email/identities/example.com")
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("UnrecognizedClientException:")
    status, _, body = raw_get(fake.port, "/v2/email/identities/example.com", AUTH)
    assert status == 200
    assert json.loads(body)["VerifiedForSendingStatus"] is True
    status, _, _ = raw_get(fake.port, "/v2/email/configuration-sets/a/b/event-destinations", AUTH)
    assert status == 404  # not a route: UnknownOperationException
    assert fake.pending_faults == 1
