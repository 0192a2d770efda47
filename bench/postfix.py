"""Baseline: a private Postfix instance that accepts mail into its own queue and never delivers it.

The instance itself (`postfix -c CONFDIR start-fg`, smtpd on 127.0.0.1:PORT only, queue, data and log in
a directory of its own, every chroot off) is testkit/postfix.py, shared with the client tests, as
the fake SES is. Here only the main.cf settings: relayhost a closed port and `defer_transports = smtp`,
so accepted mail stays in the private queue (deferred). This is the "accept, write to a durable queue,
answer 250" cost of a real MTA, as a reference point.
"""

from __future__ import annotations

from pathlib import Path

from testkit.postfix import PostfixInstance


def settings(closed_port: int) -> dict[str, str]:
    return {
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "postfix-bench.local",
        "mydomain": "local",
        "myorigin": "$myhostname",
        "local_recipient_maps": "",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "relayhost": f"[127.0.0.1]:{closed_port}",
        "default_transport": "smtp",
        "relay_transport": "smtp",
        "defer_transports": "smtp",
        "smtputf8_enable": "no",
        "append_dot_mydomain": "no",
        "smtpd_banner": "$myhostname ESMTP",
        "message_size_limit": "41943040",
        "default_process_limit": "200",
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_connection_rate_limit": "0",
        "smtpd_client_message_rate_limit": "0",
        "smtpd_peername_lookup": "no",
    }


class PrivatePostfix(PostfixInstance):
    def __init__(self, root: Path, port: int, closed_port: int) -> None:
        super().__init__(root, port, settings(closed_port))
        self.closed_port = closed_port

    def queued(self) -> int:
        """Messages in the private queue (incoming + active + deferred + hold)."""
        total = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            d = self.queue_dir / sub
            if d.exists():
                total += sum(1 for p in d.rglob("*") if p.is_file())
        return total
