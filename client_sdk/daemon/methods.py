"""The daemon's methods: each reads its named parameters (:class:`Params`), calls the SDK
client of the profile the request names, and returns JSON (docs/daemon.md § Methods).

Every method takes ``profile`` (optional when the daemon serves one profile). Conversation ids,
account ids, device ids and envelope ids are base64url text; a message is named by its
``message_ref`` (``"<device id>.<n>"``) or its envelope id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from saltline.client_sdk.daemon.codec import pointer_from_json, to_json
from saltline.client_sdk.daemon.hub import Hub, Subscriber
from saltline.client_sdk.daemon.params import Params
from saltline.client_sdk.daemon.rpc import Method, invalid_params
from saltline.client_sdk.errors import UsageError
from saltline.crypto.keys import b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.client import Client
    from saltline.client_sdk.core.views import MessageItem


class Peer(Protocol):
    """A connection that can carry notifications (stdio, a socket connection)."""

    def check_subscription_room(self) -> None: ...

    def add_subscription(self, sub: Subscriber) -> None: ...

    def remove_subscription(self, sub_id: int) -> bool: ...


#: Messages one ``messages`` call answers at most.
MAX_MESSAGES = 1000

Handler = Callable[[Hub, "Client", Params], Awaitable[Any]]
_CLIENT_METHODS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _CLIENT_METHODS[name] = fn
        return fn

    return register


def _names(client: Client) -> dict[str, str]:
    names = {c.account_id: c.username for c in client.store.device_lists.contacts()}
    with contextlib.suppress(UsageError):
        names[client.account_id] = client.username
    return names


def _account(account: bytes | str, names: dict[str, str]) -> dict[str, Any]:
    account_id = account if isinstance(account, str) else b64encode(account)
    return {"account_id": account_id, "username": names.get(account_id)}


def _message(m: MessageItem, names: dict[str, str]) -> dict[str, Any]:
    return {
        "message_ref": m.message_ref,
        "server_seq": m.seq,
        "sender": {"account_id": m.author, "username": m.author_username},
        "text": m.text,
        "reply_to": m.reply_to,
        "sent_at_ms": m.sent_at_ms,
        "edited": m.edited,
        "deleted": m.deleted,
        "reactions": [
            {"account_id": r.account_id, "username": r.username, "emoji": r.emoji} for r in m.reactions
        ],
        "attachment": to_json(m.attachment),
    }


def _sent(client: Client, envelope_id: str) -> dict[str, Any]:
    record = client.store.conversations.get_message(envelope_id)
    return {"envelope_id": envelope_id, "status": record.status if record is not None else "pending"}


# -- sending and changing messages -----------------------------------------------------------------


@method("send")
async def _send(hub: Hub, client: Client, p: Params) -> Any:
    cid, text = p.string("conversation_id"), p.string("text")
    p.done()
    return _sent(client, await client.send_text(cid, text))


@method("reply")
async def _reply(hub: Hub, client: Client, p: Params) -> Any:
    cid, ref, text = p.string("conversation_id"), p.string("message_ref"), p.string("text")
    p.done()
    return _sent(client, await client.reply(cid, ref, text))


@method("edit")
async def _edit(hub: Hub, client: Client, p: Params) -> Any:
    cid, ref, text = p.string("conversation_id"), p.string("message_ref"), p.string("text")
    p.done()
    return _sent(client, await client.edit(cid, ref, text))


@method("delete")
async def _delete(hub: Hub, client: Client, p: Params) -> Any:
    cid, ref = p.string("conversation_id"), p.string("message_ref")
    p.done()
    return _sent(client, await client.delete(cid, ref))


@method("react")
async def _react(hub: Hub, client: Client, p: Params) -> Any:
    cid, ref, emoji = p.string("conversation_id"), p.string("message_ref"), p.string("emoji")
    remove = p.flag("remove")
    p.done()
    if remove:
        return _sent(client, await client.unreact(cid, ref, emoji))
    return _sent(client, await client.react(cid, ref, emoji))


@method("read")
async def _read(hub: Hub, client: Client, p: Params) -> Any:
    cid, up_to = p.string("conversation_id"), p.opt_integer("up_to_server_seq")
    p.done()
    return _sent(client, await client.mark_read(cid, up_to))


@method("send_file")
async def _send_file(hub: Hub, client: Client, p: Params) -> Any:
    cid, path = p.string("conversation_id"), Path(p.string("path"))
    caption, name, mime = p.opt_string("caption"), p.opt_string("name"), p.opt_string("mime")
    p.done()
    if not path.is_absolute() or not await asyncio.to_thread(path.is_file):
        raise invalid_params(f"path must be an absolute path of a file: {path}")
    if mime is None:
        import mimetypes

        mime = (mimetypes.guess_type(path.name)[0] or "application/octet-stream").lower()
    envelope_id = await client.send_file(cid, path, name=name, mime=mime, caption=caption)
    return _sent(client, envelope_id)


@method("download")
async def _download(hub: Hub, client: Client, p: Params) -> Any:
    pointer = pointer_from_json(p.obj("attachment"))
    destination = Path(p.string("destination"))
    p.done()
    if not destination.is_absolute():
        raise invalid_params("destination must be an absolute path (a file, or a directory)")
    path = await client.download(pointer, destination)
    return {"path": str(path)}


# -- conversations ---------------------------------------------------------------------------------


@method("create_conversation")
async def _create(hub: Hub, client: Client, p: Params) -> Any:
    usernames = p.strings("usernames")
    p.done()
    return {"conversation_id": await client.create_conversation(usernames)}


@method("conversations")
async def _conversations(hub: Hub, client: Client, p: Params) -> Any:
    p.done()
    names = _names(client)
    me = client.account_id
    result = []
    for c in client.store.conversations.conversations():
        view = await client.conversation(c.conversation_id)
        title = view.settings.get("title")
        result.append(
            {
                "conversation_id": c.conversation_id,
                "kind": c.kind,
                "members": [_account(m, names) for m in c.members],
                "title": None if title is None else title.value,
                "unread": view.unread(me),
            }
        )
    return result


@method("messages")
async def _messages(hub: Hub, client: Client, p: Params) -> Any:
    cid, limit = p.string("conversation_id"), p.opt_integer("limit", minimum=1)
    before = p.opt_integer("before_server_seq", minimum=1)
    p.done()
    if limit is not None and limit > MAX_MESSAGES:
        raise invalid_params(f"limit must be at most {MAX_MESSAGES} (page with before_server_seq)")
    view = await client.conversation(cid)
    names = _names(client)
    older = view.messages if before is None else [m for m in view.messages if m.seq < before]
    shown = older[-(limit or 100) :]
    return [_message(m, names) for m in shown]


@method("members")
async def _members(hub: Hub, client: Client, p: Params) -> Any:
    cid = p.string("conversation_id")
    p.done()
    view = await client.conversation(cid)
    names = _names(client)
    return {
        "kind": view.kind,
        "members": [{**_account(m, names), "admin": m in view.admins} for m in sorted(view.members)],
    }


@method("add_member")
async def _add_member(hub: Hub, client: Client, p: Params) -> Any:
    cid, username, admin = p.string("conversation_id"), p.string("username"), p.flag("admin")
    p.done()
    return _sent(client, await client.add_member(cid, username, admin=admin))


@method("remove_member")
async def _remove_member(hub: Hub, client: Client, p: Params) -> Any:
    cid, username = p.string("conversation_id"), p.string("username")
    p.done()
    return _sent(client, await client.remove_member(cid, username))


@method("leave")
async def _leave(hub: Hub, client: Client, p: Params) -> Any:
    cid = p.string("conversation_id")
    p.done()
    return _sent(client, await client.leave(cid))


@method("title")
async def _title(hub: Hub, client: Client, p: Params) -> Any:
    cid = p.string("conversation_id")
    title = p.text("title") if p.has("title") else None
    p.done()
    return _sent(client, await client.set_title(cid, title or None))


@method("mute")
async def _mute(hub: Hub, client: Client, p: Params) -> Any:
    cid, muted = p.string("conversation_id"), p.flag("muted", True)
    p.done()
    return _sent(client, await client.set_mute(cid, muted))


@method("disappearing")
async def _disappearing(hub: Hub, client: Client, p: Params) -> Any:
    cid, ms = p.string("conversation_id"), p.opt_integer("ms")
    p.done()
    return _sent(client, await client.set_disappearing_timer(cid, ms or None))


@method("typing")
async def _typing(hub: Hub, client: Client, p: Params) -> Any:
    cid, typing = p.string("conversation_id"), p.flag("typing", True)
    p.done()
    await client.typing(cid, typing)
    return {"typing": typing}


# -- trust and devices -----------------------------------------------------------------------------


@method("safety_number")
async def _safety_number(hub: Hub, client: Client, p: Params) -> Any:
    username = p.string("username")
    p.done()
    number = await client.safety_number(username)
    contact = next((c for c in client.store.device_lists.contacts() if c.username == username), None)
    return {
        "username": username,
        "digits": number.digits,
        "display": number.display(),
        "verified": bool(contact is not None and contact.verified),
    }


@method("verify")
async def _verify(hub: Hub, client: Client, p: Params) -> Any:
    username = p.string("username")
    p.done()
    await client.verify_contact(username)
    return {"username": username, "verified": True}


@method("devices")
async def _devices(hub: Hub, client: Client, p: Params) -> Any:
    p.done()
    return [to_json(d) for d in await client.devices()]


# -- the method table --------------------------------------------------------------------------------


def _profiles(hub: Hub) -> list[dict[str, Any]]:
    out = []
    for name, client in hub.clients.items():
        entry: dict[str, Any] = {"profile": name, "device_id": client.device_id}
        try:
            entry |= {"username": client.username, "account_id": client.account_id}
        except UsageError:
            entry |= {"username": None, "account_id": None}
        out.append(entry)
    return out


def build_methods(hub: Hub, *, notifications: bool) -> dict[str, Method[Peer | None]]:
    """Every method bound to ``hub``. ``notifications``: the transport carries notifications
    (stdio, socket), so ``subscribe``/``unsubscribe`` are offered."""
    table: dict[str, Method[Peer | None]] = {}

    def bind(handler: Handler) -> Method[Peer | None]:
        async def call(params: dict[str, Any], peer: Peer | None) -> Any:
            p = Params(params)
            _, client = hub.client(p.opt_string("profile"))
            return await handler(hub, client, p)

        return call

    for name, handler in _CLIENT_METHODS.items():
        table[name] = bind(handler)

    async def profiles(params: dict[str, Any], peer: Peer | None) -> Any:
        Params(params).done()
        return _profiles(hub)

    table["profiles"] = profiles
    if not notifications:
        return table

    async def subscribe(params: dict[str, Any], peer: Peer | None) -> Any:
        p = Params(params)
        names = p.strings("profiles") if p.has("profiles") else None
        p.done()
        assert peer is not None
        peer.check_subscription_room()
        sub = hub.subscribe(hub.check_profiles(names))
        peer.add_subscription(sub)
        return {"subscription": sub.id}

    async def unsubscribe(params: dict[str, Any], peer: Peer | None) -> Any:
        p = Params(params)
        sub_id = p.integer("subscription", minimum=1)
        p.done()
        assert peer is not None
        if not peer.remove_subscription(sub_id):
            raise invalid_params(f"no subscription {sub_id} on this connection")
        return {"subscription": sub_id}

    table["subscribe"] = subscribe
    table["unsubscribe"] = unsubscribe
    return table
