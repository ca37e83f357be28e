"""``saltline send --file``, ``messages`` showing the attachment and ``saltline download REF``, as
real subprocesses against a live server."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_cli_e2e import PASSWORD, Cli
from tests.live import LiveServer

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_send_file_messages_and_download(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = make_server()
    cli = Cli(tmp_path / "home", server.base_url)
    suffix = os.urandom(3).hex()
    alice, bob = f"alice_{suffix}", f"bob_{suffix}"
    cli("alice", "account", "create", alice, "--password-stdin", stdin=PASSWORD + "\n")
    cli("bob", "account", "create", bob, "--password-stdin", stdin=PASSWORD + "\n")
    cid = cli("bob", "chat", "start", alice).stdout.strip()
    data = os.urandom(300_000)
    (tmp_path / "report.pdf").write_bytes(data)
    sent = cli("bob", "send", cid, "--file", str(tmp_path / "report.pdf"), "--caption", "the report")
    assert sent.stdout.startswith("sent ")
    shown = cli("alice", "messages", cid).stdout
    match = re.search(r"the report \[file report\.pdf, 300\.0 KB, ref (\S+)\]", shown)
    assert match, shown
    (tmp_path / "got").mkdir()
    missing = cli("alice", "download", "zzzzzzzzzz", "--to", str(tmp_path / "got"), ok=False)
    assert missing.returncode == 1 and "no attachment" in missing.stderr
    saved = cli("alice", "download", match.group(1), "--to", str(tmp_path / "got"))
    assert "saved" in saved.stdout
    assert (tmp_path / "got" / "report.pdf").read_bytes() == data
    assert os.listdir(tmp_path / "got") == ["report.pdf"]
    assert cli("bob", "send", cid, ok=False).returncode != 0  # neither text nor --file
