"""The console's routes (GET only) on the admin side of the HTTP listener.

Every read runs off the event loop: the trace and the spool on their own store threads, the
suppression store through its async API. Listings are bounded (a queue or suppression list of a
million entries shows its first page, never loads whole).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from relay.console import pages
from relay.console.markup import STYLE
from relay.spool.store import SpoolError, SqliteSpool
from relay.suppression.base import StoreError, SuppressionEntry, SuppressionStore
from relay.trace.query import parse_duration
from relay.trace.schema import TraceError

LIST_LIMIT = 200  # rows on one page of messages, queue or suppression list
SUBSTRING_SCAN_LIMIT = 10_000  # suppression entries read for a search that is not a whole address
MAX_WINDOW_HOURS = 24 * 14

# No script, nothing from elsewhere, not framed; forms only to the console itself.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # the pages name recipients
}


class ConsoleTrace(Protocol):
    async def search(
        self, text: str, since: float | None = None, limit: int = 50
    ) -> list[dict[str, Any]]: ...
    async def timeline(self, queue_id: str) -> dict[str, Any] | None: ...
    async def recent(self, limit: int = 50) -> list[dict[str, Any]]: ...
    async def hourly(self, hours: int) -> list[dict[str, Any]]: ...


@dataclass
class ConsoleSources:
    """What the console reads; None where that part is off (trace.enabled, delivery.mode direct).
    Getters, not objects: the app builds its parts after the HTTP side is set up."""

    trace: Callable[[], ConsoleTrace | None]
    spool: Callable[[], SqliteSpool | None]
    suppression: Callable[[], SuppressionStore | None]
    clock: Callable[[], float] = time.time


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8", headers=HEADERS)


def _unavailable(what: str, exc: Exception) -> web.Response:
    return _html(pages.not_found(f"{what} cannot be read now: {exc}"), 503)


def console_routes(sources: ConsoleSources) -> list[web.RouteDef]:
    async def style(request: web.Request) -> web.Response:
        return web.Response(text=STYLE, content_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def overview(request: web.Request) -> web.Response:
        try:
            window = max(1, min(int(request.query.get("hours", "24")), MAX_WINDOW_HOURS))
        except ValueError:
            window = 24
        trace, spool = sources.trace(), sources.spool()
        try:
            hours = await trace.hourly(window) if trace is not None else None
            counts = await spool.counts() if spool is not None else None
        except (TraceError, SpoolError) as exc:
            return _unavailable("The trace or the spool", exc)
        return _html(pages.overview(hours, counts, window))

    async def messages(request: web.Request) -> web.Response:
        trace = sources.trace()
        if trace is None:
            return _html(pages.not_found("The message trace is off (trace.enabled: false)."), 404)
        q = request.query.get("q", "").strip()
        try:
            since = parse_duration(request.query["since"]) if request.query.get("since") else None
        except ValueError as exc:
            return _html(pages.message_list([], q, error=str(exc)), 400)
        try:
            found = await trace.search(q, since, LIST_LIMIT) if q else await trace.recent(LIST_LIMIT)
        except TraceError as exc:
            return _unavailable("The trace", exc)
        return _html(pages.message_list(found, q))

    async def message(request: web.Request) -> web.Response:
        trace = sources.trace()
        if trace is None:
            return _html(pages.not_found("The message trace is off (trace.enabled: false)."), 404)
        queue_id = request.match_info["queue_id"]
        try:
            found = await trace.timeline(queue_id)
        except TraceError as exc:
            return _unavailable("The trace", exc)
        if found is None:
            return _html(pages.not_found(f"No message {queue_id} in the trace."), 404)
        return _html(pages.message_page(found))

    async def queue(request: web.Request) -> web.Response:
        spool = sources.spool()
        state = request.query.get("state") or None
        if state is not None and state not in pages.QUEUE_STATES:
            known = ", ".join(pages.QUEUE_STATES)
            return _html(pages.not_found(f"No queue state {state}; use one of {known}."), 400)
        if spool is None:
            return _html(pages.queue_page(None, [], state, sources.clock(), LIST_LIMIT))
        try:
            counts = await spool.counts()
            entries, _ = await spool.page(state, limit=LIST_LIMIT)
        except SpoolError as exc:
            return _unavailable("The spool", exc)
        return _html(pages.queue_page(counts, entries, state, sources.clock(), LIST_LIMIT))

    async def suppression(request: web.Request) -> web.Response:
        store = sources.suppression()
        if store is None:
            return _html(pages.not_found("The suppression store is not open."), 503)
        q = request.query.get("q", "").strip()
        found: list[SuppressionEntry] = []
        scanned: int | None = None
        try:
            total = await store.approximate_count()
            if _is_address(q):
                entry = await store.get(q)  # a whole address: one lookup, whatever the store's size
                found = [entry] if entry is not None else []
            if not found:
                found, scanned = await _scan(store, q)
                scanned = scanned if q else None
        except StoreError as exc:
            return _unavailable("The suppression store", exc)
        return _html(pages.suppression_page(found, q, total, scanned, LIST_LIMIT))

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/console")

    return [
        web.get("/console", overview),
        web.get("/console/", root),
        web.get("/console/style.css", style),
        web.get("/console/messages", messages),
        web.get("/console/messages/{queue_id}", message),
        web.get("/console/queue", queue),
        web.get("/console/suppression", suppression),
    ]


def _is_address(text: str) -> bool:
    local, at, domain = text.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() for c in text)


async def _scan(store: SuppressionStore, q: str) -> tuple[list[SuppressionEntry], int]:
    """Entries whose address contains `q` (all when empty), from the first SUBSTRING_SCAN_LIMIT."""
    needle = q.lower()
    found: list[SuppressionEntry] = []
    scanned = 0
    async for entry in store.iter_entries():
        scanned += 1
        if needle in entry.key:
            found.append(entry)
            if len(found) >= LIST_LIMIT:
                break
        if scanned >= SUBSTRING_SCAN_LIMIT:
            break
    return found, scanned
