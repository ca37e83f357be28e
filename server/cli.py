"""``python -m saltline.server serve`` and ``python -m saltline.server db upgrade|downgrade|current``.

The public ``saltline`` command (saltline.client_sdk.cli) runs these through ``python -m saltline.server``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from saltline.server.settings import Settings

if TYPE_CHECKING:
    from saltline.server.transport import TransportLimits

#: Largest WebSocket message the server accepts (auth, ack and pong frames are tiny; a ``send``
#: frame carries an envelope; larger envelopes use HTTP). Keep equal to
#: ``saltline.server.api.ws.WS_MAX_MESSAGE_BYTES``.
WS_MAX_SIZE = 64 * 1024

app = typer.Typer(help="Saltline relay server", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database migrations (Alembic)", no_args_is_help=True)
app.add_typer(db_app, name="db")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="sqlite+aiosqlite:///path or postgresql+asyncpg://... (env SALTLINE_DATABASE_URL)",
    ),
]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (env SALTLINE_DATA_DIR)")]


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment and the given flags; a bad value is a clear error (exit 2),
    not a traceback."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            typer.echo(f"error: {where}: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None


def connection_cap(settings: Settings) -> int:
    """``max_connections``, below the soft file-descriptor limit (100 kept for the database,
    logs and the listening socket), so the cap refuses before ``accept`` fails."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - 100))


def transport_limits(settings: Settings) -> TransportLimits:
    """The limits ``saltline.server.transport`` enforces below the application."""
    from saltline.server.transport import TransportLimits

    return TransportLimits(
        max_connections=connection_cap(settings),
        http_head_timeout_s=settings.http_head_timeout_s,
        http_max_pipeline=settings.http_max_pipeline,
        http_max_head_bytes=settings.http_max_head_bytes,
        ws_write_buffer_max_bytes=settings.ws_write_buffer_max_bytes,
        ws_close_timeout_s=settings.ws_close_timeout_s,
        http_body_timeout_s=settings.http_body_timeout_s,
        http_body_min_rate=settings.http_body_min_rate,
        http_write_timeout_s=settings.http_write_timeout_s,
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings of ``serve`` (also used by the tests' live server)."""
    from saltline.server.transport import protocol_classes

    http_protocol, ws_protocol = protocol_classes(transport_limits(settings))
    return {
        # uvicorn's httptools and websockets (sans-I/O) protocols with the limits uvicorn lacks:
        # pipelining depth, request-head timeout, connection cap, WebSocket write buffer
        "http": http_protocol,
        "ws": ws_protocol,
        # uvicorn's protocol ping closes with 1011 when unanswered, a code delivery.md reserves
        # for internal errors; the application heartbeat (4004, delivery.md § 5) reaps dead peers
        "ws_ping_interval": None,
        # messages read ahead of the application per socket (uvicorn's default is 32 x ws_max_size)
        "ws_max_queue": 4,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # uvicorn's default is 16 MiB, buffered before the app sees a frame, even unauthenticated.
        "ws_max_size": WS_MAX_SIZE,
        # Frames carry ciphertext (incompressible) next to attacker-chosen metadata and, first,
        # the access token: compressing them costs CPU and memory per socket for nothing and
        # opens a compression side channel. So permessage-deflate is never negotiated.
        "ws_per_message_deflate": False,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default (or $FORWARDED_ALLOW_IPS):
        # only when the operator names the proxy's addresses here.
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
    }


@app.command()
def serve(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Bind address (env SALTLINE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env SALTLINE_PORT)")] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level (env SALTLINE_LOG_LEVEL)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Server processes, one core each; over 1 needs SALTLINE_REDIS_URL (env SALTLINE_WORKERS)"
        ),
    ] = None,
) -> None:
    """Run the server with uvicorn."""
    import uvicorn

    from saltline.server.api.log_filters import quiet_data_loggers
    from saltline.server.app import create_app
    from saltline.server.storage import migrate
    from saltline.server.storage.migrate import UPGRADE_COMMAND, is_up_to_date

    overrides = {
        "database_url": database_url,
        "data_dir": data_dir,
        "host": host,
        "port": port,
        "log_level": log_level,
        "workers": workers,
    }
    settings = _settings(**overrides)
    if migrate.is_fresh_sqlite(settings.database_url):
        # a newcomer's first command: the embedded default creates its schema (docs/deploy.md)
        migrate.upgrade(settings.database_url, "head")
        typer.echo(f"created the database schema at {_redact(settings.database_url)}", err=True)
    if not is_up_to_date(settings.database_url):
        typer.echo(
            f"error: the database at {_redact(settings.database_url)} is not migrated to this "
            f"server's schema; run `{UPGRADE_COMMAND}` first",
            err=True,
        )
        raise typer.Exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_data_loggers()  # no SQL parameters, rows or frames at debug level
    if settings.workers > 1:
        _serve_workers(settings, overrides)
        return
    uvicorn.run(create_app(settings), **uvicorn_options(settings))


def _serve_workers(settings: Settings, overrides: dict[str, Any]) -> None:
    """``serve --workers N`` (saltline.server.workers): uvicorn's supervisor, the app and the
    protocol classes named by import strings and rebuilt in each worker from the environment."""
    import uvicorn

    from saltline.server import workers

    workers.configure_parent(settings, overrides)
    options = uvicorn_options(settings)
    options.update(http=workers.HTTP_PROTOCOL, ws=workers.WS_PROTOCOL, workers=settings.workers)
    with workers.metrics_directory():
        uvicorn.run(workers.APP_FACTORY, factory=True, **options)


@db_app.command()
def upgrade(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Migrate the database to ``revision`` (default: head)."""
    from saltline.server.storage import migrate

    settings = _settings(database_url=database_url, data_dir=data_dir)
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at {', '.join(migrate.current(settings.database_url)) or 'base'}")


@db_app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. base or 0001_initial")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Migrate the database down to ``revision``."""
    from saltline.server.storage import migrate

    settings = _settings(database_url=database_url, data_dir=data_dir)
    migrate.downgrade(settings.database_url, revision)
    typer.echo(f"database at {', '.join(migrate.current(settings.database_url)) or 'base'}")


@db_app.command()
def current(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """Print the database's current revision and whether it is at head."""
    from saltline.server.storage import migrate

    settings = _settings(database_url=database_url, data_dir=data_dir)
    revs = migrate.current(settings.database_url)
    heads = migrate.head_revisions()
    state = "up to date" if set(revs) == set(heads) else f"behind head {', '.join(heads)}"
    typer.echo(f"{', '.join(revs) or 'base (empty)'} ({state})")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()
