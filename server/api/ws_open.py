"""The delivery socket's first step (docs/protocol/delivery.md § 5.3): the auth frame and its
token, checked without I/O; and a close that never waits for a peer that does not read."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import WebSocket

from saltline.server.context import AppContext
from saltline.server.errors import Problem
from saltline.server.services import delivery_protocol as protocol
from saltline.server.services.auth import AccessClaims
from saltline.server.services.delivery_protocol import AUTH_TIMEOUT_S, CLOSE_AUTH_FAILED

#: How long a close frame's write may wait for a peer that does not read. Giving up ends the
#: handler; ``saltline.server.transport`` then aborts the transport (uvicorn alone would ``close()`` it and
#: wait for the unsent bytes to drain for ever), as it does ``ws_close_timeout_s`` after a close
#: frame that was written but not answered.
CLOSE_TIMEOUT_S = 2.0


async def _close_or_abort(ws: WebSocket, code: int, reason: str) -> None:
    """Close, but never wait more than :data:`CLOSE_TIMEOUT_S` for it: a client that stops reading
    blocks the close frame's write. Giving up and returning lets the server drop the transport
    (``saltline.server.transport`` aborts a socket whose handler ended with bytes unsent)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, reason=reason[:120]), CLOSE_TIMEOUT_S)


async def authenticate(ws: WebSocket, ctx: AppContext) -> AccessClaims | None:
    """Read the auth frame and verify its token (signature, type, expiry: no I/O). The device and
    the token family are checked in the database once the socket is subscribed to their events."""
    try:
        message = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
    except TimeoutError:
        await _close_or_abort(ws, CLOSE_AUTH_FAILED, "no auth frame")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    token = protocol.auth_token(message)
    if token is None:
        await _close_or_abort(ws, CLOSE_AUTH_FAILED, "the first frame must be {type: auth, token}")
        return None
    try:
        return ctx.auth.decode_access_token(token)
    except Problem as problem:
        await _close_or_abort(ws, CLOSE_AUTH_FAILED, problem.code.value)
        return None
