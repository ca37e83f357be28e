"""The application factory: ``create_app(settings) -> FastAPI``.

Nothing happens at import time. The lifespan creates the engine, refuses to start unless the
database is migrated to head (the error says to run ``saltline db upgrade``), builds the
:class:`~saltline.server.context.AppContext` and puts it on ``app.state.ctx``.

Adding a subsystem (e.g. delivery): add its router to ``ROUTERS`` (or ``include_router`` in
``create_app``) and start it in :func:`_start_extensions`, registering its stop coroutine in
``ctx.on_shutdown``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket
from starlette.types import Receive, Scope, Send

from saltline.server.api import (
    delivery_setup,
    routes_accounts,
    routes_attachments,
    routes_auth,
    routes_blobs,
    routes_conversations,
    routes_envelopes,
    routes_health,
    routes_keys,
    routes_provisioning,
    ws,
)
from saltline.server.api.log_filters import install_log_filters
from saltline.server.api.problems import GuardMiddleware, install_problem_handlers, install_problem_openapi
from saltline.server.clock import Clock, system_clock
from saltline.server.context import AppContext, build_context
from saltline.server.settings import Settings
from saltline.server.storage.db import Database
from saltline.server.storage.migrate import check_up_to_date

log = logging.getLogger("server")

ROUTERS = [
    routes_health.router,
    routes_accounts.router,
    routes_auth.router,
    routes_keys.router,
    routes_provisioning.router,
    routes_blobs.router,
    routes_attachments.router,
    routes_conversations.router,
    routes_envelopes.router,
    ws.router,
]

#: Bodies above this are refused with 413 before they are read (envelopes carry up to
#: ``max_envelope_bytes`` of ciphertext per recipient device, base64url in JSON).
MIN_BODY_LIMIT = 1024 * 1024


def max_body_bytes(settings: Settings) -> int:
    return max(MIN_BODY_LIMIT, settings.max_envelope_bytes * 4)


async def _start_extensions(ctx: AppContext) -> None:
    """Start subsystems that need the running loop (bus, delivery writer, ...)."""
    await delivery_setup.start_delivery(ctx)


class SaltlineApp(FastAPI):
    """FastAPI, with the delivery socket's upgrade handed straight to its handler.

    A socket open through FastAPI's stack (its telemetry and body-limit middleware, ours, the
    router's match over every route, the websocket route's dependency solving, the exit-stack
    middleware) cost about a third of the server's CPU per open in the reconnect storm (py-spy,
    issue 13), for a route that has no dependencies, no body and no HTTP answer. None of those
    layers acts on a WebSocket scope here (GuardMiddleware passes them through; the exception
    middleware only closes a socket for ``WebSocketException``, which the handler never raises),
    so ``/v1/ws`` is dispatched here first; every other scope takes the usual path. The route
    stays registered (same handler) for anything that reaches the router."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == ws.DELIVERY_PATH:
            scope["app"] = self
            await ws.delivery_socket(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_log_filters()  # after the ASGI server configured its loggers
        db = Database.open(
            settings.database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            pool_size=settings.db_pool_size,
        )
        engine = db.engine
        try:
            await check_up_to_date(engine)
            ctx = build_context(settings, db, clock)
            app.state.ctx = ctx
            await _start_extensions(ctx)
            log.info("saltline server ready (%s)", engine.dialect.name)
            try:
                yield
            finally:
                for stop in reversed(ctx.on_shutdown):
                    try:
                        await stop()
                    except Exception:
                        log.exception("shutdown hook failed")
        finally:
            await db.dispose()

    app = SaltlineApp(
        title="Saltline relay",
        version="1",
        description="End-to-end encrypted messaging relay: holds only ciphertext and public keys.",
        lifespan=lifespan,
        # Starlette would answer "/path/" with a 307 to "/path" built from the Host header (an
        # open redirect through a proxy that forwards Host); a path with a trailing slash is
        # simply not found (404 problem+json).
        redirect_slashes=False,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    install_problem_openapi(app)
    app.add_middleware(
        GuardMiddleware,
        max_body_bytes=max_body_bytes(settings),
        # an attachment PATCH may carry the rest of its upload (its route bounds it by that)
        large_bodies=("PATCH", "/v1/attachments/", settings.max_attachment_bytes),
    )
    for router in ROUTERS:
        app.include_router(router)
    return app
