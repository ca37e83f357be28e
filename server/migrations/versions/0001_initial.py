"""Accounts, devices, signed device lists, prekeys, refresh tokens, login challenges,
provisioning channels.

Revision ID: 0001_initial
Revises:
Create Date: 2024-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("username_lower", sa.String(32), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("account_key", sa.LargeBinary(34), nullable=False),
        sa.Column("device_list_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("username_lower", name="uq_accounts_username_lower"),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("signing_key", sa.LargeBinary(34), nullable=False),
        sa.Column("dh_key", sa.LargeBinary(34), nullable=False),
        sa.Column("added_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("removed_at_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_devices_account_id_accounts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_devices"),
    )
    op.create_index("ix_devices_account_id", "devices", ["account_id"])
    op.create_table(
        "device_lists",
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("list_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_device_lists_account_id_accounts", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("account_id", "version", name="uq_device_lists_account_id_version"),
    )
    op.create_table(
        "prekeys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("key_id", sa.BigInteger(), nullable=False),
        sa.Column("encoded", sa.LargeBinary(102), nullable=False),
        sa.Column("uploaded_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name="fk_prekeys_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_prekeys"),
        sa.UniqueConstraint("device_id", "kind", "key_id", name="uq_prekeys_device_id_kind_key_id"),
    )
    op.create_index("ix_prekeys_device_id_kind", "prekeys", ["device_id", "kind"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("family_id", sa.LargeBinary(16), nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("issued_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name="fk_refresh_tokens_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_refresh_tokens"),
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"])
    op.create_index("ix_refresh_tokens_device_id", "refresh_tokens", ["device_id"])
    op.create_table(
        "login_challenges",
        sa.Column("nonce", sa.LargeBinary(32), nullable=False),
        sa.Column("username_lower", sa.String(32), nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name="pk_login_challenges"),
    )
    op.create_table(
        "provisioning_channels",
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_provisioning_channels"),
    )


def downgrade() -> None:
    op.drop_table("provisioning_channels")
    op.drop_table("login_challenges")
    op.drop_index("ix_refresh_tokens_device_id", table_name="refresh_tokens")
    op.drop_index("ix_refresh_tokens_family_id", table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index("ix_prekeys_device_id_kind", table_name="prekeys")
    op.drop_table("prekeys")
    op.drop_table("device_lists")
    op.drop_index("ix_devices_account_id", table_name="devices")
    op.drop_table("devices")
    op.drop_table("accounts")
