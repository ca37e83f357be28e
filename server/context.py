"""The application context: everything a request needs, built once per app in the lifespan and
kept on ``app.state.ctx``. Routes reach it through :func:`saltline.server.api.deps.get_ctx`.

To add a subsystem: add a field here, construct it in :func:`build_context` (or in the
lifespan of :mod:`saltline.server.app` when it needs start/stop), and register cleanup in
``on_shutdown``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from saltline.server.clock import Clock
from saltline.server.services.accounts import AccountService
from saltline.server.services.attachments import AttachmentCounters, AttachmentLimits, AttachmentService
from saltline.server.services.auth import AuthService, RateLimits, TokensRevokedHook
from saltline.server.services.blobs import BlobService
from saltline.server.services.common import DeviceListChangedHook, DeviceRemovedHook
from saltline.server.services.devices import DeviceService
from saltline.server.services.health import Readiness
from saltline.server.services.keys import KeyDirectoryService
from saltline.server.services.linking import LinkingLimits, LinkingService
from saltline.server.services.passwords import Passwords
from saltline.server.services.provisioning import ProvisioningLimits, ProvisioningService
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.settings import Settings
from saltline.server.storage.accounts_repo import AccountsRepo
from saltline.server.storage.attachment_store import (
    AttachmentStore,
    DatabaseAttachmentStore,
    FilesystemAttachmentStore,
)
from saltline.server.storage.attachments_repo import AttachmentsRepo
from saltline.server.storage.auth_repo import AuthRepo
from saltline.server.storage.blobs_repo import BlobsRepo
from saltline.server.storage.db import Database
from saltline.server.storage.linking_repo import LinkingRepo
from saltline.server.storage.migrate import head_revisions
from saltline.server.storage.prekeys_repo import PreKeysRepo
from saltline.server.storage.provisioning_repo import ProvisioningRepo
from saltline.server.transport import TransportCollector


@dataclass(slots=True)
class AccountMetrics:
    registrations: Counter
    logins: Counter
    prekey_claims: Counter
    #: Requests refused by a stored-amount quota (507), by quota; rate limits and per-window
    #: quotas count in ``saltline_rate_limited_total`` by scope.
    quota_refused: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AccountMetrics:
        return cls(
            registrations=Counter("saltline_accounts_registered", "Accounts registered", registry=registry),
            logins=Counter(
                "saltline_logins", "Logins by method and outcome", ["method", "outcome"], registry=registry
            ),
            prekey_claims=Counter(
                "saltline_prekey_claims",
                "Prekey bundles handed out, by prekey kind",
                ["kind"],
                registry=registry,
            ),
            quota_refused=Counter(
                "saltline_quota_refused",
                "Requests refused by a stored-amount quota (507), by quota",
                ["quota"],
                registry=registry,
            ),
        )


@dataclass(slots=True)
class AppContext:
    settings: Settings
    db: Database
    clock: Clock
    #: Per-app Prometheus registry (never the global one): ``/metrics`` serves it.
    registry: CollectorRegistry
    metrics: AccountMetrics
    rate_limiter: RateLimiter
    # repositories
    accounts_repo: AccountsRepo
    auth_repo: AuthRepo
    prekeys_repo: PreKeysRepo
    provisioning_repo: ProvisioningRepo
    # services
    accounts: AccountService
    devices: DeviceService
    auth: AuthService
    keys: KeyDirectoryService
    provisioning: ProvisioningService
    blobs: BlobService
    linking: LinkingService
    attachments: AttachmentService
    #: Awaited with ``(account_id, device_id)`` after a device was dropped from its list: the
    #: delivery side closes its socket here. Hooks must not raise (failures are logged).
    on_device_removed: list[DeviceRemovedHook] = field(default_factory=list)
    #: Awaited with ``(account_id, version)`` after an account adopted a new device list.
    on_device_list_changed: list[DeviceListChangedHook] = field(default_factory=list)
    #: Awaited with ``(account_id, device_id)`` after a refresh-token family of the device was
    #: revoked because a rotated token was presented again (committed first): the delivery side
    #: may close that device's sockets. Hooks must not raise (failures are logged).
    on_tokens_revoked: list[TokensRevokedHook] = field(default_factory=list)
    #: Awaited in reverse order when the app stops (before the engine is disposed).
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # -- delivery (filled by the delivery side) ------------------------------------------------
    bus: Any = None
    connections: Any = None
    delivery: Any = None
    conversations: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: ``/readyz``: the migration head is read once, when the context is built.
    readiness: Readiness | None = None


def build_attachments(
    settings: Settings, db: Database, clock: Clock, limiter: RateLimiter, registry: CollectorRegistry
) -> AttachmentService:
    store: AttachmentStore
    if settings.attachment_store == "database":
        store = DatabaseAttachmentStore(db)
    else:
        store = FilesystemAttachmentStore(
            settings.data_dir / "attachments", commit_bytes=settings.attachment_commit_bytes
        )
    created = Counter("saltline_attachments_created", "Attachment uploads created", registry=registry)
    uploaded = Counter("saltline_attachment_uploaded_bytes", "Attachment bytes uploaded", registry=registry)
    completed = Counter("saltline_attachments_completed", "Attachment uploads completed", registry=registry)
    downloaded = Counter(
        "saltline_attachment_downloaded_bytes", "Attachment bytes downloaded", registry=registry
    )
    refused = Counter(
        "saltline_attachments_refused", "Attachment uploads refused, by reason", ["reason"], registry=registry
    )
    return AttachmentService(
        AttachmentsRepo(db),
        store,
        clock,
        AttachmentLimits(
            max_bytes=settings.max_attachment_bytes,
            retention_s=settings.attachment_retention_s,
            quota_bytes_per_account=settings.attachment_quota_bytes_per_account,
            bytes_per_account=settings.rate_limit_attachment_bytes_per_account,
            uploads_per_device=settings.rate_limit_attachment_uploads_per_device,
        ),
        limiter=limiter,
        counters=AttachmentCounters(
            created=lambda _n: created.inc(),
            written=uploaded.inc,
            completed=completed.inc,
            downloaded=downloaded.inc,
            refused=lambda reason: refused.labels(reason).inc(),
        ),
    )


def build_context(settings: Settings, db: Database, clock: Clock) -> AppContext:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TransportCollector())
    limiter = RateLimiter(
        enabled=settings.rate_limit_enabled,
        storage_url=settings.resolved_rate_limit_storage_url(),
        key_prefix=settings.rate_limit_key_prefix,
        registry=registry,
    )
    passwords = Passwords(
        settings.argon2_time_cost, settings.argon2_memory_cost_kib, settings.argon2_parallelism
    )
    accounts_repo = AccountsRepo(db)
    auth_repo = AuthRepo(db)
    prekeys_repo = PreKeysRepo(db)
    provisioning_repo = ProvisioningRepo(db)
    on_removed: list[DeviceRemovedHook] = []
    on_changed: list[DeviceListChangedHook] = []
    on_revoked: list[TokensRevokedHook] = []
    devices = DeviceService(
        accounts_repo,
        clock,
        max_devices=settings.max_devices_per_account,
        max_list_bytes=settings.max_device_list_bytes,
        on_device_removed=on_removed,
        on_device_list_changed=on_changed,
    )
    ctx = AppContext(
        settings=settings,
        db=db,
        clock=clock,
        registry=registry,
        metrics=AccountMetrics.create(registry),
        rate_limiter=limiter,
        accounts_repo=accounts_repo,
        auth_repo=auth_repo,
        prekeys_repo=prekeys_repo,
        provisioning_repo=provisioning_repo,
        accounts=AccountService(
            accounts_repo,
            passwords,
            clock,
            max_devices=settings.max_devices_per_account,
            max_list_bytes=settings.max_device_list_bytes,
        ),
        devices=devices,
        auth=AuthService(
            accounts_repo,
            auth_repo,
            passwords,
            limiter,
            clock,
            jwt_secret=settings.resolved_jwt_secret(),
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            challenge_ttl_s=settings.login_challenge_ttl_s,
            limits=RateLimits(
                settings.rate_limit_login_per_account,
                settings.rate_limit_login_per_ip,
                settings.rate_limit_login_failures_per_account_ip,
                refresh_per_device=settings.rate_limit_refresh_per_device,
                refresh_families_per_device=settings.max_refresh_logins_per_device,
            ),
            on_tokens_revoked=on_revoked,
        ),
        keys=KeyDirectoryService(
            accounts_repo,
            prekeys_repo,
            clock,
            max_batch=settings.max_prekeys_per_upload,
            max_stored_one_time=settings.max_stored_one_time_prekeys,
            max_claim_targets=settings.max_claim_targets,
            limiter=limiter,
            claim_rate_per_device=settings.rate_limit_prekey_claims_per_device,
            claim_rate_per_target_device=settings.rate_limit_prekey_claims_per_target_device,
        ),
        provisioning=ProvisioningService(
            provisioning_repo,
            limiter,
            clock,
            ttl_s=settings.provisioning_ttl_s,
            max_payload_bytes=settings.max_provisioning_payload_bytes,
            limits=ProvisioningLimits(
                create_per_ip=settings.rate_limit_provisioning_per_ip,
                puts_per_ip=settings.rate_limit_provisioning_puts_per_ip,
                max_puts_per_channel=settings.max_provisioning_puts_per_channel,
            ),
        ),
        blobs=BlobService(
            BlobsRepo(db),
            clock,
            max_bytes=settings.max_blob_bytes,
            retention_s=settings.blob_retention_s,
            limiter=limiter,
            upload_rate_per_device=settings.rate_limit_blob_uploads_per_device,
            quota_bytes_per_account=settings.blob_quota_bytes_per_account,
            upload_bytes_per_account=settings.rate_limit_blob_bytes_per_account,
        ),
        linking=LinkingService(
            LinkingRepo(db),
            accounts_repo,
            devices,
            limiter,
            clock,
            LinkingLimits(
                grant_ttl_s=settings.device_grant_ttl_s,
                max_grants_per_account=settings.max_device_grants_per_account,
                grants_per_account=settings.rate_limit_device_grants_per_account,
                handoff_retention_s=settings.queue_retention_s,
            ),
        ),
        attachments=build_attachments(settings, db, clock, limiter, registry),
        on_device_removed=on_removed,
        on_device_list_changed=on_changed,
        on_tokens_revoked=on_revoked,
        readiness=Readiness(db, head_revisions()),
    )
    ctx.blobs.on_quota_refused = ctx.metrics.quota_refused.labels("blob-stored-bytes").inc
    ctx.on_shutdown.append(limiter.close)  # the rate-limit Redis pool (if any)
    return ctx
