"""The distribution as an app developer meets it: one ``saltline.*`` namespace, a client-only install.

- An app whose own modules are named ``crypto.py`` and ``server.py`` (common names) imports the SDK
  and exchanges a message through a real server: the SDK lives under ``saltline.*`` and never
  resolves to the app's modules.
- ``pip install .`` without extras into a fresh virtual environment installs the SDK and the
  ``saltline`` CLI, and neither FastAPI nor SQLAlchemy (the server's stack is the ``server`` extra).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.live import LiveServer

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]

APP = """
import asyncio, sys

import crypto, server  # the app's own modules, next to this script
from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.stores.memory import MemoryStore

assert crypto.OWNER == "app" and server.OWNER == "app", "the app's modules were shadowed"


async def main(url: str, suffix: str) -> None:
    alice = await Client.create(url, MemoryStore())
    await alice.register("alice_" + suffix, "correct horse battery staple")
    bob = await Client.create(url, MemoryStore())
    await bob.register("bob_" + suffix, "correct horse battery staple")
    await alice.connect()
    cid = await bob.create_conversation(["alice_" + suffix])
    await bob.send_text(cid, "hello from an app with crypto.py and server.py")
    event = await alice.next_event(MessageReceived, 20)
    print("received:", event.text, "from", event.sender_username)
    for c in (alice, bob):
        await c.close()


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

# prints the .py files of an installed package (argv[1]), relative to its folder, one a line
LIST_MODULES = """
import importlib, pathlib, sys
root = pathlib.Path(importlib.import_module(sys.argv[1]).__file__).parent
print("\\n".join(sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))))
"""


def test_app_modules_named_crypto_and_server_do_not_shadow_the_sdk(
    live_server: LiveServer, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "crypto.py").write_text('OWNER = "app"\n\n\ndef encrypt(data: bytes) -> bytes:\n    return data\n')
    (app / "server.py").write_text('OWNER = "app"\n')
    (app / "main.py").write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    suffix = os.urandom(3).hex()
    done = subprocess.run(
        [sys.executable, "main.py", live_server.base_url, suffix],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"received: hello from an app with crypto.py and server.py from bob_{suffix}" in done.stdout


@pytest.mark.timeout(900)
def test_client_only_install_has_the_sdk_and_cli_without_the_server_stack(tmp_path: Path) -> None:
    # a copy of the source tree (pip builds in place; the checkout stays untouched)
    src = tmp_path / "src"
    keep = {"pyproject.toml", "README.md", "LICENSE", "saltline", "crypto", "server", "client_sdk"}
    src.mkdir()
    for name in keep:
        path = REPO / name
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(
                path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        elif path.exists():
            shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, cli = venv / "bin" / "python", venv / "bin" / "saltline"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(src)],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.util as u, saltline, saltline.client_sdk.client, saltline.client_sdk.cli;"
            "import saltline.crypto.ratchet;"
            "print(saltline.client_sdk.client.__file__);"
            "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'alembic', 'uvicorn', 'argon2')"
            " if u.find_spec(m) is not None))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    installed_at, server_stack = probe.stdout.splitlines()
    assert str(venv) in installed_at  # the installed copy, not the checkout
    assert server_stack == "[]"
    # every module of the SDK and the crypto core is in the installed copy (one the package list
    # leaves out, e.g. a folder without ``__init__.py`` if namespace packages were turned off, would
    # import from the checkout and be missing only after install)
    recent = {
        "crypto": {"ratchet_message.py", "ratchet_state.py"},
        "client_sdk": {"core/sync/holding.py", "core/sync/server_order.py", "core/sync/state.py"},
    }
    for package, folder in (("saltline.crypto", "crypto"), ("saltline.client_sdk", "client_sdk")):
        listed = subprocess.run(
            [
                str(py),
                "-c",
                LIST_MODULES,
                package,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listed.returncode == 0, listed.stderr[-3000:]
        source = sorted(
            str(p.relative_to(REPO / folder))
            for p in (REPO / folder).rglob("*.py")
            if "__pycache__" not in p.parts
        )
        installed = listed.stdout.split()
        assert recent[folder] <= set(installed), package
        assert installed == source, package
    helped = subprocess.run([str(cli), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "send" in helped.stdout and "link" in helped.stdout
    # the server's commands say which extra they need instead of a traceback
    served = subprocess.run([str(cli), "serve"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert served.returncode != 0
    assert "saltline[server]" in served.stdout + served.stderr
    assert "Traceback" not in served.stdout + served.stderr
