"""Baseline: a bare aiosmtpd server whose DATA handler answers "250 OK" at once.

Same aiosmtpd, same SMTP() keyword arguments and the same loop setup (asyncio.run, loop.create_server
with reuse_address and backlog 512) as relay/smtp/server.py, so the difference to the relay is what the
relay does per transaction: policy, suppression lookup, header work, the SES call, metrics and logs.

    python -m bench.bare_aiosmtpd --port 2526 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiosmtpd.smtp import SMTP

MAX_MESSAGE_SIZE = 41943040


class Handler:
    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 OK"


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = Handler()

    def factory() -> SMTP:
        return SMTP(
            handler,
            loop=loop,
            data_size_limit=MAX_MESSAGE_SIZE,
            enable_SMTPUTF8=False,
            decode_data=False,
            hostname="bare.local",
            ident="bare aiosmtpd",
            timeout=300.0,
            command_call_limit=1000,
        )

    server = await loop.create_server(factory, "127.0.0.1", port, reuse_address=True, backlog=512)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    # Same logging policy as the relay at warning: aiosmtpd's per-command INFO lines are off.
    logging.basicConfig(level=logging.WARNING)
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
