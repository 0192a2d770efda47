"""Who may open an SMTP session: the network allow-list and the connection limit.

One place for the connection-level decision, so that AUTH (an authenticated client outside the
allowed networks) and the PROXY protocol (judge the real client, not the load balancer) extend it
rather than adding checks elsewhere. aiosmtpd reads a PROXY header inside `_handle_client`, before
the greeting: a network check made before that call sees the proxy's address. When PROXY support
comes, `admit` must run after the header is read, on the address it names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from relay.smtp import replies

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def peer_address(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's IP address; an IPv4-mapped IPv6 address (::ffff:10.0.0.1) counts as its IPv4 form."""
    try:
        host = peer[0]  # type: ignore[index]
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class ConnectionPolicy:
    def __init__(self, allowed_networks: Iterable[str], max_connections: int) -> None:
        self._networks = parse_networks(allowed_networks)
        self.max_connections = max_connections

    def allowed(self, peer: object) -> bool:
        address = peer_address(peer)
        return address is not None and any(address in network for network in self._networks)

    def admit(self, peer: object, *, open_sessions: int, shutting_down: bool) -> tuple[str, str] | None:
        """None to go ahead, else (metric result label, reply line) to answer before hanging up."""
        if not self.allowed(peer):
            host = peer[0] if isinstance(peer, tuple | list) and peer else "unknown"
            return "rejected_network", replies.NOT_ALLOWED.format(peer=host)
        if shutting_down:
            return "rejected_busy", replies.SHUTTING_DOWN
        if open_sessions >= self.max_connections:
            return "rejected_busy", replies.TOO_BUSY
        return None
