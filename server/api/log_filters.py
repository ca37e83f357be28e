"""Filters for the ASGI server's and the libraries' log records.

Libraries that log data at DEBUG are held at a level where they do not
(:func:`quiet_data_loggers`, :data:`DATA_LOGGERS`): at ``--log-level debug`` aiosqlite logs every
call with its SQL parameters and results (argon2 hashes, usernames), SQLAlchemy's engine logs
statements with parameters (also hidden by ``hide_parameters``) and rows, asyncpg and websockets
log queries and frames (tokens, ciphertexts). Tested in tests/server/test_debug_logs.py.

uvicorn's WebSocket protocol logs a client's text frame that is not valid UTF-8 with
``logger.exception`` (a traceback on ``uvicorn.error``) before it closes the socket with 1007, as
RFC 6455 § 8.1 requires. A client's bad input is not a server error: the record keeps one line,
at WARNING, without the traceback.
"""

from __future__ import annotations

import logging

UVICORN_ERROR_LOGGER = "uvicorn.error"
_INVALID_UTF8 = "Invalid UTF-8 sequence received from client."


class ClientInputNoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _INVALID_UTF8:
            record.msg = "invalid UTF-8 in a client's WebSocket text frame; closed with 1007"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


#: logger -> the lowest level it may log at: below it, its records carry request data.
DATA_LOGGERS: dict[str, int] = {
    "aiosqlite": logging.INFO,
    "asyncpg": logging.INFO,
    "sqlalchemy.engine": logging.WARNING,
    "sqlalchemy.orm": logging.WARNING,
    "websockets": logging.INFO,
    "httpcore": logging.INFO,
    "httpx": logging.INFO,
}


def quiet_data_loggers() -> None:
    """Raise each of :data:`DATA_LOGGERS` to its level, whatever the root level (idempotent)."""
    for name, level in DATA_LOGGERS.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)


def install_log_filters() -> None:
    """Add the filters once per process (idempotent: apps may be created many times), and quiet
    the loggers that would print request data."""
    quiet_data_loggers()
    logger = logging.getLogger(UVICORN_ERROR_LOGGER)
    if not any(isinstance(f, ClientInputNoTraceback) for f in logger.filters):
        logger.addFilter(ClientInputNoTraceback())
