"""Small RFC 5322 messages for tests: one plain message, and the same grown to a size."""

from __future__ import annotations

from collections.abc import Sequence

PAD_LINE = b"x" * 76 + b"\r\n"  # a 78-byte body line: under SMTP's 998-byte limit, no leading dot


def plain_message(sender: str = "alice@example.com", to: str = "bob@example.org", subject: str = "x",
            body: bytes = b"x\r\n", headers: Sequence[bytes] = ()) -> bytes:
    """From, To, any extra `headers` (no line ends), Subject, a blank line, then `body`; CRLF line ends."""
    lines = [b"From: " + sender.encode(), b"To: " + to.encode(), *headers, b"Subject: " + subject.encode()]
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def grown(head: bytes, size: int, line: bytes = PAD_LINE) -> bytes:
    """`head` followed by as many whole copies of `line` as fit in `size` bytes in all."""
    return head + line * ((size - len(head)) // len(line))
