"""relay.smtp.proxy: whose PROXY header is honoured and which address the relay then judges;
relay.smtp.policy: the per-client connection limit."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.proxy_protocol import ProxyData, get_proxy

from relay.smtp import replies
from relay.smtp.policy import ConnectionPolicy
from relay.smtp.proxy import ProxyRefused, TrustedProxies


def parse(header: bytes) -> ProxyData:
    async def read() -> ProxyData:
        reader = asyncio.StreamReader()
        reader.feed_data(header)
        reader.feed_eof()
        return await get_proxy(reader)

    return asyncio.run(read())


TRUSTED = TrustedProxies(["10.0.0.0/8", "fd00::/8"])


def test_a_trusted_proxy_names_the_client():
    data = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 2525\r\n")
    assert TRUSTED.real_peer(("10.1.2.3", 5000), data) == ("203.0.113.7", 40000)
    # an IPv4-mapped IPv6 proxy address matches its IPv4 rule
    assert TRUSTED.real_peer(("::ffff:10.1.2.3", 5000, 0, 0), data) == ("203.0.113.7", 40000)
    six = parse(b"PROXY TCP6 2001:db8::1 fd00::1 40000 2525\r\n")
    assert TRUSTED.real_peer(("fd00::2", 5000, 0, 0), six) == ("2001:db8::1", 40000)


@pytest.mark.parametrize("proxy", [("127.0.0.1", 5000), ("192.0.2.1", 1), None, ("not an address", 1)])
def test_any_other_peer_is_refused(proxy):
    data = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 2525\r\n")
    with pytest.raises(ProxyRefused):
        TRUSTED.real_peer(proxy, data)


def test_unknown_and_local_headers_leave_the_proxy_as_the_client():
    for header in (b"PROXY UNKNOWN\r\n", b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"):
        data = parse(header)
        assert data.valid, header
        assert TRUSTED.real_peer(("10.1.2.3", 5000), data) == ("10.1.2.3", 5000)


def test_nothing_is_trusted_by_default():
    data = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 2525\r\n")
    with pytest.raises(ProxyRefused):
        TrustedProxies([]).real_peer(("127.0.0.1", 5000), data)


def test_per_client_limit_applies_outside_allowed_networks_only():
    policy = ConnectionPolicy(["10.0.0.0/8"], max_connections=100, auth_required=True,
                              max_connections_per_client=2)
    outside, inside = ("203.0.113.7", 1), ("10.0.0.5", 1)
    assert policy.admit(outside, open_sessions=5, shutting_down=False, client_sessions=1) is None
    assert policy.admit(outside, open_sessions=5, shutting_down=False, client_sessions=2) == (
        "rejected_client_limit", replies.CLIENT_TOO_BUSY)
    assert policy.admit(inside, open_sessions=5, shutting_down=False, client_sessions=50) is None
    # the total limit still comes first
    assert policy.admit(inside, open_sessions=100, shutting_down=False, client_sessions=0) == (
        "rejected_busy", replies.TOO_BUSY)
