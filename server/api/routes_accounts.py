"""Accounts and signed device lists."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from server.api.deps import ClientIP, Ctx, CurrentDevice
from server.api.routes_auth import token_response
from server.api.schemas import (
    AccountResponse,
    DeviceResponse,
    DevicesResponse,
    ListChainResponse,
    PutDeviceListRequest,
    PutDeviceListResponse,
    RegisterRequest,
    RegisterResponse,
    SignedListResponse,
)
from server.services.accounts import AccountInfo, SignedListInfo
from server.services.common import decode_id, encode_id

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])


def _account(info: AccountInfo) -> AccountResponse:
    return AccountResponse(
        account_id=info.account_id,
        username=info.username,
        account_key=info.account_key,
        device_list_version=info.device_list_version,
    )


def _signed(info: SignedListInfo) -> SignedListResponse:
    return SignedListResponse(
        account_id=info.account_id,
        version=info.version,
        hash=info.hash,
        signed_list=info.signed_list,
        created_at_ms=info.created_at_ms,
    )


@router.post("", status_code=201, response_model=RegisterResponse)
async def register(body: RegisterRequest, ctx: Ctx, ip: ClientIP) -> RegisterResponse:
    """Create an account with its account key and first signed device list (version 1)."""
    await ctx.rate_limiter.hit(ctx.settings.rate_limit_register_per_ip, "register-ip", ip)
    created = await ctx.accounts.register(
        body.username, body.password, body.account_key, body.device_list, body.device_id
    )
    ctx.metrics.registrations.inc()
    tokens = await ctx.auth.issue_for_new_account(created.account_id, created.device_id, created.username)
    return RegisterResponse(
        account_id=created.account_id,
        username=created.username,
        device_id=created.device_id,
        device_list_version=created.device_list_version,
        tokens=token_response(tokens),
    )


@router.put("/me/device-list", response_model=PutDeviceListResponse)
async def put_device_list(body: PutDeviceListRequest, ctx: Ctx, me: CurrentDevice) -> PutDeviceListResponse:
    """Adopt a new signed device list (version = current + 1, naming the current list's hash).
    Devices it drops are removed at once. New versions are rate-limited per account."""

    async def count_version() -> None:  # once the account-key signature has verified
        await ctx.rate_limiter.hit(
            ctx.settings.rate_limit_device_list_versions_per_account,
            "device-list-versions-account",
            me.account_id,
        )

    update = await ctx.devices.update_account_list(
        me.account_id_bytes, body.device_list, on_verified=count_version
    )
    return PutDeviceListResponse(
        version=update.version, hash=update.hash, added=update.added, removed=update.removed
    )


@router.put("/{account_id:id}/device-list/signed", response_model=PutDeviceListResponse)
async def put_signed_device_list(
    account_id: str, body: PutDeviceListRequest, ctx: Ctx, ip: ClientIP
) -> PutDeviceListResponse:
    """Adopt a new signed device list without a bearer token: the account-key signature is the
    authority. Same checks and effects as ``PUT /v1/accounts/me/device-list`` (one code path):
    the list must verify under the account's key and username and extend the current list
    (version = current + 1, naming its hash), so only an account-key holder can extend the chain
    and no list can be replayed. Used by a newly linked device to publish the list naming it.
    Rate-limited per client IP first, and per account only once the signature has verified, so
    junk from others cannot use up the owner's allowance."""
    await ctx.rate_limiter.hit(ctx.settings.rate_limit_signed_list_per_ip, "signed-list-ip", ip)
    account = decode_id(account_id, "account")

    async def count_for_account() -> None:  # only once the account-key signature has verified
        await ctx.rate_limiter.hit(
            ctx.settings.rate_limit_signed_list_per_account, "signed-list-account", encode_id(account)
        )
        await ctx.rate_limiter.hit(
            ctx.settings.rate_limit_device_list_versions_per_account,
            "device-list-versions-account",
            encode_id(account),
        )

    update = await ctx.devices.update_account_list(account, body.device_list, on_verified=count_for_account)
    return PutDeviceListResponse(
        version=update.version, hash=update.hash, added=update.added, removed=update.removed
    )


@router.get("/by-username/{username}", response_model=AccountResponse)
async def by_username(username: str, ctx: Ctx, _me: CurrentDevice) -> AccountResponse:
    return _account(await ctx.accounts.by_username(username))


@router.get("/{account_id:id}", response_model=AccountResponse)
async def get_account(account_id: str, ctx: Ctx, _me: CurrentDevice) -> AccountResponse:
    return _account(await ctx.accounts.get(account_id))


@router.get("/{account_id:id}/device-list", response_model=SignedListResponse)
async def current_device_list(account_id: str, ctx: Ctx, _me: CurrentDevice) -> SignedListResponse:
    """The account's current signed device list; clients verify it with crypto.device_list."""
    return _signed(await ctx.accounts.current_list(account_id))


@router.get("/{account_id:id}/device-list/chain", response_model=ListChainResponse)
async def device_list_chain(
    account_id: str,
    ctx: Ctx,
    _me: CurrentDevice,
    since: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> ListChainResponse:
    """Signed lists with version > ``since``, oldest first (at most ``limit``; page by version)."""
    lists = await ctx.accounts.list_chain(account_id, since, limit)
    return ListChainResponse(account_id=account_id, lists=[_signed(i) for i in lists])


@router.get("/{account_id:id}/devices", response_model=DevicesResponse)
async def active_devices(account_id: str, ctx: Ctx, _me: CurrentDevice) -> DevicesResponse:
    """The routable devices (those named by the current signed list), for convenience; clients
    must trust only what the signed list says."""
    info = await ctx.accounts.get(account_id)
    devices = await ctx.devices.active_devices(decode_id(account_id, "account"))
    return DevicesResponse(
        account_id=info.account_id,
        device_list_version=info.device_list_version,
        devices=[
            DeviceResponse(
                device_id=d.device_id, signing_key=d.signing_key, dh_key=d.dh_key, added_at_ms=d.added_at_ms
            )
            for d in devices
        ],
    )
