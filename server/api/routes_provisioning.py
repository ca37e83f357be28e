"""Provisioning channels for linking a new device (the server relays ciphertext only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from saltline.crypto.keys import b64encode
from saltline.server.api.deps import ClientIP, Ctx
from saltline.server.api.schemas import ProvisioningChannelResponse, ProvisioningPayload

router = APIRouter(prefix="/v1/provisioning", tags=["provisioning"])
SECRET_HEADER = "X-Channel-Secret"  # noqa: S105 - a header name
Secret = Annotated[str | None, Header(alias=SECRET_HEADER, max_length=64)]


@router.post("", status_code=201, response_model=ProvisioningChannelResponse)
async def create_channel(ctx: Ctx, ip: ClientIP) -> ProvisioningChannelResponse:
    """For the new device (unauthenticated): a channel id, a put secret (to show in its link
    code) and a take secret (to keep). Rate-limited per client address."""
    c = await ctx.provisioning.create(ip)
    return ProvisioningChannelResponse(
        channel_id=c.channel_id, put_secret=c.put_secret, take_secret=c.take_secret, expires_in=c.expires_in
    )


@router.put("/{channel_id:id}", status_code=204)
async def put_payload(
    channel_id: str,
    body: ProvisioningPayload,
    ctx: Ctx,
    ip: ClientIP,
    x_channel_secret: Secret = None,
) -> Response:
    """With the channel's put secret in ``X-Channel-Secret`` (no bearer token): put one sealed
    message in the channel's slot. 409 while a message is waiting (until it is taken); 404 when
    the channel is unknown, expired, or the secret is not its put secret; 429 past the per-address
    rate or the channel's lifetime put budget."""
    await ctx.provisioning.put(ip, channel_id, x_channel_secret, body.payload)
    return Response(status_code=204)


@router.get(
    "/{channel_id:id}",
    responses={200: {"model": ProvisioningPayload}, 204: {"description": "no message waiting"}},
)
async def take_payload(channel_id: str, ctx: Ctx, x_channel_secret: Secret = None) -> Response:
    """With the channel's take secret in ``X-Channel-Secret``: 200 and the waiting message (the
    slot is emptied; the channel lives on until it expires), or 204 when nothing is waiting."""
    payload = await ctx.provisioning.take(channel_id, x_channel_secret)
    if payload is None:
        return Response(status_code=204)
    body = ProvisioningPayload(payload=b64encode(payload))
    return Response(content=body.model_dump_json(), media_type="application/json")


@router.delete("/{channel_id:id}", status_code=204)
async def delete_channel(channel_id: str, ctx: Ctx, x_channel_secret: Secret = None) -> Response:
    """With the channel's take secret in ``X-Channel-Secret``: delete the channel."""
    await ctx.provisioning.delete(channel_id, x_channel_secret)
    return Response(status_code=204)
