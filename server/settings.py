"""Server configuration: one :class:`Settings` object, read from ``SALTLINE_*`` environment
variables (and CLI flags, which override them), passed to :func:`saltline.server.app.create_app`.

Nothing here touches the database or the network: building a ``Settings`` is free of side effects
except :meth:`Settings.resolved_jwt_secret`, which creates the persisted secret on first use.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

JWT_SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name, not a secret
MIN_JWT_SECRET_BYTES = 32
#: ``rate_limit_storage_url`` values: per-process memory, or Redis (TCP, TLS, unix socket).
RATE_LIMIT_STORAGE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://")
#: Accepted ``log_level`` values (uvicorn's and the logging module's names, lower-case).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SALTLINE_", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Path("./saltline-data")
    #: ``sqlite+aiosqlite:///path`` (default: ``<data_dir>/saltline.db``) or
    #: ``postgresql+asyncpg://user:pw@host/db``.
    database_url: str = ""
    #: SQLite ``synchronous`` pragma. FULL (default): each commit fsyncs the WAL, so a power loss
    #: cannot undo a commit we already acknowledged; NORMAL is only crash-safe for the process.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    sqlite_busy_timeout_ms: int = 10_000
    db_pool_size: int = 10

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Server processes sharing the listening socket (``saltline serve --workers N``): one core
    #: each. More than one needs ``redis_url``: the processes share wake-ups, the one socket per
    #: device rule and the rate limits through Redis (docs/deploy.md § 8).
    workers: int = Field(default=1, ge=1, le=64)
    #: critical, error, warning, info or debug (any case). uvicorn's ``trace`` is refused: it logs
    #: every ASGI message, request bodies included (passwords, tokens).
    log_level: str = "info"
    #: Addresses (comma-separated IPs or CIDRs, or ``*``) whose ``X-Forwarded-For`` /
    #: ``X-Forwarded-Proto`` are believed: the reverse proxy in front. Empty (default): no header
    #: is believed and the client address is the peer's, so per-IP limits cannot be dodged by
    #: sending the header.
    forwarded_allow_ips: str = ""

    # -- transport (server/transport.py; docs/deploy.md "Transport limits") ------------------
    #: Open connections per process, HTTP and WebSocket together (also capped at the process's
    #: soft RLIMIT_NOFILE minus 100 at start-up). One over it gets a 503 problem+json and is closed.
    max_connections: int = Field(default=10_000, ge=1)
    #: A request head must be complete within this many seconds of the connection opening or of
    #: the previous response (idle keep-alive, slowloris); otherwise the connection is closed.
    http_head_timeout_s: float = Field(default=10.0, gt=0)
    #: Largest request head (request line and headers); a larger one gets 431 problem+json.
    http_max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    #: Pipelined requests queued behind the one being answered; a connection past it is dropped.
    http_max_pipeline: int = Field(default=16, ge=0)
    #: A WebSocket whose unsent bytes pass this is aborted: the peer does not read. Application
    #: frames wait at 64 KiB, so this must hold 64 KiB plus the largest frame (an envelope).
    ws_write_buffer_max_bytes: int = Field(default=1024 * 1024, ge=128 * 1024)
    #: After the server's close frame, the transport is dropped (abort) if the peer has not
    #: answered within this many seconds.
    ws_close_timeout_s: float = Field(default=2.0, gt=0)
    #: A request body must arrive within this many seconds of its head, plus one second per
    #: ``http_body_min_rate`` bytes received (a slow upload that moves goes on; a trickle is
    #: answered 408 problem+json and closed).
    http_body_timeout_s: float = Field(default=20.0, gt=0)
    #: Bytes per second of request body that extend ``http_body_timeout_s`` by a second.
    http_body_min_rate: int = Field(default=8192, ge=1)
    #: A connection whose response has waited this long for the peer to read (writing paused
    #: at the transport's high-water mark) is dropped, and its buffered bytes freed.
    http_write_timeout_s: float = Field(default=30.0, gt=0)

    # -- auth --------------------------------------------------------------------------------
    #: HS256 secret for access tokens. When unset, a random one is generated once and kept in
    #: ``<data_dir>/jwt-secret`` (mode 0600), so restarts keep tokens valid.
    jwt_secret: str | None = None
    access_token_ttl_s: int = Field(default=900, gt=0)
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    login_challenge_ttl_s: int = Field(default=120, gt=0)
    provisioning_ttl_s: int = Field(default=600, gt=0)
    #: Messages a provisioning channel carries over its lifetime (the linking handshake needs 4).
    max_provisioning_puts_per_channel: int = Field(default=8, gt=0)
    #: How long a one-time device grant (``POST /v1/accounts/me/device-grants``) stays valid.
    device_grant_ttl_s: int = Field(default=600, gt=0)
    #: Unexpired device grants an account may hold at once (429 beyond).
    max_device_grants_per_account: int = Field(default=5, gt=0)
    #: argon2id cost (RFC 9106 second recommendation by default; tests lower it).
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    # -- delivery ----------------------------------------------------------------------------
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    heartbeat_missed_limit: int = Field(default=2, ge=1)
    delivery_window: int = Field(default=64, ge=1)
    queue_retention_s: int = Field(default=30 * 24 * 3600, gt=0)
    #: ``redis://host:6379/0``: the wake-up bus shared by several server instances (one pub/sub
    #: channel per connected device). Unset: the in-process bus (a single instance).
    redis_url: str | None = None

    # -- limits ------------------------------------------------------------------------------
    max_envelope_bytes: int = Field(default=256 * 1024, gt=0)
    max_recipients: int = Field(default=1000, gt=0)
    #: A history page (``GET /v1/conversations/{id}/envelopes``) ends before the item that would
    #: take its ciphertexts plus clocks past this many bytes (its first item is always included),
    #: with ``next_after`` to continue: a response is about 4/3 of this (base64), not 500 envelopes.
    history_page_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_prekeys_per_upload: int = Field(default=100, gt=0)
    #: One-time prekeys a device may have stored at once.
    max_stored_one_time_prekeys: int = Field(default=1000, gt=0)
    #: Devices per ``POST /v1/keys/claim`` (after de-duplication): enough for a group fan-out.
    max_claim_targets: int = Field(default=100, gt=0)
    max_devices_per_account: int = Field(default=10, gt=0)
    max_provisioning_payload_bytes: int = Field(default=64 * 1024, gt=0)
    #: Blobs (history bundles); their base64url JSON body must fit the request body limit.
    max_blob_bytes: int = Field(default=512 * 1024, gt=0)
    #: Blobs older than this are gone (404); expired rows are purged opportunistically on upload.
    #: A history bundle is fetched within minutes of its upload, so a week is ample.
    blob_retention_s: int = Field(default=7 * 24 * 3600, gt=0)
    max_device_list_bytes: int = Field(default=64 * 1024, gt=0)
    #: Attachments (server/services/attachments.py): where their ciphertext lives. ``filesystem``
    #: (``<data_dir>/attachments``, one machine: one instance or the workers of ``serve --workers
    #: N``) or ``database`` (chunk rows in the database: every instance sharing the database
    #: serves every attachment).
    attachment_store: Literal["filesystem", "database"] = "filesystem"
    #: An attachment's padded ciphertext may be at most this long (``Upload-Length``).
    max_attachment_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    #: A ``PATCH`` may carry the rest of an upload; while its body streams in, the filesystem
    #: store makes the bytes durable (``fsync``) and moves the acknowledged offset every this
    #: many bytes (and at the end of the body). The database store commits every 1 MiB.
    attachment_commit_bytes: int = Field(default=8 * 1024 * 1024, gt=0, le=64 * 1024 * 1024)
    #: Attachments are readable this long after their upload started, then 410 ``attachment_expired``.
    attachment_retention_s: int = Field(default=30 * 24 * 3600, gt=0)

    # -- rate limits (``limits`` strings; see server/services/ratelimit.py) --------------------
    rate_limit_enabled: bool = True
    #: Where the rate-limit windows live: ``memory://`` (per process) or a Redis URL (shared by
    #: every instance). Unset: ``redis_url`` when that is set, else ``memory://``. While Redis is
    #: unreachable each instance falls back to its own memory windows.
    rate_limit_storage_url: str | None = None
    #: Prefix of the rate-limit keys in Redis (several deployments may share one Redis).
    rate_limit_key_prefix: str = Field(default="saltline:rl", min_length=1)
    #: Failed password logins per (account, client IP): that address is refused (429) for the
    #: account beyond this. Counted first.
    rate_limit_login_failures_per_account_ip: str = "5/minute"
    #: Failed password logins per account from any address: beyond it, an address that has
    #: already failed for the account is refused, one that has not still gets its attempt (the
    #: owner is never locked out; an attacker gets one guess per address and per-(account, IP) window).
    #: Successes never count; device-key login never counts nor is refused by it.
    rate_limit_login_per_account: str = "100/hour"
    #: Password login attempts per client IP (challenges and device logins: same size, own windows).
    rate_limit_login_per_ip: str = "10/minute"
    #: Prekey bundles claimed per calling device.
    rate_limit_prekey_claims_per_device: str = "600/minute"
    #: One-time prekeys handed out per target device, whoever claims. Beyond it a claim still
    #: succeeds with the last-resort prekey (no one-time prekey): a legitimate burst larger than
    #: this (a device added to a large group, every member's devices opening a session with it
    #: within the hour) works, its first flights just lack one-time prekey protection.
    rate_limit_prekey_claims_per_target_device: str = "100/hour"
    rate_limit_register_per_ip: str = "5/minute"
    #: ``POST /v1/conversations`` per device (a repeated direct creation answering the existing
    #: conversation counts too): 100/hour keeps one device from flooding another's list.
    rate_limit_conversation_creations_per_device: str = "100/hour"
    #: Blob uploads per device (a history bundle is split into parts of at most ``max_blob_bytes``;
    #: 1000/hour is about 250 MB of history per hour at 256 KiB parts).
    rate_limit_blob_uploads_per_device: str = "1000/hour"
    rate_limit_provisioning_per_ip: str = "10/minute"
    #: Puts on provisioning channels (token-less: the put secret is the authority), per client IP.
    rate_limit_provisioning_puts_per_ip: str = "60/minute"
    #: One-time device grants issued per account (at most ``max_device_grants_per_account``
    #: unexpired at once in any case).
    rate_limit_device_grants_per_account: str = "30/hour"
    #: Token-less signed device-list updates (``PUT /v1/accounts/{id}/device-list/signed``, used
    #: by linking), per client IP (every request) and per target account (counted only once the
    #: account-key signature has verified, so junk cannot use up the owner's allowance).
    rate_limit_signed_list_per_ip: str = "10/minute"
    rate_limit_signed_list_per_account: str = "10/minute"
    #: New device-list versions per account, both routes (counted once the signature has
    #: verified). Every version is kept: a client meeting an account verifies its whole chain
    #: from version 1 (docs/protocol/messages.md), so this bounds the chain's growth.
    rate_limit_device_list_versions_per_account: str = "50/day"

    # -- quotas (amounts; beyond them 429 with Retry-After, or 507 for stored bytes) -----------
    #: Envelopes sent per device (stored and ephemeral, HTTP and socket; replays count too).
    rate_limit_envelopes_per_device: str = "600/minute"
    #: Bytes sent per device: each envelope's ciphertexts plus clock (what the server keeps for up
    #: to ``queue_retention_s``). A sliding-window counter; the amount must stay well above
    #: ``max_envelope_bytes``.
    rate_limit_envelope_bytes_per_device: str = "104857600/hour"
    #: Blob bytes an account may have stored at once (unexpired blobs); beyond it an upload gets
    #: 507 ``storage_quota_exceeded`` (blobs expire after ``blob_retention_s``).
    blob_quota_bytes_per_account: int = Field(default=256 * 1024 * 1024, gt=0)
    #: Blob bytes uploaded per account (all its devices).
    rate_limit_blob_bytes_per_account: str = "134217728/hour"
    #: Attachment bytes an account may have stored at once (announced lengths of its unexpired
    #: attachments); beyond it a new upload gets 507 ``storage_quota_exceeded``.
    attachment_quota_bytes_per_account: int = Field(default=1024 * 1024 * 1024, gt=0)
    #: Attachment bytes announced per account (all its devices), counted when an upload is created.
    rate_limit_attachment_bytes_per_account: str = "1073741824/hour"
    #: Attachment uploads created per device.
    rate_limit_attachment_uploads_per_device: str = "500/hour"
    #: Refresh-token rotations per device (access tokens live ``access_token_ttl_s``: 4/hour).
    rate_limit_refresh_per_device: str = "60/hour"
    #: Logins (refresh-token families) kept per device: a newer login of the same device forgets
    #: the oldest's refresh token. Used tokens are pruned too (server/storage/auth_repo.py).
    max_refresh_logins_per_device: int = Field(default=10, gt=0)

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_long_enough(cls, value: str | None) -> str | None:
        if not value:
            return None  # unset (or empty): use the persisted, generated secret
        if len(value.encode("utf-8")) < MIN_JWT_SECRET_BYTES:
            raise ValueError(
                f"jwt_secret (SALTLINE_JWT_SECRET) must be at least {MIN_JWT_SECRET_BYTES} bytes"
                " for HS256; unset it to have a random one generated"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level == "trace":
            raise ValueError(
                "log_level (SALTLINE_LOG_LEVEL, --log-level) trace is not supported: it logs request"
                " bodies, passwords and tokens included; use debug"
            )
        if level not in LOG_LEVELS:
            raise ValueError(
                f"log_level (SALTLINE_LOG_LEVEL, --log-level) must be one of {', '.join(LOG_LEVELS)}"
            )
        return level

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _rate_limit_storage_url_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None  # unset (or empty): follow redis_url
        if not value.startswith(RATE_LIMIT_STORAGE_SCHEMES):
            raise ValueError(
                "rate_limit_storage_url (SALTLINE_RATE_LIMIT_STORAGE_URL) must start with one of "
                + ", ".join(RATE_LIMIT_STORAGE_SCHEMES)
            )
        return value

    @model_validator(mode="after")
    def _ws_buffer_holds_an_envelope(self) -> Settings:
        # base64 (4/3) plus the frame's JSON: at most 3/2 of the envelope, after 64 KiB waiting
        needed = 64 * 1024 + self.max_envelope_bytes * 3 // 2
        if self.ws_write_buffer_max_bytes < needed:
            raise ValueError(
                f"ws_write_buffer_max_bytes must be at least {needed} (64 KiB plus 3/2 of "
                "max_envelope_bytes), or every large envelope would close its socket"
            )
        return self

    @model_validator(mode="after")
    def _byte_quotas_fit_one_request(self) -> Settings:
        from limits import parse

        for name, largest, what in (
            ("rate_limit_envelope_bytes_per_device", self.max_envelope_bytes, "max_envelope_bytes"),
            ("rate_limit_blob_bytes_per_account", self.max_blob_bytes, "max_blob_bytes"),
            (
                "rate_limit_attachment_bytes_per_account",
                self.max_attachment_bytes,
                "max_attachment_bytes",
            ),
        ):
            if parse(getattr(self, name)).amount < largest:
                raise ValueError(
                    f"{name} must allow at least {what} ({largest}) bytes, or no large request fits"
                )
        return self

    @model_validator(mode="after")
    def _workers_share_redis(self) -> Settings:
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                f"workers={self.workers} needs redis_url (SALTLINE_REDIS_URL): several processes "
                "share wake-ups, the one-socket-per-device rule and rate limits through Redis; "
                "set it or run one worker"
            )
        if self.workers > 1 and self.resolved_rate_limit_storage_url().startswith("memory://"):
            raise ValueError(
                "rate_limit_storage_url memory:// keeps a separate window in each worker (the "
                "limits would multiply by the number of workers); leave it unset to use redis_url"
            )
        return self

    @model_validator(mode="after")
    def _default_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'saltline.db').as_posix()}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def resolved_rate_limit_storage_url(self) -> str:
        """``rate_limit_storage_url``, else ``redis_url`` (shared limits), else ``memory://``."""
        return self.rate_limit_storage_url or self.redis_url or "memory://"

    def resolved_jwt_secret(self) -> str:
        """The configured secret, or the persisted one (created with mode 0600 on first use)."""
        if self.jwt_secret:
            return self.jwt_secret
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / JWT_SECRET_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            secret = path.read_text(encoding="ascii").strip()
            if len(secret) < 32:
                raise RuntimeError(
                    f"{path} is too short to be a JWT secret; delete it to regenerate"
                ) from None
            return secret
        secret = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret + "\n")
        return secret
