"""systemd's service notification protocol (sd_notify), without libsystemd.

With `Type=notify`, systemd passes `$NOTIFY_SOCKET`: a filesystem path, or an abstract socket name written
with a leading '@'. A state change is one datagram of `KEY=value` lines on an AF_UNIX socket
(`READY=1`, `STOPPING=1`, `RELOADING=1`, `STATUS=...`). Outside systemd the variable is unset and every
call is a no-op. Sending never blocks (a full socket drops the datagram) and never raises: the service
manager missing a status line must not take the relay down.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("relay.notify")


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 254's "vsock:" addresses: not for a local service


def notify(*lines: str) -> bool:
    """Send `lines` as one datagram; True when it was handed to the socket."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _address(target)
    if address is None:
        log.debug("NOTIFY_SOCKET=%s: unsupported address, not notifying", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.warning("could not notify the service manager (%s): %s", target, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping(status: str) -> bool:
    return notify("STOPPING=1", f"STATUS={status}")


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd (Type=notify-reload, 253+) tell this reload from an older one.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
