"""The trace's JSON API on the HTTP listener (the same JSON as `ses-relay trace --json`).

- GET /api/messages?q=QUERY[&since=DURATION][&limit=N]: the timelines of the messages QUERY names
  (queue id, Message-ID, SES message id or recipient), newest first: {"messages": [...]}.
- GET /api/messages/<queue-id>: one message's timeline; 404 when the trace has no such message.

Read-only. It names recipients and subjects, so it belongs on the admin side of the HTTP listener,
never next to a public /sns route.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiohttp import web

from relay.trace.query import parse_duration
from relay.trace.schema import TraceError

MAX_LIMIT = 500


class TraceReader(Protocol):
    async def search(
        self, text: str, since: float | None = None, limit: int = 50
    ) -> list[dict[str, Any]]: ...

    async def timeline(self, queue_id: str) -> dict[str, Any] | None: ...


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body) + "\n", content_type="application/json")


def trace_routes(trace: TraceReader) -> list[web.RouteDef]:
    async def messages(request: web.Request) -> web.Response:
        text = request.query.get("q", "").strip()
        if not text:
            return _json({"error": "q is required: a queue id, Message-ID, SES message id or address"}, 400)
        try:
            since = parse_duration(request.query["since"]) if "since" in request.query else None
            limit = int(request.query.get("limit", "50"))
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        try:
            found = await trace.search(text, since, max(1, min(limit, MAX_LIMIT)))
        except TraceError as exc:
            return _json({"error": str(exc)}, 503)
        return _json({"messages": found})

    async def message(request: web.Request) -> web.Response:
        try:
            found = await trace.timeline(request.match_info["queue_id"])
        except TraceError as exc:
            return _json({"error": str(exc)}, 503)
        if found is None:
            return _json({"error": "no such message in the trace"}, 404)
        return _json(found)

    return [web.get("/api/messages", messages), web.get("/api/messages/{queue_id}", message)]
