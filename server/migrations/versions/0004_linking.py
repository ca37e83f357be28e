"""Linking that cannot be phished (issue 12): split provisioning secrets with a one-slot mailbox,
one-time device grants, sealed account-key handoffs and encrypted device names.

Provisioning channels live for minutes and carry only ciphertext, so the table is recreated
(not altered): SQLite cannot drop a column without a table copy, and a channel open during the
upgrade is simply gone (its devices start linking again).

Revision ID: 0004_linking
Revises: 0003_blobs
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004_linking"
down_revision: str | None = "0003_blobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _provisioning(*secret_columns: sa.Column[Any]) -> None:
    op.create_table(
        "provisioning_channels",
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        *secret_columns,
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_provisioning_channels"),
    )


def upgrade() -> None:
    op.drop_table("provisioning_channels")
    _provisioning(
        sa.Column("put_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("take_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("put_count", sa.Integer(), nullable=False),
    )
    op.create_table(
        "device_grants",
        sa.Column("grant_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("signing_key", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_device_grants_account_id_accounts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("grant_hash", name="pk_device_grants"),
    )
    op.create_index("ix_device_grants_account_id", "device_grants", ["account_id"])
    op.create_table(
        "key_handoffs",
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_key_handoffs_account_id_accounts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", "version", name="pk_key_handoffs"),
    )
    op.create_index("ix_key_handoffs_account_id", "key_handoffs", ["account_id"])
    op.create_table(
        "device_names",
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name="fk_device_names_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_names"),
    )


def downgrade() -> None:
    op.drop_table("device_names")
    op.drop_index("ix_key_handoffs_account_id", table_name="key_handoffs")
    op.drop_table("key_handoffs")
    op.drop_index("ix_device_grants_account_id", table_name="device_grants")
    op.drop_table("device_grants")
    op.drop_table("provisioning_channels")
    _provisioning(sa.Column("secret_hash", sa.LargeBinary(32), nullable=False))
