"""An echo bot: answers ``/echo <text>`` with ``<text>`` (as a reply) and ``/help``.

    python examples/echo_bot.py --server http://127.0.0.1:8080 --profile ./echo-bot \\
        --username echo_bot --register

``--register`` creates the account the first time (later runs log in with the device key kept
in the profile's store); the password is read from ``SALTLINE_PASSWORD`` or asked for, and only
then. The store is encrypted with a key kept beside it (``store.key``, mode 0600).
Stops cleanly on Ctrl-C or SIGTERM: replies not yet sent stay in the
store's outbox and go out on the next start; a message whose handler failed is offered again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from _keystore import close_store, open_store, password

from saltline.client_sdk.bot import Bot, CommandContext, RateLimit
from saltline.client_sdk.client import Client
from saltline.client_sdk.errors import SaltlineError


async def main(args: argparse.Namespace) -> int:
    profile = Path(args.profile)
    store = open_store(profile)
    client = await Client.create(args.server, store)
    try:
        device = store.identity.get_device()
        if device is not None and device.account_id:  # a returning bot: its device key signs in
            await client.login()
        elif args.register:
            await client.register(args.username, password())
        else:
            await client.login(args.username, password())
    except SaltlineError as exc:
        print(f"cannot sign in: {exc}", flush=True)
        await client.close()
        close_store(store, profile)
        return 1

    bot = Bot(client, rate=RateLimit(burst=args.burst, per_second=args.per_second))

    @bot.command("echo")
    async def echo(ctx: CommandContext) -> None:
        await ctx.reply(ctx.args or "(nothing to echo)")

    @bot.command("help")
    async def help_(ctx: CommandContext) -> None:
        await ctx.reply("/echo <text>: I say it back")

    # until SIGINT/SIGTERM; then the client and the store are closed (the write counter kept)
    try:
        await bot.run(close=False, on_ready=lambda: print(f"ready: {client.username}", flush=True))
    finally:
        await client.close()
        close_store(store, profile)
    print("stopped", flush=True)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="the server's URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--profile", required=True, help="a directory for the bot's store")
    p.add_argument("--username", required=True)
    p.add_argument("--register", action="store_true", help="create the account (first run)")
    p.add_argument("--burst", type=int, default=5, help="replies at once per conversation")
    p.add_argument("--per-second", type=float, default=1.0, help="replies per second after the burst")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(asyncio.run(main(parse())))
