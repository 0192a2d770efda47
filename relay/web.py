"""The HTTP side: /metrics, /healthz, /readyz, /sns when SNS feedback is enabled, /api/messages (trace).

Only /sns may face the internet (DESIGN 9): with http.public_listen a second listener serves it
(and /healthz) alone, and the main one no longer does; a route added here is private unless it is
above the `role == "public"` line."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay.trace.api import TraceReader, trace_routes

ReadinessCheck = Callable[[], tuple[bool, str]]
# Which routes one listener serves: "all" (http.listen alone), or the split that http.public_listen
# makes: "admin" (everything but /sns) on http.listen, "public" (/sns and /healthz) on public_listen.
Role = Literal["all", "admin", "public"]
RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    registry: CollectorRegistry,
    checks: dict[str, ReadinessCheck],
    sns_handler: RequestHandler | None = None,
    trace: TraceReader | None = None,
    role: Role = "all",
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        results = {name: check() for name, check in checks.items()}
        ready = all(ok for ok, _ in results.values())
        body = {
            "ready": ready,
            "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in results.items()},
        }
        return web.Response(
            status=200 if ready else 503, text=json.dumps(body) + "\n", content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    if sns_handler is not None and role != "admin":
        app.router.add_post("/sns", sns_handler)
    if role == "public":
        return app  # what may face the internet; everything below stays private
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    if trace is not None:  # /api/messages: admin side (see relay.trace.api)
        app.router.add_routes(trace_routes(trace))
    return app
