"""The key directory: prekey upload, counts, and bundle claims."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import Ctx, CurrentDevice
from server.api.schemas import (
    BundleResponse,
    ClaimRequest,
    ClaimResponse,
    PreKeyCountResponse,
    UploadKeysRequest,
)
from server.services.keys import Bundle, PreKeyCountsInfo

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
async def claim_many(body: ClaimRequest, ctx: Ctx, _me: CurrentDevice) -> ClaimResponse:
    """Claim one bundle per listed device (each one-time prekey handed out once)."""
    bundles = [await ctx.keys.claim(t.account_id, t.device_id) for t in body.devices]
    for b in bundles:
        _count_claim(ctx, b)
    return ClaimResponse(bundles=[_bundle(b) for b in bundles])


@router.get("/{account_id}", response_model=ClaimResponse)
async def claim_account(account_id: str, ctx: Ctx, _me: CurrentDevice) -> ClaimResponse:
    """Claim a bundle for every active device of the account that published prekeys."""
    bundles = await ctx.keys.claim_account(account_id)
    for b in bundles:
        _count_claim(ctx, b)
    return ClaimResponse(bundles=[_bundle(b) for b in bundles])


@router.get("/{account_id}/{device_id}", response_model=BundleResponse)
async def claim_one(account_id: str, device_id: str, ctx: Ctx, _me: CurrentDevice) -> BundleResponse:
    bundle = await ctx.keys.claim(account_id, device_id)
    _count_claim(ctx, bundle)
    return _bundle(bundle)
