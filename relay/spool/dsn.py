"""Delivery status notifications (RFC 3464) for spooled mail that could not be delivered.

In spool and fallback modes the client got a 250, so when SES later refuses a message for good, or
it expires in the queue, nobody would know. With `delivery.bounce_from` set (an identity verified
in SES), the relay tells the envelope sender, as Postfix's bounce daemon does: a
`multipart/report; report-type=delivery-status` with a human-readable part, the
`message/delivery-status` part (one block per failed recipient) and the original headers
(`text/rfc822-headers`: never the body, which may be large and was the problem).

Never sent: for the null sender `<>` (a DSN is sent from `<>`, so this also means never a DSN about a
DSN), to an address on the suppression list, or about a message that is itself a report.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

_REPORT = re.compile(rb"^content-type:[ \t]*multipart/report", re.IGNORECASE | re.MULTILINE)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def header_block(raw: bytes | bytearray | memoryview) -> bytes:
    """The message's header block (up to the first empty line), without the body."""
    data = bytes(raw[: 256 * 1024])
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end >= 0:
            return data[: end + len(separator) // 2]
    return data


def is_report(headers: bytes) -> bool:
    return _REPORT.search(headers) is not None


def build_dsn(
    *,
    reporting_host: str,
    bounce_from: str,
    to: str,
    queue_id: str,
    recipients: list[str],
    reason: str,
    arrival: float,
    original_headers: bytes,
) -> bytes:
    """The whole DSN message, CRLF line ends, ready for SES."""
    status = _STATUS.search(reason)
    code = status.group(1) if status else "5.0.0"
    if not code.startswith("5"):
        code = "4.4.7" if "expired" in reason else "5.0.0"  # expired in the queue: RFC 3463 4.4.7
    domain = bounce_from.rpartition("@")[2] or reporting_host
    boundary = f"=_dsn_{queue_id}_{secrets.token_hex(8)}"
    diagnostic = " ".join(reason.split())
    head = [
        f"From: Mail Delivery System <{bounce_from}>",
        f"To: <{to}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: {make_msgid(domain=domain)}",
        "Auto-Submitted: auto-replied",  # RFC 3834: nobody auto-replies to this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    human = [
        f"This is the mail relay at {reporting_host}.",
        "",
        "Your message could not be delivered to the recipients below; it will not be retried.",
        "",
        *(f"  <{address}>: {diagnostic}" for address in recipients),
    ]
    fields = [
        f"Reporting-MTA: dns; {reporting_host}",
        f"X-Queue-ID: {queue_id}",
        f"Arrival-Date: {format_datetime(datetime.fromtimestamp(arrival, UTC))}",
    ]
    for address in recipients:
        fields += ["", f"Final-Recipient: rfc822; {address}", "Action: failed", f"Status: {code}",
                   f"Diagnostic-Code: smtp; {diagnostic}"]
    headers = _crlf(original_headers).rstrip(b"\r\n") + b"\r\n"
    parts = [
        "\r\n".join(head).encode("ascii", "replace"),
        b"",
        b"This is a MIME-encapsulated delivery status notification.",
        b"",
        f"--{boundary}".encode(),
        b"Content-Type: text/plain; charset=us-ascii",
        b"",
        "\r\n".join(human).encode("ascii", "replace"),
        b"",
        f"--{boundary}".encode(),
        b"Content-Type: message/delivery-status",
        b"",
        "\r\n".join(fields).encode("ascii", "replace"),
        b"",
        f"--{boundary}".encode(),
        b"Content-Type: text/rfc822-headers",
        b"",
        headers,
        f"--{boundary}--".encode(),
        b"",
    ]
    return b"\r\n".join(parts)


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)
