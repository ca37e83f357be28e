"""FastAPI dependencies: the app context, the authenticated device, the client address."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from saltline.server.context import AppContext
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.common import AuthedDevice

_bearer = HTTPBearer(auto_error=False, description="Access token from /v1/auth/login")


async def get_ctx(request: Request) -> AppContext:
    # async: FastAPI runs a plain ``def`` dependency on a worker thread (one hop per request).
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


async def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


ClientIP = Annotated[str, Depends(client_ip)]


async def current_device(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> AuthedDevice:
    """The device behind the ``Authorization: Bearer`` access token (401 otherwise). Checks the
    device is still active on every request, so a removal takes effect at once."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(
            401, ProblemCode.UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return await ctx.auth.authenticate_access_token(credentials.credentials)


CurrentDevice = Annotated[AuthedDevice, Depends(current_device)]
