"""SMTP smuggling (CVE-2023-51764 family): a bare LF or CR in DATA is refused, so one DATA can never
carry a second message to a downstream that ends lines differently. Payloads from the published
research (SEC Consult, 2023): <LF>.<LF>, <CR>.<CR>, <CR><LF>.<CR>, <LF>.<CR><LF>, ..."""

from __future__ import annotations

import socket

import pytest

from relay.smtp import replies

HEADER = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: first\r\n\r\nfirst message\r\n"
SMUGGLED = (
    b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"From: ceo@example.com\r\nTo: victim@example.org\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
)
PAYLOADS = [b"\n.\n", b"\r.\r", b"\r\n.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b".\n", b"\n..\n"]


class Session:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            lines.append(line.rstrip(b"\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return b"\n".join(lines)

    def cmd(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_smuggling_payload_is_refused_and_nothing_is_sent(fake_ses, relay_factory, payload):
    relay = relay_factory(fake_ses.endpoint_url)
    session = Session(relay.smtp_port)
    try:
        assert session.cmd(b"EHLO client.test").startswith(b"250")
        assert session.cmd(b"MAIL FROM:<alice@example.com>").startswith(b"250")
        assert session.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
        assert session.cmd(b"DATA").startswith(b"354")
        session.sock.sendall(HEADER + payload + SMUGGLED + b".\r\n")
        assert session.reply() == replies.BARE_NEWLINE.encode()
        # one reply for the whole DATA: the smuggled commands were message data, never commands
        assert session.cmd(b"NOOP").startswith(b"250")
        # and the session is still usable for a clean message
        assert session.cmd(b"MAIL FROM:<alice@example.com>").startswith(b"250")
        assert session.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
        assert session.cmd(b"DATA").startswith(b"354")
        session.sock.sendall(HEADER + b".\r\n")
        assert session.reply().startswith(b"250")
    finally:
        session.close()
    assert [r.outcome for r in fake_ses.requests] == ["ok"]
    assert b"smuggled" not in fake_ses.requests[0].raw_message
    assert relay.metric("ses_relay_smtp_refusals_total", {"reason": "bare_newline"}) == 1


def test_bare_newline_reply_is_a_5xx_that_says_why():
    assert replies.BARE_NEWLINE.startswith("550 5.5.2 ") and "bare <CR> or <LF>" in replies.BARE_NEWLINE
