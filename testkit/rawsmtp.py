"""A raw SMTP client socket for tests that need exact bytes out (smtplib normalises what it sends)."""

from __future__ import annotations

import re
import socket

REPLY_LINE = re.compile(rb"^(\d{3})([ -])")


class RawSMTP:
    """Exact bytes out, whole replies in. `first` is sent before anything is read (a PROXY header)."""

    def __init__(self, port: int, *, timeout: float = 15.0, first: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        if first:
            self.sock.sendall(first)

    def reply(self) -> bytes:
        """The last line of one reply; b"" when the server closed the connection."""
        while True:
            line = self.file.readline().rstrip(b"\r\n")
            match = REPLY_LINE.match(line)
            if not line or match is None or match.group(2) == b" ":
                return line

    def cmd(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()
