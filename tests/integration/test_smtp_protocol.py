"""Bad and odd SMTP input over real sockets: every refusal has the right code and the relay keeps serving."""

from __future__ import annotations

import logging
import os
import re
import smtplib
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import SES_MAX_MESSAGE_SIZE
from relay.ses import errors
from relay.smtp import replies
from testkit.waiting import wait_until

SENDER = "alice@example.com"
RECIPIENT = "bob@example.org"
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: protocol test\r\n"
    b"Message-ID: <proto-1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)
BODY_SECRET = "Body-Secret-7f3a9c"  # must never appear in a log record
REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$")


def text(reply_line: str) -> str:
    """A reply constant as smtplib returns it: without the 3-digit code and its space."""
    return reply_line[4:]


def smtp(port: int, host: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP(host, port, local_hostname="client.test", timeout=30)
    client.ehlo()
    return client


def transaction(client: smtplib.SMTP, data: bytes = MESSAGE) -> tuple[int, bytes]:
    code, reply = client.mail(SENDER)
    assert code == 250, reply
    code, reply = client.rcpt(RECIPIENT)
    assert code == 250, reply
    return client.data(data)


def assert_serves(port: int, fake, host: str = "127.0.0.1") -> None:
    """A fresh connection can still send a message end to end."""
    before = len(fake.message_ids)
    with smtp(port, host) as client:
        code, reply = transaction(client)
    assert code == 250, reply
    assert len(fake.message_ids) == before + 1
    assert reply.decode() == text(errors.SENT.format(message_id=fake.message_ids[-1]))


class Raw:
    """A raw SMTP client socket: sends exact bytes, reads whole (possibly multi-line) replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def reply(self) -> list[bytes]:
        """Lines of one reply; [] if the server closed the connection."""
        lines = []
        while True:
            line = self.line()
            if not line:
                return lines
            lines.append(line)
            match = REPLY_LINE.match(line)
            if match is None or match.group(2) == b" ":
                return lines

    def cmd(self, data: bytes) -> list[bytes]:
        self.sock.sendall(data + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- greeting and EHLO --------------------------------------------------------------------------


def test_greeting_and_ehlo_advertise_what_the_relay_supports(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with Raw(relay.smtp_port) as raw:
        greeting = raw.reply()
        assert len(greeting) == 1
        assert greeting[0].startswith(b"220 ")
        assert b"relay.test" in greeting[0]
        lines = raw.cmd(b"EHLO client.test")
    assert [line[:4] for line in lines] == [b"250-"] * (len(lines) - 1) + [b"250 "]
    ehlo = [line[4:].upper() for line in lines]
    assert f"SIZE {SES_MAX_MESSAGE_SIZE}".encode() in ehlo
    assert b"SIZE 41943040" in ehlo
    assert b"8BITMIME" in ehlo
    assert b"SMTPUTF8" not in ehlo


# -- size limits --------------------------------------------------------------------------------


def test_mail_from_size_above_limit_is_552_and_session_stays_usable(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with smtp(relay.smtp_port) as client:
        code, reply = client.mail(SENDER, [f"SIZE={SES_MAX_MESSAGE_SIZE + 1}"])
        assert (code, reply.decode()) == (552, text(replies.MESSAGE_TOO_BIG.format(limit=SES_MAX_MESSAGE_SIZE)))
        assert reply.startswith(b"5.3.4 ")
        code, reply = transaction(client)
        assert code == 250, reply
    assert len(fake_ses.message_ids) == 1


def test_data_above_max_message_size_is_552_nothing_sent_session_usable(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_message_size": 10000})
    big = MESSAGE + b"".join(b"y" * 78 + b"\r\n" for _ in range(200))
    assert len(big) > 10000
    with smtp(relay.smtp_port) as client:
        code, reply = transaction(client, big)
        assert (code, reply.decode()) == (552, text(replies.MESSAGE_TOO_BIG.format(limit=10000)))
        assert reply.startswith(b"5.3.4 ")
        assert fake_ses.requests == []
        code, reply = transaction(client)
        assert code == 250, reply
    assert len(fake_ses.message_ids) == 1
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "2xx"}) == 1


# -- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["no-at-sign", "a@nodot", "a@[127.0.0.1]", "a..b@example.com"])
def test_bad_recipient_is_553_5_1_3(fake_ses, relay_factory, address):
    relay = relay_factory(fake_ses.endpoint_url)
    with smtp(relay.smtp_port) as client:
        assert client.mail(SENDER)[0] == 250
        code, reply = client.rcpt(address)
        assert code == 553, reply
        assert reply.startswith(b"5.1.3 ")
        # The transaction goes on with the good recipient.
        assert client.rcpt(RECIPIENT)[0] == 250
        code, _ = client.data(MESSAGE)
        assert code == 250
    (request,) = fake_ses.requests
    assert request.destinations == [RECIPIENT]


@pytest.mark.parametrize("command", [b"MAIL FROM:<j\xc3\xa9@example.com>", b"RCPT TO:<j\xc3\xa9@example.com>"])
def test_non_ascii_address_is_553_5_6_7(fake_ses, relay_factory, command):
    relay = relay_factory(fake_ses.endpoint_url)
    with Raw(relay.smtp_port) as raw:
        raw.reply()
        raw.cmd(b"EHLO client.test")
        if command.startswith(b"RCPT"):
            assert raw.cmd(f"MAIL FROM:<{SENDER}>".encode()) == [replies.OK_SENDER.encode()]
        assert raw.cmd(command) == [replies.SMTPUTF8_UNSUPPORTED.encode()]
        assert raw.cmd(b"QUIT")[0].startswith(b"221")


def test_mail_from_with_smtputf8_parameter_is_refused_5_6_7(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with Raw(relay.smtp_port) as raw:
        raw.reply()
        raw.cmd(b"EHLO client.test")
        (line,) = raw.cmd(b"MAIL FROM:<x> SMTPUTF8")
        assert line[:1] == b"5"
        assert b" 5.6.7 " in line
        (line,) = raw.cmd(f"MAIL FROM:<{SENDER}> SMTPUTF8".encode())
        assert line == replies.SMTPUTF8_UNSUPPORTED.encode()


@pytest.mark.parametrize("address", [b"<@", b"<0@["])
def test_address_that_crashes_the_email_parser_is_a_syntax_error(fake_ses, relay_factory, address):
    """aiosmtpd's parser raises IndexError/AttributeError on these: a malformed address (5xx), not a 451."""
    relay = relay_factory(fake_ses.endpoint_url)
    with Raw(relay.smtp_port) as raw:
        raw.reply()
        raw.cmd(b"EHLO client.test")
        (line,) = raw.cmd(b"MAIL FROM:" + address)
        assert line.startswith(b"553 5.1.3 "), line
        assert raw.cmd(f"MAIL FROM:<{SENDER}>".encode()) == [replies.OK_SENDER.encode()]
        (line,) = raw.cmd(b"RCPT TO:" + address)
        assert line.startswith(b"553 5.1.3 "), line
        assert raw.cmd(b"QUIT")[0].startswith(b"221")


# -- sequence errors and junk -------------------------------------------------------------------


def test_commands_out_of_order_and_unknown_commands(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with smtp(relay.smtp_port) as client:
        assert client.rcpt(RECIPIENT)[0] == 503
        assert client.mail(SENDER)[0] == 250
        assert client.docmd("DATA")[0] == 503
        assert client.docmd("FROBNICATE", "now")[0] == 500
        code, reply = client.docmd("NOOP " + "x" * 2000)
        assert code == 500, reply
        # Still in the same transaction and in sync after all that.
        assert client.rcpt(RECIPIENT)[0] == 250
        code, _ = client.data(MESSAGE)
        assert code == 250
    assert len(fake_ses.message_ids) == 1


def test_overlong_data_line_is_500_5_5_2_nothing_sent_session_usable(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with smtp(relay.smtp_port) as client:
        code, reply = transaction(client, MESSAGE + b"z" * 1500 + b"\r\n")
        assert (code, reply.decode()) == (500, text(replies.LINE_TOO_LONG))
        assert fake_ses.requests == []
        code, reply = transaction(client)
        assert code == 250, reply
    assert len(fake_ses.message_ids) == 1


def test_garbage_bytes_get_5xx_and_server_keeps_serving(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with Raw(relay.smtp_port) as raw:
        raw.reply()
        reply = raw.cmd(b"\x00\xff\xfe\x80garbage\x1b[2J\x7f")
        assert reply and reply[-1][:1] == b"5", reply
        raw.sock.sendall(bytes(range(256)).replace(b"\n", b"").replace(b"\r", b"") + b"\r\n")
        raw.reply()  # whatever it answers (or if it hangs up), the server must live on
    assert_serves(relay.smtp_port, fake_ses)


def test_repeated_recipient_in_other_case_is_sent_once(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with smtp(relay.smtp_port) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("Bob@Example.org") == (250, text(replies.OK_RECIPIENT).encode())
        assert client.rcpt("bob@example.ORG") == (250, text(replies.OK_RECIPIENT).encode())
        code, _ = client.data(MESSAGE)
        assert code == 250
    (request,) = fake_ses.requests
    assert request.body["Destination"]["ToAddresses"] == ["Bob@Example.org"]


# -- message content ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"To: bob@example.org\r\nSubject: no from\r\n\r\nx\r\n", id="no-from"),
        pytest.param(b"X-SES-MESSAGE-TAGS: not a tag\r\n" + MESSAGE, id="bad-tags"),
        pytest.param(b"X-SES-MESSAGE-TAGS: a=b, a=c\r\n" + MESSAGE, id="repeated-tag"),
        pytest.param(b"X-SES-MESSAGE-TAGS: a=b c\r\n" + MESSAGE, id="space-in-tag"),
    ],
)
def test_unsendable_message_is_554_5_6_0_and_nothing_sent(fake_ses, relay_factory, data):
    relay = relay_factory(fake_ses.endpoint_url)
    with smtp(relay.smtp_port) as client:
        code, reply = transaction(client, data)
        assert code == 554, reply
        assert reply.startswith(b"5.6.0 ")
        code, _ = transaction(client)
        assert code == 250
    assert len(fake_ses.requests) == 1
    assert fake_ses.requests[0].raw_message == MESSAGE
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "5xx"}) == 1


def test_client_gone_mid_data_sends_nothing_and_server_keeps_serving(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with Raw(relay.smtp_port) as raw:
        raw.reply()
        raw.cmd(b"EHLO client.test")
        assert raw.cmd(f"MAIL FROM:<{SENDER}>".encode())[0].startswith(b"250")
        assert raw.cmd(f"RCPT TO:<{RECIPIENT}>".encode())[0].startswith(b"250")
        assert raw.cmd(b"DATA")[0].startswith(b"354")
        raw.sock.sendall(MESSAGE[:60])  # and hang up before <CRLF>.<CRLF>
    wait_until(lambda: relay.metric("ses_relay_smtp_active_sessions") == 0)
    assert fake_ses.requests == []
    assert_serves(relay.smtp_port, fake_ses)
    assert len(fake_ses.requests) == 1


# -- connection policy --------------------------------------------------------------------------


def test_client_outside_allowed_networks_is_refused_in_greeting(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"allowed_networks": ["10.0.0.0/8"]})
    with Raw(relay.smtp_port) as raw:
        greeting = raw.line()
        assert greeting == replies.NOT_ALLOWED.format(peer="127.0.0.1").encode()
        assert greeting.startswith(b"554 5.7.1 ")
        assert raw.line() == b""  # and it hangs up
    assert relay.metric("ses_relay_smtp_sessions_total", {"result": "rejected_network"}) == 1
    assert relay.metric("ses_relay_smtp_sessions_total", {"result": "accepted"}) == 0


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_listener_accepts_loopback_client(fake_ses, relay_factory):
    if not _has_ipv6_loopback() and os.environ.get("CI") != "true":
        pytest.skip("no IPv6 loopback on this machine")
    relay = relay_factory(fake_ses.endpoint_url, smtp={"listen": ["[::1]:0"]})
    assert relay.relay.smtp_addresses[0][0] == "::1"
    with smtp(relay.smtp_port, host="::1") as client:
        code, reply = transaction(client)
    assert code == 250, reply
    assert len(fake_ses.message_ids) == 1
    assert relay.metric("ses_relay_smtp_sessions_total", {"result": "accepted"}) == 1


def test_connection_over_max_connections_gets_421(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_connections": 2})
    first, second = smtp(relay.smtp_port), smtp(relay.smtp_port)
    try:
        with Raw(relay.smtp_port) as raw:
            greeting = raw.line()
            assert greeting == replies.TOO_BUSY.encode()
            assert greeting.startswith(b"421 4.7.0 ")
        assert relay.metric("ses_relay_smtp_sessions_total", {"result": "rejected_busy"}) == 1
        code, _ = transaction(first)  # the two admitted sessions work
        assert code == 250
    finally:
        first.quit()
        second.quit()
    wait_until(lambda: relay.metric("ses_relay_smtp_active_sessions") == 0)
    assert_serves(relay.smtp_port, fake_ses)


# -- logs ---------------------------------------------------------------------------------------


def test_transaction_log_record_has_fields_and_no_body(fake_ses, relay_factory, caplog):
    # As `ses-relay serve` configures logging (relay.logs.quiet_libraries), at its most verbose level.
    # (caplog.set_level also sets its handler's level, so the root DEBUG comes last.)
    for name in ("mail.log", "botocore", "boto3", "urllib3", "aiohttp.access"):
        caplog.set_level(logging.WARNING, logger=name)
    caplog.set_level(logging.DEBUG)
    relay = relay_factory(fake_ses.endpoint_url)
    data = MESSAGE + f"{BODY_SECRET}\r\n".encode()
    with smtp(relay.smtp_port) as client:
        code, _ = transaction(client, data)
    assert code == 250
    (ses_id,) = fake_ses.message_ids
    records = [r for r in caplog.records if r.name == "relay.transaction"]
    assert len(records) == 1
    fields = records[0].fields
    assert fields["queue_id"]
    assert fields["mail_from"] == SENDER
    assert fields["recipients"] == 1
    assert fields["size"] == len(data)
    assert fields["message_id"] == "<proto-1@example.com>"
    assert fields["ses_message_id"] == ses_id
    assert fields["reply"] == "250"
    for record in caplog.records:
        assert BODY_SECRET not in record.getMessage()
        assert BODY_SECRET not in repr(vars(record))


# -- fuzzing ------------------------------------------------------------------------------------

_VERBS = [b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY", b"EXPN",
          b"HELP", b"QUIT", b"STARTTLS", b"AUTH", b"BDAT", b"mail from:<", b"rcpt to:<"]
_LINE = st.one_of(
    st.binary(max_size=600),
    st.tuples(st.sampled_from(_VERBS), st.binary(max_size=300)).map(lambda t: t[0] + t[1]),
    st.tuples(st.sampled_from(_VERBS), st.text(max_size=100)).map(lambda t: t[0] + b" " + t[1].encode()),
).map(lambda line: line.replace(b"\r", b"").replace(b"\n", b""))


def test_fuzzed_command_lines_get_well_formed_replies(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(lines=st.lists(_LINE, min_size=1, max_size=3), start_transaction=st.booleans())
    def check(lines: list[bytes], start_transaction: bool) -> None:
        with Raw(relay.smtp_port) as raw:
            assert raw.reply()[0].startswith(b"220 ")
            raw.cmd(b"EHLO client.test")
            if start_transaction:
                assert raw.cmd(f"MAIL FROM:<{SENDER}>".encode())[0].startswith(b"250")
                assert raw.cmd(f"RCPT TO:<{RECIPIENT}>".encode())[0].startswith(b"250")
            for line in lines:
                reply = raw.cmd(line)
                if not reply:
                    break  # the server hung up (QUIT, too many bad commands)
                for part in reply:
                    match = REPLY_LINE.match(part)
                    assert match is not None, (line, reply)
                    assert match.group(1) == reply[-1][:3], reply
                code = reply[-1][:3]
                # No message content was sent: nothing may be reported as sent.
                assert not reply[-1].startswith(b"250 2.0.0"), (line, reply)
                if code in (b"354", b"221"):
                    break  # now in DATA (we hang up without content) or closing
        assert fake_ses.requests == []

    check()
    wait_until(lambda: relay.metric("ses_relay_smtp_active_sessions") == 0)
    assert fake_ses.requests == []
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "2xx"}) == 0
    assert_serves(relay.smtp_port, fake_ses)
