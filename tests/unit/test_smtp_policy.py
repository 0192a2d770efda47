from __future__ import annotations

import pytest

from relay.smtp import replies
from relay.smtp.policy import ConnectionPolicy, peer_address


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),  # IPv4-mapped: judged by the IPv4 rules
        (("::ffff:10.1.2.3", 5000, 0, 0), True),
        (("10.1.2.3", 5000), True),
        (("fd00::5", 5000, 0, 0), True),
        (("fe80::1%eth0", 5000, 0, 0), False),  # a scope id is not part of the address
        (("192.168.1.1", 5000), False),
        (("2001:db8::1", 5000, 0, 0), False),
        (("not an address", 5000), False),
        (None, False),
        ((), False),
    ],
)
def test_allow_list(peer, allowed):
    policy = ConnectionPolicy(["127.0.0.0/8", "::1/128", "10.0.0.0/8", "fd00::/8"], max_connections=10)
    assert policy.allowed(peer) is allowed


def test_peer_address_unwraps_ipv4_mapped():
    assert str(peer_address(("::ffff:192.0.2.7", 1, 0, 0))) == "192.0.2.7"


def test_admit_checks_network_then_shutdown_then_the_connection_limit():
    policy = ConnectionPolicy(["127.0.0.0/8"], max_connections=2)
    inside, outside = ("127.0.0.1", 1), ("192.0.2.1", 1)
    assert policy.admit(inside, open_sessions=1, shutting_down=False) is None
    assert policy.admit(inside, open_sessions=2, shutting_down=False) == ("rejected_busy", replies.TOO_BUSY)
    assert policy.admit(inside, open_sessions=0, shutting_down=True) == ("rejected_busy", replies.SHUTTING_DOWN)
    result, reply = policy.admit(outside, open_sessions=0, shutting_down=True)
    assert result == "rejected_network" and reply == replies.NOT_ALLOWED.format(peer="192.0.2.1")


def test_with_auth_required_an_outside_client_is_admitted_but_must_authenticate():
    policy = ConnectionPolicy(["127.0.0.0/8"], max_connections=2, auth_required=True)
    inside, outside = ("127.0.0.1", 1), ("192.0.2.1", 1)
    assert policy.admit(outside, open_sessions=0, shutting_down=False) is None
    assert policy.must_authenticate(outside) and not policy.must_authenticate(inside)
    # the other limits still apply to it, and an unparseable peer is still refused
    assert policy.admit(outside, open_sessions=2, shutting_down=False) == ("rejected_busy", replies.TOO_BUSY)
    assert policy.admit(None, open_sessions=0, shutting_down=False)[0] == "rejected_network"
    # without auth_required the outside client is refused at connect, as before
    plain = ConnectionPolicy(["127.0.0.0/8"], max_connections=2)
    assert plain.admit(outside, open_sessions=0, shutting_down=False)[0] == "rejected_network"
