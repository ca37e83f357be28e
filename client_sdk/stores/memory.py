"""In-memory implementation of every store Protocol (tests, examples).

Inside a transaction every write records how to undo it (an undo log, in the spirit of a
database's rollback journal); if the block raises, the log is replayed backwards, so the rollback
semantics match a database's at a cost proportional to what the transaction wrote (not to the size
of the store). A "restart" is simulated by closing the client and
creating a new one over the same :class:`MemoryStore` object.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from saltline.client_sdk.errors import StoreLockedError
from saltline.client_sdk.stores.base import (
    ContactRecord,
    ConversationRecord,
    DeviceRecord,
    MessageRecord,
    OutboxItem,
    PendingDelivery,
    PreKeyMeta,
    SessionRecord,
    SyncMeta,
    SyncOpRecord,
)

_MISSING = object()


class _Data:
    """All state of a memory store. Every write goes through :meth:`set_item`, :meth:`pop_item` or
    :meth:`set_field` so that a transaction can undo it."""

    def __init__(self) -> None:
        self.device: DeviceRecord | None = None
        self.contacts: dict[str, ContactRecord] = {}
        self.sessions: dict[str, dict[bytes, tuple[int, SessionRecord]]] = {}
        self.conversations: dict[str, ConversationRecord] = {}
        self.messages: dict[str, tuple[int, MessageRecord]] = {}
        self.outbox: dict[str, tuple[int, OutboxItem]] = {}
        self.acked_queue_seq = 0
        self.server_seqs: dict[str, int] = {}
        self.prekey_meta = PreKeyMeta()
        self.seen_base_keys: dict[tuple[int, bytes], None] = {}
        self.sync_meta: dict[str, SyncMeta] = {}
        self.sync_ops: dict[str, dict[int, SyncOpRecord]] = {}
        self.settings: dict[str, str] = {}
        self.handler_inbox: dict[str, tuple[int, PendingDelivery]] = {}
        self.tick = 0  # insertion order (not rolled back: only the order matters)
        #: The open transaction's undo log: (table, key, old value or _MISSING), or (None, field,
        #: old value) for a plain field.
        self.undo: list[tuple[dict[Any, Any] | None, Any, Any]] | None = None

    # -- writes (recorded in the undo log while a transaction is open) ------------------------------

    def set_item(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        if self.undo is not None:
            self.undo.append((table, key, table.get(key, _MISSING)))
        table[key] = value

    def pop_item(self, table: dict[Any, Any], key: Any) -> None:
        if key in table:
            if self.undo is not None:
                self.undo.append((table, key, table[key]))
            del table[key]

    def set_field(self, name: str, value: Any) -> None:
        if self.undo is not None:
            self.undo.append((None, name, getattr(self, name)))
        setattr(self, name, value)

    def rollback(self, undo: list[tuple[dict[Any, Any] | None, Any, Any]]) -> None:
        for table, key, old in reversed(undo):
            if table is None:
                setattr(self, key, old)
            elif old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old

    def next_tick(self) -> int:
        self.tick += 1
        return self.tick


class _Part:
    __slots__ = ("_data",)

    def __init__(self, data: _Data) -> None:
        self._data = data


class MemoryIdentityStore(_Part):
    def get_device(self) -> DeviceRecord | None:
        return self._data.device

    def put_device(self, record: DeviceRecord) -> None:
        self._data.set_field("device", record)


class MemoryDeviceListStore(_Part):
    def get_contact(self, account_id: str) -> ContactRecord | None:
        return self._data.contacts.get(account_id)

    def get_contact_by_username(self, username: str) -> ContactRecord | None:
        wanted = username.lower()
        for record in self._data.contacts.values():
            if record.username == wanted:
                return record
        return None

    def put_contact(self, record: ContactRecord) -> None:
        self._data.set_item(self._data.contacts, record.account_id, record)

    def contacts(self) -> Sequence[ContactRecord]:
        return list(self._data.contacts.values())


class MemorySessionStore(_Part):
    def sessions_for(self, peer_device_id: str) -> Sequence[SessionRecord]:
        entries = self._data.sessions.get(peer_device_id, {})
        ordered = sorted(entries.values(), key=lambda e: (e[1].updated_at_ms, e[0]), reverse=True)
        return [record for _, record in ordered]

    def put_session(self, record: SessionRecord) -> None:
        data = self._data
        peer = data.sessions.get(record.peer_device_id)
        if peer is None:
            peer = {}
            data.set_item(data.sessions, record.peer_device_id, peer)
        data.set_item(peer, record.base_key, (data.next_tick(), record))

    def delete_sessions(self, peer_device_id: str) -> None:
        self._data.pop_item(self._data.sessions, peer_device_id)


class MemoryConversationStore(_Part):
    def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        return self._data.conversations.get(conversation_id)

    def put_conversation(self, record: ConversationRecord) -> None:
        self._data.set_item(self._data.conversations, record.conversation_id, record)

    def conversations(self) -> Sequence[ConversationRecord]:
        return list(self._data.conversations.values())

    def get_message(self, envelope_id: str) -> MessageRecord | None:
        entry = self._data.messages.get(envelope_id)
        return None if entry is None else entry[1]

    def put_message(self, record: MessageRecord) -> None:
        old = self._data.messages.get(record.envelope_id)
        tick = old[0] if old is not None else self._data.next_tick()
        self._data.set_item(self._data.messages, record.envelope_id, (tick, record))

    def delete_message(self, envelope_id: str) -> None:
        self._data.pop_item(self._data.messages, envelope_id)

    def messages(self, conversation_id: str, *, limit: int = 1000) -> Sequence[MessageRecord]:
        rows = [e for e in self._data.messages.values() if e[1].conversation_id == conversation_id]
        stored = sorted((e for e in rows if e[1].server_seq is not None), key=lambda e: e[1].server_seq or 0)
        pending = sorted((e for e in rows if e[1].server_seq is None), key=lambda e: (e[1].sent_at_ms, e[0]))
        everything = [record for _, record in (*stored, *pending)]
        return everything[-limit:] if limit > 0 else []


class MemoryOutboxStore(_Part):
    def put_outbox(self, item: OutboxItem) -> None:
        old = self._data.outbox.get(item.envelope_id)
        tick = old[0] if old is not None else self._data.next_tick()
        self._data.set_item(self._data.outbox, item.envelope_id, (tick, item))

    def get_outbox(self, envelope_id: str) -> OutboxItem | None:
        entry = self._data.outbox.get(envelope_id)
        return None if entry is None else entry[1]

    def outbox(self) -> Sequence[OutboxItem]:
        ordered = sorted(self._data.outbox.values(), key=lambda e: (e[1].created_at_ms, e[0]))
        return [item for _, item in ordered]

    def remove_outbox(self, envelope_id: str) -> None:
        self._data.pop_item(self._data.outbox, envelope_id)


class MemoryCursorStore(_Part):
    def get_acked_queue_seq(self) -> int:
        return self._data.acked_queue_seq

    def set_acked_queue_seq(self, queue_seq: int) -> None:
        self._data.set_field("acked_queue_seq", queue_seq)

    def get_server_seq(self, conversation_id: str) -> int:
        return self._data.server_seqs.get(conversation_id, 0)

    def set_server_seq(self, conversation_id: str, server_seq: int) -> None:
        self._data.set_item(self._data.server_seqs, conversation_id, server_seq)


class MemoryPreKeyStore(_Part):
    def get_prekey_meta(self) -> PreKeyMeta:
        return self._data.prekey_meta

    def put_prekey_meta(self, meta: PreKeyMeta) -> None:
        self._data.set_field("prekey_meta", meta)

    def has_seen_base_key(self, prekey_id: int, digest: bytes) -> bool:
        return (prekey_id, bytes(digest)) in self._data.seen_base_keys

    def add_seen_base_key(self, prekey_id: int, digest: bytes) -> None:
        self._data.set_item(self._data.seen_base_keys, (prekey_id, bytes(digest)), None)

    def drop_seen_base_keys(self, keep_prekey_ids: Collection[int]) -> int:
        keep = set(keep_prekey_ids)
        before = self._data.seen_base_keys
        self._data.set_field("seen_base_keys", {k: None for k in before if k[0] in keep})
        return len(before) - len(self._data.seen_base_keys)


class MemorySyncStore(_Part):
    def get_sync_meta(self, conversation_id: str) -> SyncMeta | None:
        return self._data.sync_meta.get(conversation_id)

    def put_sync_meta(self, meta: SyncMeta) -> None:
        self._data.set_item(self._data.sync_meta, meta.conversation_id, meta)

    def put_sync_op(self, record: SyncOpRecord) -> None:
        data = self._data
        ops = data.sync_ops.get(record.conversation_id)
        if ops is None:
            ops = {}
            data.set_item(data.sync_ops, record.conversation_id, ops)
        data.set_item(ops, record.server_seq, record)

    def sync_ops(self, conversation_id: str) -> Sequence[SyncOpRecord]:
        ops = self._data.sync_ops.get(conversation_id, {})
        return [ops[seq] for seq in sorted(ops)]

    def get_setting(self, name: str) -> str | None:
        return self._data.settings.get(name)

    def put_setting(self, name: str, value: str) -> None:
        self._data.set_item(self._data.settings, name, value)


class MemoryHandlerInboxStore(_Part):
    def add_pending(self, envelope_id: str, conversation_id: str, added_at_ms: int) -> None:
        if envelope_id not in self._data.handler_inbox:
            entry = (self._data.next_tick(), PendingDelivery(envelope_id, conversation_id, added_at_ms))
            self._data.set_item(self._data.handler_inbox, envelope_id, entry)

    def pending(self, limit: int = 1000) -> Sequence[PendingDelivery]:
        if limit <= 0:
            return []
        ordered = sorted(self._data.handler_inbox.values(), key=lambda e: (e[1].added_at_ms, e[0]))
        return [entry for _, entry in ordered[:limit]]

    def bump_attempts(self, envelope_id: str) -> None:
        old = self._data.handler_inbox.get(envelope_id)
        if old is not None:
            tick, entry = old
            bumped = (tick, replace(entry, attempts=entry.attempts + 1))
            self._data.set_item(self._data.handler_inbox, envelope_id, bumped)

    def remove_pending(self, envelope_id: str) -> None:
        self._data.pop_item(self._data.handler_inbox, envelope_id)


class MemoryStore:
    """A :class:`~saltline.client_sdk.stores.base.Store` that lives in this process only."""

    def __init__(self) -> None:
        self._data = _Data()
        self._depth = 0
        self._locked = False
        self.identity = MemoryIdentityStore(self._data)
        self.device_lists = MemoryDeviceListStore(self._data)
        self.sessions = MemorySessionStore(self._data)
        self.conversations = MemoryConversationStore(self._data)
        self.outbox = MemoryOutboxStore(self._data)
        self.cursors = MemoryCursorStore(self._data)
        self.prekeys = MemoryPreKeyStore(self._data)
        self.sync = MemorySyncStore(self._data)
        self.handler_inbox = MemoryHandlerInboxStore(self._data)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Nested calls join the outermost transaction, as in the SQLite store."""
        data = self._data
        outer = self._depth == 0
        if outer:
            data.undo = []
        self._depth += 1
        try:
            yield
        except BaseException:
            if outer and data.undo is not None:
                data.rollback(data.undo)
            raise
        finally:
            self._depth -= 1
            if outer:
                data.undo = None

    def acquire(self) -> None:
        if self._locked:
            raise StoreLockedError("this store is already open in another client; close that client first")
        self._locked = True

    def release(self) -> None:
        self._locked = False
