"""The key directory: prekey upload, counts, and bundle claims."""

from __future__ import annotations

from fastapi import APIRouter

from saltline.server.api.deps import Ctx, CurrentDevice
from saltline.server.api.schemas import (
    BundleResponse,
    ClaimRequest,
    ClaimResponse,
    PreKeyCountResponse,
    UploadKeysRequest,
)
from saltline.server.services.keys import Bundle, PreKeyCountsInfo

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def _counts(c: PreKeyCountsInfo) -> PreKeyCountResponse:
    return PreKeyCountResponse(
        one_time=c.one_time,
        signed_prekey_id=c.signed_prekey_id,
        last_resort_prekey_id=c.last_resort_prekey_id,
    )


def _bundle(b: Bundle) -> BundleResponse:
    return BundleResponse(
        account_id=b.account_id,
        device_id=b.device_id,
        signing_key=b.signing_key,
        dh_key=b.dh_key,
        signed_prekey=b.signed_prekey,
        one_time_prekey=b.one_time_prekey,
        last_resort_prekey=b.last_resort_prekey,
        one_time_remaining=b.one_time_remaining,
    )


def _count_claim(ctx: Ctx, b: Bundle) -> None:
    ctx.metrics.prekey_claims.labels("one_time" if b.one_time_prekey else "last_resort").inc()


@router.put("", response_model=PreKeyCountResponse)
async def upload(body: UploadKeysRequest, ctx: Ctx, me: CurrentDevice) -> PreKeyCountResponse:
    """Publish the caller's signed, last-resort and one-time prekeys (each signature checked)."""
    counts = await ctx.keys.upload(me, body.signed_prekey, body.last_resort_prekey, body.one_time_prekeys)
    return _counts(counts)


@router.get("/count", response_model=PreKeyCountResponse)
async def count(ctx: Ctx, me: CurrentDevice) -> PreKeyCountResponse:
    return _counts(await ctx.keys.counts(me))


@router.post("/claim", response_model=ClaimResponse)
async def claim_many(body: ClaimRequest, ctx: Ctx, me: CurrentDevice) -> ClaimResponse:
    """Claim one bundle per listed device (duplicates collapsed; at most ``max_claim_targets``
    distinct devices), each with a one-time prekey handed out once, or the last-resort prekey
    when none is left. The only route that consumes one-time prekeys; rate limited per caller."""
    bundles = await ctx.keys.claim_many(me, [(t.account_id, t.device_id) for t in body.devices])
    for b in bundles:
        _count_claim(ctx, b)
    return ClaimResponse(bundles=[_bundle(b) for b in bundles])


@router.get("/{account_id:id}", response_model=ClaimResponse)
async def peek_account(account_id: str, ctx: Ctx, me: CurrentDevice) -> ClaimResponse:
    """A bundle for every active device of the account that published prekeys, *without*
    one-time prekeys (signed and last-resort only; nothing is consumed). To claim one-time
    prekeys, use ``POST /v1/keys/claim``."""
    bundles = await ctx.keys.peek_account(me, account_id)
    return ClaimResponse(bundles=[_bundle(b) for b in bundles])


@router.get("/{account_id:id}/{device_id:id}", response_model=BundleResponse)
async def peek_one(account_id: str, device_id: str, ctx: Ctx, me: CurrentDevice) -> BundleResponse:
    """The device's bundle *without* a one-time prekey (signed and last-resort only; nothing
    is consumed). To claim a one-time prekey, use ``POST /v1/keys/claim``."""
    return _bundle(await ctx.keys.peek(me, account_id, device_id))
