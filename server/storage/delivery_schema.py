"""Delivery tables: conversations, envelopes, per-device ciphertext copies and device queues.

Defined on the shared :data:`saltline.server.storage.schema.metadata`; created by migration ``0002_delivery``.

How the tables fit (docs/protocol/delivery.md §§ 2 and 4):

- ``conversations`` / ``conversation_members``: routing metadata the server must see (who is in a
  conversation). ``last_server_seq`` is the conversation's counter; the writer bumps it inside the
  transaction that inserts the envelopes, so ``server_seq`` is gap-free per conversation.
- ``envelopes``: one row per accepted (non-ephemeral) send: sender, the sender's opaque vector clock,
  ``server_seq``/``server_ts_ms``, the client-chosen ``envelope_id`` (unique per sending device: the
  idempotency key) and the SHA-256 of the request (``request_hash``) so that a retry with a different
  body is told apart from a genuine retry.
- ``envelope_copies``: the ciphertext addressed to one recipient device (one row per recipient).
  Stored once; both the device queue and gap filling (``GET .../envelopes?after=``) read it.
- ``device_queue``: the per-device queue, a pointer ``(device_id, queue_seq) -> (conversation,
  server_seq)``. Rows are deleted when the device acknowledges them (cumulative ``queue_seq``).
- ``device_queue_state``: per device, the last allocated ``queue_seq`` (allocated under a row lock
  in the sending transaction, so a device's queue_seqs become visible in increasing order even with
  several server instances), the acknowledged watermark and the retention-purged watermark. A device
  whose ``purged_through`` is above its ``acked_through`` lost entries to retention and is told so
  with an explicit gap marker.

Times are integer Unix milliseconds; binary ids are ``LargeBinary(16)`` (base64url on the wire).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
)

from saltline.server.storage.schema import HASH_SIZE, ID_SIZE, metadata

conversations = Table(
    "conversations",
    metadata,
    Column("id", LargeBinary(ID_SIZE), primary_key=True),
    Column("kind", String(8), nullable=False),  # "direct" | "group"
    # For direct conversations: the two account ids, sorted and concatenated, so that a pair has
    # at most one direct conversation. NULL for groups.
    Column("direct_key", LargeBinary(2 * ID_SIZE), nullable=True, unique=True),
    Column("created_by", LargeBinary(ID_SIZE), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("last_server_seq", BigInteger, nullable=False, default=0),
)

conversation_members = Table(
    "conversation_members",
    metadata,
    Column(
        "conversation_id",
        LargeBinary(ID_SIZE),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "account_id", LargeBinary(ID_SIZE), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("added_at_ms", BigInteger, nullable=False),
    Index("ix_conversation_members_account_id", "account_id"),
)

envelopes = Table(
    "envelopes",
    metadata,
    Column(
        "conversation_id",
        LargeBinary(ID_SIZE),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("server_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("envelope_id", LargeBinary(ID_SIZE), nullable=False),
    Column("sender_account_id", LargeBinary(ID_SIZE), nullable=False),
    Column("sender_device_id", LargeBinary(ID_SIZE), nullable=False),
    Column("server_ts_ms", BigInteger, nullable=False),
    Column("clock", LargeBinary, nullable=False),  # opaque to the server (bound into the AEAD)
    Column("request_hash", LargeBinary(HASH_SIZE), nullable=False),
    UniqueConstraint("sender_device_id", "envelope_id"),
    Index("ix_envelopes_server_ts_ms", "server_ts_ms"),
)

envelope_copies = Table(
    "envelope_copies",
    metadata,
    Column("conversation_id", LargeBinary(ID_SIZE), primary_key=True),
    Column("server_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("device_id", LargeBinary(ID_SIZE), primary_key=True),
    Column("ciphertext", LargeBinary, nullable=False),
)

device_queue = Table(
    "device_queue",
    metadata,
    Column("device_id", LargeBinary(ID_SIZE), primary_key=True),
    Column("queue_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("conversation_id", LargeBinary(ID_SIZE), nullable=False),
    Column("server_seq", BigInteger, nullable=False),
    Column("enqueued_at_ms", BigInteger, nullable=False),
    Index("ix_device_queue_enqueued_at_ms", "enqueued_at_ms"),
)

device_queue_state = Table(
    "device_queue_state",
    metadata,
    Column("device_id", LargeBinary(ID_SIZE), primary_key=True),
    Column("last_queue_seq", BigInteger, nullable=False, default=0),
    Column("acked_through", BigInteger, nullable=False, default=0),
    Column("purged_through", BigInteger, nullable=False, default=0),
)

DELIVERY_TABLES = (
    conversations,
    conversation_members,
    envelopes,
    envelope_copies,
    device_queue,
    device_queue_state,
)
