"""Real SMTP clients -> relay -> fake SESv2: swaks, msmtp, PHPMailer, Postfix (as relayhost), smtp-source.

Each test starts a relay pointed at the fake SES, drives an unmodified client binary against it and
checks what SES would have received: every envelope recipient (To, Cc and Bcc) in Destination, no
Bcc: header left in the raw message, the From: header (display name included) untouched, and the
subject and body present. Failures check the client's own view of the relay's reply: a 550 makes it
bounce, a 451 makes it keep the mail and retry.

The Postfix tests run a private Postfix instance (its own config, queue and log in a temporary
directory; the system instance is neither used nor touched) whose relayhost is the relay.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.ses import errors
from relay.suppression.base import Reason, SuppressionEntry
from testkit.fake_ses import FakeSES, Fault, RecordedRequest
from testkit.postfix import RelayhostPostfix
from testkit.tools import require_private_postfix, require_tool
from testkit.waiting import wait_until

pytestmark = pytest.mark.client

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
PROCESS_TIMEOUT = 60  # seconds; every external process gets one
DELIVERY_TIMEOUT = 30  # seconds to wait for Postfix to relay a message

FROM_HEADER = b"From: Alice Example <alice@example.com>"


def run(args: list[str], *, input: bytes | None = None, timeout: float = PROCESS_TIMEOUT,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client; stdout and stderr are combined so failures show the whole SMTP dialogue."""
    result = subprocess.run(args, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=timeout, cwd=cwd, check=False)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode("utf-8", "replace"), "")


def header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def header_names(raw: bytes) -> list[bytes]:
    """Lowercased field names of the header block (continuation lines skipped)."""
    return [line.split(b":", 1)[0].strip().lower() for line in header_block(raw).split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t") and b":" in line]


def assert_delivered(request: RecordedRequest, recipients: list[str], *, from_header: bytes,
                     subject: str, body: str) -> None:
    """One successful SendEmail with exactly these envelope recipients and an intact message."""
    assert request.outcome == "ok", request.outcome
    assert sorted(a.lower() for a in request.destinations) == sorted(a.lower() for a in recipients)
    raw = request.raw_message
    assert raw is not None
    assert b"bcc" not in header_names(raw), header_block(raw)
    headers = header_block(raw)
    assert (b"\r\n" + from_header + b"\r\n") in (b"\r\n" + headers), headers
    assert f"Subject: {subject}".encode() in headers, headers
    assert body.encode() in raw[len(headers):]


def only_request(fake: FakeSES) -> RecordedRequest:
    requests = fake.requests
    assert len(requests) == 1, [r.outcome for r in requests]
    return requests[0]


def suppress(relay, address: str, reason: Reason = Reason.BOUNCE) -> None:
    relay.call(relay.store.put(SuppressionEntry(address, reason)))


# ---------------------------------------------------------------------------------------------- swaks


def swaks(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return run([require_tool("swaks"), "--server", f"127.0.0.1:{port}", "--helo", "swaks.test",
                "--timeout", "30", *extra])


def test_swaks_two_recipients(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    result = swaks(relay.smtp_port, "--from", "alice@example.com", "--to", "a@example.org,b@example.org",
                   "--header", "Subject: hello from swaks",
                   "--header", FROM_HEADER.decode(),
                   "--body", "swaks body text")
    assert result.returncode == 0, result.stdout
    assert_delivered(only_request(fake_ses), ["a@example.org", "b@example.org"],
                     from_header=FROM_HEADER, subject="hello from swaks", body="swaks body text")


def test_swaks_suppressed_recipient_gets_550_and_nothing_is_sent(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    suppress(relay, "gone@example.org")
    result = swaks(relay.smtp_port, "--from", "alice@example.com", "--to", "gone@example.org",
                   "--header", "Subject: to a bounced address", "--body", "x")
    assert result.returncode != 0, result.stdout
    assert "<** 550 5.1.1 <gone@example.org> is on the suppression list" in result.stdout
    assert fake_ses.requests == []


def test_swaks_data_file_with_bcc_header(fake_ses, relay_factory, tmp_path):
    relay = relay_factory(fake_ses.endpoint_url)
    message = tmp_path / "message.eml"
    message.write_bytes(
        FROM_HEADER + b"\r\n"
        b"To: Bob <bob@example.org>\r\n"
        b"Cc: carol@example.net\r\n"
        b"Bcc: dave@example.com\r\n"
        b"Subject: swaks data file\r\n"
        b"Message-ID: <swaks-data-1@example.com>\r\n"
        b"\r\n"
        b"body from a file\r\n"
        b"Bcc: body line, stays\r\n"
    )
    result = swaks(relay.smtp_port, "--from", "alice@example.com",
                   "--to", "bob@example.org,carol@example.net,dave@example.com", "--data", str(message))
    assert result.returncode == 0, result.stdout
    request = only_request(fake_ses)
    assert_delivered(request, ["bob@example.org", "carol@example.net", "dave@example.com"],
                     from_header=FROM_HEADER, subject="swaks data file", body="body from a file")
    assert b"dave@example.com" not in header_block(request.raw_message)
    # a Bcc: line in the body is body text and stays (swaks itself adds a CRLF before the final dot)
    assert b"\r\n\r\nbody from a file\r\nBcc: body line, stays\r\n" in request.raw_message


# ---------------------------------------------------------------------------------------------- msmtp

MSMTP_MESSAGE = (
    FROM_HEADER + b"\n"
    b"To: Bob <bob@example.org>\n"
    b"Cc: carol@example.net\n"
    b"Bcc: dave@example.com, erin@example.com\n"
    b"Subject: hello from msmtp\n"
    b"\n"
    b"msmtp body text\n"
)


def msmtp_config(tmp_path: Path, port: int, *extra: str) -> Path:
    config = tmp_path / "msmtprc"
    config.write_text("\n".join([
        "defaults",
        "auth off",
        "tls off",
        "timeout 30",
        "account default",
        "host 127.0.0.1",
        f"port {port}",
        "domain msmtp.test",
        "from alice@example.com",
        *extra,
    ]) + "\n")
    config.chmod(0o600)
    return config


@pytest.mark.parametrize("remove_bcc", ["on", "off"])
def test_msmtp_reads_recipients_from_headers(fake_ses, relay_factory, tmp_path, remove_bcc):
    """msmtp -t: To, Cc and Bcc all delivered; with remove_bcc_headers off the relay drops Bcc: itself."""
    relay = relay_factory(fake_ses.endpoint_url)
    config = msmtp_config(tmp_path, relay.smtp_port, f"remove_bcc_headers {remove_bcc}")
    result = run([require_tool("msmtp"), "-C", str(config), "-t"], input=MSMTP_MESSAGE)
    assert result.returncode == 0, result.stdout
    request = only_request(fake_ses)
    assert_delivered(request, ["bob@example.org", "carol@example.net", "dave@example.com", "erin@example.com"],
                     from_header=FROM_HEADER, subject="hello from msmtp", body="msmtp body text")
    assert b"erin@example.com" not in header_block(request.raw_message)


EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75


def test_msmtp_reports_throttling_451_and_fails(fake_ses, relay_factory, tmp_path):
    """msmtp shows the relay's 451 and fails the send.

    msmtp 1.8.23 (Debian 12) exits EX_UNAVAILABLE (69), not EX_TEMPFAIL (75), for a 451 after DATA:
    its smtp_end_mail() maps every non-250 end-of-data reply to SMTP_EUNAVAIL whatever the class.
    That is msmtp's choice, not the relay's: the Postfix test below shows a real MTA treating the
    same 451 as temporary. Both codes are accepted so a later msmtp that tells 4xx apart still passes.
    """
    relay = relay_factory(fake_ses.endpoint_url)
    fake_ses.queue(Fault.error("TooManyRequestsException"))
    config = msmtp_config(tmp_path, relay.smtp_port)
    result = run([require_tool("msmtp"), "-C", str(config), "-t"], input=MSMTP_MESSAGE)
    assert result.returncode in (EX_UNAVAILABLE, EX_TEMPFAIL), result.stdout
    assert f"server message: {errors.THROTTLED}" in result.stdout
    assert [r.outcome for r in fake_ses.requests] == ["TooManyRequestsException"]


# ------------------------------------------------------------------------------------------ PHPMailer


def phpmailer(port: int, *, to: str, cc: str = "", bcc: str = "", subject: str = "hello from PHPMailer",
              body: str = "PHPMailer body text") -> subprocess.CompletedProcess[str]:
    if not Path("/usr/share/php/libphp-phpmailer/autoload.php").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("libphp-phpmailer is not installed (CI must install it: see .ci/run)")
        pytest.skip("libphp-phpmailer is not installed")
    return run([require_tool("php"), str(CLIENTS / "phpmailer_send.php"), str(port), "alice@example.com",
                "Alice Example", to, cc, bcc, subject, body])


def test_phpmailer_to_cc_bcc(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    result = phpmailer(relay.smtp_port, to="bob@example.org", cc="carol@example.net", bcc="dave@example.com")
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("OK"), result.stdout
    request = only_request(fake_ses)
    assert_delivered(request, ["bob@example.org", "carol@example.net", "dave@example.com"],
                     from_header=FROM_HEADER, subject="hello from PHPMailer", body="PHPMailer body text")
    assert b"dave@example.com" not in header_block(request.raw_message)


def test_phpmailer_suppressed_recipient_fails_with_550(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    suppress(relay, "gone@example.org")
    result = phpmailer(relay.smtp_port, to="gone@example.org")
    assert result.returncode == 1, result.stdout
    assert "SERVER -> CLIENT: 550 5.1.1 <gone@example.org> is on the suppression list" in result.stdout
    assert "gone@example.org" in result.stdout.strip().splitlines()[-1]  # PHPMailer's ErrorInfo
    assert fake_ses.requests == []


# -------------------------------------------------------------------------------------------- Postfix

@pytest.fixture
def postfix(fake_ses, relay_factory) -> Iterator[RelayhostPostfix]:
    """A private Postfix whose relayhost is a relay sending to the fake SES."""
    require_private_postfix()
    relay = relay_factory(fake_ses.endpoint_url)
    instance = RelayhostPostfix(relay.smtp_port)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


POSTFIX_MESSAGE = (
    FROM_HEADER + b"\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Cc: carol@example.net\r\n"
    b"Subject: hello through Postfix\r\n"
    b"\r\n"
    b"Postfix body text\r\n"
)
POSTFIX_RECIPIENTS = ["bob@example.org", "carol@example.net", "hidden@example.com"]  # the last: envelope only


def wait_for_sent(fake: FakeSES, postfix: RelayhostPostfix, count: int = 1) -> list[RecordedRequest]:
    def sent() -> bool:
        return sum(r.outcome == "ok" for r in fake.requests) >= count

    try:
        wait_until(sent, DELIVERY_TIMEOUT, f"timed out waiting for {count} message(s) relayed by Postfix")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{postfix.log()}") from None
    return [r for r in fake.requests if r.outcome == "ok"]


def assert_postfix_delivered(requests: list[RecordedRequest], recipients: list[str]) -> None:
    """Postfix may split recipients over several deliveries: check the union, and each message."""
    delivered = [a.lower() for r in requests for a in r.destinations]
    assert sorted(delivered) == sorted(recipients)
    for request in requests:
        assert_delivered(request, request.destinations, from_header=FROM_HEADER,
                         subject="hello through Postfix", body="Postfix body text")


def test_postfix_relays_every_envelope_recipient(fake_ses, postfix):
    postfix.submit("alice@example.com", POSTFIX_RECIPIENTS, POSTFIX_MESSAGE)
    requests = wait_for_sent(fake_ses, postfix)
    assert_postfix_delivered(requests, POSTFIX_RECIPIENTS)
    assert all(b"hidden@example.com" not in header_block(r.raw_message) for r in requests)
    wait_until(lambda: "Mail queue is empty" in postfix.queue_listing(), DELIVERY_TIMEOUT, "timed out waiting for an empty Postfix queue")


def test_postfix_relays_null_sender(fake_ses, postfix):
    message = (b"From: Mail Delivery System <MAILER-DAEMON@example.com>\r\n"
               b"To: bob@example.org\r\n"
               b"Subject: Undelivered Mail Returned to Sender\r\n"
               b"\r\n"
               b"a bounce\r\n")
    postfix.submit("", ["bob@example.org"], message)
    (request,) = wait_for_sent(fake_ses, postfix)
    assert request.destinations == ["bob@example.org"]
    assert b"From: Mail Delivery System <MAILER-DAEMON@example.com>\r\n" in header_block(request.raw_message)
    # postlogd writes the log asynchronously, so the line may land a moment after the delivery
    wait_until(lambda: re.search(r"from=<>, .*\(queue active\)", postfix.log()), DELIVERY_TIMEOUT, "timed out waiting for qmgr's from=<> log line")


def test_postfix_defers_on_451_and_delivers_after_flush(fake_ses, postfix):
    fake_ses.queue(Fault.error("TooManyRequestsException"))
    postfix.submit("alice@example.com", POSTFIX_RECIPIENTS, POSTFIX_MESSAGE)

    def deferred() -> bool:
        return errors.THROTTLED in postfix.queue_listing()

    try:
        wait_until(deferred, DELIVERY_TIMEOUT, "timed out waiting for the message deferred in Postfix's queue")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{postfix.log()}") from None
    assert [r.outcome for r in fake_ses.requests] == ["TooManyRequestsException"]
    wait_until(lambda: "status=deferred" in postfix.log(), DELIVERY_TIMEOUT, "timed out waiting for Postfix to log status=deferred")
    assert "status=bounced" not in postfix.log()

    postfix.flush()
    requests = wait_for_sent(fake_ses, postfix)
    assert_postfix_delivered(requests, POSTFIX_RECIPIENTS)
    wait_until(lambda: "Mail queue is empty" in postfix.queue_listing(), DELIVERY_TIMEOUT, "timed out waiting for an empty Postfix queue")


# ---------------------------------------------------------------------------------------- smtp-source


def test_smtp_source_twenty_messages(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    result = run([require_tool("smtp-source"), "-c", "-m", "20", "-s", "4", "-l", "2048",
                  "-f", "sender@example.com", "-t", "rcpt@example.org", f"127.0.0.1:{relay.smtp_port}"])
    assert result.returncode == 0, result.stdout
    requests = fake_ses.requests
    assert len(requests) == 20, [r.outcome for r in requests]
    for request in requests:
        assert request.outcome == "ok"
        assert request.destinations == ["rcpt@example.org"]
        assert b"from" in header_names(request.raw_message)
