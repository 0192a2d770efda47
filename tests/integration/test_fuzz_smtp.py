"""Hypothesis-driven SMTP sessions over a real socket, against a relay with STARTTLS and AUTH on.

Random command sequences, odd bytes (NUL, 8-bit, bare LF/CR), long lines, pipelining, STARTTLS and AUTH
at odd moments: every line the relay writes is a well-formed reply (until it starts TLS), every session
ends with a close, no traceback is logged, and the relay still serves the next client. Bounded:
max_examples and a per-session socket timeout keep it to seconds.
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket

import bcrypt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.tls import client_context, write_certificate

REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9][ -]")
COMMANDS = [b"EHLO fuzz.test", b"HELO fuzz.test", b"MAIL FROM:<alice@example.com>", b"RCPT TO:<bob@example.org>",
            b"DATA", b"RSET", b"NOOP", b"VRFY bob", b"HELP", b"STARTTLS", b"AUTH PLAIN", b"AUTH LOGIN",
            b"AUTH PLAIN AGFsaWNlAHdyb25n", b"AUTH CRAM-MD5", b"BDAT 10", b"MAIL FROM:<>", b"*", b"."]
odd_line = st.one_of(
    st.sampled_from(COMMANDS),
    st.binary(max_size=80),
    st.builds(lambda c, junk: c + junk, st.sampled_from(COMMANDS), st.binary(max_size=40)),
    st.builds(lambda n: b"X" * n, st.integers(500, 1500)),  # around the 512-octet command limit
    st.sampled_from([b"\x00", b"\xff\xfe", b"MAIL FROM:<\xc3\xa9@example.com>", b"\r", b"\n.\n", b"\r\n.\r"]),
)
separators = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])


def test_fuzzed_sessions_get_replies_or_a_close_and_the_relay_stays_healthy(fake_ses, relay_factory,
                                                                            tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    cert, key = write_certificate(tmp_path / "certs")
    users = tmp_path / "users"
    users.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}:*@example.com\n")
    relay = relay_factory(fake_ses.endpoint_url, smtp={
        "allowed_networks": ["10.0.0.0/8"],  # the fuzzer is "outside": it must AUTH to send
        "tls": {"cert": str(cert), "key": str(key)},
        "auth": {"required": True, "users_file": str(users)},
        "max_connections": 1000,
    })
    relay.relay._smtp.auth_throttle.base_delay = 0.0  # fail fast; the lock-out still applies
    relay.relay._smtp.auth_throttle.max_failures = 10**6

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(st.tuples(odd_line, separators), max_size=12))
    def session(lines):
        payload = b"".join(line + sep for line, sep in lines) + b"\r\n.\r\nQUIT\r\n"
        with socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=15) as sock:
            sock.sendall(payload)
            received = bytearray()
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break  # closed by the relay: QUIT, a hang-up, or a failed TLS handshake
                received += chunk
                if b"220 Ready to start TLS\r\n" in received:
                    # The relay now waits for a TLS handshake (RFC 3207 discards pipelined plaintext),
                    # up to the handshake timeout: a client that does not start one is on its own.
                    break
        for line in bytes(received).split(b"\r\n")[:-1]:
            assert REPLY_LINE.match(line), (line, lines)
            if line.startswith(b"220 Ready to start TLS"):
                break  # what follows is TLS records for the fuzzer's plaintext

    session()
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.starttls(context=client_context())
        client.ehlo()
        client.login("alice", "pw")
        client.sendmail("alice@example.com", ["bob@example.org"],
                        b"From: alice@example.com\r\nSubject: after fuzz\r\n\r\nstill here\r\n")
    assert fake_ses.requests[-1].outcome == "ok"
