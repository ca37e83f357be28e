"""Provisioning channels for linking a new device (the server relays ciphertext only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from crypto.keys import b64encode
from server.api.deps import ClientIP, Ctx, CurrentDevice
from server.api.schemas import ProvisioningChannelResponse, ProvisioningPayload
from server.errors import Problem, ProblemCode

router = APIRouter(prefix="/v1/provisioning", tags=["provisioning"])
SECRET_HEADER = "X-Channel-Secret"  # noqa: S105 - a header name


@router.post("", status_code=201, response_model=ProvisioningChannelResponse)
async def create_channel(ctx: Ctx, ip: ClientIP) -> ProvisioningChannelResponse:
    """For the new device (unauthenticated): a channel id and secret to show in its link code."""
    c = await ctx.provisioning.create(ip)
    return ProvisioningChannelResponse(
        channel_id=c.channel_id, channel_secret=c.channel_secret, expires_in=c.expires_in
    )


@router.put("/{channel_id:id}", status_code=204)
async def put_payload(
    channel_id: str,
    body: ProvisioningPayload,
    ctx: Ctx,
    me: CurrentDevice,
    x_channel_secret: Annotated[str | None, Header(alias=SECRET_HEADER, max_length=64)] = None,
) -> Response:
    """For an existing device, with the channel secret from the link code in
    ``X-Channel-Secret``: put the sealed linking payload on the channel (once). 404 when the
    channel is unknown, expired, or the secret is wrong."""
    await ctx.provisioning.put(me, channel_id, x_channel_secret, body.payload)
    return Response(status_code=204)


@router.get(
    "/{channel_id:id}",
    responses={200: {"model": ProvisioningPayload}, 204: {"description": "no payload yet"}},
)
async def take_payload(
    channel_id: str,
    ctx: Ctx,
    x_channel_secret: Annotated[str | None, Header(alias=SECRET_HEADER, max_length=64)] = None,
) -> Response:
    """For the new device, with its channel secret in ``X-Channel-Secret``: 200 and the payload
    (the channel is then deleted), or 204 when nothing was put yet."""
    if x_channel_secret is None:
        raise Problem(404, ProblemCode.PROVISIONING_CHANNEL_NOT_FOUND, "no such provisioning channel")
    payload = await ctx.provisioning.take(channel_id, x_channel_secret)
    if payload is None:
        return Response(status_code=204)
    body = ProvisioningPayload(payload=b64encode(payload))
    return Response(content=body.model_dump_json(), media_type="application/json")
