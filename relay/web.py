"""The HTTP side: /metrics, /healthz, /readyz, /sns when SNS feedback is enabled, /api/messages (trace)
and, with http.console, the web console under /console.

Only /sns may face the internet (DESIGN 9): with http.public_listen a second listener serves it
(and /healthz) alone, and the main one no longer does; a route added here is private unless it is
above the `role == "public"` line. /api/ and /console name recipients and subjects: on top of that,
only clients in http.admin_allowed_networks reach them (403 for others)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay.console.routes import ConsoleSources, console_routes
from relay.smtp.policy import Network, peer_address
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
    console: ConsoleSources | None = None,
    admin_networks: Sequence[Network] = (),
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

    app = web.Application(middlewares=[admin_only(admin_networks)])
    app.router.add_get("/healthz", healthz)
    if sns_handler is not None and role != "admin":
        app.router.add_post("/sns", sns_handler)
    if role == "public":
        return app  # what may face the internet; everything below stays private
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    if trace is not None:  # /api/messages: admin side (see relay.trace.api)
        app.router.add_routes(trace_routes(trace))
    if console is not None:
        app.router.add_routes(console_routes(console))
    return app


ADMIN_PREFIXES = ("/api/", "/console")


def admin_only(networks: Sequence[Network]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Refuse /api/ and /console to clients outside `networks`, before any handler runs: a stranger
    gets 403 for every path under them, existing or not, and learns not even which queue ids exist."""

    @web.middleware
    async def middleware(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIXES) and not _within(request.remote, networks):
            return web.Response(status=403, text="403: not in http.admin_allowed_networks\n")
        return await handler(request)

    return middleware


def _within(remote: str | None, networks: Sequence[Network]) -> bool:
    address = peer_address((remote,))  # None for a Unix socket or no peer: never admitted
    return address is not None and any(address in network for network in networks)
