"""The SDK's one error hierarchy. Every failure a caller of :mod:`client_sdk` can see is a
:class:`SaltlineError`; its message says what to do about it.

::

    SaltlineError
    ├── UsageError                 the app called the SDK wrongly (not registered yet, unknown id...)
    ├── StoreError
    │   ├── StoreLockedError       another client (process) holds this store
    │   ├── StoreKeyError          wrong or missing key for an encrypted store
    │   ├── StoreVersionError      the store was written by a newer SDK
    │   └── StoreCorruptError      the store file was modified or damaged
    │       └── StoreTamperedError a protected row failed its integrity check (forged, moved,
    │                              rolled back or deleted)
    ├── NetworkError               the server could not be reached (retry later)
    ├── ServerError                the server answered with a problem (``code``, ``status``)
    │   ├── AuthError              401/403: log in again, or the device was removed
    │   ├── NotFoundError          404
    │   ├── ConflictError          409 (username taken, idempotency conflict, ...)
    │   ├── RecipientsChangedError 409 recipients_mismatch (handled internally by resending)
    │   └── DeviceListOutdatedError 410 device_list_outdated (handled internally)
    ├── TrustError
    │   ├── UntrustedDeviceListError  a device list failed verification (bad signature, rollback...)
    │   ├── IdentityChangedError      a contact's account key changed and the policy is "block"
    │   └── UntrustedDeviceError      a message/bundle from a device no verified list names
    ├── DecryptError               a message could not be decrypted (dropped, reported as an event)
    │   └── ReplayedPreKeyMessageError  a replayed initial message (refused, sessions untouched)
    ├── ProtocolError              the server sent something that does not follow the protocol
    └── LinkError                  device linking failed (bad/expired code, wrong payload)
        └── LinkNotConfirmedError  the person did not confirm the new device
"""

from __future__ import annotations

from typing import Any


class SaltlineError(Exception):
    """Root of every error the SDK raises."""


class UsageError(SaltlineError):
    """The SDK was called in a way it does not support (the message says what to call first)."""


class MessageTooLargeError(UsageError):
    """The message does not fit the server's envelope limit for all its recipient devices; it was
    not queued. Send less text (or, for files, an attachment)."""

    def __init__(self, size: int, limit: int, devices: int, largest: int) -> None:
        self.size = size
        self.limit = limit
        self.devices = devices
        self.largest = largest
        super().__init__(
            f"the message is too large: about {size} bytes for {devices} recipient device(s), over the "
            f"server's limit of {limit} bytes per envelope; at most {largest} bytes of text fit"
        )


class StoreError(SaltlineError):
    """The device store failed or holds data this SDK cannot read."""


class StoreLockedError(StoreError):
    """Another client (or process) has this store open; close it first. Two clients on one store
    would corrupt the ratchet state."""


class StoreKeyError(StoreError):
    """The store's encryption key is wrong or missing (or a key was given for a store that is not
    encrypted). Nothing was read; open the store again with the key it was created with."""


class StoreVersionError(StoreError):
    """The store was written by a newer version of the SDK (schema or encryption format this
    version cannot read): upgrade the SDK. The file is left untouched."""


class StoreCorruptError(StoreError):
    """Stored data failed its integrity check (an encrypted value does not authenticate, or a
    required value is missing): the file was modified or damaged. Restore it from a backup or
    link this device again."""


class StoreTamperedError(StoreCorruptError):
    """A row of an encrypted store failed its integrity check: a contact's pinned key, a verified
    mark, a trust policy, a member list, a session or another authenticated row was changed, copied
    to another place, rolled back to an older copy, added or deleted outside Saltline. Nothing from
    it was used. Restore the store from a backup, or delete it and link this device again."""


class NetworkError(SaltlineError):
    """The server could not be reached; the operation may be retried (sends are kept in the outbox)."""


class ServerError(SaltlineError):
    """The server refused a request with a problem document (RFC 9457). ``code`` is the stable
    machine-readable code (``docs/protocol`` / server ``ProblemCode``)."""

    def __init__(self, status: int, code: str, detail: str = "", body: dict[str, Any] | None = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.body: dict[str, Any] = body or {}
        super().__init__(f"server refused the request ({status} {code}): {detail or 'no detail'}")


class AuthError(ServerError):
    """Not authenticated or not allowed: log in again; if the device was removed from the account,
    link it again."""


class NotFoundError(ServerError):
    """The server knows no such account, conversation or channel."""


class ConflictError(ServerError):
    """The request conflicts with the server's state (for example, the username is taken)."""


class RecipientsChangedError(ServerError):
    """409 recipients_mismatch: the devices of the conversation changed. The client re-fetches
    and verifies the device lists and resends; callers only see it if that keeps failing."""


class DeviceListOutdatedError(ServerError):
    """410 device_list_outdated: a member's device list is newer than the one encrypted against."""


class TrustError(SaltlineError):
    """Something failed a trust check; nothing was encrypted to, or accepted from, it."""


class UntrustedDeviceListError(TrustError):
    """A device list did not verify against the pinned account key (bad signature, unsigned device,
    rollback, fork or broken chain). The server may be attacking; nothing is sent to its devices."""


class IdentityChangedError(TrustError):
    """A contact's account key changed and the contact's trust policy is "block": compare safety
    numbers with them, then call ``verify_contact(username)`` to accept the new key."""

    def __init__(self, username: str) -> None:
        self.username = username
        super().__init__(
            f"the account key of {username!r} changed; compare safety numbers and call "
            f"verify_contact({username!r}) before sending to them"
        )


class UntrustedDeviceError(TrustError):
    """A message or bundle came from a device that no verified device list names."""


class DecryptError(SaltlineError):
    """A received message could not be decrypted or parsed (it is dropped and reported)."""


class ReplayedPreKeyMessageError(DecryptError):
    """An initial ("prekey") message whose base key this device already accepted with the same
    last-resort (or signed) prekey, and which matches no session it holds: a replay. It is
    refused without touching any session (docs/protocol/session-setup.md § 6.2)."""


class ProtocolError(SaltlineError):
    """The server sent a response or frame that does not follow the protocol."""


class NotAllowedError(UsageError):
    """The conversation's authenticated membership does not allow this account to do this: it is
    not a member (it was removed or never added), or a membership change needs an admin, or a
    direct conversation's members are fixed (docs/protocol/sync.md § 5.7). Nothing was queued."""


class MembershipUnknownError(TrustError):
    """The conversation's authenticated start (its creator's genesis operation) has not arrived
    yet, so nobody can be told who its members are: the operation waits in the outbox and is sent
    once it arrives."""


class UntrustedConversationError(SaltlineError):
    """The server described a conversation in a way this device refuses: a direct conversation
    that does not have exactly this account and one other, or a new conversation whose kind or
    members differ from what this device asked for. Nothing is sent to it."""


class LinkError(SaltlineError):
    """Linking a device failed: the link code is malformed or expired, or the payload is not for
    this device. Start again with a new link code."""


class LinkNotConfirmedError(LinkError):
    """The person did not confirm the new device's name and code on the approving device: nothing
    was sealed or sent to it."""


class AttachmentError(SaltlineError):
    """An attachment could not be sent or received (the subclasses say why). Nothing partial is
    ever left at a download's destination."""


class AttachmentIntegrityError(AttachmentError):
    """The downloaded attachment does not match its pointer: wrong digest (tampered, swapped or
    truncated by the server), or the ciphertext does not decrypt. Nothing was written."""


class AttachmentTooLargeError(AttachmentError, UsageError):
    """The file is larger than the server accepts (``limit`` bytes padded)."""

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class AttachmentExpiredError(AttachmentError, ServerError):
    """The server no longer holds the attachment (410 ``attachment_expired``)."""


class AttachmentUnavailableError(AttachmentError, ServerError):
    """The server does not hold such an attachment (404) or its upload is not finished (409)."""


_BY_CODE: dict[str, type[ServerError]] = {
    "recipients_mismatch": RecipientsChangedError,
    "device_list_outdated": DeviceListOutdatedError,
    "attachment_expired": AttachmentExpiredError,
    "attachment_incomplete": AttachmentUnavailableError,
}


def server_error(status: int, body: dict[str, Any] | None) -> ServerError:
    """The typed error for a problem response (status and parsed JSON body, if any)."""
    body = body or {}
    code = str(body.get("code") or f"http_{status}")
    detail = str(body.get("detail") or body.get("title") or "")
    cls = _BY_CODE.get(code)
    if cls is None:
        if status in (401, 403):
            cls = AuthError
        elif status == 404:
            cls = NotFoundError
        elif status == 409:
            cls = ConflictError
        else:
            cls = ServerError
    return cls(status, code, detail, body)
