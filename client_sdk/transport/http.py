"""httpx driver: executes :class:`client_sdk.core.api.Request` objects."""

from __future__ import annotations

from typing import Any

import httpx

from client_sdk.core.api import Request, Response
from client_sdk.errors import NetworkError


class HttpTransport:
    """Runs core requests over one ``httpx.AsyncClient``. ``transport`` (an ``httpx`` transport)
    can be injected, e.g. to put a test proxy in front of the server."""

    def __init__(
        self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None, timeout: float = 15.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout)

    async def execute(self, request: Request, access_token: str | None = None) -> Response:
        headers = dict(request.headers)
        if request.auth and access_token:
            headers["Authorization"] = f"Bearer {access_token}"
        try:
            r = await self._client.request(
                request.method,
                request.path,
                json=request.json_body,
                params=dict(request.query) or None,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise NetworkError(f"could not reach the server at {self.base_url}: {exc}") from exc
        body: Any = None
        if r.content:
            try:
                body = r.json()
            except ValueError:
                body = None
        return Response(r.status_code, body, dict(r.headers))

    async def aclose(self) -> None:
        await self._client.aclose()
