"""The ``saltline`` command: a terminal client on the SDK, plus the server commands.

Server commands (``serve``, ``db``) are delegated to ``python -m saltline.server`` (the SDK never imports the
server package). Every other command opens one *profile*, a device of its own::

    $SALTLINE_HOME/profiles/NAME/        (SALTLINE_HOME defaults to ~/.saltline; directory 0700)
        config.json    {"server": "http://127.0.0.1:8080"}   (set with --server, remembered)
        store.key      32 random bytes, file mode 0600: the key the store is encrypted with
        store.db       the device's SqliteStore (keys, sessions, messages), encrypted at rest

``--profile desktop`` and ``--profile phone`` are two devices on one machine. The store key lives
next to the store, so the encryption at rest protects copies of ``store.db`` (backups, a synced
folder) but not an attacker who can read the whole profile directory as you: an app would keep
the key in the platform keystore instead.

Each command runs its async work in one ``asyncio.run``. Errors of the SDK
(:mod:`saltline.client_sdk.errors`) are printed as one line, exit code 1.

Modules: :mod:`~saltline.client_sdk.cli.app` (the Typer app, shared helpers, ``serve``/``db``),
:mod:`~saltline.client_sdk.cli.profile`, :mod:`~saltline.client_sdk.cli.render` (how events, messages and
conversations are shown: text or ``--json``), and the commands in :mod:`~saltline.client_sdk.cli.accounts`,
:mod:`~saltline.client_sdk.cli.messaging`, :mod:`~saltline.client_sdk.cli.actions`,
:mod:`~saltline.client_sdk.cli.files` and :mod:`~saltline.client_sdk.cli.trust`.

``--json`` (before the command) prints one JSON document on stdout (``follow``: one object per line)
in the shapes of ``docs/cli-json.schema.json``; what is said to the person goes to stderr. Exit codes:
0 done, 1 an error, 2 a usage error, 3 the server refuses this device as removed from its account.
Only a verified device list of the account that leaves the device out proves the removal: then it is
remembered (``removed.json`` records that list's version) and ``saltline profile unlink`` discards the
device so that ``link show`` can link the profile again; without that proof nothing is remembered
(the server's word alone could be a lie) and ``profile unlink`` needs ``--force``.
Peer and server text is shown with control, C1 and bidi characters as visible escapes
(:func:`~saltline.client_sdk.cli.render.safe`); ``--json`` output is ASCII.
"""

from __future__ import annotations

# The command modules register their commands on ``app`` when imported (in this order: the
# order of ``saltline --help``).
from saltline.client_sdk.cli import accounts, actions, daemon, files, messaging, trust  # noqa: F401
from saltline.client_sdk.cli.app import app
from saltline.client_sdk.cli.profile import DEFAULT_SERVER, STORE_KEY_SIZE, Profile, saltline_home

__all__ = ["DEFAULT_SERVER", "STORE_KEY_SIZE", "Profile", "app", "main", "saltline_home"]


def main() -> None:
    app()
