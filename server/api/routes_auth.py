"""Logins, token refresh, and who-am-i."""

from __future__ import annotations

from fastapi import APIRouter

from saltline.server.api.deps import ClientIP, Ctx, CurrentDevice
from saltline.server.api.schemas import (
    ChallengeRequest,
    ChallengeResponse,
    DeviceLoginRequest,
    LoginRequest,
    RefreshRequest,
    TokenResponse,
    WhoAmIResponse,
)
from saltline.server.errors import Problem
from saltline.server.services.auth import TokenPair

router = APIRouter(prefix="/v1/auth", tags=["auth"])


def token_response(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.access_expires_in,
        refresh_token=pair.refresh_token,
        refresh_expires_in=pair.refresh_expires_in,
        account_id=pair.account_id,
        device_id=pair.device_id,
    )


@router.post("/login", response_model=TokenResponse)
async def login(body: LoginRequest, ctx: Ctx, ip: ClientIP) -> TokenResponse:
    """Password login for a device that is in the account's current list."""
    try:
        pair = await ctx.auth.login_password(body.username, body.password, body.device_id, ip)
    except Problem as problem:
        ctx.metrics.logins.labels("password", problem.code.value).inc()
        raise
    ctx.metrics.logins.labels("password", "ok").inc()
    return token_response(pair)


@router.post("/challenge", response_model=ChallengeResponse)
async def challenge(body: ChallengeRequest, ctx: Ctx, ip: ClientIP) -> ChallengeResponse:
    """A single-use nonce for device-key login (see ``POST /v1/auth/device-login``)."""
    c = await ctx.auth.create_challenge(body.username, body.device_id, ip)
    return ChallengeResponse(nonce=c.nonce, expires_in=c.expires_in)


@router.post("/device-login", response_model=TokenResponse)
async def device_login(body: DeviceLoginRequest, ctx: Ctx, ip: ClientIP) -> TokenResponse:
    """Log in by signing the challenge with the device signing key, under
    ``SigningContext.LOGIN_CHALLENGE``, over ``u8 len(username) || username || device_id || nonce``."""
    try:
        pair = await ctx.auth.login_device(body.username, body.device_id, body.nonce, body.signature, ip)
    except Problem as problem:
        ctx.metrics.logins.labels("device", problem.code.value).inc()
        raise
    ctx.metrics.logins.labels("device", "ok").inc()
    return token_response(pair)


@router.post("/refresh", response_model=TokenResponse)
async def refresh(body: RefreshRequest, ctx: Ctx) -> TokenResponse:
    """Rotate a refresh token. Presenting an already-rotated one revokes its whole family."""
    return token_response(await ctx.auth.refresh(body.refresh_token))


@router.get("/me", response_model=WhoAmIResponse)
async def whoami(me: CurrentDevice) -> WhoAmIResponse:
    return WhoAmIResponse(account_id=me.account_id, device_id=me.device_id, username=me.username)
