"""The server's tables, as SQLAlchemy Core objects on one :data:`metadata`.

Alembic owns the schema (``server/migrations/versions``): every change here needs a migration,
written explicitly. Other table modules (``delivery_schema.py``) define their tables on the same
:data:`metadata`.

Conventions:
- binary identifiers (account ids, device ids, token hashes) are ``LargeBinary`` of a fixed size;
  the API shows them as unpadded base64url text;
- times are integer Unix milliseconds (``*_ms``), identical on SQLite and PostgreSQL and free of
  time-zone handling;
- public keys are stored in their canonical ``saltline.crypto.keys`` encoding (version || kind || raw).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

ID_SIZE = 16  # account ids, device ids, token families, provisioning channels
HASH_SIZE = 32  # SHA-256

accounts = Table(
    "accounts",
    metadata,
    Column("id", LargeBinary(ID_SIZE), primary_key=True),
    Column("username", String(32), nullable=False),
    Column("username_lower", String(32), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("account_key", LargeBinary(34), nullable=False),
    # The version of the current signed device list; updated by compare-and-set so that two
    # concurrent list updates cannot both succeed.
    Column("device_list_version", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    # Chosen by the client (random 16 bytes) and globally unique: queues and tokens key on it.
    Column("device_id", LargeBinary(ID_SIZE), primary_key=True),
    Column("account_id", LargeBinary(ID_SIZE), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("signing_key", LargeBinary(34), nullable=False),
    Column("dh_key", LargeBinary(34), nullable=False),
    Column("added_at_ms", BigInteger, nullable=False),
    # Set when a signed list drops the device; a removed device is never routable again.
    Column("removed_at_ms", BigInteger, nullable=True),
    Index("ix_devices_account_id", "account_id"),
)

device_lists = Table(
    "device_lists",
    metadata,
    Column("account_id", LargeBinary(ID_SIZE), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("list_hash", LargeBinary(HASH_SIZE), nullable=False),
    Column("signed", LargeBinary, nullable=False),  # the signed list exactly as the client sent it
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "version"),
)

prekeys = Table(
    "prekeys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "device_id", LargeBinary(ID_SIZE), ForeignKey("devices.device_id", ondelete="CASCADE"), nullable=False
    ),
    Column("kind", SmallInteger, nullable=False),  # KeyKind: 4 signed, 5 one-time, 6 last resort
    Column("key_id", BigInteger, nullable=False),
    Column("encoded", LargeBinary(102), nullable=False),  # PreKeyPublic.encode(): key and signature
    Column("uploaded_at_ms", BigInteger, nullable=False),
    UniqueConstraint("device_id", "kind", "key_id"),
    Index("ix_prekeys_device_id_kind", "device_id", "kind"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", LargeBinary(HASH_SIZE), primary_key=True),  # SHA-256 of the token; never the token
    Column("family_id", LargeBinary(ID_SIZE), nullable=False),
    Column(
        "device_id", LargeBinary(ID_SIZE), ForeignKey("devices.device_id", ondelete="CASCADE"), nullable=False
    ),
    Column("account_id", LargeBinary(ID_SIZE), nullable=False),
    Column("issued_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("used", Boolean, nullable=False, default=False),  # rotated: presenting it again is reuse
    Column("revoked", Boolean, nullable=False, default=False),
    Index("ix_refresh_tokens_family_id", "family_id"),
    Index("ix_refresh_tokens_device_id", "device_id"),
)

login_challenges = Table(
    "login_challenges",
    metadata,
    Column("nonce", LargeBinary(32), primary_key=True),
    Column("username_lower", String(32), nullable=False),
    Column("device_id", LargeBinary(ID_SIZE), nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
)

provisioning_channels = Table(
    "provisioning_channels",
    metadata,
    Column("id", LargeBinary(ID_SIZE), primary_key=True),
    # SHA-256 of the two split secrets: the put secret may only put, the take secret only take.
    Column("put_hash", LargeBinary(HASH_SIZE), nullable=False),
    Column("take_hash", LargeBinary(HASH_SIZE), nullable=False),
    # Puts over the channel's lifetime (bounded: provisioning_max_puts_per_channel).
    Column("put_count", Integer, nullable=False, default=0),
    Column("payload", LargeBinary, nullable=True),  # the one-slot mailbox: ciphertext only
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
)

device_grants = Table(
    "device_grants",
    metadata,
    # SHA-256 of a one-time grant an active device issued for linking one new device.
    Column("grant_hash", LargeBinary(HASH_SIZE), primary_key=True),
    Column("account_id", LargeBinary(ID_SIZE), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", LargeBinary(ID_SIZE), nullable=False),  # the device the grant may add
    Column("signing_key", LargeBinary(32), nullable=False),  # its raw Ed25519 signing key
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Index("ix_device_grants_account_id", "account_id"),
)

key_handoffs = Table(
    "key_handoffs",
    metadata,
    # A sealed account-key handoff for one device, published with one device-list version.
    Column("device_id", LargeBinary(ID_SIZE), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("account_id", LargeBinary(ID_SIZE), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("sealed", LargeBinary, nullable=False),  # ciphertext only
    Column("created_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("device_id", "version"),
    Index("ix_key_handoffs_account_id", "account_id"),
)

device_names = Table(
    "device_names",
    metadata,
    Column(
        "device_id",
        LargeBinary(ID_SIZE),
        ForeignKey("devices.device_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("sealed", LargeBinary, nullable=False),  # the encrypted device name: ciphertext only
    Column("updated_at_ms", BigInteger, nullable=False),
)

blobs = Table(
    "blobs",
    metadata,
    Column("id", LargeBinary(ID_SIZE), primary_key=True),
    # Only devices of this account may download the blob.
    Column("account_id", LargeBinary(ID_SIZE), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("data", LargeBinary, nullable=False),  # ciphertext only
    Column("created_at_ms", BigInteger, nullable=False),
)

ATTACHMENT_ID_SIZE = 32

#: Attachments (server/services/attachments.py): one row per upload, kept as a tombstone after
#: its ciphertext was purged so that a late download gets 410 rather than 404.
attachments = Table(
    "attachments",
    metadata,
    Column("id", LargeBinary(ATTACHMENT_ID_SIZE), primary_key=True),
    # The uploader: only its account's devices may append (any authenticated device may read).
    Column("account_id", LargeBinary(ID_SIZE), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", LargeBinary(ID_SIZE), nullable=False),
    Column("length", BigInteger, nullable=False),  # Upload-Length (a Padmé bucket)
    Column("upload_offset", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("completed_at_ms", BigInteger, nullable=True),
    Column("purged", Boolean, nullable=False, default=False),
    Index("ix_attachments_account_created", "account_id", "created_at_ms"),
    Index("ix_attachments_created", "created_at_ms"),
)

#: The ``database`` attachment store: the ciphertext as rows of at most one PATCH each.
attachment_chunks = Table(
    "attachment_chunks",
    metadata,
    Column(
        "attachment_id",
        LargeBinary(ATTACHMENT_ID_SIZE),
        ForeignKey("attachments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("start", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("attachment_id", "start"),
)
