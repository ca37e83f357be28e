"""``saltline daemon``: serve profiles over JSON-RPC 2.0 (docs/daemon.md;
:mod:`saltline.client_sdk.daemon`)."""

from __future__ import annotations

import logging
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated

import typer

from saltline.client_sdk.cli.app import State, app, cli_state, fail, open_client, run
from saltline.client_sdk.cli.profile import Profile, saltline_home
from saltline.client_sdk.errors import SaltlineError


@app.command()
def daemon(
    ctx: typer.Context,
    stdio: Annotated[
        bool, typer.Option("--stdio", help="JSON-RPC lines on stdin/stdout (the default)")
    ] = False,
    socket_path: Annotated[
        Path | None,
        typer.Option(
            "--socket",
            metavar="PATH",
            help="JSON-RPC lines (or HTTP) on a UNIX socket; 'default': "
            "$XDG_RUNTIME_DIR/saltline/daemon.sock (else ~/.saltline/daemon.sock)",
        ),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http", metavar="HOST:PORT", help="POST /rpc and GET /events (SSE); host 127.0.0.1 by default"
        ),
    ] = None,
    profiles: Annotated[
        list[str] | None,
        typer.Option(
            "--profile", "-p", help="A profile to serve (repeat for several; default: the global --profile)"
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="Where --http writes its bearer token (default $SALTLINE_HOME/daemon/http-token)",
        ),
    ] = None,
    max_body: Annotated[int, typer.Option("--max-body", help="Largest request in bytes")] = 1 << 20,
) -> None:
    """Serve one or more profiles to other programs over JSON-RPC 2.0 (see docs/daemon.md)."""
    from saltline.client_sdk.daemon.http import DEFAULT_MAX_BODY
    from saltline.client_sdk.daemon.hub import Hub
    from saltline.client_sdk.daemon.server import Daemon, Options, default_socket_path, parse_http

    state = cli_state(ctx)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="saltline daemon: %(message)s")
    names = list(dict.fromkeys(profiles or [state.profile.name]))
    try:
        served = [Profile.named(n) for n in names]
        options = Options(
            stdio=stdio or (socket_path is None and http is None),
            socket_path=None
            if socket_path is None
            else default_socket_path()
            if str(socket_path) == "default"
            else socket_path.expanduser().absolute(),
            http=None if http is None else parse_http(http),
            token_file=(token_file or saltline_home() / "daemon" / "http-token").expanduser().absolute(),
            max_body=max(1024, max_body or DEFAULT_MAX_BODY),
        )
    except SaltlineError as exc:
        fail(str(exc))

    async def work() -> None:
        async with AsyncExitStack() as stack:
            clients = {
                p.name: await stack.enter_async_context(open_client(State(p, state.server))) for p in served
            }
            await Daemon(Hub(clients), options).run()

    try:
        run(work())
    except KeyboardInterrupt:
        pass
