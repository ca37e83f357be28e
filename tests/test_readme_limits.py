"""The README's "Limits you will meet" table states the defaults of server/settings.py and the SDK's
own bounds. Each row is checked against the code here, so changing a default without the README
(or the README without the code) fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saltline.client_sdk.core import wire
from saltline.client_sdk.core.attachments import padded_size
from saltline.client_sdk.core.outbox import largest_body
from saltline.client_sdk.core.sync.ops import MAX_TEXT
from saltline.crypto.device_list_format import MAX_USERNAME_BYTES, MIN_USERNAME_BYTES
from saltline.server.services.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from saltline.server.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
LIMITS = README[README.index("## Limits you will meet") : README.index("## API reference")]
DAY = 24 * 3600
MiB = 1024 * 1024


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The defaults, not this machine's environment."""
    for key in list(os.environ):
        if key.startswith("SALTLINE_"):
            monkeypatch.delenv(key)
    return Settings(_env_file=None)


def _row(name: str) -> str:
    rows = [line for line in LIMITS.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, f"the README's limits table has no single row {name!r}"
    return rows[0]


def test_accounts(defaults: Settings) -> None:
    assert (MIN_USERNAME_BYTES, MAX_USERNAME_BYTES) == (3, 32)
    assert "3–32 characters" in _row("username")
    assert (MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH) == (10, 256)
    assert "10–256 characters" in _row("password of a new account")
    assert defaults.rate_limit_register_per_ip == "5/minute"
    assert "5 a minute per client IP" in _row("registrations")
    assert defaults.rate_limit_login_per_ip == "10/minute"
    assert defaults.rate_limit_login_failures_per_account_ip == "5/minute"
    row = _row("password logins")
    assert "10 attempts a minute per IP" in row and "after 5 failures in a minute" in row
    assert defaults.max_devices_per_account == 10
    assert "| 10 (`max_devices_per_account`)" in _row("devices per account")
    assert defaults.rate_limit_conversation_creations_per_device == "100/hour"
    assert "100 an hour per device" in _row("new conversations")


def test_message_size(defaults: Settings) -> None:
    row = _row("message (text) size")
    assert MAX_TEXT == 65536 and "65 536 characters" in row
    assert defaults.max_envelope_bytes == wire.DEFAULT_MAX_ENVELOPE_BYTES == 256 * 1024
    assert "at most 256 KiB" in row
    clock = 1000  # a clock of a busy conversation: the figures hold for any smaller one too
    stated = {3: 64, 6: 32, 10: 16, 50: 4}  # devices -> KiB of text, as the row says
    for devices, kib in stated.items():
        assert largest_body(defaults.max_envelope_bytes, clock, devices) == kib * 1024 - 1, devices
        assert f"{kib} KiB" in row
    assert largest_body(defaults.max_envelope_bytes, clock, 4) < 64 * 1024 - 1  # "up to 3" is exact


def test_attachments_sending_and_retention(defaults: Settings) -> None:
    row = _row("attachment size")
    limit = defaults.max_attachment_bytes
    assert limit == 100 * MiB and "100 MiB" in row
    largest = 104_830_376
    assert padded_size(largest) <= limit < padded_size(largest + 1)
    assert "104 830 376 bytes (99.97 MiB)" in row
    assert defaults.attachment_quota_bytes_per_account == 1024 * MiB and "1 GiB stored per account" in row
    assert defaults.attachment_retention_s == 30 * DAY and "kept 30 days" in row
    assert defaults.rate_limit_envelopes_per_device == "600/minute"
    assert defaults.rate_limit_envelope_bytes_per_device == str(100 * MiB) + "/hour"
    assert "600 envelopes a minute and 100 MiB an hour per device" in _row("sending")
    assert defaults.queue_retention_s == 30 * DAY
    assert "kept 30 days" in _row("undelivered messages")
