"""A corpus of malformed MIME (tests/fixtures/mime/*.eml) through a real socket.

Every message gets 250 or a 5xx (never a 4xx the client would retry for days, never a dropped
connection), nothing in the logs carries a traceback or an error, and the relay serves the next
client. Once as a client inside allowed_networks, once authenticated with sender patterns (which
also reads the From: header of every message).
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

import bcrypt
import pytest

from relay.smtp import replies
from testkit.rawsmtp import RawSMTP

CORPUS = sorted((Path(__file__).parent.parent / "fixtures" / "mime").glob("*.eml"))
GOOD = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: next client\r\n\r\nfine\r\n"
PASSWORD = "c0rpus-Pa55"
# Files whose refusal is a specific, documented one.
EXPECTED = {
    "empty.eml": b"554 5.6.0",
    "no-from.eml": b"554 5.6.0",
    "bare-lf.eml": replies.BARE_NEWLINE.encode(),
    "bare-cr.eml": replies.BARE_NEWLINE.encode(),
    "long-line.eml": replies.LINE_TOO_LONG.encode(),
    "many-headers.eml": replies.TOO_MANY_HEADERS.format(limit=1000).encode(),
    "duplicate-ses-headers.eml": b"554 5.6.0",
}


def dot_stuffed(message: bytes) -> bytes:
    stuffed = re.sub(rb"(?:^|(?<=\r\n))\.", b"..", message)
    return stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") or not stuffed else b"\r\n.\r\n")


class Raw(RawSMTP):
    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=30)


def send(port: int, message: bytes, user: str | None) -> bytes:
    client = Raw(port)
    try:
        assert client.reply().startswith(b"220")
        assert client.cmd(b"EHLO client.test").startswith(b"250")
        if user is not None:
            blob = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
            assert client.cmd(b"AUTH PLAIN " + blob).startswith(b"235")
        assert client.cmd(b"MAIL FROM:<alice@example.com>").startswith(b"250")
        assert client.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
        assert client.cmd(b"DATA").startswith(b"354")
        client.sock.sendall(dot_stuffed(message))
        return client.reply()
    finally:
        client.close()


@pytest.fixture(params=["network", "authenticated"])
def corpus_relay(request, fake_ses, relay_factory, tmp_path):
    if request.param == "network":
        return relay_factory(fake_ses.endpoint_url), None
    users = tmp_path / "users"
    users.write_text(f"alice:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}:*@example.com\n")
    relay = relay_factory(fake_ses.endpoint_url, smtp={
        "allowed_networks": ["10.0.0.0/8"],
        "auth": {"required": True, "users_file": str(users)},
        "tls": {"require_for_auth": False},
    })
    return relay, "alice"


def test_corpus_is_there():
    assert len(CORPUS) >= 20


def test_every_malformed_message_gets_250_or_5xx_and_the_next_client_is_served(
    corpus_relay, fake_ses, caplog
):
    relay, user = corpus_relay
    caplog.set_level(logging.DEBUG)
    replies_by_file = {}
    for path in CORPUS:
        reply = send(relay.smtp_port, path.read_bytes(), user)
        replies_by_file[path.name] = reply
        assert reply[:1] in (b"2", b"5"), f"{path.name}: {reply!r}"
        if path.name in EXPECTED:
            assert reply.startswith(EXPECTED[path.name]), f"{path.name}: {reply!r}"
        assert send(relay.smtp_port, GOOD, user).startswith(b"250 2.0.0"), f"after {path.name}"
    accepted = sum(1 for reply in replies_by_file.values() if reply.startswith(b"250"))
    assert len(fake_ses.message_ids) == accepted + len(CORPUS)  # every 250 reached SES, nothing else
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [(r.name, r.getMessage()) for r in problems]
    assert relay.metric("ses_relay_message_memory_bytes") == 0
