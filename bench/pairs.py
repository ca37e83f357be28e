"""Benchmark of the workload "pairs-v1" (bench/WORKLOAD.md), server mode (this file)
and sdk mode (``--mode sdk``: bench/pairs_sdk.py).

    .venv/bin/python bench/pairs.py [--mode server|sdk] [--test latency|throughput|idle|fanout|reconnect|all]
                                     [--connections 1000] [--send-via ws|http]
                                     [--database-url postgresql+asyncpg://...] [--url http://...]
                                     [--instances 2 --redis-url redis://...]

Prints ONE JSON document on stdout (progress goes to stderr). See bench/README.md for what each
figure means and the figures measured on the 2-core machine.

For each test it starts the Saltline server as a subprocess (``python -m saltline.server db upgrade`` then
``python -m saltline.server serve`` on 127.0.0.1 and a free port; SQLite in a fresh temporary data
directory unless ``--database-url`` is given), or targets a running one with ``--url`` (then pass
``--server-pid`` to get the server's CPU and RSS). Then:

1. set-up (untimed): register the accounts (one device each) through the real HTTP API with real
   signed device lists (``saltline.crypto.device_list``), upload prekeys, create one direct conversation per
   pair and claim the receiver's prekey bundle (the session set-up of the workload);
2. receivers connect their delivery WebSocket (auth frame first, ack every envelope by queue_seq,
   answer pings) and count a message delivered when its frame is received;
3. quiesce: the server under 5 % of a core over 1 s (at most 30 s);
4. warm-up: every sender sends one message; wait until all are delivered;
5. the timed test.

Server mode: every envelope body is built (and JSON-encoded) before the timed window. Its one
ciphertext has the size of a real Double Ratchet message for a 200-byte plaintext (measured with
``saltline.crypto.ratchet`` at start-up: header + plaintext + AEAD tag) and is random bytes, except that it
begins with the ASCII prefix ``B|<run>|<pair>|<seq>|`` in clear, so the receiver can match a
delivery to its send without decrypting. The server treats ciphertexts as opaque bytes, so this
costs it exactly what a real ciphertext of that size costs.

Load generator: this one process (asyncio on uvloop when installed); one ``httpx.AsyncClient``
(HTTP/1.1 keep-alive) per sender; ``websockets`` for the sockets; everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HERE = Path(__file__).resolve().parent
# Python put bench/ first on sys.path, where bench/crypto.py would shadow the crypto package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


from bench import _common as common  # noqa: E402  (bench/ is a namespace package)

log = common.log

from saltline.crypto import device_list as dl  # noqa: E402
from saltline.crypto.keys import (  # noqa: E402
    AccountKey,
    DeviceDHKey,
    DeviceSigningKey,
    LastResortPreKey,
    OneTimePreKey,
    SignedPreKey,
)

WORKLOAD = "pairs-v1"
PLAINTEXT_BYTES = 200
#: An opaque vector clock for a 1:1 conversation of two single-device accounts:
#: 2 x (16-byte device id + 8-byte counter).
CLOCK_BYTES = 48
DRAIN_MAX_S = 15.0
WARMUP_MAX_S = 15.0
SETUP_CONCURRENCY = 16
CONNECT_CONCURRENCY = 64
PASSWORD = "bench password, not a secret"
#: Settings for a server this script starts: cheap argon2 and high rate limits (the set-up
#: registers up to thousands of accounts from one IP), access log off. Everything on the hot path
#: (JWT, group commit, SQLite synchronous=FULL) stays at the server's defaults.
SERVER_ENV = {
    "SALTLINE_ARGON2_TIME_COST": "1",
    "SALTLINE_ARGON2_MEMORY_COST_KIB": "8",
    "SALTLINE_ARGON2_PARALLELISM": "1",
    "SALTLINE_RATE_LIMIT_REGISTER_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_LOGIN_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_LOGIN_PER_ACCOUNT": "1000000/minute",
    "SALTLINE_RATE_LIMIT_PROVISIONING_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_ENVELOPES_PER_DEVICE": "100000000/minute",
    "SALTLINE_RATE_LIMIT_ENVELOPE_BYTES_PER_DEVICE": "1000000000000/minute",
    "SALTLINE_LOG_LEVEL": "warning",
}


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ratchet_message_size(plaintext_bytes: int) -> tuple[int, str]:
    """The size of a real Double Ratchet message for ``plaintext_bytes`` (an ordinary message in
    an established session), measured with ``crypto``; falls back to the formula."""
    try:
        from saltline.crypto.ratchet import Session
        from saltline.crypto.x3dh import DeviceIdentityKeys, PreKeyBundle, initiate

        account = AccountKey.generate()

        def device() -> DeviceIdentityKeys:
            return DeviceIdentityKeys(os.urandom(16), DeviceSigningKey.generate(), DeviceDHKey.generate())

        me, peer = device(), device()
        entry = dl.bind_device(
            account.public_key, peer.device_id, peer.signing_key, peer.dh_key.public_key, 0
        )
        spk, opk = SignedPreKey.generate_with_id(1), OneTimePreKey.generate_with_id(1)
        bundle = PreKeyBundle(
            peer.device_id,
            peer.signing_key.public_key,
            peer.dh_key.public_key,
            spk.signed_public(peer.signing_key),
            opk.signed_public(peer.signing_key),
        )
        session = Session.initiate(initiate(me, bundle, entry))
        sizes = {len(session.encrypt(os.urandom(plaintext_bytes), bytes(64))) for _ in range(3)}
        return max(sizes), "saltline.crypto.ratchet.Session.encrypt"
    except Exception as exc:  # the crypto API moved: use the documented layout
        from saltline.crypto import primitives
        from saltline.crypto.ratchet import HEADER_SIZE

        log(f"could not measure a ratchet message ({type(exc).__name__}: {exc}); using the formula")
        return HEADER_SIZE + plaintext_bytes + primitives.AEAD_TAG_SIZE, "HEADER_SIZE + plaintext + tag"


# -- identities and set-up ----------------------------------------------------------------------


@dataclass
class Identity:
    """One account with one device."""

    username: str
    account_key: AccountKey
    device_id: bytes
    signing: DeviceSigningKey
    dh: DeviceDHKey
    signed_list: dl.SignedDeviceList
    account_id: str = ""
    access_token: str = ""
    list_version: int = 1

    @classmethod
    def new(cls, username: str) -> Identity:
        key = AccountKey.generate()
        device_id = os.urandom(16)
        signing = DeviceSigningKey.generate()
        dh = DeviceDHKey.generate()
        entry = dl.bind_device(key.public_key, device_id, signing, dh.public_key, 0)
        return cls(username, key, device_id, signing, dh, dl.first(key, username.lower(), [entry]))

    @property
    def id(self) -> str:
        return b64e(self.device_id)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class SetupError(RuntimeError):
    pass


def _check(r: httpx.Response, what: str, *ok: int) -> dict[str, Any]:
    if r.status_code not in ok:
        raise SetupError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json() if r.content else {}


async def register(http: httpx.AsyncClient, ident: Identity, prekeys: bool) -> None:
    body = _check(
        await http.post(
            "/v1/accounts",
            json={
                "username": ident.username,
                "password": PASSWORD,
                "account_key": ident.account_key.public_key.to_b64(),
                "device_list": ident.signed_list.to_b64(),
                "device_id": ident.id,
            },
        ),
        "register",
        201,
    )
    ident.account_id = body["account_id"]
    ident.access_token = body["tokens"]["access_token"]
    ident.list_version = int(body["device_list_version"])
    if prekeys:
        _check(
            await http.put(
                "/v1/keys",
                headers=ident.headers,
                json={
                    "signed_prekey": SignedPreKey.generate_with_id(1).signed_public(ident.signing).to_b64(),
                    "last_resort_prekey": LastResortPreKey.generate_with_id(1)
                    .signed_public(ident.signing)
                    .to_b64(),
                    "one_time_prekeys": [
                        OneTimePreKey.generate_with_id(i).signed_public(ident.signing).to_b64()
                        for i in range(1, 3)
                    ],
                },
            ),
            "upload prekeys",
            200,
        )


@dataclass
class Pair:
    index: int
    sender: Identity
    receiver: Identity
    conversation_id: str = ""


async def bounded(limit: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def run(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


async def setup_pairs(http: httpx.AsyncClient, count: int, tag: str) -> list[Pair]:
    pairs = [
        Pair(i, Identity.new(f"bench_{tag}_s{i}"), Identity.new(f"bench_{tag}_r{i}")) for i in range(count)
    ]

    async def one(pair: Pair) -> None:
        await register(http, pair.sender, prekeys=True)
        await register(http, pair.receiver, prekeys=True)
        body = _check(
            await http.post(
                "/v1/conversations",
                headers=pair.sender.headers,
                json={"kind": "direct", "members": [pair.receiver.account_id]},
            ),
            "create conversation",
            200,
            201,
        )
        pair.conversation_id = body["conversation_id"]
        # Session set-up of the workload: claim the receiver's prekey bundle (server mode does not
        # encrypt with it; the claim is the server-side cost of establishing the session).
        _check(
            await http.get(
                f"/v1/keys/{pair.receiver.account_id}/{pair.receiver.id}", headers=pair.sender.headers
            ),
            "claim prekey bundle",
            200,
        )

    await bounded(SETUP_CONCURRENCY, [one(p) for p in pairs])
    return pairs


# -- delivery tracking --------------------------------------------------------------------------


@dataclass
class Tracker:
    """Send and delivery instants (perf_counter) keyed by (pair, seq) for one run id."""

    run: str
    sent_at: dict[tuple[int, int], float] = field(default_factory=dict)
    accepted: set[tuple[int, int]] = field(default_factory=set)
    delivered: dict[tuple[int, int], float] = field(default_factory=dict)
    send_rtt: list[float] = field(default_factory=list)
    send_errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    duplicates: int = 0
    foreign: int = 0
    unknown: int = 0

    def on_envelope(self, ciphertext: bytes, t: float) -> None:
        parts = ciphertext.split(b"|", 4)
        if len(parts) < 5 or parts[0] != b"B":
            self.unknown += 1
            return
        if parts[1].decode() != self.run:
            self.foreign += 1
            return
        key = (int(parts[2]), int(parts[3]))
        if key in self.delivered:
            self.duplicates += 1
        else:
            self.delivered[key] = t

    def error(self, kind: str, detail: str) -> None:
        self.send_errors[kind] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(detail[:600])

    def undelivered(self) -> int:
        return sum(1 for k in self.accepted if k not in self.delivered)

    async def drain(self, max_s: float) -> float:
        start = time.perf_counter()
        while self.undelivered() and time.perf_counter() - start < max_s:  # noqa: ASYNC110 - 10 ms poll
            await asyncio.sleep(0.01)
        return time.perf_counter() - start

    def latencies(self, until: float | None = None) -> list[float]:
        return [
            t - self.sent_at[k]
            for k, t in self.delivered.items()
            if k in self.sent_at and (until is None or t <= until)
        ]


class DeviceSocket:
    """A held delivery socket: auth first, ack every envelope by queue_seq, answer pings."""

    def __init__(self, ws_url: str, token: str) -> None:
        self.ws_url = ws_url
        self.token = token
        self.conn: ClientConnection | None = None
        self.tracker: Tracker | None = None
        self.pings = 0
        self.envelopes = 0
        self.closed: str | None = None
        self._pong = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.conn = await connect(
            self.ws_url + "/v1/ws", ping_interval=None, open_timeout=30, close_timeout=5, max_queue=None
        )
        await self.conn.send(orjson.dumps({"type": "auth", "token": self.token}).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(self.conn.recv(), 30))
            if frame["type"] == "ready":
                break
            if frame["type"] == "ping":
                await self.conn.send('{"type":"pong"}')
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        assert self.conn is not None
        conn = self.conn
        clock = time.perf_counter
        try:
            async for raw in conn:
                t = clock()
                frame = orjson.loads(raw)
                kind = frame["type"]
                if kind == "envelope":
                    self.envelopes += 1
                    if self.tracker is not None:
                        self.tracker.on_envelope(b64d(frame["ciphertext"]), t)
                    await conn.send(f'{{"type":"ack","queue_seq":{int(frame["queue_seq"])}}}')
                elif kind == "ping":
                    self.pings += 1
                    await conn.send('{"type":"pong"}')
                elif kind == "pong":
                    self._pong.set()
            code = conn.close_code
            self.closed = f"closed by server (code {code})"
        except ConnectionClosed as exc:
            self.closed = f"connection closed: {exc}"
        except Exception as exc:
            self.closed = f"{type(exc).__name__}: {exc}"

    async def check_alive(self, wait_s: float = 10.0) -> bool:
        """Send a client ping; alive if the pong comes back."""
        if self.conn is None or self.closed is not None:
            return False
        self._pong.clear()
        try:
            await self.conn.send('{"type":"ping"}')
            await asyncio.wait_for(self._pong.wait(), wait_s)
        except (TimeoutError, ConnectionClosed):
            return False
        return True

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)


async def open_sockets(ws_url: str, tokens: list[str]) -> tuple[list[DeviceSocket], list[str]]:
    socks = [DeviceSocket(ws_url, t) for t in tokens]
    errors: list[str] = []

    async def one(s: DeviceSocket) -> None:
        try:
            await s.open()
        except Exception as exc:
            s.closed = f"open failed: {type(exc).__name__}: {exc}"
            errors.append(s.closed)

    await bounded(CONNECT_CONCURRENCY, [one(s) for s in socks])
    return socks, errors


async def close_sockets(socks: list[DeviceSocket]) -> None:
    await bounded(CONNECT_CONCURRENCY, [s.close() for s in socks])


# -- senders ------------------------------------------------------------------------------------


class Sender:
    def __init__(self, base_url: str, pair: Pair, tracker: Tracker) -> None:
        self.pair = pair
        self.tracker = tracker
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={**pair.sender.headers, "Content-Type": "application/json"},
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=8),
        )
        self.path = f"/v1/conversations/{pair.conversation_id}/envelopes"

    def body(self, run: str, seq: int, ciphertext_bytes: int) -> bytes:
        """A pre-built envelope (JSON bytes): one ciphertext for the receiver's device."""
        prefix = f"B|{run}|{self.pair.index}|{seq}|".encode()
        ciphertext = prefix + os.urandom(ciphertext_bytes - len(prefix))
        s, r = self.pair.sender, self.pair.receiver
        return orjson.dumps(
            {
                "envelope_id": b64e(os.urandom(16)),
                "clock": b64e(os.urandom(CLOCK_BYTES)),
                "device_list_versions": {s.account_id: s.list_version, r.account_id: r.list_version},
                "ephemeral": False,
                "ciphertexts": [{"device_id": r.id, "ciphertext": b64e(ciphertext)}],
            }
        )

    async def send(self, seq: int, body: bytes) -> bool:
        key = (self.pair.index, seq)
        tracker = self.tracker
        t = time.perf_counter()
        tracker.sent_at[key] = t
        try:
            r = await self.http.post(self.path, content=body)
        except Exception as exc:
            tracker.error(type(exc).__name__, f"pair {key[0]} seq {key[1]}: {type(exc).__name__}: {exc}")
            return False
        if r.status_code != 201:
            tracker.error(
                f"http_{r.status_code}", f"pair {key[0]} seq {key[1]}: HTTP {r.status_code}: {r.text}"
            )
            return False
        tracker.send_rtt.append(time.perf_counter() - t)
        tracker.accepted.add(key)
        return True

    async def close(self) -> None:
        await self.http.aclose()


class WsSender(Sender):
    """The same envelope bodies, sent as ``send`` frames over the sender device's own delivery
    socket (``--send-via ws``); accepted = its ``send_result`` with status 201."""

    def __init__(self, base_url: str, ws_url: str, pair: Pair, tracker: Tracker) -> None:
        super().__init__(base_url, pair, tracker)
        self.ws_url = ws_url
        self.conn: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._head = (
            b'{"type":"send","request_id":"%s","conversation_id":"'
            + pair.conversation_id.encode()
            + b'","envelope":'
        )

    async def open(self) -> None:
        self.conn = await connect(
            self.ws_url + "/v1/ws", ping_interval=None, open_timeout=30, close_timeout=5, max_queue=None
        )
        await self.conn.send(orjson.dumps({"type": "auth", "token": self.pair.sender.access_token}).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(self.conn.recv(), 30))
            if frame["type"] == "ready":
                break
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        assert self.conn is not None
        conn = self.conn
        try:
            async for raw in conn:
                frame = orjson.loads(raw)
                kind = frame["type"]
                if kind == "send_result":
                    fut = self._pending.pop(frame["request_id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
                elif kind == "ping":
                    await conn.send('{"type":"pong"}')
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the sender's socket closed"))

    def body(self, run: str, seq: int, ciphertext_bytes: int) -> bytes:
        return self._head.replace(b"%s", str(seq).encode()) + super().body(run, seq, ciphertext_bytes) + b"}"

    async def send(self, seq: int, body: bytes) -> bool:
        assert self.conn is not None
        key = (self.pair.index, seq)
        tracker = self.tracker
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[str(seq)] = fut
        t = time.perf_counter()
        tracker.sent_at[key] = t
        try:
            await self.conn.send(body, text=True)
            answer = await fut
        except Exception as exc:
            self._pending.pop(str(seq), None)
            tracker.error(type(exc).__name__, f"pair {key[0]} seq {key[1]}: {type(exc).__name__}: {exc}")
            return False
        if answer["status"] != 201:
            tracker.error(
                f"ws_{answer['status']}", f"pair {key[0]} seq {key[1]}: status {answer['status']}: {answer}"
            )
            return False
        tracker.send_rtt.append(time.perf_counter() - t)
        tracker.accepted.add(key)
        return True

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)
        await super().close()


async def make_senders(args: argparse.Namespace, target: Target, pairs: list[Pair]) -> list[Sender]:
    """One sender per pair: HTTP POSTs, or ``send`` frames over the sender's socket."""
    if args.send_via == "http":
        return [Sender(target.base_url, p, Tracker("")) for p in pairs]
    senders = [WsSender(target.base_url, target.ws_url, p, Tracker("")) for p in pairs]
    await bounded(CONNECT_CONCURRENCY, [s.open() for s in senders])
    return senders


# -- server under test --------------------------------------------------------------------------


@dataclass
class Target:
    """The server under test. With ``--instances 2``: senders and set-up use the first
    instance (``base_url``/``ws_url``), receivers hold their sockets on the second
    (``recv_ws_url``), so every delivery crosses instances through the Redis bus; CPU and RSS
    are summed over ``pids``."""

    base_url: str
    ws_url: str
    pid: int | None
    database: str
    process: Any = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    others: list[Any] = field(default_factory=list)  # further instances' ServerProcess
    recv_ws_url: str = ""
    #: A redis-server the bench started for ``--workers N`` (its CPU counts as the server's).
    redis: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.recv_ws_url = self.recv_ws_url or self.ws_url

    @property
    def pids(self) -> list[int]:
        """Each instance (its workers are found as its descendants) and the bench's Redis."""
        redis = [self.redis.pid] if self.redis is not None else []
        return [p for p in [self.pid, *(o.pid for o in self.others), *redis] if p]

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url, *(o.base_url for o in self.others)]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": self.base_url,
            "pid": self.pid,
            "instances": 1 + len(self.others),
            "workers": int(self.env.get("SALTLINE_WORKERS", "1")),
            "started_by_bench": self.process is not None,
        }
        if self.others:
            out["receiver_instance_url"] = self.others[0].base_url
            out["pids"] = self.pids
        if self.process is not None:
            out["settings_env"] = {k: v for k, v in self.env.items() if "SECRET" not in k}
        return out

    def finish(self) -> dict[str, Any]:
        if self.process is None:
            return {}
        out: dict[str, Any] = {}
        for i, proc in enumerate([self.process, *self.others]):
            alive = proc.alive()
            code = proc.stop()
            key = "" if i == 0 else f"instance_{i + 1}_"
            out.update(
                {f"{key}alive_at_end": alive, f"{key}exit_code": code, f"{key}log": proc.log_problems()}
            )
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(10)
        if self.tmp is not None:
            self.tmp.cleanup()
        return out


def database_kind(url: str | None) -> str:
    if not url or url.startswith("sqlite"):
        return "sqlite"
    if url.startswith("postgresql"):
        return "postgresql"
    return url.split(":", 1)[0]


def start_saltline(args: argparse.Namespace, name: str, extra_env: dict[str, str]) -> Target:
    if args.url:
        base = args.url.rstrip("/")
        return Target(base, "ws" + base[4:], args.server_pid, database_kind(args.database_url))
    tmp = tempfile.TemporaryDirectory(prefix=f"saltline-bench-{name}-")
    port = common.free_port()
    env = {
        **SERVER_ENV,
        "SALTLINE_DATA_DIR": tmp.name,
        "SALTLINE_HOST": "127.0.0.1",
        "SALTLINE_PORT": str(port),
        "SALTLINE_JWT_SECRET": secrets.token_urlsafe(48),
        "SALTLINE_SQLITE_SYNCHRONOUS": args.sqlite_synchronous,
        **extra_env,
    }
    if args.database_url:
        env["SALTLINE_DATABASE_URL"] = args.database_url
    if args.instances > 1:
        if database_kind(args.database_url) != "postgresql" or not args.redis_url:
            raise SystemExit("--instances 2 needs --database-url postgresql+asyncpg://... and --redis-url")
        env["SALTLINE_REDIS_URL"] = args.redis_url
    redis = None
    if args.workers > 1:
        # serve --workers N shares wake-ups and rate limits through Redis (docs/deploy.md § 8)
        redis_url = args.redis_url
        if not redis_url:
            redis, redis_url = common.start_redis(Path(tmp.name) / "redis.log")
            log(f"{name}: redis-server pid {redis.pid} on {redis_url}")
        env["SALTLINE_REDIS_URL"] = redis_url
        env["SALTLINE_WORKERS"] = str(args.workers)

    upgrade = subprocess.run(
        [sys.executable, "-m", "saltline.server", "db", "upgrade"],
        cwd=common.REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if upgrade.returncode != 0:
        raise RuntimeError(f"db upgrade failed:\n{upgrade.stdout}\n{upgrade.stderr}")
    proc = common.ServerProcess(
        [sys.executable, "-m", "saltline.server", "serve"], port, Path(tmp.name) / "server.log", env
    ).start()
    log(f"{name}: saltline server pid {proc.pid} on {proc.base_url} ({database_kind(args.database_url)})")
    others = []
    for i in range(1, args.instances):
        other_port = common.free_port()
        other = common.ServerProcess(
            [sys.executable, "-m", "saltline.server", "serve"],
            other_port,
            Path(tmp.name) / f"server-{i + 1}.log",
            {**env, "SALTLINE_PORT": str(other_port)},
        ).start()
        log(f"{name}: instance {i + 1}, pid {other.pid} on {other.base_url} (receivers connect here)")
        others.append(other)
    return Target(
        proc.base_url,
        proc.ws_url,
        proc.pid,
        database_kind(args.database_url),
        proc,
        tmp,
        env,
        others=others,
        recv_ws_url=others[0].ws_url if others else "",
        redis=redis,
    )


# -- server metrics -----------------------------------------------------------------------------

SCRAPED = (
    "saltline_group_commit_batch_size_sum",
    "saltline_group_commit_batch_size_count",
    "saltline_envelopes_accepted_total",
    "saltline_envelopes_delivered_total",
    "saltline_delivery_latency_seconds_sum",
    "saltline_delivery_latency_seconds_count",
)


async def scrape(base_url: str) -> dict[str, float]:
    """The few Saltline counters the report uses, from ``/metrics`` (empty if unavailable)."""
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
            text = (await http.get("/metrics")).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SCRAPED:
            out[name] = float(value)
    return out


async def scrape_all(target: Target) -> dict[str, float]:
    """The scraped counters summed over the instances."""
    total: dict[str, float] = {}
    for url in target.base_urls:
        for key, value in (await scrape(url)).items():
            total[key] = total.get(key, 0.0) + value
    return total


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    batches = d.get("saltline_group_commit_batch_size_count", 0.0)
    acked = d.get("saltline_delivery_latency_seconds_count", 0.0)
    return {
        "group_commit_transactions": int(batches),
        "group_commit_mean_jobs": round(d["saltline_group_commit_batch_size_sum"] / batches, 2)
        if batches
        else None,
        "envelopes_accepted": int(d.get("saltline_envelopes_accepted_total", 0)),
        "envelopes_acknowledged": int(d.get("saltline_envelopes_delivered_total", 0)),
        "server_accept_to_ack_mean_ms": round(d["saltline_delivery_latency_seconds_sum"] / acked * 1000, 2)
        if acked
        else None,
    }


# -- tests --------------------------------------------------------------------------------------


async def pairs_fixture(
    args: argparse.Namespace, target: Target, count: int, tag: str
) -> tuple[list[Pair], list[DeviceSocket], dict[str, Any]]:
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=target.base_url, timeout=60.0) as http:
        pairs = await setup_pairs(http, count, tag)
    socks, errors = await open_sockets(target.recv_ws_url, [p.receiver.access_token for p in pairs])
    if errors:
        raise SetupError(f"{len(errors)} receiver sockets failed to open: {errors[:3]}")
    setup = {"setup_s": round(time.perf_counter() - t0, 2)}
    setup["quiesce"] = await common.quiesce(target.pids)
    return pairs, socks, setup


async def warm_up(senders: list[Sender], socks: list[DeviceSocket], ciphertext_bytes: int) -> dict[str, Any]:
    tracker = Tracker(run=secrets.token_hex(4))
    for s, sock in zip(senders, socks, strict=True):
        s.tracker = tracker
        sock.tracker = tracker
    bodies = [s.body(tracker.run, 0, ciphertext_bytes) for s in senders]
    await asyncio.gather(*(s.send(0, b) for s, b in zip(senders, bodies, strict=True)))
    waited = await tracker.drain(WARMUP_MAX_S)
    return {
        "sent": len(senders),
        "delivered": len(tracker.delivered),
        "send_errors": sum(tracker.send_errors.values()),
        "error_samples": tracker.error_samples,
        "waited_s": round(waited, 3),
    }


def delivery_report(tracker: Tracker) -> dict[str, Any]:
    accepted = len(tracker.accepted)
    delivered_accepted = sum(1 for k in tracker.accepted if k in tracker.delivered)
    return {
        "sent": len(tracker.sent_at),
        "accepted": accepted,
        "send_errors": sum(tracker.send_errors.values()),
        "send_errors_by_kind": dict(tracker.send_errors),
        "send_error_samples": tracker.error_samples,
        "delivered": len(tracker.delivered),
        "lost": accepted - delivered_accepted,
        "delivered_without_accepted_send": len(tracker.delivered) - delivered_accepted,
        "duplicates": tracker.duplicates,
        "foreign_frames": tracker.foreign + tracker.unknown,
    }


async def test_latency(args: argparse.Namespace, ciphertext_bytes: int) -> dict[str, Any]:
    pairs_n, seconds = args.latency_pairs, args.latency_seconds
    target = start_saltline(args, "latency", {})
    result: dict[str, Any] = {
        "parameters": {
            "send_via": args.send_via,
            "pairs": pairs_n,
            "rate_per_sender_msg_s": 1,
            "messages_per_sender": seconds,
            "schedule": "sender i sends message k at t0 + k + i/P (open loop)",
            "drain_max_s": DRAIN_MAX_S,
        },
        "server": target.describe(),
    }
    senders: list[Sender] = []
    socks: list[DeviceSocket] = []
    try:
        pairs, socks, setup = await pairs_fixture(args, target, pairs_n, "lat" + secrets.token_hex(3))
        result["setup"] = setup
        senders = await make_senders(args, target, pairs)
        result["warm_up"] = await warm_up(senders, socks, ciphertext_bytes)

        tracker = Tracker(run=secrets.token_hex(4))
        bodies = [[s.body(tracker.run, k, ciphertext_bytes) for k in range(seconds)] for s in senders]
        for s, sock in zip(senders, socks, strict=True):
            s.tracker = tracker
            sock.tracker = tracker
        lags: list[float] = []
        log(f"latency: {pairs_n} pairs x {seconds} messages, open loop")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pids)
        t0 = time.perf_counter() + 0.2

        async def run_sender(i: int, sender: Sender) -> None:
            inflight: list[asyncio.Task[bool]] = []
            for k in range(seconds):
                at = t0 + k + i / pairs_n
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lags.append(time.perf_counter() - at)
                inflight.append(asyncio.create_task(sender.send(k, bodies[i][k])))
            await asyncio.gather(*inflight)

        await asyncio.gather(*(run_sender(i, s) for i, s in enumerate(senders)))
        cpu = meter.result()
        drain_s = await tracker.drain(DRAIN_MAX_S)
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        result["figures"] = {
            **delivery_report(tracker),
            "latency_ms": common.latency_summary_ms(tracker.latencies()),
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "schedule_lag_ms": common.lag_summary_ms(lags),
            "drain_s": round(drain_s, 3),
            "cpu_send_window": cpu,
            "server_metrics_window_and_drain": server_metrics,
        }
    finally:
        await close_sockets(socks)
        for s in senders:
            await s.close()
        result["server"].update(target.finish())
    return result


async def test_throughput(args: argparse.Namespace, ciphertext_bytes: int) -> dict[str, Any]:
    pairs_n, seconds, budget = args.throughput_pairs, args.throughput_seconds, args.throughput_budget
    target = start_saltline(args, "throughput", {})
    result: dict[str, Any] = {
        "parameters": {
            "send_via": args.send_via,
            "pairs": pairs_n,
            "duration_s": seconds,
            "loop": "closed: each sender awaits the 201 of its send, then sends the next",
            "prebuilt_bodies_per_sender": budget,
            "drain_max_s": DRAIN_MAX_S,
        },
        "server": target.describe(),
    }
    senders: list[Sender] = []
    socks: list[DeviceSocket] = []
    try:
        pairs, socks, setup = await pairs_fixture(args, target, pairs_n, "thr" + secrets.token_hex(3))
        result["setup"] = setup
        senders = await make_senders(args, target, pairs)
        result["warm_up"] = await warm_up(senders, socks, ciphertext_bytes)

        tracker = Tracker(run=secrets.token_hex(4))
        t_build = time.perf_counter()
        bodies = [[s.body(tracker.run, k, ciphertext_bytes) for k in range(budget)] for s in senders]
        setup["prebuild_s"] = round(time.perf_counter() - t_build, 2)
        for s, sock in zip(senders, socks, strict=True):
            s.tracker = tracker
            sock.tracker = tracker
        exhausted = 0
        if args.profile_hook:
            log(f"throughput: window starts now; server pid {target.pid}")
        log(f"throughput: {pairs_n} pairs, closed loop for {seconds} s")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pids)
        t_start = time.perf_counter()
        t_end = t_start + seconds

        async def run_sender(i: int, sender: Sender) -> None:
            nonlocal exhausted
            seq = 0
            while time.perf_counter() < t_end:
                if seq >= budget:
                    exhausted += 1
                    return
                await sender.send(seq, bodies[i][seq])
                seq += 1

        await asyncio.gather(*(run_sender(i, s) for i, s in enumerate(senders)))
        cpu = meter.result()
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        in_window = sum(1 for t in tracker.delivered.values() if t <= t_end)
        accepted_in_window = len(tracker.accepted)
        drain_s = await tracker.drain(DRAIN_MAX_S)
        lat = common.latency_summary_ms(tracker.latencies())
        result["figures"] = {
            "delivered_msgs_per_s": round(in_window / seconds, 1),
            "delivered_in_window": in_window,
            "accepted_msgs_per_s": round(accepted_in_window / seconds, 1),
            **delivery_report(tracker),
            "latency_ms": lat,
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "senders_out_of_prebuilt_bodies": exhausted,
            "drain_s": round(drain_s, 3),
            "cpu_window": cpu,
            "server_metrics_window": server_metrics,
        }
    finally:
        await close_sockets(socks)
        for s in senders:
            await s.close()
        result["server"].update(target.finish())
    return result


async def hold_sockets(
    name: str, pid: int | None, ws_url: str, tokens: list[str], hold_s: float
) -> dict[str, Any]:
    """Open len(tokens) sockets, hold them ``hold_s`` seconds answering pings, then check each."""
    quiet = await common.quiesce(pid)
    rss_before = common.proc_rss_kib(pid) if pid else None
    t0 = time.perf_counter()
    socks, errors = await open_sockets(ws_url, tokens)
    connect_s = time.perf_counter() - t0
    log(
        f"idle/{name}: {len(socks) - len(errors)} of {len(socks)} sockets open in {connect_s:.1f} s; "
        f"holding {hold_s} s"
    )
    meter = common.CpuMeter(pid)
    await asyncio.sleep(hold_s)
    rss_after = common.proc_rss_kib(pid) if pid else None
    cpu = meter.result()
    closed_during_hold = [
        s.closed for s in socks if s.closed is not None and not s.closed.startswith("open failed")
    ]
    alive = await asyncio.gather(*(s.check_alive() for s in socks))
    pings = sorted(s.pings for s in socks)
    n = len(socks)
    out: dict[str, Any] = {
        "connections": n,
        "opened": n - len(errors),
        "open_errors": len(errors),
        "open_error_samples": errors[:3],
        "connect_s": round(connect_s, 2),
        "closed_during_hold": len(closed_during_hold),
        "close_samples": closed_during_hold[:3],
        "alive_at_end": sum(alive),
        "all_held": not errors and not closed_during_hold and all(alive),
        "server_pings_per_connection": {
            "min": pings[0] if pings else None,
            "max": pings[-1] if pings else None,
            "mean": round(sum(pings) / n, 2) if n else None,
        },
        "quiesce": quiet,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_delta_kib": None if rss_before is None or rss_after is None else rss_after - rss_before,
        "rss_per_connection_kib": None
        if rss_before is None or rss_after is None or not n
        else round((rss_after - rss_before) / n, 2),
        "cpu_hold": cpu,
    }
    await close_sockets(socks)
    return out


async def test_idle(args: argparse.Namespace) -> dict[str, Any]:
    c, hold, hb = args.connections, args.idle_seconds, args.heartbeat_interval_s
    result: dict[str, Any] = {
        "parameters": {
            "connections": c,
            "hold_s": hold,
            "heartbeat_interval_s": hb if not args.url else "as configured on the target",
            "rss": "VmRSS of the server process before opening the sockets and at the end of the hold",
        }
    }
    target = start_saltline(args, "idle", {"SALTLINE_HEARTBEAT_INTERVAL_S": str(hb)})
    result["server"] = target.describe()
    try:
        tag = "idl" + secrets.token_hex(3)
        idents = [Identity.new(f"bench_{tag}_d{i}") for i in range(c)]
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=target.base_url, timeout=60.0) as http:
            await bounded(SETUP_CONCURRENCY, [register(http, ident, prekeys=False) for ident in idents])
        result["setup_s"] = round(time.perf_counter() - t0, 2)
        log(f"idle: {c} accounts registered in {result['setup_s']} s")
        result["saltline"] = await hold_sockets(
            "saltline", target.pid, target.ws_url, [i.access_token for i in idents], hold
        )
    finally:
        result["server"].update(target.finish())

    if not args.no_bare:
        port = common.free_port()
        tmp = tempfile.TemporaryDirectory(prefix="saltline-bench-bare-")
        bare = common.ServerProcess(
            [
                sys.executable,
                str(HERE / "bare_ws.py"),
                "--port",
                str(port),
                "--heartbeat-interval-s",
                str(hb),
            ],
            port,
            Path(tmp.name) / "bare.log",
        ).start()
        log(f"idle: bare_ws reference pid {bare.pid} on {bare.base_url}")
        try:
            result["bare_ws"] = await hold_sockets("bare_ws", bare.pid, bare.ws_url, ["x"] * c, hold)
        finally:
            bare.stop()
            result["bare_ws"]["log"] = bare.log_problems()
            tmp.cleanup()
        s, b = result["saltline"]["rss_per_connection_kib"], result["bare_ws"]["rss_per_connection_kib"]
        result["ratio_saltline_to_bare"] = round(s / b, 2) if s is not None and b else None
    return result


# -- main ---------------------------------------------------------------------------------------


# -- fanout -------------------------------------------------------------------------------------


@dataclass
class Member:
    """A group member: one account with two devices (the second linked through a new signed list)."""

    first: Identity
    second_device_id: bytes = b""
    second_token: str = ""


async def setup_member(http: httpx.AsyncClient, ident: Identity) -> Member:
    await register(http, ident, prekeys=False)
    device_id = os.urandom(16)
    signing = DeviceSigningKey.generate()
    dh = DeviceDHKey.generate()
    entry = dl.bind_device(
        ident.account_key.public_key, device_id, signing, dh.public_key, 0, ident.signed_list.version + 1
    )
    signed = dl.with_device_added(ident.signed_list, ident.account_key, entry)
    body = _check(
        await http.put(
            "/v1/accounts/me/device-list", headers=ident.headers, json={"device_list": signed.to_b64()}
        ),
        "add second device",
        200,
    )
    ident.signed_list = signed
    ident.list_version = int(body["version"])
    tokens = _check(
        await http.post(
            "/v1/auth/login",
            json={"username": ident.username, "password": PASSWORD, "device_id": b64e(device_id)},
        ),
        "second device login",
        200,
    )
    return Member(ident, device_id, tokens["access_token"])


async def test_fanout(args: argparse.Namespace, ciphertext_bytes: int) -> dict[str, Any]:
    """One sender to a group of G members with 2 devices each, 1 msg/s for N s (open loop);
    per-device delivery latency (every recipient device is one delivery)."""
    group, seconds = args.fanout_members, args.fanout_seconds
    target = start_saltline(args, "fanout", {})
    devices_n = 2 * group
    result: dict[str, Any] = {
        "parameters": {
            "members": group,
            "devices_per_member": 2,
            "recipient_devices": devices_n,
            "rate_msg_s": 1,
            "messages": seconds,
            "drain_max_s": DRAIN_MAX_S,
        },
        "server": target.describe(),
    }
    socks: list[DeviceSocket] = []
    http = httpx.AsyncClient(base_url=target.base_url, timeout=60.0)
    try:
        t_setup = time.perf_counter()
        tag = "fan" + secrets.token_hex(3)
        sender = Identity.new(f"bench_{tag}_s")
        await register(http, sender, prekeys=False)
        members = await bounded(
            SETUP_CONCURRENCY,
            [setup_member(http, Identity.new(f"bench_{tag}_m{i}")) for i in range(group)],
        )
        conv = _check(
            await http.post(
                "/v1/conversations",
                headers=sender.headers,
                json={"kind": "group", "members": [m.first.account_id for m in members]},
            ),
            "create group",
            200,
            201,
        )["conversation_id"]
        # Device index d: member d // 2, its first (even) or second (odd) device.
        device_ids = [d for m in members for d in (m.first.device_id, m.second_device_id)]
        tokens = [t for m in members for t in (m.first.access_token, m.second_token)]
        socks, errors = await open_sockets(target.recv_ws_url, tokens)
        if errors:
            raise SetupError(f"{len(errors)} member sockets failed to open: {errors[:3]}")
        versions = {sender.account_id: sender.list_version}
        versions.update({m.first.account_id: m.first.list_version for m in members})
        setup: dict[str, Any] = {"setup_s": round(time.perf_counter() - t_setup, 2)}
        setup["quiesce"] = await common.quiesce(target.pids)
        result["setup"] = setup

        path = f"/v1/conversations/{conv}/envelopes"
        headers = {**sender.headers, "Content-Type": "application/json"}

        def body(run: str, seq: int) -> bytes:
            copies = []
            for d, device_id in enumerate(device_ids):
                prefix = f"B|{run}|{d}|{seq}|".encode()
                copies.append(
                    {
                        "device_id": b64e(device_id),
                        "ciphertext": b64e(prefix + os.urandom(ciphertext_bytes - len(prefix))),
                    }
                )
            return orjson.dumps(
                {
                    "envelope_id": b64e(os.urandom(16)),
                    "clock": b64e(os.urandom(CLOCK_BYTES)),
                    "device_list_versions": versions,
                    "ephemeral": False,
                    "ciphertexts": copies,
                }
            )

        async def send(tracker: Tracker, seq: int, data: bytes) -> None:
            t = time.perf_counter()
            for d in range(devices_n):
                tracker.sent_at[(d, seq)] = t
            try:
                r = await http.post(path, content=data, headers=headers)
            except Exception as exc:
                tracker.error(type(exc).__name__, f"seq {seq}: {type(exc).__name__}: {exc}")
                return
            if r.status_code != 201:
                tracker.error(f"http_{r.status_code}", f"seq {seq}: HTTP {r.status_code}: {r.text}")
                return
            tracker.send_rtt.append(time.perf_counter() - t)
            tracker.accepted.update((d, seq) for d in range(devices_n))

        warm = Tracker(run=secrets.token_hex(4))
        for sock in socks:
            sock.tracker = warm
        await send(warm, 0, body(warm.run, 0))
        waited = await warm.drain(WARMUP_MAX_S)
        result["warm_up"] = {
            "delivered": len(warm.delivered),
            "expected": devices_n,
            "send_errors": sum(warm.send_errors.values()),
            "error_samples": warm.error_samples,
            "waited_s": round(waited, 3),
        }

        tracker = Tracker(run=secrets.token_hex(4))
        bodies = [body(tracker.run, k) for k in range(seconds)]
        for sock in socks:
            sock.tracker = tracker
        log(f"fanout: 1 sender -> {group} members x 2 devices, {seconds} messages at 1/s")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pids)
        t0 = time.perf_counter() + 0.2
        inflight: list[asyncio.Task[None]] = []
        for k in range(seconds):
            delay = t0 + k - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            inflight.append(asyncio.create_task(send(tracker, k, bodies[k])))
        await asyncio.gather(*inflight)
        cpu = meter.result()
        drain_s = await tracker.drain(DRAIN_MAX_S)
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        result["figures"] = {
            **delivery_report(tracker),
            "latency_ms": common.latency_summary_ms(tracker.latencies()),
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "drain_s": round(drain_s, 3),
            "cpu_send_window": cpu,
            "server_metrics_window_and_drain": server_metrics,
        }
    finally:
        await close_sockets(socks)
        await http.aclose()
        result["server"].update(target.finish())
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Saltline server benchmark (workload pairs-v1, server mode)")
    p.add_argument(
        "--mode",
        choices=["server", "sdk"],
        default="server",
        help="server: pre-built envelopes (the server's own cost); sdk: real SDK clients encrypt and decrypt",
    )
    p.add_argument(
        "--test", choices=["latency", "throughput", "idle", "fanout", "reconnect", "all"], default="all"
    )
    p.add_argument(
        "--database-url",
        help="e.g. postgresql+asyncpg://user:pw@127.0.0.1/db (default: SQLite in a temp dir)",
    )
    p.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL")
    p.add_argument(
        "--url",
        help="target a running server instead of starting one (it must allow the set-up's registrations)",
    )
    p.add_argument(
        "--instances",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: two server instances on PostgreSQL + Redis; senders on the first, receivers on the second",
    )
    p.add_argument("--redis-url", help="with --instances 2: the Redis bus, e.g. redis://127.0.0.1:6379/0")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes per instance (serve --workers N; starts a redis-server unless --redis-url)",
    )
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, for CPU and RSS")
    p.add_argument("--connections", type=int, default=1000, help="idle: held sockets (C)")
    p.add_argument("--idle-seconds", type=float, default=45.0)
    p.add_argument("--heartbeat-interval-s", type=float, default=5.0, help="idle: server heartbeat interval")
    p.add_argument("--no-bare", action="store_true", help="idle: skip the bare_ws reference")
    p.add_argument("--repeat", type=int, default=3, help="reconnect: paired runs (saltline, bare_ws)")
    p.add_argument(
        "--reconnect-client",
        choices=["lean", "websockets"],
        default="lean",
        help="reconnect: the load generator's client (bench/ws_lean.py, sockets held; or websockets)",
    )
    p.add_argument(
        "--reconnect-concurrency", type=int, default=64, help="reconnect: socket opens in flight at a time"
    )
    p.add_argument("--latency-pairs", type=int, default=50)
    p.add_argument("--latency-seconds", type=int, default=30)
    p.add_argument("--throughput-pairs", type=int, default=20)
    p.add_argument("--throughput-seconds", type=float, default=30.0)
    p.add_argument("--throughput-budget", type=int, default=8000, help="pre-built envelopes per sender")
    p.add_argument("--fanout-members", type=int, default=50, help="fanout: group members (G)")
    p.add_argument("--fanout-seconds", type=int, default=30, help="fanout: messages, one per second")
    p.add_argument(
        "--send-via",
        choices=["ws", "http"],
        default="ws",
        help="server mode: send frames over the sender's delivery socket, or HTTP POSTs",
    )
    p.add_argument("--profile-hook", action="store_true", help="log the start of the throughput window")
    p.add_argument(
        "--sdk-store",
        choices=["memory", "sqlite"],
        default="memory",
        help="sdk mode: the clients' store (in memory, or the encrypted SQLite store in a temp dir)",
    )
    p.add_argument(
        "--profile-loadgen",
        metavar="PATH",
        help="sdk throughput: cProfile the load generator over the window and write pstats to PATH",
    )
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ciphertext_bytes, source = ratchet_message_size(PLAINTEXT_BYTES)
    doc: dict[str, Any] = {
        "benchmark": "saltline bench/pairs.py",
        "workload": WORKLOAD,
        "mode": args.mode,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "database": database_kind(args.database_url),
        "sqlite_synchronous": args.sqlite_synchronous
        if database_kind(args.database_url) == "sqlite" and not args.url
        else None,
        "versions": common.versions(),
        "machine": common.machine(),
        "loadgen": {
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "pid": os.getpid(),
        },
        "message": {
            "plaintext_bytes": PLAINTEXT_BYTES,
            "ciphertext_bytes": ciphertext_bytes,
            "ciphertext_size_source": source,
            "clock_bytes": CLOCK_BYTES,
            "recipients_per_envelope": 1,
        },
        "nofile": common.raise_nofile(max(4096, 2 * args.connections + 1024)),
        "tests": {},
    }
    tests = ["latency", "throughput", "idle", "fanout"] if args.test == "all" else [args.test]
    for name in tests:
        log(f"--- {name}")
        try:
            if args.mode == "sdk" and name != "idle":
                # Real SDK clients (bench/pairs_sdk.py); idle measures held sockets either way.
                from bench import pairs_sdk

                doc["tests"][name] = await pairs_sdk.run_sdk_test(args, name)
            elif name == "latency":
                doc["tests"][name] = await test_latency(args, ciphertext_bytes)
            elif name == "throughput":
                doc["tests"][name] = await test_throughput(args, ciphertext_bytes)
            elif name == "fanout":
                doc["tests"][name] = await test_fanout(args, ciphertext_bytes)
            elif name == "reconnect":
                from bench import reconnect  # bench/reconnect.py

                doc["tests"][name] = await reconnect.test_reconnect(args)
            else:
                doc["tests"][name] = await test_idle(args)
        except Exception as exc:
            import traceback

            log(f"{name} failed: {type(exc).__name__}: {exc}")
            doc["tests"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
    return doc


def main() -> None:
    args = parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    doc = runner(run(args))
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
