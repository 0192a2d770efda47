"""Run the relay's event loop and exit within a bound, whatever a library thread is doing.

`asyncio.run` waits, without a limit, for every thread of the default executor, and the interpreter
then joins every `concurrent.futures` worker thread at exit. A boto3 call blocked on an unreachable
endpoint (credentials, SQS, DynamoDB, the SES suppression list) would keep a stopped relay alive for
minutes, past systemd's TimeoutStopSec, so that it is killed instead of exiting cleanly. Here the
loop's own work is awaited (it is bounded by the relay's shutdown), and threads get EXIT_WAIT more
seconds; whatever still blocks after that is abandoned (nothing the relay needs is in flight there:
the stores are closed and every send is accounted for before this point).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("relay")
EXIT_WAIT = 2.0  # seconds, for leftover tasks and again for threads


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """auto: uvloop when installed, else asyncio's loop. `uvloop` when it is missing: ImportError."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, None], factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(_shutdown_executor(loop))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=EXIT_WAIT))


async def _shutdown_executor(loop: asyncio.AbstractEventLoop) -> None:
    executor = getattr(loop, "_default_executor", None)
    if executor is None:
        return
    executor.shutdown(wait=False, cancel_futures=True)


def exit_if_threads_block(code: int) -> None:
    """Give live non-daemon threads EXIT_WAIT seconds to end; if some still block, exit with `code`
    now, without them (the interpreter would otherwise wait for them). Returns when none block."""
    deadline = time.monotonic() + EXIT_WAIT
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    current = threading.current_thread()
    blocked = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon and t is not current]
    if not blocked:
        return
    log.warning(
        "exiting with %d blocked thread(s) left behind: %s",
        len(blocked),
        ", ".join(blocked),
        extra={"fields": {"event": "threads_abandoned"}},
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
