"""Send a file to someone with the attachments API (encrypted on this device, uploaded
resumably, then announced in a message), and wait until the server stored the message. The
recipient must be a verified contact (``saltline verify``) unless ``--trust-on-first-use`` is
given. The password (first run only) comes from ``SALTLINE_PASSWORD`` or a prompt.

    python examples/send_file.py --server http://127.0.0.1:8080 --profile ./sender \\
        --username alice --register --to bob --trust-on-first-use ./photo.jpg
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from _keystore import close_store, open_store, password

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import MessageSent
from saltline.client_sdk.errors import SaltlineError


async def main(args: argparse.Namespace) -> int:
    profile = Path(args.profile)
    store = open_store(profile)
    client = await Client.create(args.server, store)
    try:
        device = store.identity.get_device()
        if device is not None and device.account_id:
            await client.login()
        elif args.register:
            await client.register(args.username, password())
        else:
            await client.login(args.username, password())
        contact = store.device_lists.get_contact_by_username(args.to)
        if not args.trust_on_first_use and (contact is None or not contact.verified):
            print(
                f"refused: {args.to} is not a verified contact (compare safety numbers and verify,",
                flush=True,
            )
            print("or pass --trust-on-first-use)", flush=True)
            return 3
        cid = await client.create_conversation([args.to])  # the direct conversation (same one again)
        sent = 0

        def progress(done: int, total: int) -> None:
            nonlocal sent
            sent = done

        envelope_id = await client.send_file(cid, args.file, caption=args.caption, progress=progress)
        if any(e.envelope_id == envelope_id for e in client.outbox()):  # not stored yet
            await client.flush_outbox()
        if any(e.envelope_id == envelope_id for e in client.outbox()):
            print("queued: the message is in the outbox and goes out on the next run", flush=True)
            return 2
        ref = (await _sent(client, envelope_id)).message_ref
        print(f"sent {Path(args.file).name} ({sent} bytes uploaded) to {args.to}: {ref}", flush=True)
        return 0
    except (SaltlineError, OSError) as exc:
        print(f"failed: {exc}", flush=True)
        return 1
    finally:
        await client.close()
        close_store(store, profile)


async def _sent(client: Client, envelope_id: str) -> MessageSent:
    """The :class:`MessageSent` of the message just sent (its ``message_ref``)."""
    while True:
        event = await client.next_event(MessageSent, 30.0)
        if event.envelope_id == envelope_id:
            return event


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True)
    p.add_argument("--profile", required=True, help="a directory for this device's store")
    p.add_argument("--username", required=True)
    p.add_argument("--register", action="store_true", help="create the account (first run)")
    p.add_argument("--to", required=True, help="the username to send it to")
    p.add_argument("--caption", default=None)
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="send to a contact whose safety number was not compared (its first key is trusted)",
    )
    p.add_argument("file")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
