"""In-memory implementation of every store Protocol (tests, examples).

Transactions snapshot the dictionaries on entry and restore them if the block raises, so the
rollback semantics match a database's. A "restart" is simulated by closing the client and
creating a new one over the same :class:`MemoryStore` object.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from client_sdk.errors import StoreLockedError
from client_sdk.stores.base import (
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


class _Data:
    """All state of a memory store (copied for transaction snapshots)."""

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
        self.tick = 0  # insertion order

    def snapshot(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name, value in state.items():
            if isinstance(value, dict):
                state[name] = {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

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
        self._data.device = record


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
        self._data.contacts[record.account_id] = record

    def contacts(self) -> Sequence[ContactRecord]:
        return list(self._data.contacts.values())


class MemorySessionStore(_Part):
    def sessions_for(self, peer_device_id: str) -> Sequence[SessionRecord]:
        entries = self._data.sessions.get(peer_device_id, {})
        ordered = sorted(entries.values(), key=lambda e: (e[1].updated_at_ms, e[0]), reverse=True)
        return [record for _, record in ordered]

    def put_session(self, record: SessionRecord) -> None:
        self._data.sessions.setdefault(record.peer_device_id, {})[record.base_key] = (
            self._data.next_tick(),
            record,
        )

    def delete_sessions(self, peer_device_id: str) -> None:
        self._data.sessions.pop(peer_device_id, None)


class MemoryConversationStore(_Part):
    def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        return self._data.conversations.get(conversation_id)

    def put_conversation(self, record: ConversationRecord) -> None:
        self._data.conversations[record.conversation_id] = record

    def conversations(self) -> Sequence[ConversationRecord]:
        return list(self._data.conversations.values())

    def get_message(self, envelope_id: str) -> MessageRecord | None:
        entry = self._data.messages.get(envelope_id)
        return None if entry is None else entry[1]

    def put_message(self, record: MessageRecord) -> None:
        old = self._data.messages.get(record.envelope_id)
        tick = old[0] if old is not None else self._data.next_tick()
        self._data.messages[record.envelope_id] = (tick, record)

    def delete_message(self, envelope_id: str) -> None:
        self._data.messages.pop(envelope_id, None)

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
        self._data.outbox[item.envelope_id] = (tick, item)

    def get_outbox(self, envelope_id: str) -> OutboxItem | None:
        entry = self._data.outbox.get(envelope_id)
        return None if entry is None else entry[1]

    def outbox(self) -> Sequence[OutboxItem]:
        ordered = sorted(self._data.outbox.values(), key=lambda e: (e[1].created_at_ms, e[0]))
        return [item for _, item in ordered]

    def remove_outbox(self, envelope_id: str) -> None:
        self._data.outbox.pop(envelope_id, None)


class MemoryCursorStore(_Part):
    def get_acked_queue_seq(self) -> int:
        return self._data.acked_queue_seq

    def set_acked_queue_seq(self, queue_seq: int) -> None:
        self._data.acked_queue_seq = queue_seq

    def get_server_seq(self, conversation_id: str) -> int:
        return self._data.server_seqs.get(conversation_id, 0)

    def set_server_seq(self, conversation_id: str, server_seq: int) -> None:
        self._data.server_seqs[conversation_id] = server_seq


class MemoryPreKeyStore(_Part):
    def get_prekey_meta(self) -> PreKeyMeta:
        return self._data.prekey_meta

    def put_prekey_meta(self, meta: PreKeyMeta) -> None:
        self._data.prekey_meta = meta

    def has_seen_base_key(self, prekey_id: int, digest: bytes) -> bool:
        return (prekey_id, bytes(digest)) in self._data.seen_base_keys

    def add_seen_base_key(self, prekey_id: int, digest: bytes) -> None:
        self._data.seen_base_keys[(prekey_id, bytes(digest))] = None

    def drop_seen_base_keys(self, keep_prekey_ids: Collection[int]) -> int:
        keep = set(keep_prekey_ids)
        before = self._data.seen_base_keys
        self._data.seen_base_keys = {k: None for k in before if k[0] in keep}
        return len(before) - len(self._data.seen_base_keys)


class MemorySyncStore(_Part):
    def get_sync_meta(self, conversation_id: str) -> SyncMeta | None:
        return self._data.sync_meta.get(conversation_id)

    def put_sync_meta(self, meta: SyncMeta) -> None:
        self._data.sync_meta[meta.conversation_id] = meta

    def put_sync_op(self, record: SyncOpRecord) -> None:
        self._data.sync_ops.setdefault(record.conversation_id, {})[record.server_seq] = record

    def sync_ops(self, conversation_id: str) -> Sequence[SyncOpRecord]:
        ops = self._data.sync_ops.get(conversation_id, {})
        return [ops[seq] for seq in sorted(ops)]

    def get_setting(self, name: str) -> str | None:
        return self._data.settings.get(name)

    def put_setting(self, name: str, value: str) -> None:
        self._data.settings[name] = value


class MemoryHandlerInboxStore(_Part):
    def add_pending(self, envelope_id: str, conversation_id: str, added_at_ms: int) -> None:
        if envelope_id not in self._data.handler_inbox:
            self._data.handler_inbox[envelope_id] = (
                self._data.next_tick(),
                PendingDelivery(envelope_id, conversation_id, added_at_ms),
            )

    def pending(self, limit: int = 1000) -> Sequence[PendingDelivery]:
        if limit <= 0:
            return []
        ordered = sorted(self._data.handler_inbox.values(), key=lambda e: (e[1].added_at_ms, e[0]))
        return [entry for _, entry in ordered[:limit]]

    def bump_attempts(self, envelope_id: str) -> None:
        old = self._data.handler_inbox.get(envelope_id)
        if old is not None:
            tick, entry = old
            self._data.handler_inbox[envelope_id] = (tick, replace(entry, attempts=entry.attempts + 1))

    def remove_pending(self, envelope_id: str) -> None:
        self._data.handler_inbox.pop(envelope_id, None)


class MemoryStore:
    """A :class:`~client_sdk.stores.base.Store` that lives in this process only."""

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
        snapshot = self._data.snapshot() if self._depth == 0 else None
        self._depth += 1
        try:
            yield
        except BaseException:
            if snapshot is not None:
                self._data.restore(snapshot)
            raise
        finally:
            self._depth -= 1

    def acquire(self) -> None:
        if self._locked:
            raise StoreLockedError("this store is already open in another client; close that client first")
        self._locked = True

    def release(self) -> None:
        self._locked = False
