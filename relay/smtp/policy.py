"""Who may open an SMTP session: the network allow-list and the connection limits.

One place for the connection-level decision, so that AUTH (an authenticated client outside the
allowed networks) and the PROXY protocol (judge the real client, not the load balancer) extend it
rather than adding checks elsewhere. aiosmtpd reads a PROXY header inside `_handle_client`, before
the greeting: a network check made before that call sees the proxy's address. On a PROXY listener
relay.smtp.server therefore runs `admit` only after the header, on the address it names
(relay.smtp.proxy).
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
    """DESIGN 4.1: a client may send when its address is in `allowed_networks` OR it authenticates.

    With `auth_required` (smtp.auth.required) a client outside the networks is admitted but must
    AUTH before MAIL (530 5.7.0); without it, such a client is refused at connect (554 5.7.1).

    Per client address at most `max_connections_per_client` sessions (421 4.7.0 past it), except
    for clients inside `allowed_networks`: as Postfix's smtpd_client_connection_count_limit, whose
    exceptions default to $mynetworks. The limit is for the clients that must authenticate.
    """

    def __init__(
        self,
        allowed_networks: Iterable[str],
        max_connections: int,
        *,
        auth_required: bool = False,
        max_connections_per_client: int | None = None,
    ) -> None:
        self._networks = parse_networks(allowed_networks)
        self.max_connections = max_connections
        self.auth_required = auth_required
        self.max_connections_per_client = max_connections_per_client

    def allowed(self, peer: object) -> bool:
        address = peer_address(peer)
        return address is not None and any(address in network for network in self._networks)

    def must_authenticate(self, peer: object) -> bool:
        """True for an admitted client that may send only after AUTH."""
        return not self.allowed(peer)

    def admit(
        self, peer: object, *, open_sessions: int, shutting_down: bool, client_sessions: int = 0
    ) -> tuple[str, str] | None:
        """None to go ahead, else (metric result label, reply line) to answer before hanging up.

        `client_sessions`: sessions already open from this peer's address."""
        allowed = self.allowed(peer)
        if not allowed and not (self.auth_required and peer_address(peer) is not None):
            host = peer[0] if isinstance(peer, tuple | list) and peer else "unknown"
            return "rejected_network", replies.NOT_ALLOWED.format(peer=host)
        if shutting_down:
            return "rejected_busy", replies.SHUTTING_DOWN
        if open_sessions >= self.max_connections:
            return "rejected_busy", replies.TOO_BUSY
        limit = self.max_connections_per_client
        if not allowed and limit is not None and client_sessions >= limit:
            return "rejected_client_limit", replies.CLIENT_TOO_BUSY
        return None
