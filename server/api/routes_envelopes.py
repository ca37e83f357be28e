"""Envelopes: send one (fan-out ciphertexts, idempotent on ``envelope_id``) and fetch a
conversation's envelopes after a ``server_seq`` (gap filling; only envelopes this device received
or sent, with only its own ciphertext)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, BeforeValidator, Field

from saltline.crypto.keys import b64encode
from saltline.server.api.deps import Ctx, CurrentDevice
from saltline.server.api.schemas import B64, Id, Strict, b64_max_chars, integral
from saltline.server.services.common import decode_b64_field, decode_id
from saltline.server.services.delivery import (
    DEFAULT_HISTORY_LIMIT,
    MAX_CLOCK_BYTES,
    MAX_HISTORY_LIMIT,
    DeliveryService,
    SendRequest,
)

router = APIRouter(prefix="/v1/conversations", tags=["envelopes"])

ConversationIdPath = Annotated[
    str, Path(min_length=1, max_length=64, description="conversation id (base64url)")
]
#: The largest body integer: 2^53 - 1, exact in every JSON implementation (I-JSON, RFC 7493), so
#: a bound in the OpenAPI document means the same to a client that parses numbers as doubles.
MAX_JSON_INT = 2**53 - 1
#: Bounds on the text only; the service checks the decoded sizes against the settings.
CiphertextB64 = Annotated[str, Field(min_length=1, max_length=4 * 1024 * 1024, pattern=B64)]
ClockB64 = Annotated[str, Field(max_length=b64_max_chars(MAX_CLOCK_BYTES), pattern=B64)]


class CiphertextIn(Strict):
    device_id: Id
    ciphertext: CiphertextB64


class SendEnvelopeRequest(Strict):
    envelope_id: Id = Field(description="chosen by the client (random 16 bytes): the idempotency key")
    clock: ClockB64 = Field(description="the sender's vector clock, opaque to the server")
    device_list_versions: Annotated[
        dict[Id, Annotated[int, Field(ge=0, le=MAX_JSON_INT), BeforeValidator(integral)]],
        Field(max_length=10_000),
    ] = Field(
        description="account id -> version of the signed device list the sender encrypted against, "
        "for every member account (the sender's own included)"
    )
    ephemeral: bool = Field(default=False, description="typing indicators: delivered to online devices only")
    ciphertexts: Annotated[list[CiphertextIn], Field(max_length=10_000)] = Field(
        description="one per recipient device: every member's devices and the sender's other devices"
    )


class SendEnvelopeResponse(BaseModel):
    envelope_id: str
    server_seq: int | None = Field(description="null for ephemeral envelopes")
    server_ts: int = Field(description="server time of acceptance, Unix milliseconds")


class Sender(BaseModel):
    account_id: str
    device_id: str


class HistoryEnvelope(BaseModel):
    server_seq: int
    server_ts: int
    sender: Sender
    envelope_id: str
    clock: str
    ciphertext: str | None = Field(description="the copy for the asking device; null if it got none")


class HistoryResponse(BaseModel):
    envelopes: list[HistoryEnvelope] = Field(
        description="only envelopes with a copy for the asking device, or sent by it (no copy): "
        "server_seq values in between belong to envelopes this device never received"
    )
    next_after: int | None = Field(description="pass as `after` for the next page; null at the end")


def send_request_from(conversation_id: bytes, body: SendEnvelopeRequest) -> SendRequest:
    """The service's request from a validated body (HTTP route and WebSocket ``send`` frame)."""
    return SendRequest(
        conversation_id=conversation_id,
        envelope_id=decode_id(body.envelope_id, "envelope_id", status=422),
        clock=decode_b64_field(body.clock, "clock"),
        device_list_versions={
            decode_id(a, "device_list_versions", status=422): v for a, v in body.device_list_versions.items()
        },
        ephemeral=body.ephemeral,
        ciphertexts=[
            (decode_id(c.device_id, "device_id", status=422), decode_b64_field(c.ciphertext, "ciphertext"))
            for c in body.ciphertexts
        ],
    )


@router.post(
    "/{conversation_id:id}/envelopes",
    status_code=201,
    response_model=SendEnvelopeResponse,
    responses={
        202: {"description": "ephemeral envelope handed to the recipient devices online now"},
        409: {"description": "recipients_mismatch or idempotency_conflict"},
        410: {"description": "device_list_outdated"},
    },
)
async def send_envelope(
    conversation_id: ConversationIdPath,
    body: SendEnvelopeRequest,
    ctx: Ctx,
    me: CurrentDevice,
    response: Response,
) -> SendEnvelopeResponse:
    req = send_request_from(decode_id(conversation_id, "conversation"), body)
    delivery: DeliveryService = ctx.delivery
    result = await delivery.send(me.account_id_bytes, me.device_id_bytes, req)
    if body.ephemeral:
        response.status_code = 202
    elif result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return SendEnvelopeResponse(
        envelope_id=b64encode(result.envelope_id), server_seq=result.server_seq, server_ts=result.server_ts_ms
    )


@router.get("/{conversation_id:id}/envelopes", response_model=HistoryResponse)
async def list_envelopes(
    conversation_id: ConversationIdPath,
    ctx: Ctx,
    me: CurrentDevice,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = DEFAULT_HISTORY_LIMIT,
) -> HistoryResponse:
    cid = decode_id(conversation_id, "conversation")
    delivery: DeliveryService = ctx.delivery
    page = await delivery.history(me.account_id_bytes, me.device_id_bytes, cid, after, limit)
    return HistoryResponse(
        envelopes=[
            HistoryEnvelope(
                server_seq=i.server_seq,
                server_ts=i.server_ts_ms,
                sender=Sender(
                    account_id=b64encode(i.sender_account_id), device_id=b64encode(i.sender_device_id)
                ),
                envelope_id=b64encode(i.envelope_id),
                clock=b64encode(i.clock),
                ciphertext=None if i.ciphertext is None else b64encode(i.ciphertext),
            )
            for i in page.items
        ],
        next_after=page.next_after,
    )
