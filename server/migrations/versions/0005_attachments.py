"""Attachments (issue 14): resumable uploads of padded ciphertext, and the chunk rows of the
``database`` attachment store.

Revision ID: 0005_attachments
Revises: 0004_linking
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_attachments"
down_revision: str | None = "0004_linking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("id", sa.LargeBinary(32), nullable=False),
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("upload_offset", sa.BigInteger(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("completed_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("purged", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_attachments_account_id_accounts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_attachments"),
    )
    op.create_index("ix_attachments_account_created", "attachments", ["account_id", "created_at_ms"])
    op.create_index("ix_attachments_created", "attachments", ["created_at_ms"])
    op.create_table(
        "attachment_chunks",
        sa.Column("attachment_id", sa.LargeBinary(32), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["attachment_id"],
            ["attachments.id"],
            name="fk_attachment_chunks_attachment_id_attachments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("attachment_id", "start", name="pk_attachment_chunks"),
    )


def downgrade() -> None:
    op.drop_table("attachment_chunks")
    op.drop_index("ix_attachments_created", table_name="attachments")
    op.drop_index("ix_attachments_account_created", table_name="attachments")
    op.drop_table("attachments")
