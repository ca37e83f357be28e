"""CLI profiles: one directory per device (config, store key, encrypted store); see
:mod:`saltline.client_sdk.cli`."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saltline.client_sdk.errors import UsageError

DEFAULT_SERVER = "http://127.0.0.1:8080"
STORE_KEY_SIZE = 32


def saltline_home() -> Path:
    return Path(os.environ.get("SALTLINE_HOME") or "~/.saltline").expanduser()


@dataclass(frozen=True)
class Profile:
    """One device of the CLI: a directory with its config, store key and encrypted store."""

    name: str
    directory: Path

    @classmethod
    def named(cls, name: str) -> Profile:
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise UsageError(f"invalid profile name {name!r}: use letters, digits, '-', '_' and '.'")
        return cls(name, saltline_home() / "profiles" / name)

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    @property
    def key_path(self) -> Path:
        return self.directory / "store.key"

    @property
    def store_path(self) -> Path:
        return self.directory / "store.db"

    def ensure(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def config(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {self.config_path}: {exc}") from exc
        return loaded

    def save_config(self, config: dict[str, Any]) -> None:
        self.ensure()
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.config_path)

    def server_url(self, override: str | None) -> str:
        config = self.config()
        if override:
            url = override.rstrip("/")
            if config.get("server") != url:
                self.save_config({**config, "server": url})
            return url
        return str(config.get("server") or os.environ.get("SALTLINE_SERVER") or DEFAULT_SERVER)

    def store_key(self) -> bytes:
        """The store's key, created (0600, never overwritten) the first time."""
        self.ensure()
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = self.key_path.read_bytes()
            if len(key) != STORE_KEY_SIZE:
                raise UsageError(f"{self.key_path} is not a {STORE_KEY_SIZE}-byte store key") from None
            return key
        key = secrets.token_bytes(STORE_KEY_SIZE)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    def exists(self) -> bool:
        return self.store_path.exists()

    # -- a device removed from its account ---------------------------------------------------------

    @property
    def removed_path(self) -> Path:
        return self.directory / "removed.json"

    def mark_removed(self, reason: str, proof_version: int) -> None:
        """Remember that this device was removed from its account (every command then says so).
        Only with proof: ``proof_version`` is the version of a verified device list of this account
        (checked against the pinned chain) that leaves this device out; the server's word alone
        is never stored."""
        if self.removed() is not None or not self.directory.exists():
            return
        tmp = self.removed_path.with_suffix(".tmp")
        doc = {
            "reason": reason,
            "at_ms": int(time.time() * 1000),
            "proof": {"device_list_version": proof_version},
        }
        tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        tmp.replace(self.removed_path)

    def removed(self) -> str | None:
        """Why this device was removed, if a verified device list proved it (a marker without
        that proof, e.g. one an older version wrote on the server's word, is ignored)."""
        try:
            doc = json.loads(self.removed_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        proof = doc.get("proof")
        version = proof.get("device_list_version") if isinstance(proof, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return None
        return str(doc.get("reason") or "removed")

    def discard(self) -> Path | None:
        """Move the device (store, key, spool) out of the way, into
        ``$SALTLINE_HOME/discarded/NAME-TIMESTAMP`` (0700; nothing is deleted), keeping the
        remembered server; the profile is then empty and can be linked again. Returns where it went
        (None: there was nothing to discard)."""
        if not self.directory.exists() or not any(
            p.exists() for p in (self.store_path, self.key_path, self.removed_path)
        ):
            return None
        config = self.config()
        trash = saltline_home() / "discarded"
        trash.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = trash / f"{self.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        n = 1
        while target.exists():
            n += 1
            target = trash / f"{self.name}-{time.strftime('%Y%m%dT%H%M%S')}-{n}"
        self.directory.replace(target)
        if config.get("server"):
            self.save_config({"server": config["server"]})
        return target
