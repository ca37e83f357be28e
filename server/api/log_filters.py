"""Filters for the ASGI server's own log records.

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


def install_log_filters() -> None:
    """Add the filters once per process (idempotent: apps may be created many times)."""
    logger = logging.getLogger(UVICORN_ERROR_LOGGER)
    if not any(isinstance(f, ClientInputNoTraceback) for f in logger.filters):
        logger.addFilter(ClientInputNoTraceback())
