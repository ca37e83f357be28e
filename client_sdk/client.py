"""The async Saltline client: the SDK's public API.

::

    store = MemoryStore()                       # or the durable SQLite store
    client = await Client.create("http://127.0.0.1:8000", store)
    await client.register("alice", "a long passphrase")
    await client.connect()                      # delivery socket (reconnects by itself)
    cid = await client.create_conversation(["bob"])
    await client.send_text(cid, "hi bob")
    async for event in client.events():         # or client.on(MessageReceived, callback)
        ...
    await client.close()

Everything the client learns is written to the store before it is acknowledged to the server
or emitted as an event; messages are written to the outbox before the network sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx

from client_sdk.core import api, linking, sync, trust
from client_sdk.core import message as msg
from client_sdk.core.events import (
    Connected,
    ConversationAdded,
    DecryptionFailed,
    DeliveryGap,
    DeviceListChanged,
    DeviceRemoved,
    Disconnected,
    Drained,
    Event,
    IdentityChanged,
    MarkedRead,
    MembershipChanged,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageSent,
    ReactionChanged,
    ReadStateChanged,
    SettingsChanged,
    TypingChanged,
    UntrustedDeviceList,
)
from client_sdk.core.sync.ops import Body as SyncBody
from client_sdk.errors import (
    ConflictError,
    DecryptError,
    DeviceListOutdatedError,
    IdentityChangedError,
    LinkError,
    NetworkError,
    NotFoundError,
    ProtocolError,
    RecipientsChangedError,
    SaltlineError,
    ServerError,
    UntrustedDeviceListError,
    UsageError,
)
from client_sdk.stores.base import (
    ContactRecord,
    ConversationRecord,
    DeviceRecord,
    MessageRecord,
    OutboxItem,
    PreKeyMeta,
    SessionRecord,
    Store,
    SyncMeta,
    SyncOpRecord,
)
from client_sdk.transport.http import HttpTransport
from client_sdk.transport.ws import CLOSE_AUTH_FAILED, FATAL_CLOSE_CODES, DeliverySocket, SocketUnavailable
from crypto import attachments, private_state, safety
from crypto import device_list as dl
from crypto import primitives as p
from crypto.errors import CryptoError, DuplicateMessageError
from crypto.keys import (
    AccountKey,
    AccountPublicKey,
    DeviceDHPublicKey,
    DeviceSigningPublicKey,
    EphemeralKey,
    PreKeyPublic,
    SigningContext,
    b64decode,
    b64encode,
)
from crypto.login import login_challenge_message
from crypto.ratchet import Session
from crypto.x3dh import PreKeyBundle

E = TypeVar("E", bound=Event)

#: Replenish one-time prekeys when the server holds fewer than this many.
PREKEY_LOW_WATER = 20
#: Ask the server for the one-time prekey count (``GET /v1/keys/count``) at most this often when
#: the delivery queue drains; sooner on (re)connecting, and as soon as the prekey messages received
#: since the last count may have brought it below :data:`PREKEY_LOW_WATER`.
PREKEY_CHECK_INTERVAL_MS = 60_000
PREKEY_BATCH = 100
MAX_SEND_ATTEMPTS = 4
#: Rotate the signed prekey (and replace the last-resort prekey) when it is older than this.
SPK_ROTATION_MS = 7 * 24 * 3600 * 1000
#: Grace period of a replaced signed or last-resort prekey: its private half is kept this long
#: after the rotation that replaced it (for initial messages started against it just before),
#: then deleted by the prekey maintenance. At most :data:`SPK_ROTATION_MS`: one previous key of
#: each kind is held, and the next rotation replaces it. Why 7 days: docs/protocol/session-setup.md § 3.1.
PREKEY_GRACE_MS = SPK_ROTATION_MS
assert PREKEY_GRACE_MS <= SPK_ROTATION_MS
#: History a linked device receives (:meth:`Client.approve_link`): "all", "none" or a number of days.
HistoryDepth = str | int
#: Ciphertext bytes per history bundle blob (the server's default ``max_blob_bytes`` is 512 KiB;
#: a server with a smaller limit says so in its 413 problem and the parts are made smaller).
HISTORY_PART_BYTES = 256 * 1024
#: At most this many parts in a linking payload (256 MiB at 256 KiB; the ids fit its 64 KiB).
MAX_HISTORY_PARTS = 1024
#: The approving device's follow-up after a link (docs/protocol/sync.md § history bundles): how
#: long both devices wait for the other (the server's provisioning channel lives 10 minutes) and
#: how often they look (backing off from the first to the second interval).
LINK_FOLLOW_UP_WAIT_S = 600.0
LINK_POLL_S = 0.25
LINK_POLL_MAX_S = 5.0
#: ``kind`` of the sealed follow-up (the linking payload has none).
FOLLOW_UP_KIND = "history-follow-up"
#: Version of the history bundle plaintext (docs/protocol/sync.md § history bundles).
HISTORY_BUNDLE_VERSION = 1
#: Page size of gap filling from ``GET /v1/conversations/{id}/envelopes``.
HISTORY_PAGE = 200


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    added_at: int
    this_device: bool


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Client:
    """One device of one account. Create with :meth:`create`; close with :meth:`close`."""

    def __init__(
        self,
        store: Store,
        http: HttpTransport,
        ws_url: str,
        rng: p.Rng,
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self._http = http
        self._ws_url = ws_url
        self._rng = rng
        self._clock = clock
        self._access: str | None = None
        self._access_expires = 0.0
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._callbacks: dict[type[Event], list[Callable[[Any], Any]]] = defaultdict(list)
        self._socket: DeliverySocket | None = None
        self._socket_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._link: tuple[linking.LinkCode, EphemeralKey] | None = None
        self._states: dict[str, sync.ConversationState] = {}
        self._seqs: dict[str, set[int]] = {}
        self._filling: set[str] = set()
        #: Linking follow-ups under way (:meth:`finish_link`) and the conversations a history
        #: bundle seeded on this (new) device.
        self._link_tasks: set[asyncio.Task[None]] = set()
        self._seeded: set[str] = set()
        self._closed = False
        #: This device's record and its decoded private state, read from the store once and then
        #: kept up to date by :meth:`_put_device` (every write of the record goes through it; the
        #: store's exclusive lock keeps other clients from writing it meanwhile).
        self._device_cache: DeviceRecord | None = None
        self._state_cache: tuple[bytes, private_state.DeviceState] | None = None
        #: Prekey maintenance (:meth:`_maintain_prekeys_if_due`): count the server's one-time
        #: prekeys again on the next drain (set at start-up and on every ``ready``); the count it
        #: gave last, less the one-time prekeys received messages used since (None: not counted).
        self._prekey_recheck = True
        self._prekeys_on_server: int | None = None
        self._maintaining = False

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        server_url: str,
        store: Store,
        *,
        ws_url: str | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        rng: p.Rng = p.random_bytes,
        clock: Callable[[], int] = _now_ms,
    ) -> Client:
        """Open ``store`` (taking exclusive use of it) and create this device's keys if it has none.
        An existing store continues where it stopped (sessions, outbox, cursors)."""
        store.acquire()
        try:
            if store.identity.get_device() is None:
                state = private_state.generate_device(one_time_prekeys=PREKEY_BATCH, rng=rng)
                store.identity.put_device(
                    DeviceRecord(b64encode(state.device_id), state.encode(), created_at_ms=clock())
                )
        except BaseException:
            store.release()
            raise
        ws = ws_url or server_url.replace("https://", "wss://").replace("http://", "ws://")
        return cls(store, HttpTransport(server_url, transport=http_transport), ws, rng, clock)

    async def close(self) -> None:
        """Stop the socket and release the store. Unsent messages stay in the outbox."""
        if self._closed:
            return
        self._closed = True
        if self._socket is not None:
            await self._socket.stop()
        if self._socket_task is not None:
            with contextlib.suppress(Exception):
                await self._socket_task
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._http.aclose()
        self.store.release()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- identity ---------------------------------------------------------------------------------

    @property
    def _device(self) -> DeviceRecord:
        record = self._device_cache
        if record is None:
            record = self.store.identity.get_device()
            assert record is not None
            self._device_cache = record
        return record

    @property
    def _state(self) -> private_state.DeviceState:
        """The decoded private state (decoding recomputes every prekey's public key, so it is done
        once per written state, not per use)."""
        raw = self._device.state
        cached = self._state_cache
        if cached is None or cached[0] is not raw:
            cached = (raw, private_state.decode(raw))
            self._state_cache = cached
        return cached[1]

    def _put_device(self, record: DeviceRecord, state: private_state.DeviceState | None = None) -> None:
        """Write this device's record (``state``: the decoded form of ``record.state`` when the
        caller has it) and keep the cached copies in step. Inside a transaction, use
        :meth:`_transaction` so that a rollback also drops the cache."""
        self.store.identity.put_device(record)
        self._device_cache = record
        if state is not None:
            self._state_cache = (record.state, state)

    def _forget_device(self) -> None:
        """Drop the cached record and state: the next use reads the store again."""
        self._device_cache = None
        self._state_cache = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``store.transaction()``; a rollback also drops the cached device record and state
        (they may hold a write the rollback undid)."""
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self._forget_device()
            raise

    @property
    def device_id(self) -> str:
        return self._device.device_id

    @property
    def account_id(self) -> str:
        account_id = self._device.account_id
        if account_id is None:
            raise UsageError("this device has no account yet: call register() or link it first")
        return account_id

    @property
    def username(self) -> str:
        username = self._device.username
        if username is None:
            raise UsageError("this device has no account yet: call register() or link it first")
        return username

    def _account_key(self) -> AccountKey:
        key = self._state.account_key
        if key is None:
            raise UsageError("this device holds no account key: call register() or link it first")
        return key

    # -- events ----------------------------------------------------------------------------------------

    def on(self, event_type: type[E], callback: Callable[[E], Any]) -> None:
        """Call ``callback(event)`` for every event of ``event_type`` (or a subclass); it may be
        a coroutine function."""
        self._callbacks[event_type].append(callback)

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in order, as an async iterator (one consumer)."""
        while True:
            yield await self._queue.get()

    async def next_event(self, event_type: type[E], wait_s: float = 10.0) -> E:
        """The next event of ``event_type`` (other events are skipped); :class:`TimeoutError`."""

        async def wait() -> E:
            while True:
                event = await self._queue.get()
                if isinstance(event, event_type):
                    return event

        return await asyncio.wait_for(wait(), wait_s)

    async def _emit(self, event: Event) -> None:
        self._queue.put_nowait(event)
        for event_type, callbacks in list(self._callbacks.items()):
            if isinstance(event, event_type):
                for callback in callbacks:
                    result = callback(event)
                    if isinstance(result, Awaitable):
                        await result

    # -- HTTP --------------------------------------------------------------------------------------------

    async def _call(self, request: api.Request) -> api.Response:
        token = await self._token() if request.auth else None
        response = await self._http.execute(request, token)
        if response.status == 401 and request.auth:
            self._access = None
            response = await self._http.execute(request, await self._token())
        return api.check(response)

    async def _token(self) -> str:
        if self._access is not None and time.monotonic() < self._access_expires:
            return self._access
        device = self._device
        if device.refresh_token is not None:
            try:
                r = api.check(await self._http.execute(api.refresh(device.refresh_token)))
                self._adopt_tokens(api.parse_tokens(r.body))
                assert self._access is not None
                return self._access
            except ServerError:
                pass
        await self._device_login()
        assert self._access is not None
        return self._access

    def _adopt_tokens(self, tokens: api.Tokens) -> None:
        self._access = tokens.access_token
        self._access_expires = time.monotonic() + max(1, tokens.expires_in - 30)
        self._put_device(replace(self._device, refresh_token=tokens.refresh_token))

    async def _device_login(self) -> None:
        """Log in by signing a server challenge with the device signing key."""
        username, device_id = self.username, self.device_id
        nonce = api.parse_challenge(
            api.check(await self._http.execute(api.challenge(username, device_id))).body
        )
        message = login_challenge_message(username, b64decode(device_id), b64decode(nonce))
        signature = b64encode(self._state.signing_key.sign(SigningContext.LOGIN_CHALLENGE, message))
        r = api.check(await self._http.execute(api.device_login(username, device_id, nonce, signature)))
        self._adopt_tokens(api.parse_tokens(r.body))

    # -- accounts ----------------------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> str:
        """Create an account with this device as its first device; returns the account id."""
        if self._device.account_id is not None:
            raise UsageError("this device already belongs to an account")
        username = dl.normalize_username(username)
        state = self._state
        account_key = state.account_key or AccountKey.generate(self._rng)
        state = state.with_account_key(account_key)
        signed = dl.first(account_key, username, [state.device_entry(account_key.public_key, self._clock())])
        self._put_device(replace(self._device, state=state.encode(), username=username), state)
        r = await self._call(
            api.register(username, password, account_key.public_key.to_b64(), signed.to_b64(), self.device_id)
        )
        tokens = api.parse_register(r.body)
        with self._transaction():
            self._put_device(replace(self._device, account_id=tokens.account_id))
            self._adopt_tokens(tokens)
            self._put_own_contact(signed)
        await self._upload_all_prekeys()
        return tokens.account_id

    async def login(self, username: str | None = None, password: str | None = None) -> None:
        """Log in: with a password, or (no password) by device-key challenge."""
        if password is None:
            await self._device_login()
            return
        name = dl.normalize_username(username or self.username)
        r = await self._call(api.login(name, password, self.device_id))
        tokens = api.parse_tokens(r.body)
        self._put_device(replace(self._device, username=name, account_id=tokens.account_id))
        self._adopt_tokens(tokens)

    def _put_own_contact(self, signed: dl.SignedDeviceList) -> None:
        old = self.store.device_lists.get_contact(self.account_id)
        record = ContactRecord(
            account_id=self.account_id,
            username=self.username,
            account_key=bytes(self._account_key().public_key),
            signed_list=signed.encode(),
            verified=True,
            updated_at_ms=self._clock(),
        )
        if old is not None:
            record = replace(old, signed_list=signed.encode(), updated_at_ms=self._clock())
        self.store.device_lists.put_contact(record)

    # -- prekeys ---------------------------------------------------------------------------------------

    async def _upload_all_prekeys(self) -> None:
        state = self._state
        await self._call(
            api.upload_keys(
                state.signed_prekey_public().to_b64(),
                state.last_resort_prekey_public().to_b64(),
                [k.to_b64() for k in state.one_time_prekeys_public()],
            )
        )
        top = max(state.one_time_prekeys, default=0)
        self.store.prekeys.put_prekey_meta(
            replace(
                self.store.prekeys.get_prekey_meta(),
                uploaded_through_id=top,
                signed_prekey_rotated_at_ms=self._clock(),
            )
        )

    async def replenish_prekeys(self) -> int:
        """Upload new one-time prekeys if the server holds fewer than :data:`PREKEY_LOW_WATER`;
        returns how many were uploaded."""
        count = api.parse_key_count((await self._call(api.key_count())).body)
        self._prekeys_on_server, self._prekey_recheck = count, False
        if count >= PREKEY_LOW_WATER:
            self.store.prekeys.put_prekey_meta(
                replace(self.store.prekeys.get_prekey_meta(), last_count_check_ms=self._clock())
            )
            return 0
        async with self._lock:
            meta = self.store.prekeys.get_prekey_meta()
            state = self._state.add_one_time_prekeys(PREKEY_BATCH - count, self._rng)
            self._put_device(replace(self._device, state=state.encode()), state)
            fresh = [k for i, k in state.one_time_prekeys.items() if i > meta.uploaded_through_id]
            await self._call(
                api.upload_keys(None, None, [k.signed_public(state.signing_key).to_b64() for k in fresh])
            )
            top = max(state.one_time_prekeys, default=meta.uploaded_through_id)
            self.store.prekeys.put_prekey_meta(
                replace(meta, uploaded_through_id=top, last_count_check_ms=self._clock())
            )
            self._prekeys_on_server = count + len(fresh)
        return len(fresh)

    async def rotate_signed_prekey_if_due(self) -> bool:
        """Rotate the signed prekey and replace the last-resort prekey when the signed prekey is
        older than :data:`SPK_ROTATION_MS` (by the client's clock); the replaced keys are kept for
        :data:`PREKEY_GRACE_MS` (:meth:`expire_previous_prekeys_if_due`), for sessions started
        against them. Returns whether it rotated."""
        meta = self.store.prekeys.get_prekey_meta()
        if self._clock() - meta.signed_prekey_rotated_at_ms < SPK_ROTATION_MS:
            return False
        async with self._lock:
            old_record, old_state = self._device, self._state
            old_meta = self.store.prekeys.get_prekey_meta()
            state = old_state.rotate_signed_prekey(self._rng).replace_last_resort_prekey(self._rng)
            with self._transaction():
                self._put_device(replace(old_record, state=state.encode()), state)
                # the grace period of the replaced keys starts now (stored with them)
                self.store.prekeys.put_prekey_meta(
                    replace(old_meta, signed_prekey_rotated_at_ms=self._clock())
                )
            try:
                await self._call(
                    api.upload_keys(
                        state.signed_prekey_public().to_b64(), state.last_resort_prekey_public().to_b64(), []
                    )
                )
            except BaseException:
                # never published: nobody can have used the new keys, so the old state stands
                with self._transaction():
                    self._put_device(old_record, old_state)
                    self.store.prekeys.put_prekey_meta(old_meta)
                raise
            # the former previous keys are gone: so are their seen base keys
            self.store.prekeys.drop_seen_base_keys(state.reusable_prekey_ids())
        return True

    def _previous_prekeys_expired(self) -> bool:
        meta = self.store.prekeys.get_prekey_meta()
        return (
            self._state.has_previous_prekeys
            and self._clock() - meta.signed_prekey_rotated_at_ms >= PREKEY_GRACE_MS
        )

    async def expire_previous_prekeys_if_due(self) -> bool:
        """Delete the previous signed and last-resort prekeys once :data:`PREKEY_GRACE_MS` has
        passed since the rotation that replaced them (forward secrecy), together with their seen
        base keys, in one transaction. Returns whether it deleted anything."""
        if not self._previous_prekeys_expired():
            return False
        async with self._lock:
            if not self._previous_prekeys_expired():
                return False
            state = self._state.drop_previous_prekeys()
            with self._transaction():
                self._put_device(replace(self._device, state=state.encode()), state)
                self.store.prekeys.drop_seen_base_keys(state.reusable_prekey_ids())
        return True

    async def maintain_prekeys(self) -> None:
        """Replenish one-time prekeys, delete replaced prekeys whose grace period is over, and
        rotate the signed prekey when due."""
        await self.replenish_prekeys()
        await self.expire_previous_prekeys_if_due()
        await self.rotate_signed_prekey_if_due()

    def _prekey_work_due(self) -> tuple[bool, bool, bool]:
        """(count the one-time prekeys now, delete the previous prekeys now, rotate the signed
        prekey now). The count is due on the first drain after start-up or a (re)connection, when
        the prekey messages received since the last count may have brought it below
        :data:`PREKEY_LOW_WATER` (the server does not report the count by itself), and otherwise
        every :data:`PREKEY_CHECK_INTERVAL_MS`."""
        meta = self.store.prekeys.get_prekey_meta()
        now = self._clock()
        left = self._prekeys_on_server
        count = (
            self._prekey_recheck
            or (left is not None and left < PREKEY_LOW_WATER)
            or not 0 <= now - meta.last_count_check_ms < PREKEY_CHECK_INTERVAL_MS
        )
        return (
            count,
            self._previous_prekeys_expired(),
            now - meta.signed_prekey_rotated_at_ms >= SPK_ROTATION_MS,
        )

    async def _maintain_prekeys_if_due(self) -> None:
        """:meth:`maintain_prekeys`, throttled (:meth:`_prekey_work_due`); one run at a time."""
        if self._maintaining:
            return
        self._maintaining = True
        try:
            count, expire, rotate = self._prekey_work_due()
            if count:
                await self.replenish_prekeys()
            if expire:
                await self.expire_previous_prekeys_if_due()
            if rotate:
                await self.rotate_signed_prekey_if_due()
        finally:
            self._maintaining = False

    # -- contacts and device lists ------------------------------------------------------------------------

    async def _fetch_chain(self, account_id: str, since: int) -> list[bytes]:
        out: list[bytes] = []
        while True:
            r = await self._call(api.device_list_chain(account_id, since))
            page = [b64decode(s) for s in api.parse_chain(r.body)]
            out.extend(page)
            if len(page) < 100:
                return out
            since = dl.SignedDeviceList.decode(page[-1]).version

    async def _refresh_contact(self, account_id: str, username: str | None = None) -> ContactRecord:
        """Fetch and verify the account's newest device list (rules in :mod:`client_sdk.core.trust`)."""
        contact = self.store.device_lists.get_contact(account_id)
        if contact is None:
            if username is None:
                username = api.parse_account((await self._call(api.account(account_id))).body).username
            chain = await self._fetch_chain(account_id, 0)
            try:
                v = trust.first_contact(username, chain)
            except UntrustedDeviceListError as exc:
                await self._emit(UntrustedDeviceList(account_id, str(exc)))
                raise
            contact = ContactRecord(
                account_id,
                dl.normalize_username(username),
                v.account_key,
                v.signed_list,
                updated_at_ms=self._clock(),
            )
            self.store.device_lists.put_contact(contact)
            return contact
        known = dl.SignedDeviceList.decode(contact.signed_list)
        chain = await self._fetch_chain(account_id, known.version)
        try:
            v = trust.advance(contact.username, contact.account_key, contact.signed_list, chain)
        except UntrustedDeviceListError as exc:
            await self._emit(UntrustedDeviceList(account_id, str(exc)))
            raise
        except trust.KeyMismatch:
            return await self._identity_changed(contact)
        if v.changed:
            contact = replace(contact, signed_list=v.signed_list, updated_at_ms=self._clock())
            self.store.device_lists.put_contact(contact)
            for device_id in v.removed:
                self.store.sessions.delete_sessions(device_id)
            await self._emit(DeviceListChanged(account_id, contact.username, v.version, v.added, v.removed))
        return contact

    async def _identity_changed(self, contact: ContactRecord) -> ContactRecord:
        chain = await self._fetch_chain(contact.account_id, 0)
        v = trust.first_contact(contact.username, chain)
        if contact.trust_policy == "warn" and contact.account_id != self.account_id:
            contact = replace(
                contact,
                account_key=v.account_key,
                signed_list=v.signed_list,
                verified=False,
                updated_at_ms=self._clock(),
            )
            blocked = False
        else:
            contact = replace(contact, pending_account_key=v.account_key, pending_signed_list=v.signed_list)
            blocked = True
        self.store.device_lists.put_contact(contact)
        await self._emit(IdentityChanged(contact.account_id, contact.username, contact.trust_policy, blocked))
        return contact

    async def _contact_by_username(self, username: str) -> ContactRecord:
        name = dl.normalize_username(username)
        contact = self.store.device_lists.get_contact_by_username(name)
        if contact is not None:
            return contact
        info = api.parse_account((await self._call(api.account_by_username(name))).body)
        contact = await self._refresh_contact(info.account_id, info.username)
        if AccountPublicKey(contact.account_key).to_b64() != info.account_key:
            raise UntrustedDeviceListError(f"the server gave two different account keys for {name!r}")
        return contact

    async def devices(self) -> list[DeviceInfo]:
        """This account's devices, from its verified device list."""
        contact = await self._refresh_contact(self.account_id)
        content = trust.verified_content(contact.account_key, contact.signed_list)
        return [
            DeviceInfo(b64encode(d.device_id), d.added_at, b64encode(d.device_id) == self.device_id)
            for d in content.devices
        ]

    async def remove_device(self, device_id: str) -> None:
        """Sign and publish a device list without ``device_id``; nobody encrypts to it any more."""
        contact = await self._refresh_contact(self.account_id)
        current = dl.SignedDeviceList.decode(contact.signed_list)
        try:
            new = dl.with_device_removed(current, self._account_key(), b64decode(device_id))
        except CryptoError as exc:
            raise UsageError(f"cannot remove device {device_id}: {exc}") from exc
        await self._call(api.put_device_list(new.to_b64()))
        with self._transaction():
            self._put_own_contact(new)
            self.store.sessions.delete_sessions(device_id)

    # -- trust ------------------------------------------------------------------------------------------

    async def safety_number(self, username: str) -> safety.SafetyNumber:
        contact = await self._contact_by_username(username)
        return safety.safety_number(
            self._account_key().public_key,
            self.username,
            AccountPublicKey(contact.account_key),
            contact.username,
        )

    async def verify_contact(self, username: str) -> None:
        """Mark the contact verified (after comparing safety numbers); accepts a pending new key."""
        contact = await self._contact_by_username(username)
        if contact.pending_account_key is not None and contact.pending_signed_list is not None:
            contact = replace(
                contact,
                account_key=contact.pending_account_key,
                signed_list=contact.pending_signed_list,
                pending_account_key=None,
                pending_signed_list=None,
            )
        self.store.device_lists.put_contact(replace(contact, verified=True))

    async def set_trust_policy(self, username: str, policy: str) -> None:
        if policy not in ("warn", "block"):
            raise UsageError('trust policy must be "warn" or "block"')
        contact = await self._contact_by_username(username)
        self.store.device_lists.put_contact(replace(contact, trust_policy=policy))  # type: ignore[arg-type]

    # -- conversations ----------------------------------------------------------------------------------

    async def create_conversation(self, usernames: Sequence[str]) -> str:
        """A conversation with these people (a direct one for one person); returns its id."""
        others = [await self._contact_by_username(u) for u in usernames]
        kind = "direct" if len(others) == 1 else "group"
        r = await self._call(api.create_conversation(kind, [c.account_id for c in others]))
        info = api.parse_conversation(r.body)
        self._put_conversation(info)
        return info.conversation_id

    def _put_conversation(self, info: api.ConversationInfo) -> ConversationRecord:
        old = self.store.conversations.get_conversation(info.conversation_id)
        record = ConversationRecord(
            info.conversation_id, info.kind, info.members, old.clock if old else b"", info.created_at_ms
        )
        self.store.conversations.put_conversation(record)
        return record

    async def _record(self, conversation_id: str) -> ConversationRecord:
        record = self.store.conversations.get_conversation(conversation_id)
        if record is None:
            info = api.parse_conversation((await self._call(api.conversation(conversation_id))).body)
            record = self._put_conversation(info)
            await self._emit(ConversationAdded(record.conversation_id, record.members))
        return record

    def messages(self, conversation_id: str, limit: int = 1000) -> Sequence[MessageRecord]:
        """The stored messages of a conversation in display order."""
        return self.store.conversations.messages(conversation_id, limit=limit)

    # -- conversation sync (docs/protocol/sync.md) ------------------------------------------------------

    async def conversation(self, conversation_id: str) -> sync.ConversationView:
        """The conversation's materialised state (messages with their current text, edited and
        deleted flags, reactions, read markers, settings, members), replayed from the store."""
        return self._sync_state(await self._record(conversation_id)).view()

    async def unread(self, conversation_id: str) -> int:
        """Messages of other accounts after this account's read marker (any of its devices)."""
        return (await self.conversation(conversation_id)).unread(b64decode(self.account_id))

    def _sync_state(self, record: ConversationRecord) -> sync.ConversationState:
        cid = record.conversation_id
        state = self._states.get(cid)
        if state is not None:
            return state
        meta = self.store.sync.get_sync_meta(cid)
        if meta is None:
            meta = SyncMeta(cid, members=tuple(record.members))
            self.store.sync.put_sync_meta(meta)
        floor = dict(sync.CompactClock.decode(meta.floor_clock).extras) if meta.floor_clock else {}
        state = sync.ConversationState(
            b64decode(cid),
            [b64decode(m) for m in (meta.members or record.members)],
            floor_seq=meta.floor_seq,
            floor_clock=floor,
        )
        seqs: set[int] = set()
        for r in self.store.sync.sync_ops(cid):
            op = _decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
            seqs.add(r.server_seq)
            if op is not None:
                with contextlib.suppress(sync.SyncError):
                    state.receive(r.server_seq, op)
        self._states[cid] = state
        self._seqs[cid] = seqs
        return state

    def _sync_meta(self, cid: str) -> SyncMeta:
        return self.store.sync.get_sync_meta(cid) or SyncMeta(cid)

    def _message_dot(self, cid: str, message_ref: str) -> sync.Dot:
        """A message named by its ref (``"<device id>.<n>"``) or by its envelope id."""
        if "." in message_ref:
            device, _, n = message_ref.partition(".")
            try:
                return sync.Dot(b64decode(device), int(n))
            except (ValueError, CryptoError) as exc:
                raise UsageError(f"not a message reference: {message_ref!r}") from exc
        for r in self.store.sync.sync_ops(cid):
            if r.envelope_id == message_ref:
                op = _decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
                if op is not None:
                    return op.dot
        item = self.store.outbox.get_outbox(message_ref)
        if item is not None:
            op = _decode_op(item.body, item.clock, self.device_id, self.account_id)
            if op is not None:
                return op.dot
        raise UsageError(f"no message {message_ref!r} in conversation {cid}")

    async def _send_op(self, conversation_id: str, body: SyncBody) -> str:
        """Compose this device's next operation, write it to the outbox (with the counter and
        lamport number it used), then try to send it; returns its envelope id."""
        record = await self._record(conversation_id)
        state = self._sync_state(record)
        meta = self._sync_meta(conversation_id)
        composer = sync.Composer(
            b64decode(self.device_id), b64decode(self.account_id), meta.counter, meta.lamport
        )
        op = composer.compose(state, body)
        plaintext, clock = sync.encode(op)
        envelope_id = b64encode(self._rng(16))
        now = self._clock()
        with self._transaction():
            self.store.sync.put_sync_meta(replace(meta, counter=composer.counter, lamport=composer.lamport))
            self.store.outbox.put_outbox(OutboxItem(envelope_id, conversation_id, plaintext, clock, now))
            if isinstance(body, sync.Message):
                self.store.conversations.put_message(
                    MessageRecord(
                        conversation_id,
                        envelope_id,
                        self.account_id,
                        self.device_id,
                        body.text,
                        now,
                        True,
                        "pending",
                        body=plaintext,
                    )
                )
        try:
            _, held = await self._flush()
        except NetworkError:
            return envelope_id
        if envelope_id in held:
            raise held[envelope_id]  # it stays in the outbox until the contact is verified
        return envelope_id

    async def send_text(self, conversation_id: str, text: str) -> str:
        """Write the message to the outbox, then try to send it; returns its envelope id. If the
        server cannot be reached it stays in the outbox and is sent after :meth:`connect`."""
        return await self._send_op(conversation_id, sync.Message(text, None, self._clock()))

    async def reply(self, conversation_id: str, message_ref: str, text: str) -> str:
        dot = self._message_dot(conversation_id, message_ref)
        return await self._send_op(conversation_id, sync.Message(text, dot, self._clock()))

    async def edit(self, conversation_id: str, message_ref: str, text: str) -> str:
        """Edit a message of this account (last writer wins; a concurrent delete wins)."""
        return await self._send_op(
            conversation_id, sync.Edit(self._message_dot(conversation_id, message_ref), text)
        )

    async def delete(self, conversation_id: str, message_ref: str) -> str:
        return await self._send_op(
            conversation_id, sync.Delete(self._message_dot(conversation_id, message_ref))
        )

    async def react(self, conversation_id: str, message_ref: str, emoji: str) -> str:
        dot = self._message_dot(conversation_id, message_ref)
        return await self._send_op(conversation_id, sync.ReactionAdd(dot, emoji))

    async def unreact(self, conversation_id: str, message_ref: str, emoji: str) -> str:
        dot = self._message_dot(conversation_id, message_ref)
        return await self._send_op(conversation_id, sync.ReactionRemove(dot, emoji))

    def set_read_receipts(self, enabled: bool) -> None:
        """Whether this device's read markers are shown to other members as read receipts."""
        self.store.sync.put_setting("read_receipts", "1" if enabled else "0")

    async def mark_read(self, conversation_id: str, up_to_server_seq: int | None = None) -> str:
        """Move this account's read marker (default: the newest message); every device of the
        account clears its unread count, other members see a read receipt unless turned off."""
        record = await self._record(conversation_id)
        state = self._sync_state(record)
        up_to = up_to_server_seq
        if up_to is None:
            up_to = max((m.seq for m in state.view().messages), default=state.received_seq)
        receipts = self.store.sync.get_setting("read_receipts") != "0"
        envelope_id = await self._send_op(conversation_id, sync.ReadMarker(up_to, receipts))
        await self._emit(MarkedRead(conversation_id, up_to))
        return envelope_id

    async def set_title(self, conversation_id: str, title: str | None) -> str:
        return await self._send_op(conversation_id, sync.SettingsChange("title", title))

    async def set_mute(self, conversation_id: str, muted: bool) -> str:
        return await self._send_op(conversation_id, sync.SettingsChange("mute", muted))

    async def set_disappearing_timer(self, conversation_id: str, ms: int | None) -> str:
        return await self._send_op(conversation_id, sync.SettingsChange("disappearing_ms", ms))

    async def add_member(self, conversation_id: str, username: str) -> str:
        """Add an account to a group (on the server, then as a membership operation)."""
        contact = await self._contact_by_username(username)
        r = await self._call(api.add_member(conversation_id, contact.account_id))
        self._put_conversation(api.parse_conversation(r.body))
        return await self._send_op(
            conversation_id, sync.MembershipChange(b64decode(contact.account_id), True)
        )

    async def remove_member(self, conversation_id: str, username: str) -> str:
        """Remove an account from a group (a membership operation, then on the server)."""
        contact = await self._contact_by_username(username)
        envelope_id = await self._send_op(
            conversation_id, sync.MembershipChange(b64decode(contact.account_id), False)
        )
        r = await self._call(api.remove_member(conversation_id, contact.account_id))
        if isinstance(r.body, dict):
            self._put_conversation(api.parse_conversation(r.body))
        return envelope_id

    async def typing(self, conversation_id: str, typing: bool = True) -> None:
        """A typing indicator: encrypted, delivered to the devices online now, never stored."""
        record = await self._record(conversation_id)
        state = self._sync_state(record)
        meta = self._sync_meta(conversation_id)
        composer = sync.Composer(
            b64decode(self.device_id), b64decode(self.account_id), meta.counter, meta.lamport
        )
        plaintext, clock = sync.encode(composer.compose(state, sync.Typing(typing)))
        item = OutboxItem(b64encode(self._rng(16)), conversation_id, plaintext, clock, self._clock())
        async with self._lock:
            body, sessions = await self._encrypt_request(item)
            body["ephemeral"] = True
            with self._transaction():
                for session in sessions:
                    self.store.sessions.put_session(session)
            with contextlib.suppress(RecipientsChangedError, DeviceListOutdatedError):
                await self._send_envelope(conversation_id, body)

    async def _apply_op(self, cid: str, seq: int, op: sync.Op) -> sync.Received | None:
        """Apply one sequenced operation (already stored) to the in-memory state; emit what changed."""
        state = self._sync_state(await self._record(cid))
        before = state.view()
        try:
            received = state.receive(seq, op)
        except sync.SyncError:
            return None
        self._seqs.setdefault(cid, set()).add(seq)
        if received.applied:
            await self._emit_changes(cid, before, state.view())
        return received

    async def _emit_changes(
        self, cid: str, before: sync.ConversationView, after: sync.ConversationView
    ) -> None:
        old = {m.dot: m for m in before.messages}
        for m in after.messages:
            o = old.get(m.dot)
            if o is None:
                continue
            ref = message_ref(m.dot)
            if m.deleted and not o.deleted:
                await self._emit(MessageDeleted(cid, ref))
            elif m.text != o.text:
                await self._emit(MessageEdited(cid, ref, m.text))
            if m.reactions != o.reactions:
                await self._emit(ReactionChanged(cid, ref, tuple((b64encode(a), e) for a, e in m.reactions)))
        me = b64decode(self.account_id)
        if before.read_up_to != after.read_up_to or before.unread(me) != after.unread(me):
            await self._emit(
                ReadStateChanged(
                    cid, {b64encode(a): n for a, n in after.read_up_to.items()}, after.unread(me)
                )
            )
        for name, field in after.settings.items():
            if field != before.settings.get(name):
                await self._emit(
                    SettingsChanged(cid, name, field.value, tuple(c.value for c in field.conflicts))
                )
        mute = after.mute.get(me)
        if mute is not None and mute != before.mute.get(me):
            await self._emit(SettingsChanged(cid, "mute", mute.value, tuple(c.value for c in mute.conflicts)))
        if before.members != after.members:
            await self._emit(MembershipChanged(cid, tuple(sorted(b64encode(a) for a in after.members))))

    async def flush_outbox(self) -> int:
        """Send every outbox item (oldest first); returns how many the server stored. An item
        that cannot be sent now because of its conversation's trust state (a blocked identity
        change, a refused device list) stays in the outbox without holding up the others; the
        first such error is raised after the rest was sent."""
        sent, held = await self._flush()
        if held:
            raise next(iter(held.values()))
        return sent

    async def _flush(self) -> tuple[int, dict[str, SaltlineError]]:
        sent = 0
        held: dict[str, SaltlineError] = {}
        async with self._lock:
            for item in list(self.store.outbox.outbox()):
                try:
                    await self._send_item(item)
                except (IdentityChangedError, UntrustedDeviceListError) as exc:
                    held[item.envelope_id] = exc
                    continue
                sent += 1
        return sent, held

    async def _send_item(self, item: OutboxItem) -> None:
        for _ in range(MAX_SEND_ATTEMPTS):
            if item.request is None:
                try:
                    item = await self._encrypt_item(item)
                except NotFoundError:
                    # a device we hold in a (stale) list is gone: verify the newest lists, retry
                    await self._refresh_members(item.conversation_id, set())
                    item = replace(item, attempts=item.attempts + 1)
                    continue
            body = msg_json_loads(item.request)
            try:
                r = await self._send_envelope(item.conversation_id, body)
                result = api.parse_send(r.body)
                server_seq, server_ts = result.server_seq, result.server_ts
            except (RecipientsChangedError, DeviceListOutdatedError) as exc:
                accounts = set(api.parse_recipients_mismatch(exc.body).accounts) | set(
                    api.parse_outdated_accounts(exc.body)
                )
                await self._refresh_members(item.conversation_id, accounts)
                item = replace(item, request=None, attempts=item.attempts + 1)
                continue
            except ConflictError as exc:
                if exc.code != "idempotency_conflict" or not isinstance(exc.body.get("server_seq"), int):
                    raise
                server_seq, server_ts = exc.body["server_seq"], self._clock()
            await self._mark_sent(item, server_seq, server_ts)
            return
        raise RecipientsChangedError(
            409, "recipients_mismatch", "the recipients kept changing; try again later"
        )

    async def _send_envelope(self, conversation_id: str, body: dict[str, Any]) -> api.Response:
        """Send one envelope request body: over the delivery socket when it is ready (its
        ``send_result`` carries the HTTP route's status and body, so both are handled alike), else,
        or when the socket cannot carry it or closes before answering, over HTTP. The second
        sending of the same body is a replay the server answers with the first result."""
        socket = self._socket
        if socket is not None and socket.ready:
            try:
                frame = await socket.send_envelope(conversation_id, body)
            except SocketUnavailable:
                pass
            except TimeoutError as exc:
                raise NetworkError("the server did not answer a send on the delivery socket") from exc
            else:
                return api.check(api.send_result_response(frame))
        return await self._call(api.send_envelope(conversation_id, body))

    async def _refresh_members(self, conversation_id: str, accounts: set[str]) -> None:
        record = await self._record(conversation_id)
        for account_id in sorted(accounts | set(record.members) | {self.account_id}):
            await self._refresh_contact(account_id)

    async def _mark_sent(self, item: OutboxItem, server_seq: int, server_ts: int) -> None:
        with self._transaction():
            old = self.store.conversations.get_message(item.envelope_id)
            if old is not None:
                self.store.conversations.put_message(
                    replace(old, server_seq=server_seq, server_ts_ms=server_ts, status="sent")
                )
            self.store.outbox.remove_outbox(item.envelope_id)
            if server_seq == self.store.cursors.get_server_seq(item.conversation_id) + 1:
                self.store.cursors.set_server_seq(item.conversation_id, server_seq)
            op = _decode_op(item.body, item.clock, self.device_id, self.account_id)
            if op is not None:
                self.store.sync.put_sync_op(
                    SyncOpRecord(
                        item.conversation_id,
                        server_seq,
                        item.envelope_id,
                        self.account_id,
                        self.device_id,
                        item.clock,
                        item.body,
                    )
                )
        if op is not None:
            await self._apply_op(item.conversation_id, server_seq, op)
        await self._emit(MessageSent(item.conversation_id, item.envelope_id, server_seq))

    async def _verified_lists(self, members: Sequence[str]) -> dict[str, dl.DeviceList]:
        lists: dict[str, dl.DeviceList] = {}
        for account_id in members:
            contact = self.store.device_lists.get_contact(account_id) or await self._refresh_contact(
                account_id
            )
            if contact.pending_account_key is not None and contact.trust_policy == "block":
                raise IdentityChangedError(contact.username)
            lists[account_id] = trust.verified_content(contact.account_key, contact.signed_list)
        return lists

    async def _encrypt_item(self, item: OutboxItem) -> OutboxItem:
        """Encrypt ``item`` for every device of the verified lists; persist the advanced sessions
        and the exact request body together (so a retry resends the same bytes)."""
        body, sessions = await self._encrypt_request(item)
        item = replace(item, request=msg_json_dumps(body))
        with self._transaction():
            for s in sessions:
                self.store.sessions.put_session(s)
            self.store.outbox.put_outbox(item)
        return item

    async def _encrypt_request(self, item: OutboxItem) -> tuple[dict[str, Any], list[SessionRecord]]:
        record = await self._record(item.conversation_id)
        members = sorted(set(record.members) | {self.account_id})
        lists = await self._verified_lists(members)
        recipients = trust.fan_out(b64decode(self.device_id), lists)
        sendable = {r.device_id: self._sendable_session(r.device_id) for r in recipients}
        need = [r for r in recipients if not sendable[r.device_id]]
        bundles: dict[str, PreKeyBundle] = {}
        if need:
            claimed = api.parse_claim(
                (await self._call(api.claim((r.account_id, r.device_id) for r in need))).body
            )
            for b in claimed:
                bundles[b.device_id] = _bundle(b)
        state = self._state
        local = msg.identity_keys(state)
        header = msg.EnvelopeHeader(
            b64decode(item.conversation_id),
            b64decode(item.envelope_id),
            b64decode(self.account_id),
            b64decode(self.device_id),
            item.clock,
        )
        padded = msg.pad(item.body)
        ciphertexts: dict[str, bytes] = {}
        sessions: list[SessionRecord] = []
        for r in recipients:
            existing = sendable[r.device_id]
            bundle = bundles.get(r.device_id)
            if existing is None and bundle is None:
                continue  # no prekeys published yet: the server's 409 will say so
            try:
                enc = msg.encrypt_to_device(
                    local,
                    existing,
                    bundle,
                    r.entry,
                    padded,
                    header.associated_data(b64decode(r.device_id)),
                    self._rng,
                )
            except CryptoError as exc:
                raise UntrustedDeviceListError(f"refusing the keys of device {r.device_id}: {exc}") from exc
            ciphertexts[r.device_id] = enc.ciphertext
            sessions.append(
                SessionRecord(
                    r.device_id, enc.session.base_key, enc.session.to_bytes(), r.account_id, self._clock()
                )
            )
        body = api.envelope_body(b64decode(item.envelope_id), item.clock, trust.versions(lists), ciphertexts)
        return body, sessions

    def _sendable_session(self, device_id: str) -> Session | None:
        for record in self.store.sessions.sessions_for(device_id):
            session = Session.from_bytes(record.state, self._rng)
            if session.can_send:
                return session
        return None

    # -- receiving --------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the delivery socket (in the background; it reconnects with back-off and jitter).
        Returns once the first connection is ready."""
        if self._socket_task is not None:
            return
        ready = asyncio.Event()

        async def handler(frame: dict[str, Any]) -> int | None:
            result = await self._on_frame(frame)
            if frame.get("type") == "ready":
                ready.set()
            return result

        async def on_state(state: str, code: int | None) -> None:
            if code == CLOSE_AUTH_FAILED:
                self._access = None  # re-authenticate (refresh or device login) before reconnecting
            if code in FATAL_CLOSE_CODES:
                await self._emit(DeviceRemoved("this device was removed from its account; link it again"))
                return
            await self._emit(Disconnected(state))

        self._socket = DeliverySocket(self._ws_url, self._token, handler, on_state=on_state)
        self._socket_task = asyncio.create_task(self._socket.run())
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self._socket_task}, timeout=20, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            raise NetworkError("the delivery socket did not become ready")

    async def disconnect(self) -> None:
        """Close the delivery socket (the client stays usable; :meth:`connect` again later)."""
        if self._socket is not None:
            await self._socket.stop()
        if self._socket_task is not None:
            with contextlib.suppress(Exception):
                await self._socket_task
        self._socket = None
        self._socket_task = None

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            with contextlib.suppress(SaltlineError):
                await coro

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_frame(self, frame: dict[str, Any]) -> int | None:
        kind = frame.get("type")
        if kind == "ready":
            self._prekey_recheck = True  # count the prekeys when this connection's backlog drained
            await self._emit(Connected(int(frame.get("acked_queue_seq", 0))))
            self._spawn(self.flush_outbox())
            return None
        if kind == "envelope":
            async with self._lock:
                return await self._on_envelope(frame)
        if kind == "gap":
            to = int(frame["to_queue_seq"])
            await self._emit(DeliveryGap(int(frame["from_queue_seq"]), to))
            async with self._lock:
                try:
                    await self._fill_all_gaps()
                except NetworkError:
                    return None  # not acknowledged: the gap marker comes again
                self.store.cursors.set_acked_queue_seq(to)
            return to
        if kind == "ephemeral":
            async with self._lock:
                await self._process_envelope(frame, None)
            return None
        if kind == "drained":
            await self._emit(Drained(int(frame.get("queue_seq", 0))))
            if not self._maintaining and any(self._prekey_work_due()):
                self._spawn(self._maintain_prekeys_if_due())
            return None
        return None

    # -- gap filling ---------------------------------------------------------------------------------

    async def fill_gaps(self) -> None:
        """Fetch from the server every envelope of every conversation after this device's stored
        per-conversation cursor (e.g. after a :class:`DeliveryGap`)."""
        async with self._lock:
            await self._fill_all_gaps()

    async def _fill_all_gaps(self) -> None:
        listed = api.parse_conversations((await self._call(api.conversations())).body)
        for info in listed:
            if self.store.conversations.get_conversation(info.conversation_id) is None:
                record = self._put_conversation(info)
                await self._emit(ConversationAdded(record.conversation_id, record.members))
        for record in list(self.store.conversations.conversations()):
            await self._fill_gap(record.conversation_id)

    async def _fill_gap(self, conversation_id: str, start: int | None = None) -> None:
        """Page through the conversation's envelopes after the stored cursor (only those with a
        copy for this device come back) and process each through the same durable path as a
        queued one; envelopes already stored are dropped by envelope id."""
        after = self.store.cursors.get_server_seq(conversation_id) if start is None else start
        while True:
            body = (await self._call(api.history(conversation_id, after, HISTORY_PAGE))).body
            items = body.get("envelopes") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ProtocolError("server response lacks 'envelopes'")
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("server_seq"), int):
                    raise ProtocolError("malformed envelope in the conversation history")
                if item.get("ciphertext") is not None:
                    await self._process_envelope({**item, "conversation_id": conversation_id}, None)
                after = max(after, item["server_seq"])
                if after > self.store.cursors.get_server_seq(conversation_id):
                    self.store.cursors.set_server_seq(conversation_id, after)
            next_after = body.get("next_after")
            if not isinstance(next_after, int) or not items:
                return
            after = next_after

    async def _on_envelope(self, frame: dict[str, Any]) -> int | None:
        conversation_id = str(frame["conversation_id"])
        server_seq = int(frame["server_seq"])
        if (
            server_seq > self.store.cursors.get_server_seq(conversation_id) + 1
            and self.store.conversations.get_message(str(frame["envelope_id"])) is None
        ):
            # a jump in the conversation's server_seq: fetch what lies in between first
            try:
                await self._fill_gap(conversation_id)
            except NetworkError:
                return None  # not acknowledged: redelivered on the next connection
            except ServerError:
                pass  # the envelope itself is still processed
        return await self._process_envelope(frame, int(frame["queue_seq"]))

    def _ack(self, queue_seq: int | None) -> int | None:
        if queue_seq is not None:
            self.store.cursors.set_acked_queue_seq(queue_seq)
        return queue_seq

    async def _process_envelope(self, frame: dict[str, Any], queue_seq: int | None) -> int | None:
        """Decrypt, store and emit one envelope, from the queue (``queue_seq``) or from the
        conversation history (``None``: nothing to acknowledge)."""
        envelope_id = str(frame["envelope_id"])
        conversation_id = str(frame["conversation_id"])
        sender = frame.get("sender") or {}
        sender_account, sender_device = str(sender.get("account_id")), str(sender.get("device_id"))
        server_seq: int | None = frame.get("server_seq") if frame.get("type") != "ephemeral" else None
        if self.store.conversations.get_message(envelope_id) is not None:
            return self._ack(queue_seq)  # duplicate
        if server_seq is not None:
            self._sync_state(await self._record(conversation_id))
            if server_seq in self._seqs.get(conversation_id, set()):
                return self._ack(queue_seq)  # duplicate (an operation other than a message)
        try:
            if server_seq is None:  # otherwise fetched just above
                await self._record(conversation_id)
            contact = self.store.device_lists.get_contact(sender_account)
            content = (
                None if contact is None else trust.verified_content(contact.account_key, contact.signed_list)
            )
            if content is None or content.device(b64decode(sender_device)) is None:
                contact = await self._refresh_contact(sender_account)
                content = trust.verified_content(contact.account_key, contact.signed_list)
        except (NetworkError, ServerError):
            return None  # not acknowledged: redelivered on the next connection
        except UntrustedDeviceListError as exc:
            return await self._drop(frame, queue_seq, f"sender's device list refused: {exc}")
        sender_entry = content.device(b64decode(sender_device))
        if sender_entry is None:
            return await self._drop(frame, queue_seq, "the sending device is in no verified device list")
        header = msg.EnvelopeHeader(
            b64decode(conversation_id),
            b64decode(envelope_id),
            b64decode(sender_account),
            b64decode(sender_device),
            b64decode(str(frame.get("clock", ""))),
        )
        state = self._state
        sessions = [
            Session.from_bytes(s.state, self._rng) for s in self.store.sessions.sessions_for(sender_device)
        ]
        try:
            decrypted = msg.decrypt_from_device(
                state,
                sessions,
                b64decode(str(frame.get("ciphertext") or "")),
                header.associated_data(state.device_id),
                sender_entry,
                self._rng,
                self.store.prekeys.has_seen_base_key,
            )
            body = msg.unpad(decrypted.padded)
            op = sync.decode(body, header.clock, header.sender_device_id, header.sender_account_id)
        except sync.SyncError as exc:
            return await self._drop(frame, queue_seq, f"malformed operation: {exc}")
        except DecryptError as exc:
            if isinstance(exc.__cause__, DuplicateMessageError):
                return self._ack(queue_seq)
            return await self._drop(frame, queue_seq, str(exc))
        except CryptoError as exc:
            return await self._drop(frame, queue_seq, str(exc))
        sent_by_me = sender_account == self.account_id
        if server_seq is None and not isinstance(op.body, sync.Typing):
            return await self._drop(frame, queue_seq, "an ephemeral envelope carries only typing")
        text = op.body.text if isinstance(op.body, sync.Message) else ""
        sent_at_ms = op.body.sent_at_ms if isinstance(op.body, sync.Message) else 0
        received: sync.Received | None = None
        with self._transaction():
            self.store.sessions.put_session(
                SessionRecord(
                    sender_device,
                    decrypted.base_key,
                    decrypted.session.to_bytes(),
                    sender_account,
                    self._clock(),
                )
            )
            if decrypted.reusable_prekey_use is not None:  # replays of it are refused from now on
                self.store.prekeys.add_seen_base_key(*decrypted.reusable_prekey_use)
            if (
                decrypted.one_time_prekey_id is not None
                and decrypted.one_time_prekey_id in state.one_time_prekeys
            ):
                state = state.remove_one_time_prekey(decrypted.one_time_prekey_id)
                self._put_device(replace(self._device, state=state.encode()), state)
                if self._prekeys_on_server is not None:
                    self._prekeys_on_server -= 1  # the server handed it out
            if server_seq is None:
                if isinstance(op.body, sync.Typing):
                    await self._emit(
                        TypingChanged(conversation_id, sender_account, sender_device, op.body.typing)
                    )
                return None
            if isinstance(op.body, sync.Message):
                self.store.conversations.put_message(
                    MessageRecord(
                        conversation_id,
                        envelope_id,
                        sender_account,
                        sender_device,
                        text,
                        sent_at_ms,
                        sent_by_me,
                        "received",
                        server_seq,
                        int(frame.get("server_ts", 0)),
                        body,
                    )
                )
            self.store.cursors.set_server_seq(
                conversation_id, max(server_seq, self.store.cursors.get_server_seq(conversation_id))
            )
            sync_record = SyncOpRecord(
                conversation_id, server_seq, envelope_id, sender_account, sender_device, header.clock, body
            )
            self.store.sync.put_sync_op(sync_record)
            self._ack(queue_seq)
        received = await self._apply_op(conversation_id, server_seq, op)
        if isinstance(op.body, sync.Message):
            username = contact.username if contact is not None else ""
            await self._emit(
                MessageReceived(
                    conversation_id,
                    sender_account,
                    sender_device,
                    username,
                    text,
                    envelope_id,
                    server_seq,
                    sent_at_ms,
                    sent_by_me,
                )
            )
        if received is not None and received.gap is not None and conversation_id not in self._filling:
            self._filling.add(conversation_id)
            try:
                with contextlib.suppress(NetworkError, ServerError):
                    await self._fill_gap(conversation_id, received.gap.after_seq)
            finally:
                self._filling.discard(conversation_id)
        return queue_seq

    async def _drop(self, frame: dict[str, Any], queue_seq: int | None, reason: str) -> int | None:
        self._ack(queue_seq)
        sender = frame.get("sender") or {}
        await self._emit(
            DecryptionFailed(
                str(frame.get("conversation_id")),
                str(frame.get("envelope_id")),
                str(sender.get("device_id")),
                reason,
            )
        )
        return queue_seq

    # -- linking -----------------------------------------------------------------------------------------

    async def begin_link(self) -> str:
        """New device: a link code to show (text; also fits a QR code). Then :meth:`complete_link`."""
        if self._device.account_id is not None:
            raise UsageError("this device is already linked to an account")
        channel = api.parse_channel((await self._call(api.create_channel())).body)
        link_key = EphemeralKey.generate(self._rng)
        code = linking.LinkCode(
            b64decode(channel.channel_id),
            channel.channel_secret,
            bytes(link_key.public_key),
            b64decode(self.device_id),
        )
        self._link = (code, link_key)
        return code.to_text()

    def _history_bundle(
        self, depth: HistoryDepth, sent: dict[str, tuple[int, frozenset[int]]] | None = None
    ) -> dict[str, Any]:
        """Every conversation's sync operations (or the recent ones) and the floor the new device
        starts from (docs/protocol/sync.md § history bundles). With ``sent`` (conversation id ->
        floor and seqs of the first bundle), the follow-up bundle: a conversation the first bundle
        had keeps its floor and carries only the operations it did not have (none: left out)."""
        cutoff: int | None = None
        if isinstance(depth, int) and not isinstance(depth, bool):
            cutoff = self._clock() - depth * 86_400_000
        elif depth not in ("all", "none"):
            raise UsageError('history depth is "all", "none" or a number of days')
        out: list[dict[str, Any]] = []
        for record in self.store.conversations.conversations():
            cid = record.conversation_id
            state = self._sync_state(record)
            meta = self._sync_meta(cid)
            ops = list(self.store.sync.sync_ops(cid))
            floor = meta.floor_seq
            if depth == "none":
                floor = state.base_seq
            elif cutoff is not None:
                floor = state.base_seq
                for r in ops:
                    op = _decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
                    if (
                        isinstance(op, sync.Op)
                        and isinstance(op.body, sync.Message)
                        and op.body.sent_at_ms >= cutoff
                    ):
                        floor = min(floor, r.server_seq - 1)
                        break
            floor = max(floor, meta.floor_seq)
            had: frozenset[int] = frozenset()
            if sent is not None and cid in sent:
                floor, had = sent[cid]
            carried = [r for r in ops if r.server_seq > floor and r.server_seq not in had]
            if sent is not None and cid in sent and not carried:
                continue
            floor_clock = state.prefix(floor) if floor <= state.received_seq else {}
            out.append(
                {
                    "conversation_id": cid,
                    "kind": record.kind,
                    "members": list(record.members),
                    "genesis": list(meta.members or record.members),
                    "floor_seq": floor,
                    "floor_clock": b64encode(sync.CompactClock.of(0, floor_clock).encode()),
                    "cursor": self.store.cursors.get_server_seq(cid),
                    "ops": [
                        {
                            "seq": r.server_seq,
                            "envelope_id": r.envelope_id,
                            "account": r.sender_account_id,
                            "device": r.sender_device_id,
                            "clock": b64encode(r.clock),
                            "plaintext": b64encode(r.plaintext),
                        }
                        for r in carried
                    ],
                }
            )
        return {"v": HISTORY_BUNDLE_VERSION, "created_at_ms": self._clock(), "conversations": out}

    def _store_bundle_op(self, cid: str, o: dict[str, Any]) -> tuple[SyncOpRecord, sync.Op | None]:
        """Store one operation of a history bundle (and its message, if it is one)."""
        r = SyncOpRecord(
            cid,
            int(o["seq"]),
            str(o["envelope_id"]),
            str(o["account"]),
            str(o["device"]),
            b64decode(o["clock"]),
            b64decode(o["plaintext"]),
        )
        self.store.sync.put_sync_op(r)
        op = _decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
        if op is not None and isinstance(op.body, sync.Message):
            self.store.conversations.put_message(
                MessageRecord(
                    cid,
                    r.envelope_id,
                    r.sender_account_id,
                    r.sender_device_id,
                    op.body.text,
                    op.body.sent_at_ms,
                    r.sender_account_id == self._device.account_id,
                    "received",
                    r.server_seq,
                    None,
                    r.plaintext,
                )
            )
        return r, op

    def _seed_history(self, bundle: dict[str, Any]) -> None:
        """New device: adopt a history bundle (inside the linking transaction)."""
        if bundle.get("v") != HISTORY_BUNDLE_VERSION:
            raise LinkError("unsupported history bundle version")
        for c in bundle["conversations"]:
            cid = str(c["conversation_id"])
            self.store.conversations.put_conversation(
                ConversationRecord(cid, str(c["kind"]), tuple(sorted(c["members"])))
            )
            self._put_bundle_meta(c, self._sync_meta(cid))
            top = int(c["floor_seq"])
            for o in c["ops"]:
                r, _ = self._store_bundle_op(cid, o)
                top = max(top, r.server_seq)
            self.store.cursors.set_server_seq(cid, max(top, int(c.get("cursor", 0))))
            self._states.pop(cid, None)
            self._seeded.add(cid)

    def _put_bundle_meta(self, c: dict[str, Any], meta: SyncMeta) -> None:
        """The conversation starts from the bundle's floor and genesis (this device's own counter
        and lamport number are kept)."""
        self.store.sync.put_sync_meta(
            replace(
                meta,
                floor_seq=int(c["floor_seq"]),
                floor_clock=b64decode(c["floor_clock"]),
                members=tuple(c["genesis"]),
            )
        )

    async def _merge_follow_up(self, bundle: dict[str, Any]) -> None:
        """New device: add the operations of the approving device's follow-up bundle that this
        device does not hold (those sent while it was being linked), then rebuild each changed
        conversation and emit what changed. Already held operations are skipped, so each arrives
        exactly once whichever way came first."""
        if bundle.get("v") != HISTORY_BUNDLE_VERSION:
            raise LinkError("unsupported history bundle version")
        for c in bundle["conversations"]:
            cid = str(c["conversation_id"])
            record = self.store.conversations.get_conversation(cid)
            before = None if record is None else self._sync_state(record).view()
            held = {r.server_seq for r in self.store.sync.sync_ops(cid)}
            added: list[tuple[SyncOpRecord, sync.Op]] = []
            with self._transaction():
                if record is None:
                    record = ConversationRecord(cid, str(c["kind"]), tuple(sorted(c["members"])))
                    self.store.conversations.put_conversation(record)
                if cid not in self._seeded:  # not in the first bundle: it starts from this one
                    self._put_bundle_meta(c, self._sync_meta(cid))
                    self._seeded.add(cid)
                for o in c["ops"]:
                    seq, envelope_id = int(o["seq"]), str(o["envelope_id"])
                    if seq in held or self.store.conversations.get_message(envelope_id) is not None:
                        continue
                    r, op = self._store_bundle_op(cid, o)
                    held.add(seq)
                    if op is not None:
                        added.append((r, op))
                top = max(held, default=0)
                if top > self.store.cursors.get_server_seq(cid):
                    self.store.cursors.set_server_seq(cid, top)
                self._states.pop(cid, None)
            after = self._sync_state(record).view()
            if before is None:
                await self._emit(ConversationAdded(cid, record.members))
            else:
                await self._emit_changes(cid, before, after)
            for r, op in sorted(added, key=lambda a: a[0].server_seq):
                if isinstance(op.body, sync.Message):
                    contact = self.store.device_lists.get_contact(r.sender_account_id)
                    await self._emit(
                        MessageReceived(
                            cid,
                            r.sender_account_id,
                            r.sender_device_id,
                            contact.username if contact is not None else "",
                            op.body.text,
                            r.envelope_id,
                            r.server_seq,
                            op.body.sent_at_ms,
                            r.sender_account_id == self.account_id,
                        )
                    )

    async def approve_link(self, code_text: str, history: HistoryDepth = "all") -> None:
        """Existing device: send the sealed linking payload (account key, contacts, conversations)
        to the device that shows ``code_text``. ``history`` ("all", "none" or a number of days):
        the conversations' operations go in an encrypted history bundle (uploaded as a blob; its
        key and digest travel in the sealed payload).

        Then, in the background, the follow-up: once the new device is in the account's device
        list (from then on every sender encrypts to it), this device fetches what was sent
        meanwhile and sends the new device a second bundle with the operations the first one
        lacked. Keep the client open until :meth:`finish_link` returns (or a link made while
        others send may miss those messages)."""
        code = linking.LinkCode.parse(code_text)
        sealed_history: dict[str, Any] | None = None
        sent: dict[str, tuple[int, frozenset[int]]] = {}
        if self.store.conversations.conversations():
            bundle = self._history_bundle(history)
            sent = {
                c["conversation_id"]: (c["floor_seq"], frozenset(o["seq"] for o in c["ops"]))
                for c in bundle["conversations"]
            }
            sealed_history = await self._seal_bundle(bundle)
        follow_up = api.parse_channel((await self._call(api.create_channel())).body)
        own = await self._refresh_contact(self.account_id)
        contacts = [
            {
                "account_id": c.account_id,
                "username": c.username,
                "account_key": b64encode(c.account_key),
                "signed_list": b64encode(c.signed_list),
            }
            for c in self.store.device_lists.contacts()
            if c.account_id != self.account_id
        ]
        conversations = [
            {"conversation_id": c.conversation_id, "kind": c.kind, "members": list(c.members)}
            for c in self.store.conversations.conversations()
        ]
        payload: dict[str, Any] = {
            "account_id": self.account_id,
            "username": self.username,
            "account_key": b64encode(bytes(self._account_key())),
            "device_list": b64encode(own.signed_list),
            "contacts": contacts,
            "conversations": conversations,
            "follow_up": {"channel_id": follow_up.channel_id, "secret": follow_up.channel_secret},
        }
        if sealed_history is not None:
            payload["history"] = sealed_history
        box = linking.seal_payload(code, payload)
        await self._call(api.put_provisioning(b64encode(code.channel_id), code.secret, b64encode(box)))
        self._link_task(self._send_follow_up(code, follow_up, history, sent))

    async def _seal_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Encrypt a history bundle under a fresh key, upload it; its blob ids, key and digest."""
        encrypted = attachments.encrypt(msg_json_dumps(bundle), rng=self._rng)
        return {
            "blob_ids": await self._upload_parts(encrypted.ciphertext),
            "key": b64encode(encrypted.key.encode()),
            "digest": b64encode(encrypted.key.digest),
        }

    def _link_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        self._link_tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved here; finish_link() raises it again

        task.add_done_callback(done)

    async def finish_link(self, wait_s: float = LINK_FOLLOW_UP_WAIT_S) -> None:
        """Wait for this client's linking follow-ups: on the approving device, until the new device
        joined and the follow-up bundle is on its way; on the new device, until that bundle was
        received and merged. Raises what a follow-up failed with (:class:`LinkError` when the new
        device did not join, or the bundle did not come, in time)."""
        tasks = list(self._link_tasks)
        if not tasks:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), wait_s)
        finally:
            self._link_tasks.difference_update(t for t in tasks if t.done())

    async def _send_follow_up(
        self,
        code: linking.LinkCode,
        channel: api.Channel,
        depth: HistoryDepth,
        sent: dict[str, tuple[int, frozenset[int]]],
    ) -> None:
        """Approving device: wait until the new device is in the account's verified device list
        (every envelope stored from then on has a copy for it), fetch every envelope stored until
        now, and put the follow-up bundle (what the first one lacked) on the follow-up channel,
        sealed to the link key like the linking payload."""
        deadline = time.monotonic() + LINK_FOLLOW_UP_WAIT_S
        delay = LINK_POLL_S
        while True:
            own = await self._refresh_contact(self.account_id)
            if trust.verified_content(own.account_key, own.signed_list).device(code.device_id) is not None:
                break
            if time.monotonic() > deadline:
                raise LinkError("the new device did not join the account in time")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, LINK_POLL_MAX_S)
        async with self._lock:
            await self._fill_all_gaps()
            bundle = self._history_bundle(depth, sent)
        doc: dict[str, Any] = {"kind": FOLLOW_UP_KIND, "history": None}
        if bundle["conversations"]:
            doc["history"] = await self._seal_bundle(bundle)
        box = linking.seal_payload(code, doc)
        await self._call(api.put_provisioning(channel.channel_id, channel.channel_secret, b64encode(box)))

    async def _receive_follow_up(
        self, code: linking.LinkCode, link_key: EphemeralKey, channel: dict[str, Any]
    ) -> None:
        """New device: wait for the approving device's follow-up bundle and merge it."""
        channel_id, secret = str(channel["channel_id"]), str(channel["secret"])
        deadline = time.monotonic() + LINK_FOLLOW_UP_WAIT_S
        delay = LINK_POLL_S
        while True:
            try:
                box = api.parse_provisioning(await self._call(api.take_provisioning(channel_id, secret)))
            except NotFoundError as exc:
                raise LinkError("the follow-up of the link expired before it came") from exc
            if box is not None:
                break
            if time.monotonic() > deadline:
                raise LinkError("the follow-up of the link did not come in time")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, LINK_POLL_MAX_S)
        doc = linking.open_payload(link_key, code.secret, b64decode(box))
        if doc.get("kind") != FOLLOW_UP_KIND:
            raise LinkError("the follow-up of the link is not a follow-up")
        history = doc.get("history")
        if isinstance(history, dict):
            bundle = await self._download_bundle(history)
            async with self._lock:
                await self._merge_follow_up(bundle)

    async def _upload_parts(self, ciphertext: bytes) -> list[str]:
        """Upload ``ciphertext`` as blobs of at most ``HISTORY_PART_BYTES`` (or the server's smaller
        ``max_blob_bytes``, learnt from a 413 problem's ``limit``); the ordered blob ids."""
        part = HISTORY_PART_BYTES
        while True:
            ids: list[str] = []
            try:
                for start in range(0, len(ciphertext), part):
                    chunk = ciphertext[start : start + part]
                    ids.append(api.parse_blob_id((await self._call(api.upload_blob(chunk))).body))
                return ids
            except ServerError as exc:
                limit = exc.body.get("limit")
                if exc.status != 413 or not isinstance(limit, int) or not 0 < limit < part:
                    raise
                part = limit  # the parts already uploaded expire with the server's retention

    async def complete_link(self, wait_s: float = 120.0, poll_interval: float = 0.25) -> str:
        """New device: wait for the payload, join the account (sign the list naming this device
        with the account key and publish it token-less, authorised by that signature alone), log
        in with the device key and publish prekeys. Returns the account id."""
        if self._link is None:
            raise UsageError("call begin_link() first")
        code, link_key = self._link
        deadline = time.monotonic() + wait_s
        while True:
            r = await self._call(api.take_provisioning(b64encode(code.channel_id), code.secret))
            box = api.parse_provisioning(r)
            if box is not None:
                break
            if time.monotonic() > deadline:
                raise LinkError("no device approved the link code in time; show a new code")
            await asyncio.sleep(poll_interval)
        doc = linking.open_payload(link_key, code.secret, b64decode(box))
        self._link = None
        if "kind" in doc:  # a follow-up (docs/protocol/messages.md § 6) is not a linking payload
            raise LinkError("the linking payload is not valid: unexpected kind")
        try:
            account_key = AccountKey(b64decode(doc["account_key"]))
            username = dl.normalize_username(doc["username"])
            current = dl.SignedDeviceList.from_b64(doc["device_list"])
            dl.verify(current, account_key.public_key, username)
        except (CryptoError, KeyError, TypeError) as exc:
            raise LinkError(f"the linking payload is not valid: {exc}") from exc
        state = self._state.with_account_key(account_key)
        entry = state.device_entry(account_key.public_key, self._clock())
        new = dl.with_device_added(current, account_key, entry)
        self._put_device(
            replace(self._device, state=state.encode(), username=username, account_id=str(doc["account_id"])),
            state,
        )
        # No bearer token: the account-key signature on ``new`` is the server's whole authority.
        await self._call(api.put_signed_device_list(str(doc["account_id"]), new.to_b64()))
        with self._transaction():
            self._put_own_contact(new)
            for c in doc.get("contacts", []):
                key, signed = b64decode(c["account_key"]), b64decode(c["signed_list"])
                trust.verified_content(key, signed)
                self.store.device_lists.put_contact(
                    ContactRecord(c["account_id"], c["username"], key, signed, updated_at_ms=self._clock())
                )
            for c in doc.get("conversations", []):
                self.store.conversations.put_conversation(
                    ConversationRecord(c["conversation_id"], c["kind"], tuple(sorted(c["members"])))
                )
        await self._device_login()
        history = doc.get("history")
        if isinstance(history, dict):
            bundle = await self._download_bundle(history)
            with self._transaction():
                self._seed_history(bundle)
        await self._upload_all_prekeys()
        self.store.prekeys.put_prekey_meta(
            replace(self.store.prekeys.get_prekey_meta(), last_count_check_ms=0)
        )
        follow_up = doc.get("follow_up")
        if isinstance(follow_up, dict):
            self._link_task(self._receive_follow_up(code, link_key, follow_up))
        return str(doc["account_id"])

    async def _download_bundle(self, history: dict[str, Any]) -> dict[str, Any]:
        """Download a history bundle, check its digest and decrypt it."""
        ids = history.get("blob_ids")
        if ids is None:  # the single-blob form of earlier versions
            ids = [history.get("blob_id")]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise LinkError("the history bundle names no blobs")
        if len(ids) > MAX_HISTORY_PARTS:
            raise LinkError("the history bundle has too many parts")
        parts = [api.parse_blob((await self._call(api.download_blob(i))).body) for i in ids]
        ciphertext = b"".join(parts)
        try:
            key = attachments.AttachmentKey.decode(b64decode(history["key"]))
            if key.digest != b64decode(history["digest"]) or p.sha256(ciphertext) != key.digest:
                raise LinkError("the history bundle does not match its digest")
            bundle = msg_json_loads(attachments.decrypt(ciphertext, key))
        except (CryptoError, KeyError, TypeError, ValueError) as exc:
            raise LinkError(f"the history bundle is not valid: {exc}") from exc
        return bundle


def message_ref(dot: sync.Dot) -> str:
    """The text reference of a message (``"<device id>.<n>"``) for edit/delete/react/reply."""
    return f"{b64encode(dot.device)}.{dot.n}"


def _decode_op(plaintext: bytes, clock: bytes, device_id: str, account_id: str) -> sync.Op | None:
    try:
        return sync.decode(plaintext, clock, b64decode(device_id), b64decode(account_id))
    except (sync.SyncError, ValueError):
        return None


def _bundle(b: api.BundleInfo) -> PreKeyBundle:
    try:
        return PreKeyBundle(
            b64decode(b.device_id),
            DeviceSigningPublicKey.decode(b64decode(b.signing_key)),
            DeviceDHPublicKey.decode(b64decode(b.dh_key)),
            PreKeyPublic.from_b64(b.signed_prekey),
            None if b.one_time_prekey is None else PreKeyPublic.from_b64(b.one_time_prekey),
        )
    except CryptoError as exc:
        raise UntrustedDeviceListError(
            f"the server sent a malformed bundle for device {b.device_id}"
        ) from exc


def msg_json_dumps(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def msg_json_loads(data: bytes | None) -> dict[str, Any]:
    import json

    assert data is not None
    loaded: dict[str, Any] = json.loads(data)
    return loaded


__all__ = ["Client", "DeviceInfo", "PreKeyMeta", "message_ref"]
