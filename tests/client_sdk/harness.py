"""An in-memory relay for the SDK's unit tests: no network, no server import.

It implements the subset of the HTTP protocol (docs/protocol/) that the client uses: register,
token refresh, accounts and device-list chains, prekey upload / count / claim, conversations,
sends with the 410 (stale device-list version) and 409 (recipients mismatch) checks and
idempotency on the envelope id, per-device queues, and the conversation history used for gap
filling. Queued frames are handed to the client by :meth:`FakeRelay.deliver` (the WebSocket
driver is not involved).

This is a fake for the SDK's tests, not a model of our server: it checks only what the tests
need (tokens are opaque names, passwords are not checked, lists are appended without checking the
chain, limits are absent). The end-to-end tests in tests/e2e cover the real server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx

from saltline.crypto import device_list as dl
from saltline.crypto.keys import b64encode

HISTORY_MAX = 500


@dataclass
class _Account:
    account_id: str
    username: str
    chain: list[dl.SignedDeviceList]

    @property
    def current(self) -> dl.SignedDeviceList:
        return self.chain[-1]

    def devices(self) -> dict[str, dl.DeviceEntry]:
        return {b64encode(d.device_id): d for d in self.current.content.devices}


@dataclass
class _Keys:
    signed_prekey: str | None = None
    last_resort: str | None = None
    one_time: list[str] = field(default_factory=list)


@dataclass
class _Envelope:
    conversation_id: str
    envelope_id: str
    server_seq: int
    server_ts: int
    sender_account: str
    sender_device: str
    clock: str
    ciphertexts: dict[str, str]
    digest: bytes


class FakeRelay(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.accounts: dict[str, _Account] = {}
        self.keys: dict[str, _Keys] = {}
        self.conversations: dict[str, dict[str, Any]] = {}
        self.envelopes: dict[str, list[_Envelope]] = {}
        self.queues: dict[str, list[dict[str, Any]]] = {}
        self.next_queue_seq: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        #: page the conversation list by this many (None: one page, no cursor)
        self.list_page: int | None = None
        self.sends: list[dict[str, Any]] = []
        self.claims: list[str] = []
        self.now = 1_000
        #: the next device-list chain requests wait here until all of them have arrived
        #: (see :meth:`meet_at_chain`)
        self._chain_barrier: asyncio.Barrier | None = None
        self._chain_waiters = 0

    # -- test controls ------------------------------------------------------------------------------

    def replace_account_key(self, account_id: str, chain: list[dl.SignedDeviceList]) -> None:
        """The account now publishes ``chain`` (e.g. a re-registration under a new account key)."""
        self.accounts[account_id].chain = list(chain)

    def meet_at_chain(self, parties: int) -> None:
        """The next ``parties`` device-list chain requests are answered only once all of them have
        been made: concurrent refreshes that all read their pin before any answer arrives."""
        self._chain_barrier, self._chain_waiters = asyncio.Barrier(parties), parties

    def drop_queue(self, device_id: str) -> list[dict[str, Any]]:
        """Retention: forget the device's queued frames and queue a gap marker in their place."""
        dropped, self.queues[device_id] = self.queues.get(device_id, []), []
        if dropped:
            self.queues[device_id].append(
                {
                    "type": "gap",
                    "from_queue_seq": dropped[0]["queue_seq"],
                    "to_queue_seq": dropped[-1]["queue_seq"],
                }
            )
        return dropped

    async def deliver(self, client: Any) -> int:
        """Hand the client its queued frames in order, removing what it acknowledged (the
        WebSocket loop's job); returns how many were acknowledged."""
        acked = 0
        for frame in list(self.queues.get(client.device_id, [])):
            ack = await client.delivery.on_frame(frame)
            if ack is None:
                break
            self.queues[client.device_id] = [
                f for f in self.queues[client.device_id] if f.get("queue_seq", f.get("to_queue_seq")) > ack
            ]
            acked += 1
        return acked

    # -- HTTP ------------------------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        query = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        body = json.loads(request.content) if request.content else None
        parts = path.strip("/").split("/")[1:]  # after "v1"
        if (method, parts) == ("POST", ["accounts"]):
            return self._register(body)
        if (method, parts) == ("POST", ["auth", "refresh"]):
            device = str(body["refresh_token"]).removeprefix("refresh.")
            return _json(200, self._tokens(self._owner(device), device))
        me = self._authed(request)
        if me is None:
            return _problem(401, "unauthorized", "unknown or revoked token")
        account_id, device_id = me
        if method == "GET" and parts[:2] == ["accounts", "by-username"]:
            found = [a for a in self.accounts.values() if a.username == parts[2]]
            return _json(200, self._account_doc(found[0])) if found else _problem(404, "not_found", "no user")
        if method == "GET" and len(parts) == 2 and parts[0] == "accounts":
            return _json(200, self._account_doc(self.accounts[parts[1]]))
        if method == "GET" and parts[0] == "accounts" and parts[2:] == ["device-list", "chain"]:
            if self._chain_barrier is not None and self._chain_waiters > 0:
                self._chain_waiters -= 1
                await self._chain_barrier.wait()
            since = int(query.get("since", "0"))
            chain = [s for s in self.accounts[parts[1]].chain if s.version > since]
            return _json(200, {"lists": [{"signed_list": s.to_b64()} for s in chain[: int(query["limit"])]]})
        if (method, parts) == ("PUT", ["accounts", "me", "device-list"]):
            self.accounts[account_id].chain.append(dl.SignedDeviceList.from_b64(body["device_list"]))
            return _json(200, {})
        if (method, parts) == ("PUT", ["keys"]):
            keys = self.keys.setdefault(device_id, _Keys())
            keys.signed_prekey = body.get("signed_prekey", keys.signed_prekey)
            keys.last_resort = body.get("last_resort_prekey", keys.last_resort)
            keys.one_time.extend(body["one_time_prekeys"])
            return _json(200, {})
        if (method, parts) == ("GET", ["keys", "count"]):
            return _json(200, {"one_time": len(self.keys.get(device_id, _Keys()).one_time)})
        if (method, parts) == ("POST", ["keys", "claim"]):
            return self._claim(body)
        if (method, parts) == ("POST", ["conversations"]):
            return self._create_conversation(account_id, body)
        if (method, parts) == ("GET", ["conversations"]):
            mine = [c for c in self.conversations.values() if account_id in c["members"]]
            if self.list_page is None:
                return _json(200, {"conversations": mine})
            start = int(query.get("after", "0"))  # the cursor is an offset here (opaque to clients)
            page = mine[start : start + self.list_page]
            more = start + self.list_page < len(mine)
            return _json(
                200, {"conversations": page, "next_after": str(start + self.list_page) if more else None}
            )
        if method == "GET" and len(parts) == 2 and parts[0] == "conversations":
            c = self.conversations.get(parts[1])
            if c is None or account_id not in c["members"]:
                return _problem(404, "conversation_not_found", "no such conversation")
            return _json(200, c)
        if method == "POST" and parts[0] == "conversations" and parts[2:] == ["envelopes"]:
            return self._send(account_id, device_id, parts[1], body, request.content)
        if method == "GET" and parts[0] == "conversations" and parts[2:] == ["envelopes"]:
            return self._history(device_id, parts[1], int(query.get("after", "0")), int(query["limit"]))
        return _problem(404, "not_found", f"the fake relay has no route {method} {path}")

    # -- handlers ------------------------------------------------------------------------------------

    def _owner(self, device_id: str) -> str:
        for a in self.accounts.values():
            if device_id in a.devices():
                return a.account_id
        raise KeyError(device_id)

    def _tokens(self, account_id: str, device_id: str) -> dict[str, Any]:
        return {
            "access_token": f"access.{device_id}",
            "refresh_token": f"refresh.{device_id}",
            "expires_in": 3600,
            "account_id": account_id,
            "device_id": device_id,
        }

    def _authed(self, request: httpx.Request) -> tuple[str, str] | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not token.startswith("access."):
            return None
        device_id = token.removeprefix("access.")
        try:
            return self._owner(device_id), device_id
        except KeyError:
            return None  # removed from its account's list

    def _register(self, body: dict[str, Any]) -> httpx.Response:
        username = body["username"]
        if any(a.username == username for a in self.accounts.values()):
            return _problem(409, "username_taken", "taken")
        account_id = b64encode(hashlib.sha256(username.encode()).digest()[:16])
        signed = dl.SignedDeviceList.from_b64(body["device_list"])
        self.accounts[account_id] = _Account(account_id, username, [signed])
        return _json(201, {"tokens": self._tokens(account_id, body["device_id"])})

    def _account_doc(self, a: _Account) -> dict[str, Any]:
        return {
            "account_id": a.account_id,
            "username": a.username,
            "account_key": a.current.content.account_key.to_b64(),
            "device_list_version": a.current.version,
        }

    def _claim(self, body: dict[str, Any]) -> httpx.Response:
        bundles = []
        for target in body["devices"]:
            entry = self.accounts[target["account_id"]].devices().get(target["device_id"])
            keys = self.keys.get(target["device_id"])
            if entry is None:
                return _problem(404, "not_found", "no such device")
            if keys is None or keys.signed_prekey is None:
                continue  # no prekeys published yet: no bundle (the send's 409 will name it)
            self.claims.append(target["device_id"])
            doc = {
                "account_id": target["account_id"],
                "device_id": target["device_id"],
                "signing_key": b64encode(entry.signing_key.encode()),
                "dh_key": b64encode(entry.dh_key.encode()),
                "signed_prekey": keys.signed_prekey,
            }
            if keys.one_time:
                doc["one_time_prekey"] = keys.one_time.pop(0)
            else:
                doc["last_resort_prekey"] = keys.last_resort
            bundles.append(doc)
        return _json(200, {"bundles": bundles})

    def _create_conversation(self, account_id: str, body: dict[str, Any]) -> httpx.Response:
        members = sorted({account_id, *body["members"]})
        cid = b64encode(hashlib.sha256(json.dumps([members, len(self.conversations)]).encode()).digest()[:16])
        self.conversations[cid] = {
            "conversation_id": cid,
            "kind": body["kind"],
            "members": members,
            "last_server_seq": 0,
            "created_at_ms": self.now,
        }
        self.envelopes[cid] = []
        return _json(201, self.conversations[cid])

    def _send(
        self, account_id: str, device_id: str, cid: str, body: dict[str, Any], raw: bytes
    ) -> httpx.Response:
        digest = hashlib.sha256(raw).digest()
        conv = self.conversations.get(cid)
        if conv is None or account_id not in conv["members"]:
            return _problem(404, "conversation_not_found", "no such conversation")
        for e in self.envelopes[cid]:
            if (e.sender_device, e.envelope_id) == (device_id, body["envelope_id"]):
                if e.digest != digest:
                    return _problem(409, "idempotency_conflict", "differs", server_seq=e.server_seq)
                return _json(
                    201, {"envelope_id": e.envelope_id, "server_seq": e.server_seq, "server_ts": e.server_ts}
                )
        stated = body["device_list_versions"]
        outdated = {
            m: {"version": self.accounts[m].current.version, "signed_list": self.accounts[m].current.to_b64()}
            for m in conv["members"]
            if stated.get(m) != self.accounts[m].current.version
        }
        if outdated:
            return _problem(410, "device_list_outdated", "a device list changed", accounts=outdated)
        addressed = {c["device_id"] for c in body["ciphertexts"]}
        report: dict[str, dict[str, list[str]]] = {}
        expected: set[str] = set()
        for m in conv["members"]:
            devices = set(self.accounts[m].devices()) - {device_id}
            expected |= devices
            missing, extra = sorted(devices - addressed), []
            if missing:
                report[m] = {"missing": missing, "extra": extra}
        unknown = sorted(addressed - expected)
        if report or unknown:
            return _problem(
                409, "recipients_mismatch", "recipients", accounts=report, unknown_devices=unknown
            )
        self.sends.append(body)
        conv["last_server_seq"] += 1
        self.now += 1
        env = _Envelope(
            cid,
            body["envelope_id"],
            conv["last_server_seq"],
            self.now,
            account_id,
            device_id,
            body["clock"],
            {c["device_id"]: c["ciphertext"] for c in body["ciphertexts"]},
            digest,
        )
        self.envelopes[cid].append(env)
        for target, ciphertext in env.ciphertexts.items():
            seq = self.next_queue_seq.get(target, 0) + 1
            self.next_queue_seq[target] = seq
            self.queues.setdefault(target, []).append(
                {"type": "envelope", "queue_seq": seq, "conversation_id": cid, **self._doc(env, ciphertext)}
            )
        return _json(
            201, {"envelope_id": env.envelope_id, "server_seq": env.server_seq, "server_ts": env.server_ts}
        )

    @staticmethod
    def _doc(env: _Envelope, ciphertext: str | None) -> dict[str, Any]:
        return {
            "server_seq": env.server_seq,
            "server_ts": env.server_ts,
            "sender": {"account_id": env.sender_account, "device_id": env.sender_device},
            "envelope_id": env.envelope_id,
            "clock": env.clock,
            "ciphertext": ciphertext,
        }

    def _history(self, device_id: str, cid: str, after: int, limit: int) -> httpx.Response:
        mine = [
            e
            for e in self.envelopes.get(cid, [])
            if e.server_seq > after and (device_id in e.ciphertexts or e.sender_device == device_id)
        ]
        page = mine[: min(limit, HISTORY_MAX)]
        next_after = page[-1].server_seq if len(mine) > len(page) else None
        return _json(
            200,
            {
                "envelopes": [self._doc(e, e.ciphertexts.get(device_id)) for e in page],
                "next_after": next_after,
            },
        )


def _json(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


def _problem(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "type": "about:blank",
            "title": code,
            "status": status,
            "code": code,
            "detail": detail,
            **extra,
        },
        headers={"content-type": "application/problem+json"},
    )
