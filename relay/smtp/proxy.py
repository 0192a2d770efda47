"""PROXY protocol (v1 text, v2 binary) on the listeners in `smtp.proxy_listen`.

aiosmtpd reads the header itself (SMTP(proxy_protocol_timeout=...)) before the greeting and hands the
parsed `ProxyData` to a `handle_PROXY` hook; it keeps no list of who may send one. `real_peer`
decides: a header is honoured only from an address in `smtp.trusted_proxies`, and then every later
decision (allow-list, connection limits, AUTH throttling, logs) is taken on the client it names.

A v2 LOCAL header or a v1 `PROXY UNKNOWN` (the balancer's own health check) and a client the proxy
reached over a UNIX socket carry no client address: the session is the proxy's own and is judged on
the proxy's address, as the specification says for LOCAL.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiosmtpd.proxy_protocol import AF, V2_CMD, ProxyData

from relay.smtp.policy import parse_networks, peer_address


class ProxyRefused(Exception):
    """The header came from an address outside smtp.trusted_proxies."""


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = parse_networks(cidrs)

    def trusted(self, peer: object) -> bool:
        address = peer_address(peer)
        return address is not None and any(address in network for network in self._networks)

    def real_peer(self, proxy_peer: object, data: ProxyData) -> tuple[str, int]:
        """The (host, port) every later check should see; ProxyRefused for an untrusted proxy."""
        if not self.trusted(proxy_peer):
            raise ProxyRefused(str(proxy_peer))
        own = proxy_peer if isinstance(proxy_peer, tuple) else ("unknown", 0)
        if data.command == V2_CMD.LOCAL or data.family not in (AF.INET, AF.INET6):
            return own[0], own[1]
        if data.src_addr is None:
            return own[0], own[1]
        return str(data.src_addr), int(data.src_port or 0)
