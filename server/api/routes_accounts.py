"""Accounts and signed device lists."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from saltline.server.api.deps import ClientIP, Ctx, CurrentDevice
from saltline.server.api.routes_auth import token_response
from saltline.server.api.schemas import (
    AccountResponse,
    DeviceGrantRequest,
    DeviceGrantResponse,
    DeviceNameRequest,
    DeviceNamesResponse,
    DeviceResponse,
    DevicesResponse,
    KeyHandoff,
    KeyHandoffsResponse,
    ListChainResponse,
    PutDeviceListRequest,
    PutDeviceListResponse,
    PutSignedDeviceListRequest,
    RegisterRequest,
    RegisterResponse,
    SignedListResponse,
)
from saltline.server.services.accounts import AccountInfo, SignedListInfo
from saltline.server.services.common import decode_id, encode_id

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])
GRANT_HEADER = "X-Device-Grant"


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
    The caller must be an active device of the current list (it may remove itself). Devices it
    drops are removed at once. ``key_handoffs`` (sealed, for the new list's other devices) and
    the caller's ``sealed_name`` are stored with it. New versions are rate-limited per account."""

    async def count_version() -> None:  # once the account-key signature has verified
        await ctx.rate_limiter.hit(
            ctx.settings.rate_limit_device_list_versions_per_account,
            "device-list-versions-account",
            me.account_id,
        )

    update = await ctx.devices.update_account_list(
        me.account_id_bytes,
        body.device_list,
        on_verified=count_version,
        caller=me.device_id_bytes,
        key_handoffs=body.key_handoffs,
        sealed_name=body.sealed_name,
    )
    return PutDeviceListResponse(
        version=update.version, hash=update.hash, added=update.added, removed=update.removed
    )


@router.put("/{account_id:id}/device-list/signed", response_model=PutDeviceListResponse)
async def put_signed_device_list(
    account_id: str,
    body: PutSignedDeviceListRequest,
    ctx: Ctx,
    ip: ClientIP,
    x_device_grant: Annotated[str | None, Header(alias=GRANT_HEADER, max_length=64)] = None,
) -> PutDeviceListResponse:
    """Linking, without a bearer token: a new device publishes the list naming it, with the
    one-time device grant an active device of the account issued for it in ``X-Device-Grant``
    (403 ``device_grant_invalid`` without a valid one). The list must verify under the account's
    key, extend the current list, and be the current list plus exactly the granted device (id
    and signing key); the grant is consumed with the update. Rate-limited per client IP first,
    and per account only once the signature has verified, so junk from others cannot use up the
    owner's allowance."""
    await ctx.rate_limiter.hit(ctx.settings.rate_limit_signed_list_per_ip, "signed-list-ip", ip)
    account = decode_id(account_id, "account")
    grant = await ctx.linking.check_grant(account, x_device_grant)

    async def count_for_account() -> None:  # only once the account-key signature has verified
        await ctx.rate_limiter.hit(
            ctx.settings.rate_limit_signed_list_per_account, "signed-list-account", encode_id(account)
        )
        await ctx.rate_limiter.hit(
            ctx.settings.rate_limit_device_list_versions_per_account,
            "device-list-versions-account",
            encode_id(account),
        )

    update = await ctx.devices.update_account_list(
        account, body.device_list, on_verified=count_for_account, grant=grant, sealed_name=body.sealed_name
    )
    return PutDeviceListResponse(
        version=update.version, hash=update.hash, added=update.added, removed=update.removed
    )


@router.post("/me/device-grants", status_code=201, response_model=DeviceGrantResponse)
async def issue_device_grant(body: DeviceGrantRequest, ctx: Ctx, me: CurrentDevice) -> DeviceGrantResponse:
    """For an active device approving a link: a one-time grant for the new device (its id and
    raw signing key), valid ``expires_in`` seconds. 409 ``device_id_taken`` if the id was ever
    used; 429 when the account holds the maximum of unexpired grants."""
    issued = await ctx.linking.issue_grant(me, body.device_id, body.signing_key)
    return DeviceGrantResponse(grant=issued.grant, expires_in=issued.expires_in)


@router.get("/me/key-handoffs", response_model=KeyHandoffsResponse)
async def key_handoffs(
    ctx: Ctx,
    me: CurrentDevice,
    since: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> KeyHandoffsResponse:
    """The sealed account-key handoffs for the caller with list version > ``since``, oldest
    first (at most ``limit``; page by version). They expire with the queue retention."""
    rows = await ctx.linking.handoffs(me, since, limit)
    return KeyHandoffsResponse(handoffs=[KeyHandoff(version=v, sealed=s) for v, s in rows])


@router.put("/me/device-name", status_code=204)
async def set_device_name(body: DeviceNameRequest, ctx: Ctx, me: CurrentDevice) -> Response:
    """Set the caller's encrypted device name (opaque to the server)."""
    await ctx.linking.set_name(me, body.sealed_name)
    return Response(status_code=204)


@router.get("/me/device-names", response_model=DeviceNamesResponse)
async def device_names(ctx: Ctx, me: CurrentDevice) -> DeviceNamesResponse:
    """The encrypted names of the active devices of the caller's account."""
    return DeviceNamesResponse(names=await ctx.linking.names(me))


@router.get("/by-username/{username}", response_model=AccountResponse)
async def by_username(username: str, ctx: Ctx, _me: CurrentDevice) -> AccountResponse:
    return _account(await ctx.accounts.by_username(username))


@router.get("/{account_id:id}", response_model=AccountResponse)
async def get_account(account_id: str, ctx: Ctx, _me: CurrentDevice) -> AccountResponse:
    return _account(await ctx.accounts.get(account_id))


@router.get("/{account_id:id}/device-list", response_model=SignedListResponse)
async def current_device_list(account_id: str, ctx: Ctx, _me: CurrentDevice) -> SignedListResponse:
    """The account's current signed device list; clients verify it with saltline.crypto.device_list."""
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
