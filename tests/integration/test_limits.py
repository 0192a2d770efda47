"""SMTP limits over real sockets: each refusal has its reply and its ses_relay_smtp_refusals_total reason.

Per-client connections, transactions per connection, the DATA time limit, header count and size,
and the command line length aiosmtpd enforces (RFC 5321 4.5.3.1.4: 512 octets).
"""

from __future__ import annotations

import select
import time
from pathlib import Path

import bcrypt

from relay.smtp import replies
from testkit.rawsmtp import RawSMTP
from testkit.waiting import wait_until

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: limits\r\n\r\nhello\r\n"


Raw = RawSMTP


def refusals(relay, reason: str) -> float:
    return relay.metric("ses_relay_smtp_refusals_total", {"reason": reason})


def start_transaction(client: Raw) -> None:
    assert client.cmd(b"EHLO client.test").startswith(b"250")
    assert client.cmd(b"MAIL FROM:<alice@example.com>").startswith(b"250")
    assert client.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert client.cmd(b"DATA").startswith(b"354")


def send_one(port: int, message: bytes = MESSAGE) -> bytes:
    client = Raw(port)
    try:
        assert client.reply().startswith(b"220")
        start_transaction(client)
        return client.cmd(message + b".")
    finally:
        client.close()


# -- connections per client --------------------------------------------------------------------


def auth_only_relay(relay_factory, fake_ses, tmp_path: Path, **smtp):
    """127.0.0.1 outside allowed_networks: admitted only to authenticate (smtp.auth.required)."""
    users = tmp_path / "users"
    users.write_text("ops:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    return relay_factory(fake_ses.endpoint_url, smtp={
        "allowed_networks": ["10.0.0.0/8"],
        "auth": {"required": True, "users_file": str(users)},
        "tls": {"require_for_auth": False},
        **smtp,
    })


def test_connections_per_client_over_the_limit_get_421_at_connect(fake_ses, relay_factory, tmp_path):
    relay = auth_only_relay(relay_factory, fake_ses, tmp_path, max_connections_per_client=2)
    first, second = Raw(relay.smtp_port), Raw(relay.smtp_port)
    try:
        assert first.reply().startswith(b"220") and second.reply().startswith(b"220")
        third = Raw(relay.smtp_port)
        assert third.reply() == replies.CLIENT_TOO_BUSY.encode()
        assert third.closed()
        third.close()
        assert refusals(relay, "connections_per_client") == 1
        assert relay.metric("ses_relay_smtp_sessions_total", {"result": "rejected_client_limit"}) == 1
        first.close()  # a slot is free again once the relay has seen the close
        wait_until(lambda: relay.metric("ses_relay_smtp_active_sessions") == 1, message="close seen")
        again = Raw(relay.smtp_port)
        assert again.reply().startswith(b"220")
        again.close()
    finally:
        first.close()
        second.close()


def test_clients_inside_allowed_networks_are_exempt_from_the_per_client_limit(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_connections_per_client": 1})
    clients = [Raw(relay.smtp_port) for _ in range(3)]
    try:
        assert all(client.reply().startswith(b"220") for client in clients)
    finally:
        for client in clients:
            client.close()


# -- transactions per connection ---------------------------------------------------------------


def test_transactions_per_connection_then_421_and_close(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_transactions_per_connection": 2})
    client = Raw(relay.smtp_port)
    try:
        assert client.reply().startswith(b"220")
        assert client.cmd(b"EHLO client.test").startswith(b"250")
        for _ in range(2):
            assert client.cmd(b"MAIL FROM:<alice@example.com>").startswith(b"250")
            assert client.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
            assert client.cmd(b"DATA").startswith(b"354")
            assert client.cmd(MESSAGE + b".").startswith(b"250 2.0.0")
        assert client.cmd(b"MAIL FROM:<alice@example.com>") == replies.TOO_MANY_TRANSACTIONS.encode()
        assert client.closed()
    finally:
        client.close()
    assert len(fake_ses.message_ids) == 2
    assert refusals(relay, "transactions_per_connection") == 1
    assert send_one(relay.smtp_port).startswith(b"250 2.0.0")  # a new connection starts afresh


# -- DATA time limit ---------------------------------------------------------------------------


def trickle(client: Raw, every: float, for_at_most: float) -> bytes:
    """Send a header line every `every` s until the server says something (or for_at_most s)."""
    deadline = time.monotonic() + for_at_most
    number = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([client.sock], [], [], every)
        if readable:
            break
        try:
            client.sock.sendall(b"X-Trickle-%d: still here\r\n" % number)
        except OSError:
            break  # closed: the reply (if any) is waiting in the buffer
        number += 1
    return client.reply()


def test_data_that_trickles_forever_ends_with_421_4_4_2(fake_ses, relay_factory):
    # idle_timeout alone would never end it: a line comes every 0.05 s.
    relay = relay_factory(fake_ses.endpoint_url, smtp={"data_timeout": 1.0, "idle_timeout": 60})
    client = Raw(relay.smtp_port)
    try:
        assert client.reply().startswith(b"220")
        start_transaction(client)
        assert trickle(client, every=0.05, for_at_most=30) == replies.DATA_TIMEOUT.encode()
    finally:
        client.close()
    assert refusals(relay, "data_timeout") == 1
    assert fake_ses.message_ids == []
    assert send_one(relay.smtp_port).startswith(b"250 2.0.0")  # the relay serves the next client
    assert relay.metric("ses_relay_message_memory_bytes") == 0


def test_data_that_stalls_gets_421_4_4_2_after_idle_timeout(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"data_timeout": 120, "idle_timeout": 0.5})
    client = Raw(relay.smtp_port)
    try:
        assert client.reply().startswith(b"220")
        start_transaction(client)
        client.sock.sendall(b"Subject: and then nothing\r\n")
        assert client.reply() == replies.DATA_TIMEOUT.encode()  # before: closed without a word
        assert client.closed()
    finally:
        client.close()
    assert refusals(relay, "data_timeout") == 1


def test_data_still_arriving_may_take_longer_than_idle_timeout(fake_ses, relay_factory):
    # Before: aiosmtpd's idle timer ran from the DATA command and cut a long upload silently.
    relay = relay_factory(fake_ses.endpoint_url, smtp={"data_timeout": 120, "idle_timeout": 1.0})
    client = Raw(relay.smtp_port)
    try:
        assert client.reply().startswith(b"220")
        start_transaction(client)
        client.sock.sendall(b"From: alice@example.com\r\nTo: bob@example.org\r\n\r\n")
        deadline = time.monotonic() + 3.0  # three idle_timeouts, a line every 0.1 s
        while time.monotonic() < deadline:
            client.sock.sendall(b"a line of a slow upload\r\n")
            time.sleep(0.1)
        assert client.cmd(b".").startswith(b"250 2.0.0")
        assert client.cmd(b"NOOP").startswith(b"250")  # and the next command gets idle_timeout again
    finally:
        client.close()


# -- headers -----------------------------------------------------------------------------------


def headers(count: int) -> bytes:
    fields = [b"From: alice@example.com", b"To: bob@example.org"]
    fields += [b"X-Extra-%d: value" % n for n in range(count - 2)]
    return b"\r\n".join(fields) + b"\r\n"


def test_header_count_over_the_limit_is_554_5_6_0(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_header_count": 5})
    folded = b"Subject: one field\r\n  folded over\r\n  three lines\r\n"  # continuation lines don't count
    assert send_one(relay.smtp_port, headers(4) + folded + b"\r\nbody\r\n").startswith(b"250 2.0.0")
    refused = send_one(relay.smtp_port, headers(6) + b"\r\nbody\r\n")
    assert refused == replies.TOO_MANY_HEADERS.format(limit=5).encode()
    assert refusals(relay, "header_count") == 1
    assert len(fake_ses.message_ids) == 1


def test_header_section_over_max_header_bytes_is_554_5_6_0(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, smtp={"max_header_bytes": 4096})
    huge = b"Subject: big\r\n" + b"".join(b"  folded line %04d of a huge header\r\n" % n for n in range(200))
    refused = send_one(relay.smtp_port, headers(2) + huge + b"\r\nbody\r\n")
    assert refused == replies.HEADERS_TOO_BIG.format(limit=4096).encode()
    assert refusals(relay, "header_bytes") == 1
    # The same lines in the body are fine: only the header section is bounded.
    assert send_one(relay.smtp_port, headers(2) + b"\r\n" + huge).startswith(b"250 2.0.0")
    assert len(fake_ses.message_ids) == 1


# -- command line length -----------------------------------------------------------------------


def test_command_line_over_512_octets_is_500_5_5_2_and_the_session_goes_on(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    client = Raw(relay.smtp_port)
    try:
        assert client.reply().startswith(b"220")
        assert client.cmd(b"EHLO client.test").startswith(b"250")
        # MAIL's limit grows by the SIZE and BODY parameters after EHLO (RFC 1870, 6152): 548.
        assert client.cmd(b"MAIL FROM:<" + b"a" * 600 + b"@example.com>") == replies.COMMAND_TOO_LONG.encode()
        assert client.cmd(b"NOOP " + b"x" * 100_000) == replies.COMMAND_TOO_LONG.encode()  # > reader limit
        assert client.cmd(b"HELP " + b"x" * 520) == replies.COMMAND_TOO_LONG.encode()
        assert client.cmd(b"NOOP").startswith(b"250")
    finally:
        client.close()
    assert refusals(relay, "command_too_long") == 3
