"""Errors of the sync core."""

from __future__ import annotations


class SyncError(Exception):
    """Base class of sync errors."""


class SyncFormatError(SyncError):
    """An operation or clock that does not decode (drop it; it can never apply)."""


class SyncProtocolError(SyncError):
    """The server's order contradicts itself (one ``server_seq`` for two different dots)."""
