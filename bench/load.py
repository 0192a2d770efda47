"""Python asyncio SMTP load generator, for cases smtp-source cannot express (a 40 MB message, reply
classes counted instead of aborting on the first non-2xx).

N concurrent sessions; each opens one connection, EHLO, then repeats MAIL/RCPT/DATA for M messages of
S bytes, then QUIT. Prints one JSON line: {"messages", "seconds", "msgs_per_s", "replies": {"2xx":..}}.

    python -m bench.load --port 2525 --sessions 10 --count 100 --size 2048
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

LINE = 76


def build_message(size: int, sender: str, recipient: str, seq: int = 0) -> bytes:
    """A plain RFC 5322 message with From/To/Subject/Message-ID and a body of `size` bytes (dot-safe)."""
    header = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: bench {seq}\r\n"
        f"Message-ID: <bench.{seq}.{time.monotonic_ns()}@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    row = b"X" * (LINE - 2) + b"\r\n"
    full, rest = divmod(size, LINE)
    body = row * full + (b"Y" * max(rest - 2, 0) + b"\r\n" if rest else b"")
    return header + body


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> int:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return int(line[:3])

    async def command(self, text: bytes) -> int:
        self.writer.write(text + b"\r\n")
        return await self.reply()


async def one_session(
    host: str,
    port: int,
    count: int,
    message: bytes,
    sender: str,
    recipient: str,
    replies: collections.Counter,
) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    s = Session(reader, writer)
    try:
        await s.reply()  # 220
        await s.command(b"EHLO load.example.com")
        for _ in range(count):
            code = await s.command(f"MAIL FROM:<{sender}>".encode())
            if code != 250:
                replies[f"{code // 100}xx"] += 1
                await s.command(b"RSET")
                continue
            code = await s.command(f"RCPT TO:<{recipient}>".encode())
            if code != 250:
                replies[f"{code // 100}xx"] += 1
                await s.command(b"RSET")
                continue
            if await s.command(b"DATA") != 354:
                replies["other"] += 1
                continue
            # the message is dot-safe (no line starts with '.'), so no stuffing is needed
            view = memoryview(message)
            for start in range(0, len(message), 1 << 20):
                writer.write(view[start : start + (1 << 20)])
                await writer.drain()
            writer.write(b".\r\n")
            code = await s.reply()
            replies[f"{code // 100}xx"] += 1
        await s.command(b"QUIT")
    finally:
        writer.close()


async def run(
    host: str, port: int, sessions: int, count: int, size: int, sender: str, recipient: str
) -> dict:
    message = build_message(size, sender, recipient)
    replies: collections.Counter = collections.Counter()
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one_session(host, port, count, message, sender, recipient, replies) for _ in range(sessions)),
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
    args = parser.parse_args()
    result = asyncio.run(
        run(args.host, args.port, args.sessions, args.count, args.size, args.sender, args.recipient)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
