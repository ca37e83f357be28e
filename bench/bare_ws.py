"""A bare FastAPI WebSocket endpoint: the memory reference for the idle test of bench/pairs.py.

    .venv/bin/python bench/bare_ws.py --port 8765 [--heartbeat-interval-s 5] [--workers N]

It speaks the same minimal frames as Saltline's ``/v1/ws`` for an idle device, and nothing else:
the first frame ``{"type":"auth",...}`` (not verified) is answered with ``{"type":"ready"}``; the
server sends ``{"type":"ping","queue_seq":0}`` every interval; a client ``{"type":"ping"}`` gets
``{"type":"pong"}``; ``{"type":"pong"}`` is accepted. No database, no auth, no registry, no bus:
per connection there is the ASGI/uvicorn/websockets state plus two tasks (reader, heartbeat).

Run under the same uvicorn settings as ``python -m saltline.server serve`` (loop/http/ws "auto": uvloop,
httptools, websockets when installed; ``ws_max_size`` 64 KiB; no permessage-deflate), so the
difference in memory per connection is what Saltline adds per held device socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import orjson
import uvicorn
from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect


def create_app(heartbeat_interval_s: float) -> FastAPI:
    app = FastAPI(title="bare websocket reference")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/v1/ws")
    async def socket(ws: WebSocket) -> None:
        await ws.accept()
        try:
            first = await ws.receive_text()
            if orjson.loads(first).get("type") != "auth":
                await ws.close(code=4003)
                return
            await ws.send_text('{"type":"ready"}')

            async def heartbeat() -> None:
                while True:
                    await asyncio.sleep(heartbeat_interval_s)
                    await ws.send_text('{"type":"ping","queue_seq":0}')

            beat = asyncio.create_task(heartbeat())
            try:
                while True:
                    frame = orjson.loads(await ws.receive_text())
                    if frame.get("type") == "ping":
                        await ws.send_text('{"type":"pong"}')
            finally:
                beat.cancel()
                with contextlib.suppress(BaseException):
                    await beat
        except (WebSocketDisconnect, RuntimeError, orjson.JSONDecodeError):
            return

    return app


def factory() -> FastAPI:
    """The app of each worker with ``--workers N`` (settings from the environment)."""
    return create_app(float(os.environ.get("BARE_WS_HEARTBEAT_INTERVAL_S", "15")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--heartbeat-interval-s", type=float, default=15.0)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--workers", type=int, default=1, help="processes, as saltline's serve --workers")
    args = parser.parse_args()
    os.environ["BARE_WS_HEARTBEAT_INTERVAL_S"] = str(args.heartbeat_interval_s)
    uvicorn.run(
        "bare_ws:factory" if args.workers > 1 else create_app(args.heartbeat_interval_s),
        factory=args.workers > 1,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws_max_size=64 * 1024,  # as saltline.server.cli.serve
        ws_per_message_deflate=False,  # as saltline.server.cli.serve
    )


if __name__ == "__main__":
    main()
