"""The server's one error vocabulary: :class:`ProblemCode` and the :class:`Problem` exception.

Every error response is ``application/problem+json`` (RFC 9457)::

    {"type": "https://saltline.dev/problems/<code>", "title": ..., "status": ...,
     "detail": ..., "code": "<code>", ...extra members}

``code`` is stable: clients branch on it, never on ``title`` or ``detail``. Services raise
:class:`Problem`; the handlers in :mod:`saltline.server.api.problems` render it. This module imports no
web framework, so services can use it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

PROBLEM_TYPE_BASE = "https://saltline.dev/problems/"


class ProblemCode(StrEnum):
    """Stable machine-readable error codes. Each member documents when it is used."""

    # -- generic -----------------------------------------------------------------------------
    VALIDATION_FAILED = "validation_failed"
    """422: the request body, path or query does not match the schema (types, sizes, counts)."""
    MALFORMED_KEY = "malformed_key"
    """422: a key, signature or base64url field does not decode as the expected ``crypto`` type."""
    NOT_FOUND = "not_found"
    """404: no such route or resource (account, device, channel)."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    """405: the route exists but not for this HTTP method."""
    PAYLOAD_TOO_LARGE = "payload_too_large"
    """413: the request body is larger than the server accepts."""
    RATE_LIMITED = "rate_limited"
    """429: too many attempts from this IP or for this account; see ``Retry-After``."""
    STORAGE_QUOTA_EXCEEDED = "storage_quota_exceeded"
    """507: the account has as many bytes stored as its quota allows (``limit`` and ``stored`` are
    given); the upload fits once older uploads expire."""
    REQUEST_TIMEOUT = "request_timeout"
    """408: the request body did not arrive within the server's body timeout (a trickled or
    stalled upload); the connection is closed. Send the request again."""
    CONFLICT = "conflict"
    """409: the request conflicts with a concurrent change; retry after re-reading."""
    INTERNAL_ERROR = "internal_error"
    """500: an unexpected server fault (a bug). Never caused by bad input."""
    DATABASE_NOT_MIGRATED = "database_not_migrated"
    """503: the database schema is behind this server; run ``saltline db upgrade``."""
    SERVICE_UNAVAILABLE = "service_unavailable"
    """503: the database is unreachable."""

    # -- auth --------------------------------------------------------------------------------
    UNAUTHORIZED = "unauthorized"
    """401: no credentials, or credentials that are not valid (wrong password, bad token)."""
    TOKEN_EXPIRED = "token_expired"
    """401: the access or refresh token has expired; refresh or log in again."""
    TOKEN_REVOKED = "token_revoked"
    """401: the token was revoked (device removed, family revoked, logged out)."""
    REFRESH_TOKEN_REUSED = "refresh_token_reused"
    """401: an already-rotated refresh token was presented again; its whole family is revoked."""
    CHALLENGE_INVALID = "challenge_invalid"
    """401: the login challenge is unknown, expired, already used or for another device."""
    DEVICE_SIGNATURE_INVALID = "device_signature_invalid"
    """401: the login challenge signature does not verify under the device's signing key."""
    FORBIDDEN = "forbidden"
    """403: authenticated, but not allowed to do this."""
    DEVICE_NOT_ACTIVE = "device_not_active"
    """403: the device is not in the account's current device list (never added, or removed)."""

    # -- accounts ----------------------------------------------------------------------------
    USERNAME_TAKEN = "username_taken"
    """409: the username (compared case-insensitively) is already registered."""
    USERNAME_INVALID = "username_invalid"
    """422: the username is not 3-32 characters of ``[a-z0-9_.-]`` (case-insensitive)."""
    PASSWORD_WEAK = "password_weak"
    """422: the password is shorter than 10 or longer than 256 characters."""
    DEVICE_ID_TAKEN = "device_id_taken"
    """409: a device id in the list already belongs to another account, or was removed before
    (device ids are never reused)."""
    TOO_MANY_DEVICES = "too_many_devices"
    """422: the device list names more devices than ``max_devices_per_account``."""

    # -- device lists ------------------------------------------------------------------------
    DEVICE_LIST_INVALID = "device_list_invalid"
    """422: the signed list does not parse, is not signed by the account key, names another
    account key or username, or a device entry is not bound (no valid binding signature)."""
    DEVICE_LIST_STALE = "device_list_stale"
    """409: the list's version is not the current version + 1 (``current_version`` is given)."""
    DEVICE_LIST_CHAIN_BROKEN = "device_list_chain_broken"
    """409: the list's previous hash is not the hash of the current list."""
    DEVICE_NOT_IN_LIST = "device_not_in_list"
    """422: the device making the request (or registering) is not named by the list."""
    DEVICE_GRANT_INVALID = "device_grant_invalid"
    """403: a token-less (linking) device-list update without a valid one-time device grant of
    the account (missing, unknown, expired or used), or the list does more than add exactly the
    granted device (same device id and signing key), or it changes the account key."""

    # -- key directory -----------------------------------------------------------------------
    PREKEY_SIGNATURE_INVALID = "prekey_signature_invalid"
    """422: a prekey's signature does not verify under the uploading device's signing key
    (``index`` names the first bad prekey)."""
    PREKEY_KIND_MISMATCH = "prekey_kind_mismatch"
    """422: a prekey was uploaded in the field of another kind (e.g. a one-time key as signed)."""
    PREKEY_BATCH_TOO_LARGE = "prekey_batch_too_large"
    """413: more one-time prekeys in one upload than ``max_prekeys_per_upload``."""
    NO_PREKEYS = "no_prekeys"
    """404: the device has published no signed prekey yet, so it cannot be reached."""
    PREKEY_STORE_FULL = "prekey_store_full"
    """422: the upload would leave the device with more one-time prekeys stored than
    ``max_stored_one_time_prekeys`` (``limit`` and ``stored`` are given)."""
    TOO_MANY_CLAIM_TARGETS = "too_many_claim_targets"
    """413: a claim names more distinct devices than ``max_claim_targets``."""

    # -- provisioning ------------------------------------------------------------------------
    PROVISIONING_CHANNEL_NOT_FOUND = "provisioning_channel_not_found"
    """404: the channel does not exist, has expired, or the channel secret is wrong."""
    PROVISIONING_PAYLOAD_EXISTS = "provisioning_payload_exists"
    """409: a payload was already put on this channel."""

    # -- conversations and delivery ------------------------------------------------------------
    CONVERSATION_NOT_FOUND = "conversation_not_found"
    """404: no such conversation, or the caller's account is not a member of it (the two are not
    told apart, so conversation ids cannot be probed)."""
    UNKNOWN_ACCOUNTS = "unknown_accounts"
    """422: a conversation member is not a registered account (``accounts`` lists them)."""
    DIRECT_CONVERSATION_FIXED = "direct_conversation_fixed"
    """409: a direct (1:1) conversation always has exactly its two members; add a group instead."""
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    """409: this device already sent an envelope with this ``envelope_id`` but a different body
    (``server_seq`` of the stored one is given). A genuine retry must resend the same bytes."""
    RECIPIENTS_MISMATCH = "recipients_mismatch"
    """409: the ciphertexts are not addressed to exactly the current devices of every member plus
    the sender's other devices. ``accounts`` maps account id -> ``{"missing": [device ids],
    "extra": [device ids]}``; ``unknown_devices`` lists ids that belong to no member. Fetch the
    device lists (or keys) of those accounts, encrypt for the missing devices, drop the extra."""
    DEVICE_LIST_OUTDATED = "device_list_outdated"
    """410: a ``device_list_versions`` entry is not that account's current signed-list version (or
    a member account is missing from it). ``accounts`` maps account id -> ``{"version": n,
    "signed_list": base64url}``: verify the lists, re-encrypt and send again."""
    ENVELOPE_TOO_LARGE = "envelope_too_large"
    """413: the envelope's ciphertexts and clock together exceed ``max_envelope_bytes``, or the
    clock alone is over its limit."""
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    """413: more ciphertexts than ``max_recipients``, or a group larger than that."""
    EPHEMERAL_TOO_LARGE = "ephemeral_too_large"
    """413: an ephemeral envelope's ciphertexts and clock together exceed ``limit`` bytes
    (typing indicators are small; they are buffered in memory for slow sockets)."""
    NO_RECIPIENTS = "no_recipients"
    """422: a stored envelope with no recipient device at all (the sender's device is the only
    device in the conversation): nobody could ever read it."""
    # -- attachments (server/services/attachments.py) -------------------------------------------
    ATTACHMENT_EXPIRED = "attachment_expired"
    """410: the attachment is older than ``attachment_retention_s``; its bytes are gone."""
    ATTACHMENT_OFFSET_MISMATCH = "attachment_offset_mismatch"
    """409: a PATCH's ``Upload-Offset`` is not the upload's offset (``offset``; ``HEAD`` for it)."""
    ATTACHMENT_INCOMPLETE = "attachment_incomplete"
    """409: a download of an upload that has not reached its ``Upload-Length`` yet."""
    ATTACHMENT_LENGTH_NOT_PADDED = "attachment_length_not_padded"
    """422: ``Upload-Length`` is not a Padmé bucket (``padded``: the bucket to use)."""
    RANGE_NOT_SATISFIABLE = "range_not_satisfiable"
    """416: a ``Range`` that is not one byte range within the attachment (``length``)."""
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    """415: a PATCH body that is not ``application/offset+octet-stream``."""


_TITLES: dict[ProblemCode, str] = {
    ProblemCode.VALIDATION_FAILED: "Request validation failed",
    ProblemCode.NOT_FOUND: "Not found",
    ProblemCode.METHOD_NOT_ALLOWED: "Method not allowed",
    ProblemCode.RATE_LIMITED: "Too many requests",
    ProblemCode.INTERNAL_ERROR: "Internal server error",
}


def problem_title(code: ProblemCode) -> str:
    return _TITLES.get(code, code.value.replace("_", " ").capitalize())


class Problem(Exception):
    """An error with an HTTP status, a stable code, a human detail and extra members.

    ``extra`` members are added to the problem document (they must be JSON-serialisable and
    must never contain secrets). ``headers`` are added to the response (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: ProblemCode,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {code.value}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail or problem_title(code)
        self.headers = headers or {}
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code.value,
            "title": problem_title(self.code),
            "status": self.status,
            "detail": self.detail,
            "code": self.code.value,
        }
        for key, value in self.extra.items():
            body.setdefault(key, value)
        return body
