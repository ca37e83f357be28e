"""Encrypting an outbox item for every device of the conversation's verified device lists: a
session that can send and binds the listed device, else a claimed prekey bundle (a new session).
The outbound facet (:mod:`saltline.client_sdk.facets.outbound`) calls it before the first send
attempt of an item and for each typing indicator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import api, sync, trust, wire
from saltline.client_sdk.core import message as msg
from saltline.client_sdk.errors import ProtocolError, UntrustedDeviceListError
from saltline.client_sdk.facets.conversations import decode_op
from saltline.client_sdk.stores.base import OutboxItem, SessionRecord
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import DeviceDHPublicKey, DeviceSigningPublicKey, PreKeyPublic, b64decode
from saltline.crypto.ratchet import Session
from saltline.crypto.x3dh import PreKeyBundle

if TYPE_CHECKING:
    from saltline.client_sdk.facets.contacts import Contacts
    from saltline.client_sdk.facets.conversations import Conversations


def _bundle(b: api.BundleInfo) -> PreKeyBundle:
    try:
        return PreKeyBundle(
            b64decode(b.device_id),
            DeviceSigningPublicKey.decode(b64decode(b.signing_key)),
            DeviceDHPublicKey.decode(b64decode(b.dh_key)),
            PreKeyPublic.from_b64(b.signed_prekey),
            None if b.one_time_prekey is None else PreKeyPublic.from_b64(b.one_time_prekey),
        )
    except CryptoError as exc:
        raise UntrustedDeviceListError(
            f"the server sent a malformed bundle for device {b.device_id}"
        ) from exc


class OutboundEncryption:
    def __init__(
        self,
        ctx: DeviceContext,
        contacts: Contacts,
        conversations: Conversations,
        composed: Mapping[str, sync.Op],
    ) -> None:
        self.ctx = ctx
        self.contacts = contacts
        self.conversations = conversations
        #: The outbound facet's operations composed and not yet sent, by envelope id (saves
        #: decoding the stored plaintext again).
        self._composed = composed

    async def encrypt_item(self, item: OutboxItem) -> OutboxItem:
        """Encrypt for every device of the verified lists; persist the advanced sessions and the
        exact request body together (so a retry resends the same bytes)."""
        body, sessions = await self.encrypt_request(item)
        item = replace(item, request=wire.canonical_json(body))
        with self.ctx.transaction():
            for record, session in sessions:
                self.ctx.put_session(record, session)
            self.ctx.store.outbox.put_outbox(item)
        return item

    async def encrypt_request(
        self, item: OutboxItem, *, ephemeral: bool = False
    ) -> tuple[dict[str, Any], list[tuple[SessionRecord, Session]]]:
        """The send request's body for ``item`` and the sessions it advanced (not yet stored)."""
        ctx = self.ctx
        record = await self.conversations.record(item.conversation_id)
        op = self._composed.get(item.envelope_id) or decode_op(
            item.body, item.clock, ctx.device_id, ctx.account_id
        )
        if op is None:
            raise ProtocolError("an outbox item does not decode")
        lists = await self.contacts.verified_lists(
            self.conversations.recipients(record, op.body), self.conversations.state(record).vouched_key
        )
        recipients = trust.fan_out(b64decode(ctx.device_id), lists)
        own = ctx.identity
        sendable = {r.device_id: self._sendable_session(r, own) for r in recipients}
        need = [r for r in recipients if not sendable[r.device_id]]
        bundles: dict[str, PreKeyBundle] = {}
        if need:
            claimed = api.parse_claim(
                (await ctx.call(api.claim((r.account_id, r.device_id) for r in need))).body
            )
            for b in claimed:
                bundles[b.device_id] = _bundle(b)
        header = msg.EnvelopeHeader(
            b64decode(item.conversation_id),
            b64decode(item.envelope_id),
            b64decode(ctx.account_id),
            b64decode(ctx.device_id),
            item.clock,
            ephemeral=ephemeral,
        )
        padded = msg.pad(item.body)
        local = msg.identity_keys(ctx.state) if bundles else None  # only a new session needs it
        ciphertexts: dict[str, bytes] = {}
        sessions: list[tuple[SessionRecord, Session]] = []
        for r in recipients:
            existing = sendable[r.device_id]
            bundle = bundles.get(r.device_id)
            if existing is None and bundle is None:
                continue  # no prekeys published yet: the server's 409 will say so
            try:
                enc = msg.encrypt_to_device(
                    local,
                    existing,
                    bundle,
                    r.entry,
                    padded,
                    header.associated_data(b64decode(r.device_id)),
                    ctx.rng,
                )
            except CryptoError as exc:
                raise UntrustedDeviceListError(f"refusing the keys of device {r.device_id}: {exc}") from exc
            ciphertexts[r.device_id] = enc.ciphertext
            state_bytes = enc.session.to_bytes()
            written = SessionRecord(r.device_id, enc.session.base_key, state_bytes, r.account_id, ctx.clock())
            sessions.append((written, enc.session))
        body = api.envelope_body(b64decode(item.envelope_id), item.clock, trust.versions(lists), ciphertexts)
        return body, sessions

    def _sendable_session(self, r: trust.Recipient, own: bytes) -> Session | None:
        """The newest session that can send and binds exactly this account's listed device."""
        for record in self.ctx.store.sessions.sessions_for(r.device_id):
            if record.peer_account_id != r.account_id:
                continue
            session = self.ctx.session(record)
            if session.can_send and msg.session_binds(session, own, r.entry):
                return session
        return None
