"""The device's durable state, behind one narrow Protocol per aggregate (libsignal's
``storage/traits.rs`` shape). :mod:`saltline.client_sdk.stores.memory` is the in-memory implementation the
tests use; :mod:`saltline.client_sdk.stores.sqlite` the durable one.

Conventions (every implementation follows them):

* Ids are unpadded base64url text of the 16 raw bytes (as on the wire): ``account_id``,
  ``device_id``, ``conversation_id``, ``envelope_id``.
* Records are frozen dataclasses; ``put_*`` replaces the record with the same key (upsert).
  Getters return ``None`` for a missing key; they never raise for absence.
* Fields documented as SECRET (device state, ratchet state, plaintexts, tokens) are what an
  encrypted-at-rest store must encrypt.
* Methods are synchronous: a local database commit is short, and the async client calls them from
  its event loop. A write is durable when the method returns, or, inside
  :meth:`Store.transaction`, when the outermost transaction exits without an exception. An
  exception inside a transaction rolls back every write made in it.
* :meth:`Store.acquire` is called once by the client that opens the store; a second acquire
  (another client, another process) raises :class:`~saltline.client_sdk.errors.StoreLockedError` until
  :meth:`Store.release`.

This interface only grows (new methods and new optional fields with defaults); nothing here
changes meaning.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

TrustPolicyName = Literal["warn", "block"]
MessageStatus = Literal["pending", "sent", "received", "failed"]

# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """This device: its private key state and the account it belongs to."""

    device_id: str
    state: bytes
    """SECRET: ``saltline.crypto.private_state.encode(DeviceState)`` (keys, prekeys, account key)."""
    username: str | None = None
    account_id: str | None = None
    refresh_token: str | None = None
    """SECRET: the current refresh token (rotated on every refresh)."""
    created_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """An account this device talks to (its own account included): the pinned account key and the
    latest device list verified under it.

    ``account_key`` is the key this device trusts for the account (first seen, or accepted by
    ``verify_contact``). ``signed_list`` is the latest ``SignedDeviceList`` encoding that verified
    under it; every later list must be its successor. ``pending_account_key`` is a different
    account key the server presented that has not been accepted (an identity change); with
    ``trust_policy == "block"`` nothing is sent to the account until the user verifies it.
    """

    account_id: str
    username: str
    account_key: bytes
    signed_list: bytes
    trust_policy: TrustPolicyName = "warn"
    verified: bool = False
    pending_account_key: bytes | None = None
    pending_signed_list: bytes | None = None
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One Double Ratchet session with a peer device; a peer device may have several (named by the
    X3DH ``base_key``). The most recently used one (highest ``updated_at_ms``, then latest put) is
    the one to send with."""

    peer_device_id: str
    base_key: bytes
    state: bytes
    """SECRET: ``saltline.crypto.ratchet.Session.to_bytes()``."""
    peer_account_id: str
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    conversation_id: str
    kind: str
    """"direct" or "group"."""
    members: tuple[str, ...]
    """Account ids of every member (this account included), sorted."""
    clock: bytes = b""
    """This device's vector clock for the conversation (``saltline.client_sdk.core.clock`` encoding)."""
    created_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A text message shown in a conversation (sent or received). Unique by ``envelope_id``."""

    conversation_id: str
    envelope_id: str
    sender_account_id: str
    sender_device_id: str
    text: str
    """SECRET."""
    sent_at_ms: int
    sent_by_me: bool
    status: MessageStatus
    server_seq: int | None = None
    server_ts_ms: int | None = None
    body: bytes = b""
    """SECRET: the decrypted operation (JSON), kept for later operation types."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A message written before the network: sent (again) until the server stores it.

    ``request`` is the exact JSON body of the last attempt (the ciphertexts already encrypted with
    session state that was stored in the same transaction): a retry resends these bytes, so the
    server's idempotency check on ``envelope_id`` recognises it. It is ``None`` until the first
    encryption and is replaced when the recipients change (409/410)."""

    envelope_id: str
    conversation_id: str
    body: bytes
    """SECRET: the plaintext operation (JSON, unpadded)."""
    clock: bytes
    created_at_ms: int
    request: bytes | None = None
    attempts: int = 0
    failed_reason: str | None = None
    """Set when the item failed permanently (a 4xx the client does not retry): what happened, in
    words an app can show. A failed item is kept (and listed by :meth:`OutboxStore.outbox`) until
    the app retries or discards it; it is never sent automatically. No secrets, but an
    encrypted-at-rest store encrypts it like the rest of the item."""
    failed_status: int | None = None
    """The HTTP status of the permanent failure (413, 403, 404, 422, ...), if there was one."""
    failed_code: str | None = None
    """The problem code of the permanent failure (``saltline.client_sdk.core.wire.PROBLEM_*``), if any."""
    next_attempt_ms: int = 0
    """The earliest time (epoch ms) of the next automatic attempt (back-off); 0: as soon as possible."""

    @property
    def failed(self) -> bool:
        return self.failed_reason is not None


@dataclass(frozen=True, slots=True)
class PreKeyMeta:
    """Bookkeeping for the prekeys this device published (the private keys are in the device state)."""

    uploaded_through_id: int = 0
    """The highest one-time prekey id already uploaded to the server."""
    signed_prekey_rotated_at_ms: int = 0
    last_count_check_ms: int = 0


@dataclass(frozen=True, slots=True)
class SyncOpRecord:
    """One sequenced sync operation of a conversation (docs/protocol/sync.md): what the device
    replays into its ``ConversationState``. Unique by ``(conversation_id, server_seq)``."""

    conversation_id: str
    server_seq: int
    envelope_id: str
    sender_account_id: str
    sender_device_id: str
    clock: bytes
    """The envelope's clock bytes (compact 0x02, or legacy 0x01)."""
    plaintext: bytes
    """SECRET: the unpadded operation JSON."""


@dataclass(frozen=True, slots=True)
class SyncMeta:
    """This device's sync bookkeeping for one conversation."""

    conversation_id: str
    counter: int = 0
    """The last dot counter this device used (never reused)."""
    lamport: int = 0
    floor_seq: int = 0
    """Everything up to this server_seq predates this device (seeded from a history bundle)."""
    floor_clock: bytes = b""
    """The compact (0x02, base 0) encoding of the clock of the prefix up to ``floor_seq``."""
    members: tuple[str, ...] = ()
    """The trusted membership snapshot the state starts from (a history bundle from this
    account's own device, docs/protocol/sync.md § 8); empty: the state waits for the
    conversation's genesis operation (§ 5.7). Never the server's member list."""
    admins: tuple[str, ...] = ()
    """The admins of that snapshot."""
    kind: str = ""
    """The kind (``direct``/``group``) of that snapshot."""
    timers: tuple[tuple[str, int, int, int | None], ...] = ()
    """The ``disappearing_ms`` writes below ``floor_seq`` (from the history bundle this device
    started from, docs/protocol/sync.md § 5.8): ``(device id, n, lamport, value)`` each."""
    expiring: tuple[tuple[str, int, int], ...] = ()
    """The messages below ``floor_seq`` that expire, from the same bundle: ``(device id, n,
    expiry ms)`` each, expiry 0 for those already gone (sync.md § 5.8)."""


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A message shown to the app that an opted-in app handler has not yet returned from
    (at-least-once delivery): kept until the handler returns, offered again after a restart.
    Unique by ``envelope_id``."""

    envelope_id: str
    conversation_id: str
    added_at_ms: int
    attempts: int = 0
    """How many times the handler was called with it (and did not return)."""


# -- stores -------------------------------------------------------------------------------------


class IdentityStore(Protocol):
    def get_device(self) -> DeviceRecord | None: ...

    def put_device(self, record: DeviceRecord) -> None: ...


class DeviceListStore(Protocol):
    """Contacts: pinned account keys and verified device lists, per account."""

    def get_contact(self, account_id: str) -> ContactRecord | None: ...

    def get_contact_by_username(self, username: str) -> ContactRecord | None:
        """``username`` is compared in normalised (lower-case) form."""
        ...

    def put_contact(self, record: ContactRecord) -> None: ...

    def contacts(self) -> Sequence[ContactRecord]: ...


class SessionStore(Protocol):
    def sessions_for(self, peer_device_id: str) -> Sequence[SessionRecord]:
        """The sessions with a peer device, most recently used first."""
        ...

    def put_session(self, record: SessionRecord) -> None:
        """Insert or replace the session ``(peer_device_id, base_key)``."""
        ...

    def delete_sessions(self, peer_device_id: str) -> None: ...


class ConversationStore(Protocol):
    def get_conversation(self, conversation_id: str) -> ConversationRecord | None: ...

    def put_conversation(self, record: ConversationRecord) -> None: ...

    def conversations(self) -> Sequence[ConversationRecord]: ...

    def get_message(self, envelope_id: str) -> MessageRecord | None: ...

    def put_message(self, record: MessageRecord) -> None:
        """Insert or replace the message with ``record.envelope_id``."""
        ...

    def delete_message(self, envelope_id: str) -> None:
        """Forget the message with ``envelope_id`` (idempotent): a pending message whose outbox
        item the app discarded or composed again."""
        ...

    def messages(self, conversation_id: str, *, limit: int = 1000) -> Sequence[MessageRecord]:
        """The conversation's messages in display order: stored ones by ``server_seq``, then the
        pending ones (``server_seq is None``) by ``sent_at_ms``; the last ``limit`` of them."""
        ...


class OutboxStore(Protocol):
    def put_outbox(self, item: OutboxItem) -> None: ...

    def get_outbox(self, envelope_id: str) -> OutboxItem | None: ...

    def outbox(self) -> Sequence[OutboxItem]:
        """Every item not yet stored by the server, failed ones included, oldest
        (``created_at_ms``, then insertion) first."""
        ...

    def remove_outbox(self, envelope_id: str) -> None: ...


class HandlerInboxStore(Protocol):
    """At-least-once delivery to an app handler: the envelope ids of messages the handler has
    not returned from yet. The client adds an entry in the transaction that stores the message
    and removes it when the handler returns."""

    def add_pending(self, envelope_id: str, conversation_id: str, added_at_ms: int) -> None:
        """Record the entry; idempotent (an existing entry keeps its time and attempts)."""
        ...

    def pending(self, limit: int = 1000) -> Sequence[PendingDelivery]:
        """The oldest ``limit`` entries, oldest (``added_at_ms``, then insertion) first."""
        ...

    def bump_attempts(self, envelope_id: str) -> None:
        """Count one more handler call for the entry (nothing if there is none)."""
        ...

    def remove_pending(self, envelope_id: str) -> None:
        """Forget the entry (idempotent)."""
        ...


class CursorStore(Protocol):
    def get_acked_queue_seq(self) -> int:
        """The highest ``queue_seq`` acknowledged to the server (0 before the first)."""
        ...

    def set_acked_queue_seq(self, queue_seq: int) -> None: ...

    def get_server_seq(self, conversation_id: str) -> int:
        """The highest ``server_seq`` applied in the conversation (0 before the first)."""
        ...

    def set_server_seq(self, conversation_id: str, server_seq: int) -> None: ...


class SyncStore(Protocol):
    """Sync operations and per-conversation sync bookkeeping; small per-account settings."""

    def get_sync_meta(self, conversation_id: str) -> SyncMeta | None: ...

    def put_sync_meta(self, meta: SyncMeta) -> None: ...

    def put_sync_op(self, record: SyncOpRecord) -> None:
        """Insert or replace the operation ``(conversation_id, server_seq)``."""
        ...

    def sync_ops(self, conversation_id: str) -> Sequence[SyncOpRecord]:
        """The conversation's operations by ``server_seq``."""
        ...

    def get_setting(self, name: str) -> str | None: ...

    def put_setting(self, name: str, value: str) -> None: ...


class PreKeyStore(Protocol):
    """Prekey bookkeeping, and the seen set of initial messages accepted with a reusable (signed
    or last-resort) prekey: entries ``(prekey_id, digest)``, ``digest`` the 32-byte
    ``saltline.client_sdk.core.message.seen_base_key_digest`` of the prekey id and the initiator's base key
    (docs/protocol/session-setup.md § 6.2). The client adds an entry in the transaction that
    stores the session it set up, and drops the entries of prekeys it deleted."""

    def get_prekey_meta(self) -> PreKeyMeta: ...

    def put_prekey_meta(self, meta: PreKeyMeta) -> None: ...

    def has_seen_base_key(self, prekey_id: int, digest: bytes) -> bool: ...

    def add_seen_base_key(self, prekey_id: int, digest: bytes) -> None:
        """Record the entry (idempotent)."""
        ...

    def drop_seen_base_keys(self, keep_prekey_ids: Collection[int]) -> int:
        """Delete every entry whose prekey id is not in ``keep_prekey_ids``; returns how many."""
        ...


@runtime_checkable
class Store(Protocol):
    """Everything a device keeps, one aggregate per attribute."""

    @property
    def identity(self) -> IdentityStore: ...

    @property
    def device_lists(self) -> DeviceListStore: ...

    @property
    def sessions(self) -> SessionStore: ...

    @property
    def conversations(self) -> ConversationStore: ...

    @property
    def outbox(self) -> OutboxStore: ...

    @property
    def cursors(self) -> CursorStore: ...

    @property
    def prekeys(self) -> PreKeyStore: ...

    @property
    def sync(self) -> SyncStore: ...

    @property
    def handler_inbox(self) -> HandlerInboxStore: ...

    def transaction(self) -> AbstractContextManager[None]:
        """All writes inside are committed together when the outermost block exits normally and
        rolled back if it raises. Nested blocks join the outer transaction."""
        ...

    def acquire(self) -> None:
        """Take exclusive use of the store; :class:`~saltline.client_sdk.errors.StoreLockedError` if another
        client holds it."""
        ...

    def release(self) -> None:
        """Give up exclusive use (idempotent)."""
        ...
