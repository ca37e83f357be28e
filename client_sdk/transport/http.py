"""httpx driver: executes :class:`saltline.client_sdk.core.api.Request` objects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from saltline.client_sdk.core.api import Request, Response
from saltline.client_sdk.errors import NetworkError

#: Failures of a connection already open (the server closed or reset it): worth one immediate
#: retry of an idempotent request. Timeouts and connection refusals are not retried here.
STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


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
        for attempt in range(2):
            try:
                r = await self._client.request(
                    request.method,
                    request.path,
                    json=request.json_body,
                    params=dict(request.query) or None,
                    headers=headers,
                )
                break
            except STALE_CONNECTION_ERRORS as exc:
                # Most likely a keep-alive connection the server was closing as we reused it: an
                # idempotent request goes again at once (on a new connection); others cannot.
                if attempt == 0 and request.retryable:
                    continue
                raise NetworkError(f"could not reach the server at {self.base_url}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise NetworkError(f"could not reach the server at {self.base_url}: {exc}") from exc
        body: Any = None
        if r.content:
            try:
                body = r.json()
            except ValueError:
                body = None
        return Response(r.status_code, body, dict(r.headers))

    async def send_bytes(
        self, method: str, path: str, headers: dict[str, str], content: bytes | None, token: str
    ) -> Response:
        """A request with a raw body (attachment uploads); never retried here. The body goes as a
        one-shot stream with its ``Content-Length``: httpx's request and response refer to each
        other, and a ``bytes`` body would live until the cycle collector ran (tens of MB)."""
        if content is None:
            return await self._send(method, path, {**headers, "Authorization": f"Bearer {token}"}, None)
        length = len(content)
        return await self.send_stream(method, path, headers, _once(content), length, token)

    async def send_stream(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: AsyncIterator[bytes],
        length: int,
        token: str,
    ) -> Response:
        """A request whose body of ``length`` bytes is streamed from ``body`` (an attachment
        ``PATCH``: only one piece of it is in memory at a time); never retried here."""
        headers = {**headers, "Authorization": f"Bearer {token}", "Content-Length": str(length)}
        return await self._send(method, path, headers, body)

    async def _send(
        self, method: str, path: str, headers: dict[str, str], body: AsyncIterator[bytes] | None
    ) -> Response:
        try:
            r = await self._client.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise NetworkError(f"could not reach the server at {self.base_url}: {exc}") from exc
        parsed: Any = None
        if r.content and r.headers.get("content-type", "").startswith("application/problem+json"):
            try:
                parsed = r.json()
            except ValueError:
                parsed = None
        return Response(r.status_code, parsed, dict(r.headers))

    @asynccontextmanager
    async def stream_get(
        self, path: str, headers: dict[str, str], token: str
    ) -> AsyncIterator[httpx.Response]:
        """A streamed ``GET`` (attachment downloads): the response is open inside the block;
        transport failures (also while reading) become :class:`NetworkError`."""
        request = self._client.build_request(
            "GET", path, headers={**headers, "Authorization": f"Bearer {token}"}
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise NetworkError(f"could not reach the server at {self.base_url}: {exc}") from exc
        try:
            yield response
        except httpx.HTTPError as exc:
            raise NetworkError(f"the download from {self.base_url} broke off: {exc}") from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    """Yield ``data`` once and drop it (see :meth:`HttpTransport.send_bytes`)."""
    box = [data]
    del data
    yield box.pop()
