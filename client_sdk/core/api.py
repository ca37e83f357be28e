"""Request builders and response parsers for the server's REST API (matrix-nio ``api.py`` style).

A builder returns a :class:`Request`; a transport executes it and hands back a :class:`Response`;
:func:`check` turns a problem response into the typed :class:`~saltline.client_sdk.errors.ServerError`, and
the ``parse_*`` functions turn a success body into typed results. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from saltline.client_sdk.errors import ProtocolError, server_error
from saltline.crypto.keys import b64decode, b64encode

CHANNEL_SECRET_HEADER = "X-Channel-Secret"  # noqa: S105 - a header name
DEVICE_GRANT_HEADER = "X-Device-Grant"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    json_body: Any = None
    auth: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    idempotent: bool = False
    """Sending it twice has the effect of sending it once (beyond every GET, which is): a
    transport may resend it when the connection fails before the response arrived."""

    @property
    def retryable(self) -> bool:
        return self.idempotent or self.method in ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


def check(response: Response) -> Response:
    """``response`` if it is a success (2xx), else raise the typed server error."""
    if 200 <= response.status < 300:
        return response
    body = response.body if isinstance(response.body, dict) else None
    raise server_error(response.status, body)


def _field(body: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get(name), kind):
        raise ProtocolError(f"server response lacks {name!r}")
    return body[name]


# -- accounts and auth ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    account_id: str
    device_id: str


def parse_tokens(body: Any) -> Tokens:
    return Tokens(
        access_token=_field(body, "access_token", str),
        refresh_token=_field(body, "refresh_token", str),
        expires_in=_field(body, "expires_in", int),
        account_id=_field(body, "account_id", str),
        device_id=_field(body, "device_id", str),
    )


def register(username: str, password: str, account_key: str, device_list: str, device_id: str) -> Request:
    return Request(
        "POST",
        "/v1/accounts",
        {
            "username": username,
            "password": password,
            "account_key": account_key,
            "device_list": device_list,
            "device_id": device_id,
        },
        auth=False,
    )


def parse_register(body: Any) -> Tokens:
    return parse_tokens(_field(body, "tokens", dict))


def login(username: str, password: str, device_id: str) -> Request:
    return Request(
        "POST", "/v1/auth/login", {"username": username, "password": password, "device_id": device_id}, False
    )


def challenge(username: str, device_id: str) -> Request:
    return Request("POST", "/v1/auth/challenge", {"username": username, "device_id": device_id}, False)


def parse_challenge(body: Any) -> str:
    return str(_field(body, "nonce", str))


def device_login(username: str, device_id: str, nonce: str, signature: str) -> Request:
    return Request(
        "POST",
        "/v1/auth/device-login",
        {"username": username, "device_id": device_id, "nonce": nonce, "signature": signature},
        False,
    )


def refresh(refresh_token: str) -> Request:
    return Request("POST", "/v1/auth/refresh", {"refresh_token": refresh_token}, False)


@dataclass(frozen=True, slots=True)
class AccountInfo:
    account_id: str
    username: str
    account_key: str
    device_list_version: int


def account_by_username(username: str) -> Request:
    return Request("GET", f"/v1/accounts/by-username/{quote(username, safe='')}")


def account(account_id: str) -> Request:
    return Request("GET", f"/v1/accounts/{account_id}")


def parse_account(body: Any) -> AccountInfo:
    return AccountInfo(
        account_id=_field(body, "account_id", str),
        username=_field(body, "username", str),
        account_key=_field(body, "account_key", str),
        device_list_version=_field(body, "device_list_version", int),
    )


def device_list_chain(account_id: str, since: int, limit: int = 100) -> Request:
    return Request(
        "GET",
        f"/v1/accounts/{account_id}/device-list/chain",
        query=(("since", str(since)), ("limit", str(limit))),
    )


def parse_chain(body: Any) -> list[str]:
    """The signed lists (base64url), oldest first."""
    lists = _field(body, "lists", list)
    return [str(_field(item, "signed_list", str)) for item in lists]


def put_device_list(
    signed_list_b64: str, key_handoffs: Mapping[str, str] | None = None, sealed_name: str | None = None
) -> Request:
    """Publish a list as an active device of the current list (docs/protocol/delivery.md § 9.3);
    ``key_handoffs`` maps the new list's other device ids to sealed values, ``sealed_name`` is
    this device's encrypted name."""
    body: dict[str, Any] = {"device_list": signed_list_b64}
    if key_handoffs:
        body["key_handoffs"] = dict(key_handoffs)
    if sealed_name is not None:
        body["sealed_name"] = sealed_name
    return Request("PUT", "/v1/accounts/me/device-list", body)


def put_signed_device_list(
    account_id: str, signed_list_b64: str, grant: str | None = None, sealed_name: str | None = None
) -> Request:
    """Linking: publish the current list plus this new device with no bearer token, under the
    one-time device grant the approving device issued (``X-Device-Grant``; the server refuses
    the request without one, 403 ``device_grant_invalid``)."""
    body: dict[str, Any] = {"device_list": signed_list_b64}
    if sealed_name is not None:
        body["sealed_name"] = sealed_name
    return Request(
        "PUT",
        f"/v1/accounts/{account_id}/device-list/signed",
        body,
        auth=False,
        headers=() if grant is None else ((DEVICE_GRANT_HEADER, grant),),
    )


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    grant: str
    expires_in: int


def device_grant(device_id: str, signing_key_raw: bytes) -> Request:
    """For the approving (active) device: a one-time grant for linking ``device_id`` whose raw
    32-byte Ed25519 signing key is ``signing_key_raw``."""
    return Request(
        "POST",
        "/v1/accounts/me/device-grants",
        {"device_id": device_id, "signing_key": b64encode(signing_key_raw)},
    )


def parse_device_grant(body: Any) -> DeviceGrant:
    return DeviceGrant(str(_field(body, "grant", str)), int(_field(body, "expires_in", int)))


def key_handoffs(since: int, limit: int = 100) -> Request:
    return Request(
        "GET", "/v1/accounts/me/key-handoffs", query=(("since", str(since)), ("limit", str(limit)))
    )


def parse_key_handoffs(body: Any) -> list[tuple[int, str]]:
    """``(version, sealed)`` pairs, as the server sent them (the caller checks the order)."""
    items = _field(body, "handoffs", list)
    return [(int(_field(i, "version", int)), str(_field(i, "sealed", str))) for i in items]


def set_device_name(sealed_name: str) -> Request:
    return Request("PUT", "/v1/accounts/me/device-name", {"sealed_name": sealed_name}, idempotent=True)


def device_names() -> Request:
    return Request("GET", "/v1/accounts/me/device-names")


def parse_device_names(body: Any) -> dict[str, str]:
    names = _field(body, "names", dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise ProtocolError("server response has a malformed 'names'")
    return {str(k): str(v) for k, v in names.items()}


# -- keys ------------------------------------------------------------------------------------------


def upload_keys(
    signed_prekey: str | None, last_resort_prekey: str | None, one_time_prekeys: Sequence[str]
) -> Request:
    body: dict[str, Any] = {"one_time_prekeys": list(one_time_prekeys)}
    if signed_prekey is not None:
        body["signed_prekey"] = signed_prekey
    if last_resort_prekey is not None:
        body["last_resort_prekey"] = last_resort_prekey
    return Request("PUT", "/v1/keys", body)


def key_count() -> Request:
    return Request("GET", "/v1/keys/count")


def parse_key_count(body: Any) -> int:
    return int(_field(body, "one_time", int))


@dataclass(frozen=True, slots=True)
class BundleInfo:
    account_id: str
    device_id: str
    signing_key: str
    dh_key: str
    signed_prekey: str
    one_time_prekey: str | None


def claim(targets: Iterable[tuple[str, str]]) -> Request:
    """One bundle per ``(account_id, device_id)``, duplicates removed (the server collapses them too)."""
    unique = list(dict.fromkeys(targets))
    return Request(
        "POST", "/v1/keys/claim", {"devices": [{"account_id": a, "device_id": d} for a, d in unique]}
    )


def parse_claim(body: Any) -> list[BundleInfo]:
    out = []
    for b in _field(body, "bundles", list):
        opk = b.get("one_time_prekey") or b.get("last_resort_prekey")
        out.append(
            BundleInfo(
                account_id=_field(b, "account_id", str),
                device_id=_field(b, "device_id", str),
                signing_key=_field(b, "signing_key", str),
                dh_key=_field(b, "dh_key", str),
                signed_prekey=_field(b, "signed_prekey", str),
                one_time_prekey=opk if isinstance(opk, str) else None,
            )
        )
    return out


# -- conversations and envelopes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    conversation_id: str
    kind: str
    members: tuple[str, ...]
    last_server_seq: int
    created_at_ms: int


def create_conversation(kind: str, members: Sequence[str]) -> Request:
    return Request("POST", "/v1/conversations", {"kind": kind, "members": list(members)})


def conversations(after: str | None = None) -> Request:
    """One page of the conversation list (delivery.md § 4.4); ``after``: the previous ``next_after``."""
    return Request("GET", "/v1/conversations", query=(("after", after),) if after is not None else ())


def add_member(conversation_id: str, account_id: str) -> Request:
    return Request("POST", f"/v1/conversations/{conversation_id}/members", {"account_id": account_id})


def remove_member(conversation_id: str, account_id: str) -> Request:
    return Request("DELETE", f"/v1/conversations/{conversation_id}/members/{account_id}")


def conversation(conversation_id: str) -> Request:
    return Request("GET", f"/v1/conversations/{conversation_id}")


def parse_conversation(body: Any) -> ConversationInfo:
    return ConversationInfo(
        conversation_id=_field(body, "conversation_id", str),
        kind=_field(body, "kind", str),
        members=tuple(sorted(_field(body, "members", list))),
        last_server_seq=_field(body, "last_server_seq", int),
        created_at_ms=_field(body, "created_at_ms", int),
    )


def parse_conversations(body: Any) -> list[ConversationInfo]:
    return [parse_conversation(c) for c in _field(body, "conversations", list)]


def parse_next_after(body: Any) -> str | None:
    """The cursor of the next page of a list (None: this was the last page)."""
    value = body.get("next_after") if isinstance(body, dict) else None
    if value is not None and not isinstance(value, str):
        raise ProtocolError("server response has a malformed 'next_after'")
    return value


def envelope_body(
    envelope_id: bytes,
    clock: bytes,
    device_list_versions: Mapping[str, int],
    ciphertexts: Mapping[str, bytes],
) -> dict[str, Any]:
    """The JSON body of a send (``ciphertexts``: device id -> per-device ciphertext)."""
    return {
        "envelope_id": b64encode(envelope_id),
        "clock": b64encode(clock),
        "device_list_versions": dict(sorted(device_list_versions.items())),
        "ephemeral": False,
        "ciphertexts": [{"device_id": d, "ciphertext": b64encode(c)} for d, c in sorted(ciphertexts.items())],
    }


def send_envelope(conversation_id: str, body: Mapping[str, Any]) -> Request:
    # the envelope id is the idempotency key: the server answers a replay with the first result
    return Request("POST", f"/v1/conversations/{conversation_id}/envelopes", dict(body), idempotent=True)


def send_result_response(frame: Mapping[str, Any]) -> Response:
    """A ``send_result`` frame of the delivery socket as the :class:`Response` the HTTP route would
    have given (its status, and its body or problem document), for :func:`check` and
    :func:`parse_send`."""
    status = frame.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise ProtocolError("send_result lacks 'status'")
    problem = frame.get("problem")
    if isinstance(problem, dict):
        return Response(status, problem)
    body = {k: frame[k] for k in ("envelope_id", "server_seq", "server_ts") if k in frame}
    return Response(status, body)


@dataclass(frozen=True, slots=True)
class SendResult:
    envelope_id: str
    server_seq: int
    server_ts: int


#: The largest integer the protocol uses anywhere (a signed 64-bit value).
MAX_INT = 2**63 - 1


def parse_send(body: Any, envelope_id: str | None = None) -> SendResult:
    """A send answer; ``envelope_id``: the envelope sent (the answer must name it). Positions are
    ``1 <= server_seq <= MAX_INT``, times ``0 <= server_ts <= MAX_INT``; anything else is a
    :class:`ProtocolError` (a server answer that cannot be true is never written)."""
    result = SendResult(
        envelope_id=_field(body, "envelope_id", str),
        server_seq=_field(body, "server_seq", int),
        server_ts=_field(body, "server_ts", int),
    )
    if envelope_id is not None and result.envelope_id != envelope_id:
        raise ProtocolError("the send answer names another envelope")
    if isinstance(result.server_seq, bool) or not 1 <= result.server_seq <= MAX_INT:
        raise ProtocolError("the send answer's server_seq is out of range")
    if isinstance(result.server_ts, bool) or not 0 <= result.server_ts <= MAX_INT:
        raise ProtocolError("the send answer's server_ts is out of range")
    return result


@dataclass(frozen=True, slots=True)
class RecipientsMismatch:
    """409 recipients_mismatch: account id -> (missing device ids, extra device ids)."""

    accounts: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    unknown_devices: tuple[str, ...]


def parse_recipients_mismatch(body: Mapping[str, Any]) -> RecipientsMismatch:
    accounts: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    raw = body.get("accounts")
    if isinstance(raw, dict):
        for account_id, entry in raw.items():
            if isinstance(entry, dict):
                accounts[str(account_id)] = (
                    tuple(str(d) for d in entry.get("missing", [])),
                    tuple(str(d) for d in entry.get("extra", [])),
                )
    unknown = body.get("unknown_devices")
    return RecipientsMismatch(accounts, tuple(str(d) for d in unknown) if isinstance(unknown, list) else ())


def parse_outdated_accounts(body: Mapping[str, Any]) -> dict[str, int]:
    """410 device_list_outdated: account id -> current version (the lists themselves are fetched
    and verified through the chain, never trusted from this body)."""
    raw = body.get("accounts")
    out: dict[str, int] = {}
    if isinstance(raw, dict):
        for account_id, entry in raw.items():
            if isinstance(entry, dict) and isinstance(entry.get("version"), int):
                out[str(account_id)] = entry["version"]
    return out


def history(conversation_id: str, after: int, limit: int = 200) -> Request:
    return Request(
        "GET",
        f"/v1/conversations/{conversation_id}/envelopes",
        query=(("after", str(after)), ("limit", str(limit))),
    )


# -- provisioning -----------------------------------------------------------------------------------


def upload_blob(data: bytes) -> Request:
    return Request("POST", "/v1/blobs", {"data": b64encode(data)})


def parse_blob_id(body: Any) -> str:
    return str(_field(body, "blob_id", str))


def download_blob(blob_id: str) -> Request:
    return Request("GET", f"/v1/blobs/{blob_id}")


def parse_blob(body: Any) -> bytes:
    return b64decode(str(_field(body, "data", str)))


def create_channel() -> Request:
    return Request("POST", "/v1/provisioning", auth=False)


def put_provisioning(channel_id: str, channel_secret: str, payload_b64: str) -> Request:
    """Put one sealed message on a channel with its put secret (no bearer token)."""
    return Request(
        "PUT",
        f"/v1/provisioning/{channel_id}",
        {"payload": payload_b64},
        auth=False,
        headers=((CHANNEL_SECRET_HEADER, channel_secret),),
    )


@dataclass(frozen=True, slots=True)
class ProvisioningChannel:
    channel_id: str
    put_secret: str  # goes into the link code
    take_secret: str  # stays with the creator
    expires_in: int


def parse_provisioning_channel(body: Any) -> ProvisioningChannel:
    return ProvisioningChannel(
        str(_field(body, "channel_id", str)),
        str(_field(body, "put_secret", str)),
        str(_field(body, "take_secret", str)),
        int(_field(body, "expires_in", int)),
    )


def delete_provisioning(channel_id: str, take_secret: str) -> Request:
    return Request(
        "DELETE",
        f"/v1/provisioning/{channel_id}",
        auth=False,
        headers=((CHANNEL_SECRET_HEADER, take_secret),),
    )


def take_provisioning(channel_id: str, channel_secret: str) -> Request:
    """Take the waiting message with the channel's take secret (the slot empties)."""
    return Request(
        "GET",
        f"/v1/provisioning/{channel_id}",
        auth=False,
        headers=((CHANNEL_SECRET_HEADER, channel_secret),),
    )


def parse_provisioning(response: Response) -> str | None:
    """The sealed message (base64url), or ``None`` while the slot is empty (204)."""
    if response.status == 204:
        return None
    return str(_field(response.body, "payload", str))
