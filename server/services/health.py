"""Readiness: the database answers and its schema is at this server's migration head."""

from __future__ import annotations

from server.errors import Problem, ProblemCode
from server.storage.db import Database
from server.storage.migrate import DatabaseNotMigratedError, check_up_to_date


async def check_ready(db: Database) -> None:
    try:
        await check_up_to_date(db.engine)
    except DatabaseNotMigratedError as exc:
        raise Problem(503, ProblemCode.DATABASE_NOT_MIGRATED, str(exc)) from exc
    except Exception as exc:
        raise Problem(503, ProblemCode.SERVICE_UNAVAILABLE, "database unreachable") from exc
