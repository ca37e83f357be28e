"""The aggregates of :class:`~saltline.client_sdk.stores.sqlite.SqliteStore`, one class per Protocol of
:mod:`saltline.client_sdk.stores.base`. Each reads and writes through its store (``_get``/``_get_all``:
``SELECT <columns>, * ...`` so that the whole row is verified; ``_put``/``_delete``: one transaction
per write unless inside :meth:`SqliteStore.transaction`, the row authenticated in it; see
:mod:`saltline.client_sdk.stores.integrity`) and seals the SECRET columns with the store's cipher."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

from saltline.client_sdk.stores.base import (
    ContactRecord,
    ConversationRecord,
    DeviceRecord,
    MessageRecord,
    MessageStatus,
    OutboxItem,
    PendingDelivery,
    PreKeyMeta,
    SessionRecord,
    SyncMeta,
    SyncOpRecord,
    TrustPolicyName,
)

if TYPE_CHECKING:
    from saltline.client_sdk.stores.sqlite import SqliteStore


class _Part:
    __slots__ = ("_s",)

    def __init__(self, store: SqliteStore) -> None:
        self._s = store


class SqliteIdentityStore(_Part):
    def get_device(self) -> DeviceRecord | None:
        s = self._s
        row = s._get(
            "device",
            "SELECT device_id, state, username, account_id, refresh_token, created_at_ms, * FROM device",
        )
        if row is None:
            return None
        device_id = row[0]
        token = s._cipher.open_opt(row[4], "device", "refresh_token", device_id)
        return DeviceRecord(
            device_id=device_id,
            state=s._cipher.open(row[1], "device", "state", device_id),
            username=row[2],
            account_id=row[3],
            refresh_token=None if token is None else token.decode("utf-8"),
            created_at_ms=row[5],
        )

    def put_device(self, record: DeviceRecord) -> None:
        s = self._s
        c = s._cipher
        token = None if record.refresh_token is None else record.refresh_token.encode("utf-8")
        s._put(
            "device",
            "INSERT OR REPLACE INTO device (id, device_id, state, username, account_id, refresh_token, "
            "created_at_ms) VALUES (1, ?, ?, ?, ?, ?, ?)",
            (
                record.device_id,
                c.seal(record.state, "device", "state", record.device_id),
                record.username,
                record.account_id,
                c.seal_opt(token, "device", "refresh_token", record.device_id),
                record.created_at_ms,
            ),
        )


_SELECT_CONTACT = (
    "SELECT account_id, username, account_key, signed_list, trust_policy, verified, pending_account_key, "
    "pending_signed_list, updated_at_ms, * FROM contacts "
)


def _contact(row: Sequence[Any]) -> ContactRecord:
    return ContactRecord(
        account_id=row[0],
        username=row[1],
        account_key=bytes(row[2]),
        signed_list=bytes(row[3]),
        trust_policy=cast(TrustPolicyName, row[4]),
        verified=bool(row[5]),
        pending_account_key=None if row[6] is None else bytes(row[6]),
        pending_signed_list=None if row[7] is None else bytes(row[7]),
        updated_at_ms=row[8],
    )


class SqliteDeviceListStore(_Part):
    def get_contact(self, account_id: str) -> ContactRecord | None:
        row = self._s._get("contacts", _SELECT_CONTACT + "WHERE account_id = ?", (account_id,))
        return None if row is None else _contact(row)

    def get_contact_by_username(self, username: str) -> ContactRecord | None:
        row = self._s._get(
            "contacts",
            _SELECT_CONTACT + "WHERE lower(username) = lower(?) ORDER BY seq LIMIT 1",
            (username,),
        )
        return None if row is None else _contact(row)

    def put_contact(self, r: ContactRecord) -> None:
        self._s._put(
            "contacts",
            "INSERT INTO contacts (account_id, username, account_key, signed_list, trust_policy, verified, "
            "pending_account_key, pending_signed_list, updated_at_ms, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM contacts)) "
            "ON CONFLICT (account_id) DO UPDATE SET username = excluded.username, "
            "account_key = excluded.account_key, signed_list = excluded.signed_list, "
            "trust_policy = excluded.trust_policy, verified = excluded.verified, "
            "pending_account_key = excluded.pending_account_key, "
            "pending_signed_list = excluded.pending_signed_list, updated_at_ms = excluded.updated_at_ms",
            (
                r.account_id,
                r.username,
                r.account_key,
                r.signed_list,
                r.trust_policy,
                int(r.verified),
                r.pending_account_key,
                r.pending_signed_list,
                r.updated_at_ms,
            ),
        )

    def contacts(self) -> Sequence[ContactRecord]:
        return [_contact(row) for row in self._s._get_all("contacts", _SELECT_CONTACT + "ORDER BY seq")]


class SqliteSessionStore(_Part):
    def sessions_for(self, peer_device_id: str) -> Sequence[SessionRecord]:
        s = self._s
        rows = s._get_all(
            "sessions",
            "SELECT base_key, state, peer_account_id, updated_at_ms, * FROM sessions "
            "WHERE peer_device_id = ? ORDER BY updated_at_ms DESC, seq DESC",
            (peer_device_id,),
        )
        return [
            SessionRecord(
                peer_device_id=peer_device_id,
                base_key=bytes(base_key),
                state=s._cipher.open(state, "sessions", "state", peer_device_id, bytes(base_key)),
                peer_account_id=peer_account_id,
                updated_at_ms=updated_at_ms,
            )
            for base_key, state, peer_account_id, updated_at_ms, *_ in rows
        ]

    def put_session(self, r: SessionRecord) -> None:
        s = self._s
        s._put(
            "sessions",
            "INSERT OR REPLACE INTO sessions (peer_device_id, base_key, state, peer_account_id, "
            "updated_at_ms, seq) VALUES (?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM sessions))",
            (
                r.peer_device_id,
                bytes(r.base_key),
                s._cipher.seal(r.state, "sessions", "state", r.peer_device_id, bytes(r.base_key)),
                r.peer_account_id,
                r.updated_at_ms,
            ),
        )

    def delete_sessions(self, peer_device_id: str) -> None:
        self._s._delete("sessions", "peer_device_id = ?", (peer_device_id,))


_SELECT_MESSAGE = (
    "SELECT conversation_id, envelope_id, sender_account_id, sender_device_id, text, sent_at_ms, sent_by_me, "
    "status, server_seq, server_ts_ms, body, * FROM messages "
)


class SqliteConversationStore(_Part):
    def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = self._s._get(
            "conversations",
            "SELECT conversation_id, kind, members, clock, created_at_ms, * FROM conversations "
            "WHERE conversation_id = ?",
            (conversation_id,),
        )
        return None if row is None else self._conversation(row)

    @staticmethod
    def _conversation(row: Sequence[Any]) -> ConversationRecord:
        return ConversationRecord(
            conversation_id=row[0],
            kind=row[1],
            members=tuple(json.loads(row[2])),
            clock=bytes(row[3]),
            created_at_ms=row[4],
        )

    def put_conversation(self, r: ConversationRecord) -> None:
        self._s._put(
            "conversations",
            "INSERT INTO conversations (conversation_id, kind, members, clock, created_at_ms, seq) "
            "VALUES (?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM conversations)) "
            "ON CONFLICT (conversation_id) DO UPDATE SET kind = excluded.kind, members = excluded.members, "
            "clock = excluded.clock, created_at_ms = excluded.created_at_ms",
            (r.conversation_id, r.kind, json.dumps(list(r.members)), bytes(r.clock), r.created_at_ms),
        )

    def conversations(self) -> Sequence[ConversationRecord]:
        return [
            self._conversation(row)
            for row in self._s._get_all(
                "conversations",
                "SELECT conversation_id, kind, members, clock, created_at_ms, * FROM conversations "
                "ORDER BY seq",
            )
        ]

    def _message(self, row: Sequence[Any]) -> MessageRecord:
        c = self._s._cipher
        envelope_id = row[1]
        return MessageRecord(
            conversation_id=row[0],
            envelope_id=envelope_id,
            sender_account_id=row[2],
            sender_device_id=row[3],
            text=c.open(row[4], "messages", "text", envelope_id).decode("utf-8"),
            sent_at_ms=row[5],
            sent_by_me=bool(row[6]),
            status=cast(MessageStatus, row[7]),
            server_seq=row[8],
            server_ts_ms=row[9],
            body=c.open(row[10], "messages", "body", envelope_id),
        )

    def get_message(self, envelope_id: str) -> MessageRecord | None:
        row = self._s._get("messages", _SELECT_MESSAGE + "WHERE envelope_id = ?", (envelope_id,))
        return None if row is None else self._message(row)

    def put_message(self, r: MessageRecord) -> None:
        c = self._s._cipher
        self._s._put(
            "messages",
            "INSERT INTO messages (conversation_id, envelope_id, sender_account_id, sender_device_id, text, "
            "sent_at_ms, sent_by_me, status, server_seq, server_ts_ms, body, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM messages)) "
            "ON CONFLICT (envelope_id) DO UPDATE SET conversation_id = excluded.conversation_id, "
            "sender_account_id = excluded.sender_account_id, sender_device_id = excluded.sender_device_id, "
            "text = excluded.text, sent_at_ms = excluded.sent_at_ms, sent_by_me = excluded.sent_by_me, "
            "status = excluded.status, server_seq = excluded.server_seq, "
            "server_ts_ms = excluded.server_ts_ms, body = excluded.body",
            (
                r.conversation_id,
                r.envelope_id,
                r.sender_account_id,
                r.sender_device_id,
                c.seal(r.text.encode("utf-8"), "messages", "text", r.envelope_id),
                r.sent_at_ms,
                int(r.sent_by_me),
                r.status,
                r.server_seq,
                r.server_ts_ms,
                c.seal(bytes(r.body), "messages", "body", r.envelope_id),
            ),
        )

    def delete_message(self, envelope_id: str) -> None:
        self._s._delete("messages", "envelope_id = ?", (envelope_id,))

    def messages(self, conversation_id: str, *, limit: int = 1000) -> Sequence[MessageRecord]:
        if limit <= 0:
            return []
        # Display order: stored messages by server_seq, then pending ones by sent_at_ms; insertion
        # order breaks ties. The last ``limit``: the newest pending ones, then the newest stored
        # ones before them (both read backwards along an index).
        pending = self._s._get_all(
            "messages",
            _SELECT_MESSAGE + "WHERE conversation_id = ? AND server_seq IS NULL "
            "ORDER BY sent_at_ms DESC, seq DESC LIMIT ?",
            (conversation_id, limit),
        )
        stored = []
        if len(pending) < limit:
            stored = self._s._get_all(
                "messages",
                _SELECT_MESSAGE + "WHERE conversation_id = ? AND server_seq IS NOT NULL "
                "ORDER BY server_seq DESC, seq DESC LIMIT ?",
                (conversation_id, limit - len(pending)),
            )
        rows = pending + stored
        return [self._message(row) for row in reversed(rows)]


class SqliteOutboxStore(_Part):
    _SELECT = (
        "SELECT envelope_id, conversation_id, body, clock, created_at_ms, request, attempts, failed_reason, "
        "failed_status, failed_code, next_attempt_ms, * FROM outbox "
    )

    def _item(self, row: Sequence[Any]) -> OutboxItem:
        c = self._s._cipher
        envelope_id = row[0]
        reason = c.open_opt(row[7], "outbox", "failed_reason", envelope_id)
        return OutboxItem(
            envelope_id=envelope_id,
            conversation_id=row[1],
            body=c.open(row[2], "outbox", "body", envelope_id),
            clock=bytes(row[3]),
            created_at_ms=row[4],
            request=c.open_opt(row[5], "outbox", "request", envelope_id),
            attempts=row[6],
            failed_reason=None if reason is None else reason.decode("utf-8"),
            failed_status=row[8],
            failed_code=row[9],
            next_attempt_ms=row[10],
        )

    def put_outbox(self, item: OutboxItem) -> None:
        c = self._s._cipher
        reason = None if item.failed_reason is None else item.failed_reason.encode("utf-8")
        self._s._put(
            "outbox",
            "INSERT INTO outbox (envelope_id, conversation_id, body, clock, created_at_ms, request, "
            "attempts, failed_reason, failed_status, failed_code, next_attempt_ms, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM outbox)) "
            "ON CONFLICT (envelope_id) DO UPDATE SET conversation_id = excluded.conversation_id, "
            "body = excluded.body, clock = excluded.clock, created_at_ms = excluded.created_at_ms, "
            "request = excluded.request, attempts = excluded.attempts, "
            "failed_reason = excluded.failed_reason, failed_status = excluded.failed_status, "
            "failed_code = excluded.failed_code, next_attempt_ms = excluded.next_attempt_ms",
            (
                item.envelope_id,
                item.conversation_id,
                c.seal(bytes(item.body), "outbox", "body", item.envelope_id),
                bytes(item.clock),
                item.created_at_ms,
                c.seal_opt(item.request, "outbox", "request", item.envelope_id),
                item.attempts,
                c.seal_opt(reason, "outbox", "failed_reason", item.envelope_id),
                item.failed_status,
                item.failed_code,
                item.next_attempt_ms,
            ),
        )

    def get_outbox(self, envelope_id: str) -> OutboxItem | None:
        row = self._s._get("outbox", self._SELECT + "WHERE envelope_id = ?", (envelope_id,))
        return None if row is None else self._item(row)

    def outbox(self) -> Sequence[OutboxItem]:
        return [
            self._item(row)
            for row in self._s._get_all("outbox", self._SELECT + "ORDER BY created_at_ms, seq")
        ]

    def remove_outbox(self, envelope_id: str) -> None:
        self._s._delete("outbox", "envelope_id = ?", (envelope_id,))


class SqliteHandlerInboxStore(_Part):
    def add_pending(self, envelope_id: str, conversation_id: str, added_at_ms: int) -> None:
        self._s._put(
            "handler_inbox",
            "INSERT OR IGNORE INTO handler_inbox (envelope_id, conversation_id, added_at_ms, attempts, seq) "
            "VALUES (?, ?, ?, 0, (SELECT coalesce(max(seq), 0) + 1 FROM handler_inbox))",
            (envelope_id, conversation_id, added_at_ms),
        )

    def pending(self, limit: int = 1000) -> Sequence[PendingDelivery]:
        if limit <= 0:
            return []
        return [
            PendingDelivery(row[0], row[1], row[2], row[3])
            for row in self._s._get_all(
                "handler_inbox",
                "SELECT envelope_id, conversation_id, added_at_ms, attempts, * FROM handler_inbox "
                "ORDER BY added_at_ms, seq LIMIT ?",
                (limit,),
            )
        ]

    def bump_attempts(self, envelope_id: str) -> None:
        self._s._put(
            "handler_inbox",
            "UPDATE handler_inbox SET attempts = attempts + 1 WHERE envelope_id = ?",
            (envelope_id,),
        )

    def remove_pending(self, envelope_id: str) -> None:
        self._s._delete("handler_inbox", "envelope_id = ?", (envelope_id,))


class SqliteCursorStore(_Part):
    def get_acked_queue_seq(self) -> int:
        row = self._s._get("queue_cursor", "SELECT acked_queue_seq, * FROM queue_cursor")
        return 0 if row is None else int(row[0])

    def set_acked_queue_seq(self, queue_seq: int) -> None:
        self._s._put(
            "queue_cursor",
            "INSERT OR REPLACE INTO queue_cursor (id, acked_queue_seq) VALUES (1, ?)",
            (queue_seq,),
        )

    def get_server_seq(self, conversation_id: str) -> int:
        row = self._s._get(
            "server_seqs",
            "SELECT server_seq, * FROM server_seqs WHERE conversation_id = ?",
            (conversation_id,),
        )
        return 0 if row is None else int(row[0])

    def set_server_seq(self, conversation_id: str, server_seq: int) -> None:
        self._s._put(
            "server_seqs",
            "INSERT OR REPLACE INTO server_seqs (conversation_id, server_seq) VALUES (?, ?)",
            (conversation_id, server_seq),
        )


class SqlitePreKeyStore(_Part):
    def get_prekey_meta(self) -> PreKeyMeta:
        row = self._s._get(
            "prekey_meta",
            "SELECT uploaded_through_id, signed_prekey_rotated_at_ms, last_count_check_ms, * "
            "FROM prekey_meta",
        )
        return PreKeyMeta() if row is None else PreKeyMeta(*row[:3])

    def put_prekey_meta(self, meta: PreKeyMeta) -> None:
        self._s._put(
            "prekey_meta",
            "INSERT OR REPLACE INTO prekey_meta (id, uploaded_through_id, signed_prekey_rotated_at_ms, "
            "last_count_check_ms) VALUES (1, ?, ?, ?)",
            (meta.uploaded_through_id, meta.signed_prekey_rotated_at_ms, meta.last_count_check_ms),
        )

    def _tag(self, digest: bytes) -> bytes:
        return self._s._cipher.tag(digest, "seen_base_keys", "tag")

    def has_seen_base_key(self, prekey_id: int, digest: bytes) -> bool:
        row = self._s._get(
            "seen_base_keys",
            "SELECT 1, * FROM seen_base_keys WHERE prekey_id = ? AND tag = ?",
            (prekey_id, self._tag(digest)),
        )
        return row is not None

    def add_seen_base_key(self, prekey_id: int, digest: bytes) -> None:
        tag = self._tag(digest)
        self._s._put(
            "seen_base_keys",
            "INSERT OR IGNORE INTO seen_base_keys (prekey_id, tag) VALUES (?, ?)",
            (prekey_id, tag),
        )

    def drop_seen_base_keys(self, keep_prekey_ids: Collection[int]) -> int:
        keep = {int(i) for i in keep_prekey_ids}
        s = self._s
        with s.transaction():
            conn = s._require_open()
            held = [int(row[0]) for row in conn.execute("SELECT DISTINCT prekey_id FROM seen_base_keys")]
            dropped = 0
            for prekey_id in held:
                if prekey_id not in keep:
                    dropped += s._delete("seen_base_keys", "prekey_id = ?", (prekey_id,))
            return dropped


class SqliteSyncStore(_Part):
    def get_sync_meta(self, conversation_id: str) -> SyncMeta | None:
        row = self._s._get(
            "sync_meta",
            "SELECT conversation_id, counter, lamport, floor_seq, floor_clock, members, * FROM sync_meta "
            "WHERE conversation_id = ?",
            (conversation_id,),
        )
        if row is None:
            return None
        snapshot = json.loads(row[5])
        if isinstance(snapshot, list):  # before admins and kind were kept
            snapshot = {"members": snapshot}
        return SyncMeta(
            row[0],
            row[1],
            row[2],
            row[3],
            bytes(row[4]),
            tuple(snapshot.get("members", ())),
            tuple(snapshot.get("admins", ())),
            str(snapshot.get("kind", "")),
            tuple((str(d), int(n), int(lam), v) for d, n, lam, v in snapshot.get("timers", ())),
            tuple((str(d), int(n), int(at)) for d, n, at in snapshot.get("expiring", ())),
        )

    def put_sync_meta(self, meta: SyncMeta) -> None:
        self._s._put(
            "sync_meta",
            "INSERT OR REPLACE INTO sync_meta (conversation_id, counter, lamport, floor_seq, floor_clock, "
            "members) VALUES (?, ?, ?, ?, ?, ?)",
            (
                meta.conversation_id,
                meta.counter,
                meta.lamport,
                meta.floor_seq,
                bytes(meta.floor_clock),
                json.dumps(
                    {
                        "members": list(meta.members),
                        "admins": list(meta.admins),
                        "kind": meta.kind,
                        "timers": [list(t) for t in meta.timers],
                        "expiring": [list(e) for e in meta.expiring],
                    }
                ),
            ),
        )

    def put_sync_op(self, r: SyncOpRecord) -> None:
        c = self._s._cipher
        self._s._put(
            "sync_ops",
            "INSERT OR REPLACE INTO sync_ops (conversation_id, server_seq, envelope_id, sender_account_id, "
            "sender_device_id, clock, plaintext) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                r.conversation_id,
                r.server_seq,
                r.envelope_id,
                r.sender_account_id,
                r.sender_device_id,
                bytes(r.clock),
                c.seal(bytes(r.plaintext), "sync_ops", "plaintext", r.conversation_id, str(r.server_seq)),
            ),
        )

    def sync_ops(self, conversation_id: str) -> Sequence[SyncOpRecord]:
        c = self._s._cipher
        return [
            SyncOpRecord(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                bytes(row[5]),
                c.open(row[6], "sync_ops", "plaintext", row[0], str(row[1])),
            )
            for row in self._s._get_all(
                "sync_ops",
                "SELECT conversation_id, server_seq, envelope_id, sender_account_id, sender_device_id, "
                "clock, plaintext, * FROM sync_ops WHERE conversation_id = ? ORDER BY server_seq",
                (conversation_id,),
            )
        ]

    def get_setting(self, name: str) -> str | None:
        row = self._s._get("settings", "SELECT value, * FROM settings WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def put_setting(self, name: str, value: str) -> None:
        self._s._put("settings", "INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, value))
