"""Python asyncio SMTP load generator, for cases smtp-source cannot express (a 40 MB message, many
of them at once, reply codes counted instead of aborting on the first non-2xx).

N concurrent sessions; each opens one connection, EHLO, then repeats MAIL/RCPT/DATA for M messages of
S bytes (each with a Message-ID of its own; with --recipients K, K RCPTs each), then QUIT. With --together every session first gets its MAIL and RCPT accepted, and no
session sends DATA until all of them are ready, so N message bodies arrive at the server at once.
Prints one JSON line: {"messages", "seconds", "msgs_per_s", "replies": {"2xx": ..}, "codes":
{"250 2.0.0": .., "452 4.3.1": ..}, "errors": [..]}; "codes" counts the final reply of each
transaction by code and enhanced status code, "errors" the sessions cut off before their last reply.

    python -m bench.load --port 2525 --sessions 10 --count 100 --size 2048
    python -m bench.load --port 2525 --sessions 30 --count 1 --size 40000000 --together
    python -m bench.load --port 2525 --sessions 10 --count 40 --recipients 5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import collections.abc
import itertools
import json
import time

LINE = 76


def build_header(sender: str, recipient: str, seq: int = 0) -> bytes:
    """From/To/Subject/Message-ID (unique per call: a receiver can tell every message apart)."""
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: bench {seq}\r\n"
        f"Message-ID: <bench.{seq}.{time.monotonic_ns()}@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()


def build_body(size: int) -> bytes:
    """`size` bytes of 76-byte lines (dot-safe: no line starts with '.')."""
    row = b"X" * (LINE - 2) + b"\r\n"
    full, rest = divmod(size, LINE)
    return row * full + (b"Y" * max(rest - 2, 0) + b"\r\n" if rest else b"")


def build_message(size: int, sender: str, recipient: str, seq: int = 0) -> bytes:
    """A plain RFC 5322 message with From/To/Subject/Message-ID and a body of `size` bytes (dot-safe)."""
    return build_header(sender, recipient, seq) + build_body(size)


def recipient_list(recipient: str, count: int) -> list[str]:
    """`count` distinct addresses: the recipient itself, or local+1..local+count at its domain."""
    if count <= 1:
        return [recipient]
    local, _, domain = recipient.rpartition("@")
    return [f"{local}+{i}@{domain}" for i in range(1, count + 1)]


class StartLine:
    """Holds every session back until `sessions` of them have arrived (or given up), then lets all go."""

    def __init__(self, sessions: int) -> None:
        self.waiting = sessions
        self.go = asyncio.Event()

    def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.go.set()


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last = ""  # code and enhanced status of the last reply, e.g. "452 4.3.1"

    async def reply(self) -> int:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                self.last = " ".join(line.decode("ascii", "replace").split()[:2])
                return int(line[:3])

    async def command(self, text: bytes) -> int:
        self.writer.write(text + b"\r\n")
        return await self.reply()


async def one_session(
    host: str,
    port: int,
    count: int,
    body: bytes,
    sender: str,
    recipients: list[str],
    replies: collections.Counter,
    codes: collections.Counter,
    start_line: StartLine | None = None,
    seq: collections.abc.Iterator[int] | None = None,
) -> None:
    def final(code: int, text: str) -> None:
        replies[f"{code // 100}xx"] += 1
        codes[text] += 1

    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    except BaseException:
        if start_line is not None:
            start_line.arrive()
        raise
    s = Session(reader, writer)
    try:
        await s.reply()  # 220
        await s.command(b"EHLO load.example.com")
        for _ in range(count):
            code = await s.command(f"MAIL FROM:<{sender}>".encode())
            if code != 250:
                final(code, s.last)
                await s.command(b"RSET")
                continue
            for recipient in recipients:
                code = await s.command(f"RCPT TO:<{recipient}>".encode())
                if code != 250:
                    break
            if code != 250:
                final(code, s.last)
                await s.command(b"RSET")
                continue
            if start_line is not None:
                start_line.arrive()
                await start_line.go.wait()
                start_line = None  # only the first transaction starts together
            code = await s.command(b"DATA")
            if code != 354:
                final(code, s.last)  # e.g. refused before any data is sent
                await s.command(b"RSET")
                continue
            # the message is dot-safe (no line starts with '.'), so no stuffing is needed
            writer.write(build_header(sender, recipients[0], next(seq) if seq is not None else 0))
            view = memoryview(body)
            for start in range(0, len(body), 1 << 20):
                writer.write(view[start : start + (1 << 20)])
                await writer.drain()
            writer.write(b".\r\n")
            code = await s.reply()
            final(code, s.last)
        await s.command(b"QUIT")
    finally:
        if start_line is not None:
            start_line.arrive()  # failed before the start line: do not hold the others back
        writer.close()


async def run(
    host: str,
    port: int,
    sessions: int,
    count: int,
    size: int,
    sender: str,
    recipient: str,
    together: bool = False,
    recipients: int = 1,
) -> dict:
    body = build_body(size)
    addresses = recipient_list(recipient, recipients)
    seq = itertools.count()
    replies: collections.Counter = collections.Counter()
    codes: collections.Counter = collections.Counter()
    start_line = StartLine(sessions) if together else None
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            one_session(host, port, count, body, sender, addresses, replies, codes, start_line, seq)
            for _ in range(sessions)
        ),
        return_exceptions=True,
    )
    seconds = time.perf_counter() - started
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    done = sum(replies.values())
    return {
        "messages": done,
        "seconds": seconds,
        "msgs_per_s": replies["2xx"] / seconds if seconds else 0.0,
        "replies": dict(replies),
        "codes": dict(codes),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--count", type=int, default=1, help="messages per session")
    parser.add_argument("--size", type=int, default=2048, help="body bytes per message")
    parser.add_argument("--from", dest="sender", default="from@example.com")
    parser.add_argument("--to", dest="recipient", default="to@example.org")
    parser.add_argument(
        "--together", action="store_true", help="hold every session's first DATA until all are ready"
    )
    parser.add_argument(
        "--recipients", type=int, default=1, help="RCPTs per message (--to, then local+1..local+K)"
    )
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.host,
            args.port,
            args.sessions,
            args.count,
            args.size,
            args.sender,
            args.recipient,
            args.together,
            args.recipients,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
