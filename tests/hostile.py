"""A malicious server for attacker tests: a man in the middle between real SDK clients and the real
server, over real sockets, that can rewrite any HTTP response and any socket frame.

- :class:`HostileHttp` is the client's HTTP transport (``Client.create(..., http_transport=...)``):
  every request goes to the real server over a real TCP connection (``httpx.AsyncHTTPTransport``);
  a rule may replace the JSON of any response before the client sees it. It records every request
  the client made (method, path, body), so a test can assert what was (not) encrypted to whom.
- Socket frames go through :class:`tests.proxy.WsMitm` (relay, record, inject).

The helpers at the bottom forge what a malicious server can forge without any client secret:
device lists signed by an account key the attacker holds, naming whatever device ids and
usernames it likes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from saltline.crypto import device_list as dl
from saltline.crypto import private_state
from saltline.crypto.keys import AccountKey, b64encode

#: (method, path pattern, function of (request, parsed JSON body) -> new body or None to keep)
JsonRule = Callable[[httpx.Request, Any], Any]


@dataclass
class _Rule:
    method: str
    path: re.Pattern[str]
    fn: JsonRule


class HostileHttp(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._rules: list[_Rule] = []
        #: every request the client made: (method, path, raw body)
        self.requests: list[tuple[str, str, bytes]] = []

    def rewrite(self, method: str, path: str, fn: JsonRule) -> None:
        """Replace the JSON body of every response to ``method`` on a path matching the regular
        expression ``path`` (full match) by ``fn(request, body)`` (``None`` keeps it)."""
        self._rules.append(_Rule(method, re.compile(path), fn))

    def sent_bodies(self, path: str = r".*") -> list[bytes]:
        pattern = re.compile(path)
        return [body for m, p, body in self.requests if m == "POST" and pattern.fullmatch(p)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.requests.append((request.method, request.url.path, body))
        response = await self._inner.handle_async_request(request)
        rules = [r for r in self._rules if r.method == request.method and r.path.fullmatch(request.url.path)]
        if not rules:
            return response
        raw = await response.aread()
        try:
            doc = json.loads(raw)
        except ValueError:
            return httpx.Response(response.status_code, headers=response.headers, content=raw)
        for rule in rules:
            new = rule.fn(request, doc)
            if new is not None:
                doc = new
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length",)}
        return httpx.Response(response.status_code, headers=headers, content=json.dumps(doc).encode())

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- what a malicious server can forge ------------------------------------------------------------


def forged_device(device_id: bytes | None = None) -> private_state.DeviceState:
    """A device the attacker controls (fresh keys; ``device_id``: reuse someone else's id)."""
    state = private_state.generate_device(one_time_prekeys=1)
    if device_id is not None:
        state = dataclasses.replace(state, device_id=device_id)
    return state


def forged_chain(
    account_key: AccountKey, username: str, devices: Iterable[private_state.DeviceState], *, length: int = 1
) -> list[bytes]:
    """A valid chain of ``length`` lists signed by ``account_key`` (which the attacker holds) that
    claims ``username`` and lists ``devices`` (each bound by its own key to the account)."""
    devices = list(devices)
    chain = [
        dl.first(account_key, username, [devices[0].device_entry(account_key.public_key, 1_700_000_000_000)])
    ]
    for device in devices[1:]:
        entry = device.device_entry(account_key.public_key, 1_700_000_000_000, chain[-1].version + 1)
        chain.append(dl.with_device_added(chain[-1], account_key, entry))
    while len(chain) < length:
        chain.append(dl.successor(chain[-1], account_key, chain[-1].content.devices))
    return [signed.encode() for signed in chain]


def chain_body(chain: list[bytes], since: int) -> dict[str, Any]:
    """The body of ``GET /v1/accounts/{id}/device-list/chain?since=`` for a forged chain."""
    return {"lists": [{"signed_list": b64encode(s)} for s in chain[since:]]}


def since_of(request: httpx.Request) -> int:
    return int(request.url.params.get("since", "0"))
