"""PROXY protocol v1 and v2 on smtp.proxy_listen, over raw sockets from 127.0.0.1 as the proxy.

The header is honoured only from smtp.trusted_proxies; the allow-list, the per-client limit and the
transaction log then see the client it names. A plain listener treats a PROXY line as a command.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from pathlib import Path

import bcrypt
import pytest

from relay.smtp import replies
from testkit.rawsmtp import RawSMTP

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: proxied\r\n\r\nhello\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
ALLOWED = "203.0.113.7"  # inside the test relay's allowed_networks
OUTSIDE = "198.51.100.9"


def v1(client: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    proxy = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {proxy} {port} 2525\r\n".encode()


def v2(client: str | None, port: int = 40001) -> bytes:
    """A binary v2 header: PROXY over TCP for `client`, or LOCAL (a health check) for None."""
    if client is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    source = ipaddress.ip_address(client)
    target = ipaddress.ip_address("::1" if source.version == 6 else "127.0.0.1")
    family = 0x21 if source.version == 6 else 0x11  # AF_INET6/AF_INET << 4 | STREAM
    body = source.packed + target.packed + struct.pack("!HH", port, 2525)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


class Raw(RawSMTP):
    def __init__(self, port: int, first: bytes = b"") -> None:
        super().__init__(port, first=first)

    def send_message(self) -> bytes:
        assert self.cmd(b"EHLO client.test").startswith(b"250")
        assert self.cmd(b"MAIL FROM:<alice@example.com>").startswith(b"250")
        assert self.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
        assert self.cmd(b"DATA").startswith(b"354")
        return self.cmd(MESSAGE + b".")


def proxy_relay(relay_factory, fake_ses, trusted=("127.0.0.1/32",), **smtp):
    relay = relay_factory(fake_ses.endpoint_url, smtp={
        "allowed_networks": ["203.0.113.0/24", "2001:db8::/32"],
        "proxy_listen": ["127.0.0.1:0"],
        "trusted_proxies": list(trusted),
        **smtp,
    })
    relay.proxy_port = relay.relay.smtp_addresses[-1][1]  # after smtp.listen (relay.app's order)
    return relay


def transaction_clients(caplog) -> list[str]:
    return [r.fields["client"] for r in caplog.records if getattr(r, "fields", {}).get("event") == "transaction"]


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_trusted_proxy_naming_an_allowed_client_is_honoured(fake_ses, relay_factory, caplog, header):
    caplog.set_level(logging.INFO)
    relay = proxy_relay(relay_factory, fake_ses)
    client = Raw(relay.proxy_port, header(ALLOWED))
    try:
        assert client.reply().startswith(b"220")
        assert client.send_message().startswith(b"250 2.0.0")
    finally:
        client.close()
    assert len(fake_ses.message_ids) == 1
    assert transaction_clients(caplog) == [ALLOWED]  # the log names the real client, not 127.0.0.1


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_trusted_proxy_naming_a_client_outside_the_networks_is_refused(fake_ses, relay_factory, header):
    relay = proxy_relay(relay_factory, fake_ses)
    client = Raw(relay.proxy_port, header(OUTSIDE))
    try:
        assert client.reply() == replies.NOT_ALLOWED.format(peer=OUTSIDE).encode()
        assert client.reply() == b""  # closed
    finally:
        client.close()
    assert relay.metric("ses_relay_smtp_sessions_total", {"result": "rejected_network"}) == 1


def test_ipv6_client_named_by_a_v2_header(fake_ses, relay_factory):
    relay = proxy_relay(relay_factory, fake_ses)
    client = Raw(relay.proxy_port, v2("2001:db8::5"))
    try:
        assert client.reply().startswith(b"220")
    finally:
        client.close()


def test_local_header_is_judged_on_the_proxy_address(fake_ses, relay_factory):
    # A balancer's health check (v2 LOCAL) names nobody: the session is the proxy's own, 127.0.0.1,
    # which this relay's allowed_networks do not include.
    relay = proxy_relay(relay_factory, fake_ses)
    client = Raw(relay.proxy_port, v2(None))
    try:
        assert client.reply() == replies.NOT_ALLOWED.format(peer="127.0.0.1").encode()
    finally:
        client.close()
    allowed_proxy = proxy_relay(relay_factory, fake_ses, allowed_networks=["127.0.0.0/8"])
    client = Raw(allowed_proxy.proxy_port, v2(None))
    try:
        assert client.reply().startswith(b"220")
    finally:
        client.close()


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_header_from_an_untrusted_proxy_is_refused(fake_ses, relay_factory, header):
    relay = proxy_relay(relay_factory, fake_ses, trusted=["10.0.0.0/8"])
    client = Raw(relay.proxy_port, header(ALLOWED))
    try:
        assert client.reply() == replies.PROXY_NOT_TRUSTED.format(peer="127.0.0.1").encode()
        assert client.reply() == b""
    finally:
        client.close()
    assert relay.metric("ses_relay_smtp_refusals_total", {"reason": "proxy_untrusted"}) == 1
    assert fake_ses.message_ids == []


def test_a_garbled_header_is_closed_without_a_greeting(fake_ses, relay_factory):
    relay = proxy_relay(relay_factory, fake_ses)
    client = Raw(relay.proxy_port, b"EHLO not-a-proxy\r\n")
    try:
        assert client.reply() == b""
    finally:
        client.close()


def test_plain_listener_ignores_a_proxy_line(fake_ses, relay_factory, caplog):
    caplog.set_level(logging.INFO)
    relay = proxy_relay(relay_factory, fake_ses, allowed_networks=["127.0.0.0/8"])
    plain_port = relay.relay.smtp_addresses[0][1]
    client = Raw(plain_port)
    try:
        assert client.reply().startswith(b"220")  # the greeting comes first: no header expected
        assert client.cmd(v1(ALLOWED).rstrip(b"\r\n")).startswith(b"500")  # an unknown command
        assert client.send_message().startswith(b"250 2.0.0")
    finally:
        client.close()
    assert transaction_clients(caplog) == ["127.0.0.1"]


def test_per_client_limit_counts_the_real_clients(fake_ses, relay_factory, tmp_path: Path):
    users = tmp_path / "users"
    users.write_text("ops:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    relay = proxy_relay(
        relay_factory, fake_ses, allowed_networks=[], max_connections_per_client=1,
        auth={"required": True, "users_file": str(users)}, tls={"require_for_auth": False},
    )
    opened = []
    try:
        for header, expected in [
            (v1("192.0.2.10"), b"220"),
            (v1("192.0.2.10", port=40002), replies.CLIENT_TOO_BUSY.encode()),
            (v2("192.0.2.11"), b"220"),  # another client (all three come from 127.0.0.1)
        ]:
            opened.append(Raw(relay.proxy_port, header))
            assert opened[-1].reply().startswith(expected)
    finally:
        for client in opened:
            client.close()
