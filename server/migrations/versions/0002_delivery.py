"""Delivery: conversations, members, envelopes, per-device ciphertext copies, device queues.

Revision ID: 0002_delivery
Revises: 0001_initial
Create Date: 2024-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_delivery"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("direct_key", sa.LargeBinary(32), nullable=True),
        sa.Column("created_by", sa.LargeBinary(16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_server_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("direct_key", name="uq_conversations_direct_key"),
    )
    op.create_table(
        "conversation_members",
        sa.Column("conversation_id", sa.LargeBinary(16), nullable=False),
        sa.Column("account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("added_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_conversation_members_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_conversation_members_account_id_accounts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("conversation_id", "account_id", name="pk_conversation_members"),
    )
    op.create_index("ix_conversation_members_account_id", "conversation_members", ["account_id"])
    op.create_table(
        "envelopes",
        sa.Column("conversation_id", sa.LargeBinary(16), nullable=False),
        sa.Column("server_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("envelope_id", sa.LargeBinary(16), nullable=False),
        sa.Column("sender_account_id", sa.LargeBinary(16), nullable=False),
        sa.Column("sender_device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("server_ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("clock", sa.LargeBinary(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_envelopes_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "server_seq", name="pk_envelopes"),
        sa.UniqueConstraint("sender_device_id", "envelope_id", name="uq_envelopes_sender_device_id_envelope_id"),
    )
    op.create_index("ix_envelopes_server_ts_ms", "envelopes", ["server_ts_ms"])
    op.create_table(
        "envelope_copies",
        sa.Column("conversation_id", sa.LargeBinary(16), nullable=False),
        sa.Column("server_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "server_seq", "device_id", name="pk_envelope_copies"),
    )
    op.create_table(
        "device_queue",
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("queue_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("conversation_id", sa.LargeBinary(16), nullable=False),
        sa.Column("server_seq", sa.BigInteger(), nullable=False),
        sa.Column("enqueued_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "queue_seq", name="pk_device_queue"),
    )
    op.create_index("ix_device_queue_enqueued_at_ms", "device_queue", ["enqueued_at_ms"])
    op.create_table(
        "device_queue_state",
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("last_queue_seq", sa.BigInteger(), nullable=False),
        sa.Column("acked_through", sa.BigInteger(), nullable=False),
        sa.Column("purged_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_queue_state"),
    )


def downgrade() -> None:
    op.drop_table("device_queue_state")
    op.drop_index("ix_device_queue_enqueued_at_ms", table_name="device_queue")
    op.drop_table("device_queue")
    op.drop_table("envelope_copies")
    op.drop_index("ix_envelopes_server_ts_ms", table_name="envelopes")
    op.drop_table("envelopes")
    op.drop_index("ix_conversation_members_account_id", table_name="conversation_members")
    op.drop_table("conversation_members")
    op.drop_table("conversations")
