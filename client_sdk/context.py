"""The device context every facet shares: the store, the cached device record and private state,
the HTTP transport with token handling, the clock, randomness, the event bus and the lock.

**The lock** (``ctx.lock``) serialises every read-modify-write of ratchet sessions, the device's
private state, sync counters and the outbox: encrypting and decrypting, composing operations,
prekey changes, linking merges. It is never held while events are published (callbacks may call
back into the client, e.g. a bot that replies) nor across waits for another device.
"""

from __future__ import annotations

import asyncio
import contextlib
import random as _random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from saltline.client_sdk.core import api
from saltline.client_sdk.core.events import Event, MessageReceived
from saltline.client_sdk.errors import ServerError, UsageError
from saltline.client_sdk.eventbus import EventBus, Outcome
from saltline.client_sdk.stores.base import DeviceRecord, SessionRecord, Store
from saltline.client_sdk.transport.http import HttpTransport
from saltline.crypto import primitives as p
from saltline.crypto import private_state
from saltline.crypto.keys import AccountKey, SigningContext, b64decode, b64encode
from saltline.crypto.login import login_challenge_message
from saltline.crypto.ratchet import Session
from saltline.crypto.x3dh import DeviceIdentity

#: Decoded ratchet sessions kept in memory (see :meth:`DeviceContext.session`).
SESSION_CACHE_SIZE = 2048


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DeviceContext:
    def __init__(
        self,
        store: Store,
        http: HttpTransport,
        rng: p.Rng,
        clock: Callable[[], int],
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.http = http
        self.rng = rng
        self.clock = clock
        self.monotonic = monotonic
        self.jitter: Callable[[], float] = jitter or _random.Random().random  # noqa: S311 - jitter only
        self.lock = asyncio.Lock()
        self.bus = EventBus()
        self._access: str | None = None
        self._access_expires = 0.0
        self._device_cache: DeviceRecord | None = None
        self._state_cache: tuple[bytes, private_state.DeviceState] | None = None
        self._identity_cache: tuple[private_state.DeviceState, bytes] | None = None
        #: (peer device, base key) -> (stored state bytes, the session they decode to; never handed out)
        self._sessions: dict[tuple[str, bytes], tuple[bytes, Session]] = {}
        #: Events whose effects are written but not yet published (:meth:`emit`, :meth:`flush`).
        self._pending: list[Event] = []
        #: Called by :meth:`flush` for each :class:`MessageReceived` when at-least-once callbacks
        #: exist (the inbound facet settles the message's pending delivery).
        self.on_delivered: Callable[[MessageReceived, Outcome], None] | None = None

    # -- the device record and private state ------------------------------------------------------

    @property
    def device(self) -> DeviceRecord:
        record = self._device_cache
        if record is None:
            record = self.store.identity.get_device()
            if record is None:
                raise UsageError("the store holds no device: create the client with Client.create()")
            self._device_cache = record
        return record

    @property
    def state(self) -> private_state.DeviceState:
        """The decoded private state (decoded once per written state, not per use)."""
        raw = self.device.state
        cached = self._state_cache
        if cached is None or cached[0] is not raw:
            cached = (raw, private_state.decode(raw))
            self._state_cache = cached
        return cached[1]

    @property
    def identity(self) -> bytes:
        """This device's public identity encoding (``DeviceIdentity.encode``: IS || IK || id)."""
        state = self.state
        cached = self._identity_cache
        if cached is None or cached[0] is not state:
            public = DeviceIdentity(state.device_id, state.signing_key.public_key, state.dh_key.public_key)
            cached = self._identity_cache = (state, public.encode())
        return cached[1]

    def put_device(self, record: DeviceRecord, state: private_state.DeviceState | None = None) -> None:
        """Write this device's record (``state``: the decoded ``record.state`` when at hand)."""
        self.store.identity.put_device(record)
        self._device_cache = record
        if state is not None:
            self._state_cache = (record.state, state)

    def put_state(self, state: private_state.DeviceState) -> None:
        self.put_device(replace(self.device, state=state.encode()), state)

    def forget_device(self) -> None:
        self._device_cache = None
        self._state_cache = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``store.transaction()``; a rollback also drops the cached device record and state and
        the events emitted inside it."""
        mark = len(self._pending)
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self.forget_device()
            del self._pending[mark:]
            raise

    # -- ratchet sessions -------------------------------------------------------------------------

    def session(self, record: SessionRecord) -> Session:
        """The session ``record`` holds, as a fresh object the caller may advance. Decoding checks
        every key, so the decoded form of the last state written or read is kept; it is used only
        while the stored bytes are exactly the bytes it came from (a rollback or another writer
        makes it miss)."""
        key = (record.peer_device_id, record.base_key)
        hit = self._sessions.get(key)
        if hit is not None and hit[0] == record.state:
            return hit[1].copy()
        session = Session.from_bytes(record.state, self.rng)
        self._remember(key, record.state, session.copy())
        return session

    def session_for_decrypt(self, record: SessionRecord) -> Session:
        """Like :meth:`session` without the copy, for callers that never advance the object they
        get (decryption works on its own copy: ``saltline.client_sdk.core.message``)."""
        key = (record.peer_device_id, record.base_key)
        hit = self._sessions.get(key)
        if hit is not None and hit[0] == record.state:
            return hit[1]
        session = Session.from_bytes(record.state, self.rng)
        self._remember(key, record.state, session)
        return session

    def put_session(self, record: SessionRecord, session: Session) -> None:
        """Write ``record`` (whose state is ``session.to_bytes()``) and remember its decoded form."""
        self.store.sessions.put_session(record)
        self._remember((record.peer_device_id, record.base_key), record.state, session.copy())

    def _remember(self, key: tuple[str, bytes], state: bytes, session: Session) -> None:
        self._sessions.pop(key, None)
        self._sessions[key] = (state, session)
        if len(self._sessions) > SESSION_CACHE_SIZE:
            del self._sessions[next(iter(self._sessions))]

    # -- events -----------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Queue ``event`` for publication by the next :meth:`flush` (dropped if the enclosing
        transaction rolls back). Safe under the lock: nothing runs until :meth:`flush`."""
        self._pending.append(event)

    async def flush(self) -> None:
        """Publish every queued event in order (never call with :attr:`lock` held: callbacks may
        call back into the client)."""
        while self._pending:
            event = self._pending.pop(0)
            if isinstance(event, MessageReceived) and self.bus.has_at_least_once(MessageReceived):
                outcome = await self.bus.deliver(event)
                if self.on_delivered is not None:
                    self.on_delivered(event, outcome)
            else:
                await self.bus.publish(event)

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def account_id(self) -> str:
        account_id = self.device.account_id
        if account_id is None:
            raise UsageError("this device has no account yet: call register() or link it first")
        return account_id

    @property
    def username(self) -> str:
        username = self.device.username
        if username is None:
            raise UsageError("this device has no account yet: call register() or link it first")
        return username

    def account_key(self) -> AccountKey:
        key = self.state.account_key
        if key is None:
            raise UsageError("this device holds no account key: call register() or link it first")
        return key

    # -- HTTP with tokens -------------------------------------------------------------------------

    async def call(self, request: api.Request) -> api.Response:
        token = await self.token() if request.auth else None
        response = await self.http.execute(request, token)
        if response.status == 401 and request.auth:
            self._access = None
            response = await self.http.execute(request, await self.token())
        return api.check(response)

    def drop_access_token(self) -> None:
        self._access = None

    def set_access_token(self, token: str, expires_in_s: float) -> None:
        self._access = token
        self._access_expires = self.monotonic() + expires_in_s

    async def token(self) -> str:
        """A valid access token: the cached one, else a refresh, else a device-key login."""
        if self._access is not None and self.monotonic() < self._access_expires:
            return self._access
        device = self.device
        if device.refresh_token is not None:
            try:
                r = api.check(await self.http.execute(api.refresh(device.refresh_token)))
                return self.adopt_tokens(api.parse_tokens(r.body))
            except ServerError:
                pass  # refresh token expired or revoked: log in with the device key
        return await self.device_login()

    def adopt_tokens(self, tokens: api.Tokens) -> str:
        self.set_access_token(tokens.access_token, max(1, tokens.expires_in - 30))
        self.put_device(replace(self.device, refresh_token=tokens.refresh_token))
        return tokens.access_token

    async def device_login(self) -> str:
        """Log in by signing a server challenge with the device signing key."""
        username, device_id = self.username, self.device_id
        nonce = api.parse_challenge(
            api.check(await self.http.execute(api.challenge(username, device_id))).body
        )
        message = login_challenge_message(username, b64decode(device_id), b64decode(nonce))
        signature = b64encode(self.state.signing_key.sign(SigningContext.LOGIN_CHALLENGE, message))
        r = api.check(await self.http.execute(api.device_login(username, device_id, nonce, signature)))
        return self.adopt_tokens(api.parse_tokens(r.body))
