"""Two devices of one account converge: alice's desktop links her phone (both show the same
confirmation code), bob writes, the desktop edits and reacts, the phone shows the same
conversation — text, edit, reaction and read state — without the server reading any of it.

    python examples/desktop_and_phone.py --server http://127.0.0.1:8080

Each device keeps its encrypted store in a directory of ``--data`` (default: a temporary
directory), as examples/_keystore.py does it. The account password comes from
``SALTLINE_PASSWORD`` or a prompt, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from _keystore import close_store, open_store, password

from saltline.client_sdk.client import Client, LinkConfirmation, LinkRequest
from saltline.client_sdk.core.events import Event, MessageReceived
from saltline.client_sdk.core.views import ConversationView

WAIT = 20.0


def shared(view: ConversationView) -> object:
    """What every device of the conversation must agree on."""
    return [(m.message_ref, m.author_username, m.text, m.edited, m.reactions) for m in view.messages]


async def converge(cid: str, *devices: Client) -> ConversationView:
    """Consume the devices' events until every device shows the same conversation."""
    while True:
        views = [await d.conversation(cid) for d in devices]
        if all(shared(v) == shared(views[0]) for v in views) and views[0].messages:
            return views[0]
        waits = [asyncio.ensure_future(d.next_event(Event, WAIT)) for d in devices]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a TimeoutError ends the example


async def link(desktop: Client, phone: Client) -> None:
    """The phone shows a code; the desktop approves once both show the same confirmation."""
    code = await phone.begin_link("alice's phone")
    shown: list[str] = []

    def on_code(c: LinkConfirmation) -> None:
        print(f"phone shows {c.code} for {c.username}", flush=True)
        shown.append(c.code)

    def confirm(request: LinkRequest) -> bool:
        print(f"desktop shows {request.code} for {request.name!r}", flush=True)
        return shown == [request.code]  # in an app: the person compares the two screens

    await asyncio.gather(
        desktop.approve_link(code, history="all", confirm=confirm),
        phone.complete_link(on_code=on_code),
    )
    await desktop.finish_link()


async def main(args: argparse.Namespace) -> int:
    data = Path(args.data or tempfile.mkdtemp(prefix="saltline-example-"))
    suffix = os.urandom(3).hex()
    alice_name, bob_name = f"alice_{suffix}", f"bob_{suffix}"
    secret = password()
    profiles = {name: data / name for name in ("desktop", "phone", "bob")}
    stores = {name: open_store(profile) for name, profile in profiles.items()}
    desktop = await Client.create(args.server, stores["desktop"])
    phone = await Client.create(args.server, stores["phone"])
    bob = await Client.create(args.server, stores["bob"])
    try:
        await desktop.register(alice_name, secret)
        await bob.register(bob_name, secret)
        await link(desktop, phone)
        for device in (desktop, phone, bob):
            await device.connect()

        cid = await bob.create_conversation([alice_name])
        await bob.send_text(cid, "hi alice, lunch?")
        received = await phone.next_event(MessageReceived, WAIT)
        print(f"phone got {received.text!r} from {received.sender_username}", flush=True)
        await desktop.next_event(MessageReceived, WAIT)

        ref = received.message_ref  # the same reference on every device
        await desktop.reply(cid, ref, "yes! noon")
        await desktop.react(cid, ref, "👍")
        mine = (await converge(cid, desktop, phone, bob)).messages[-1]
        await desktop.edit(cid, mine.message_ref, "yes! 12:30")
        await desktop.mark_read(cid)

        view = await converge(cid, desktop, phone, bob)
        for m in view.messages:
            marks = " ".join(f"{r.emoji} {r.username}" for r in m.reactions)
            edited = " (edited)" if m.edited else ""
            print(f"  {m.author_username}: {m.text}{edited} {marks}".rstrip(), flush=True)
        print(f"phone unread: {await phone.unread(cid)}", flush=True)
        print("converged", flush=True)
        return 0
    finally:
        for device in (desktop, phone, bob):
            await device.close()
        for name, store in stores.items():
            close_store(store, profiles[name])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True)
    p.add_argument("--data", default=None, help="a directory for the three devices' profiles")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
