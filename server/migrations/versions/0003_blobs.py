"""Blobs: encrypted uploads (history bundles for newly linked devices), ciphertext only.

Revision ID: 0003_blobs
Revises: 0002_delivery
Create Date: 2024-01-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_blobs"
down_revision: str | None = "0002_delivery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_blobs_account_id_accounts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_blobs"),
    )


def downgrade() -> None:
    op.drop_table("blobs")
