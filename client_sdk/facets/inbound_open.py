"""Opening one envelope for the inbound facet: decrypt it with the sender device's sessions, unpad
and decode its operation, and classify the outcome for
:func:`saltline.client_sdk.core.inbound.after_decrypt`. No store writes: the facet stores what the
rule decides in one transaction."""

from __future__ import annotations

from dataclasses import dataclass

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import inbound as rules
from saltline.client_sdk.core import message as msg
from saltline.client_sdk.core import sync
from saltline.client_sdk.errors import DecryptError
from saltline.crypto.device_list import DeviceEntry
from saltline.crypto.errors import CryptoError, DuplicateMessageError
from saltline.crypto.keys import b64decode


@dataclass(frozen=True, slots=True)
class Opened:
    """What opening an envelope gave: ``kind``/``reason`` for the rule; ``decrypted`` and ``body``
    (the unpadded plaintext) once it decrypted; ``op`` the operation, or, for a ``malformed_op``
    whose authenticated clock gives a valid dot, its
    :class:`~saltline.client_sdk.core.sync.ops.Void` (None: no dot)."""

    kind: rules.DecryptKind
    reason: str
    clock: bytes
    decrypted: msg.Decrypted | None = None
    body: bytes = b""
    op: sync.Op | None = None


def open_envelope(ctx: DeviceContext, env: rules.Envelope, sender_entry: DeviceEntry) -> Opened:
    header = msg.EnvelopeHeader(
        b64decode(env.conversation_id),
        b64decode(env.envelope_id),
        b64decode(env.sender_account_id),
        b64decode(env.sender_device_id),
        env.clock,
        ephemeral=env.server_seq is None,
    )
    state = ctx.state
    # only sessions of this account's device with exactly the listed identity keys
    own = ctx.identity
    sessions = [
        session
        for s in ctx.store.sessions.sessions_for(env.sender_device_id)
        if s.peer_account_id == env.sender_account_id
        and msg.session_binds(session := ctx.session_for_decrypt(s), own, sender_entry)
    ]
    try:
        decrypted = msg.decrypt_from_device(
            state,
            sessions,
            env.ciphertext,
            header.associated_data(state.device_id),
            sender_entry,
            ctx.rng,
            ctx.store.prekeys.has_seen_base_key,
        )
        body = msg.unpad(decrypted.padded)  # bad padding: "failed", as a failed decryption
    except DecryptError as exc:
        replayed = isinstance(exc.__cause__, DuplicateMessageError)
        return Opened("replayed" if replayed else "failed", str(exc), header.clock)
    except CryptoError as exc:
        return Opened("failed", str(exc), header.clock)
    try:  # the header is authenticated (it is the AEAD's associated data): its dot is the sender's
        op = sync.decode_or_void(body, header.clock, header.sender_device_id, header.sender_account_id)
    except sync.SyncError as exc:  # not decodable, and no valid dot to void
        return Opened("malformed_op", str(exc), header.clock, decrypted, body)
    if isinstance(op.body, sync.Void):
        return Opened("malformed_op", op.body.reason, header.clock, decrypted, body, op)
    return Opened("ok", "", header.clock, decrypted, body, op)
