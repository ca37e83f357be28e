"""Alembic environment for Saltline.

Two ways in:
- :mod:`saltline.server.storage.migrate` runs commands on a connection it already holds (from the async
  engine, through ``run_sync``) and passes it as ``config.attributes["connection"]``;
- the ``alembic`` command line (``alembic -c server/alembic.ini ...``) builds an async engine from
  ``sqlalchemy.url`` or, when that is empty, from ``SALTLINE_DATABASE_URL`` / the default Settings.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util

from alembic import context
from sqlalchemy.engine import Connection

from saltline.server.storage.schema import metadata

# Table modules that register on the same metadata (for autogenerate comparisons only; the
# migrations themselves are written explicitly).
for _module in ("saltline.server.storage.delivery_schema",):
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module)

config = context.config
target_metadata = metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from saltline.server.settings import Settings

    return Settings().database_url


async def _run_async() -> None:
    from saltline.server.storage.db import create_engine

    engine = create_engine(_url())
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_configure_and_run)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
