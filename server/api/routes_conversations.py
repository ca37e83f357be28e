"""Conversations: create (1:1 or group), list mine, get one, add and remove members.

Membership is server-visible routing metadata; everything said inside a conversation is
end-to-end encrypted and travels as envelopes (:mod:`saltline.server.api.routes_envelopes`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from saltline.crypto.keys import b64encode
from saltline.server.api.deps import Ctx, CurrentDevice
from saltline.server.api.schemas import Id, Strict
from saltline.server.services.common import decode_id
from saltline.server.services.conversations import (
    CURSOR_PATTERN,
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    ConversationKind,
    ConversationsService,
)
from saltline.server.storage.conversations_repo import ConversationRow

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

ConversationIdPath = Annotated[
    str, Path(min_length=1, max_length=64, description="conversation id (base64url)")
]
AccountIdPath = Annotated[str, Path(min_length=1, max_length=64, description="account id (base64url)")]


class CreateConversationRequest(Strict):
    kind: Literal["direct", "group"] = Field(description="direct: exactly one other member; group: any")
    members: Annotated[list[Id], Field(max_length=10_000)] = Field(
        description="account ids of the other members (the creator is always a member)"
    )


class AddMemberRequest(Strict):
    account_id: Id


class ConversationResponse(BaseModel):
    conversation_id: str
    kind: str
    created_by: str
    created_at_ms: int
    last_server_seq: int
    members: list[str]


class ConversationsResponse(BaseModel):
    conversations: list[ConversationResponse]
    next_after: str | None = Field(
        description="pass as `after` for the next page; null when this page is the last"
    )


def conversation_response(row: ConversationRow) -> ConversationResponse:
    return ConversationResponse(
        conversation_id=b64encode(row.id),
        kind=row.kind,
        created_by=b64encode(row.created_by),
        created_at_ms=row.created_at_ms,
        last_server_seq=row.last_server_seq,
        members=[b64encode(m) for m in row.members],
    )


def _service(ctx: Ctx) -> ConversationsService:
    service: ConversationsService = ctx.conversations
    return service


@router.post(
    "",
    status_code=201,
    response_model=ConversationResponse,
    responses={200: {"description": "the direct conversation with this member already existed"}},
)
async def create_conversation(
    body: CreateConversationRequest, ctx: Ctx, me: CurrentDevice, response: Response
) -> ConversationResponse:
    await ctx.rate_limiter.hit(
        ctx.settings.rate_limit_conversation_creations_per_device, "conversation-create-device", me.device_id
    )
    members = [decode_id(m, "member", status=422) for m in body.members]
    row, created = await _service(ctx).create(me.account_id_bytes, ConversationKind(body.kind), members)
    if not created:
        response.status_code = 200
    return conversation_response(row)


@router.get("", response_model=ConversationsResponse)
async def list_conversations(
    ctx: Ctx,
    me: CurrentDevice,
    after: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_after` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
) -> ConversationsResponse:
    """The caller's conversations, oldest first (by creation time, then id), one page at a time:
    follow ``next_after`` until it is null."""
    rows, next_after = await _service(ctx).list_for(me.account_id_bytes, limit=limit, cursor=after)
    return ConversationsResponse(
        conversations=[conversation_response(r) for r in rows], next_after=next_after
    )


@router.get("/{conversation_id:id}", response_model=ConversationResponse)
async def get_conversation(
    conversation_id: ConversationIdPath, ctx: Ctx, me: CurrentDevice
) -> ConversationResponse:
    cid = decode_id(conversation_id, "conversation")
    return conversation_response(await _service(ctx).get_for(me.account_id_bytes, cid))


@router.post("/{conversation_id:id}/members", response_model=ConversationResponse)
async def add_member(
    conversation_id: ConversationIdPath, body: AddMemberRequest, ctx: Ctx, me: CurrentDevice
) -> ConversationResponse:
    cid = decode_id(conversation_id, "conversation")
    account_id = decode_id(body.account_id, "account_id", status=422)
    return conversation_response(await _service(ctx).add_member(me.account_id_bytes, cid, account_id))


@router.delete(
    "/{conversation_id:id}/members/{account_id:id}",
    response_model=ConversationResponse,
    responses={204: {"description": "the caller left the conversation"}},
)
async def remove_member(
    conversation_id: ConversationIdPath, account_id: AccountIdPath, ctx: Ctx, me: CurrentDevice
) -> ConversationResponse | Response:
    cid = decode_id(conversation_id, "conversation")
    member = decode_id(account_id, "member")
    row = await _service(ctx).remove_member(me.account_id_bytes, cid, member)
    if row is None:
        return Response(status_code=204)
    return conversation_response(row)
