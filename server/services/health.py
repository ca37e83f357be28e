"""Readiness: the database answers and its schema is at this server's migration head.

The head revision(s) come from the Alembic scripts shipped with this server, so they cannot
change while it runs: :class:`Readiness` reads them once (at startup) and each ``/readyz``
only asks the database for its current revision.
"""

from __future__ import annotations

from collections.abc import Iterable

from saltline.server.errors import Problem, ProblemCode
from saltline.server.storage.db import Database
from saltline.server.storage.migrate import (
    UPGRADE_COMMAND,
    DatabaseNotMigratedError,
    check_up_to_date,
    current_engine,
)


class Readiness:
    def __init__(self, db: Database, heads: Iterable[str]) -> None:
        self._db = db
        self._heads = frozenset(heads)

    async def check(self) -> None:
        try:
            current = set(await current_engine(self._db.engine))
        except Exception as exc:
            raise Problem(503, ProblemCode.SERVICE_UNAVAILABLE, "database unreachable") from exc
        if current != self._heads:
            have = ", ".join(sorted(current)) or "empty (no migrations applied)"
            raise Problem(
                503,
                ProblemCode.DATABASE_NOT_MIGRATED,
                f"database schema is at {have} but this server needs {', '.join(sorted(self._heads))}: "
                f"run `{UPGRADE_COMMAND}` (with the same --database-url) first",
            )


async def check_ready(db: Database) -> None:
    """Uncached variant (re-reads the migration scripts)."""
    try:
        await check_up_to_date(db.engine)
    except DatabaseNotMigratedError as exc:
        raise Problem(503, ProblemCode.DATABASE_NOT_MIGRATED, str(exc)) from exc
    except Exception as exc:
        raise Problem(503, ProblemCode.SERVICE_UNAVAILABLE, "database unreachable") from exc
