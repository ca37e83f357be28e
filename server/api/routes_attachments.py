"""Attachments over HTTP: the core of TUS 1.0 (https://tus.io/protocols/resumable-upload) for
uploads, and ranged ``GET`` for downloads (docs/protocol/delivery.md § 10).

- ``POST /v1/attachments`` with ``Upload-Length`` (a Padmé bucket) creates an upload: 201,
  ``Location``, ``Upload-Offset: 0``.
- ``HEAD /v1/attachments/{attachment}``: ``Upload-Offset`` and ``Upload-Length``.
- ``PATCH /v1/attachments/{attachment}`` with ``Upload-Offset`` and a body of
  ``application/offset+octet-stream`` (up to the rest of the upload): 204 with the new
  ``Upload-Offset``; a request cut off midway keeps what arrived.
- ``GET /v1/attachments/{attachment}``: the ciphertext (``Range`` for resuming: 206).

Every request but ``GET`` carries ``Tus-Resumable: 1.0.0`` and every answer names it. Deviation
from TUS: a missing or other ``Tus-Resumable`` is refused by request validation (422) rather
than 412, so the OpenAPI document states it like every other rule.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from saltline.server.api.deps import Ctx, CurrentDevice
from saltline.server.errors import Problem, ProblemCode

router = APIRouter(prefix="/v1/attachments", tags=["attachments"])

TUS_VERSION = "1.0.0"
OFFSET_MEDIA_TYPE = "application/offset+octet-stream"
#: 32 bytes of canonical unpadded base64url (the last character carries 2 zero bits).
ATTACHMENT_ID_REGEX = "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"

AttachmentRef = Annotated[
    str,
    Path(pattern=ATTACHMENT_ID_REGEX, min_length=43, max_length=43, description="the 32-byte id"),
]
TusResumable = Annotated[Literal["1.0.0"], Header(alias="Tus-Resumable")]
_HEADERS = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}


class AttachmentCreated(BaseModel):
    attachment_id: str
    upload_length: int
    upload_offset: int


@router.post(
    "",
    status_code=201,
    response_model=AttachmentCreated,
    responses={
        413: {"description": "longer than `max_attachment_bytes` (`limit`)"},
        422: {"description": "`attachment_length_not_padded` (`padded`)"},
        429: {"description": "rate limited"},
        507: {"description": "the account's attachment quota is full (`limit`, `stored`)"},
    },
)
async def create_attachment(
    ctx: Ctx,
    me: CurrentDevice,
    response: Response,
    tus_resumable: TusResumable,
    upload_length: Annotated[int, Header(alias="Upload-Length", ge=0)],
) -> AttachmentCreated:
    """Create an upload of ``Upload-Length`` bytes (padded ciphertext)."""
    attachment_id = await ctx.attachments.create(me, upload_length)
    response.headers.update(
        {**_HEADERS, "Location": f"/v1/attachments/{attachment_id}", "Upload-Offset": "0"}
    )
    return AttachmentCreated(attachment_id=attachment_id, upload_length=upload_length, upload_offset=0)


@router.head(
    "/{attachment}",
    status_code=200,
    responses={404: {"description": "no such attachment"}, 410: {"description": "expired"}},
)
async def attachment_offset(
    attachment: AttachmentRef, ctx: Ctx, me: CurrentDevice, tus_resumable: TusResumable
) -> Response:
    """The upload's offset and length (resuming an upload)."""
    offset, length = await ctx.attachments.status(attachment)
    return Response(
        status_code=200, headers={**_HEADERS, "Upload-Offset": str(offset), "Upload-Length": str(length)}
    )


class _Body:
    """The request body as pieces; :meth:`drain` reads what is left before an error answer (an
    unread body would otherwise be taken for the next request on a kept-alive connection). A
    client that disconnects midway simply ends the pieces: what arrived is kept."""

    def __init__(self, request: Request) -> None:
        self._stream = request.stream()
        self._done = False

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._stream:
                if piece:
                    yield piece
        except ClientDisconnect:
            pass
        self._done = True

    async def drain(self) -> None:
        if not self._done:
            async for _piece in self._stream:
                pass
            self._done = True


@router.patch(
    "/{attachment}",
    status_code=204,
    responses={
        403: {"description": "not the uploader's account"},
        404: {"description": "no such attachment"},
        409: {"description": "`attachment_offset_mismatch` (`offset`)"},
        410: {"description": "expired"},
        413: {"description": "more than the rest of the upload's length (`limit`)"},
        415: {"description": "not application/offset+octet-stream"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OFFSET_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def append_attachment(
    attachment: AttachmentRef,
    request: Request,
    ctx: Ctx,
    me: CurrentDevice,
    tus_resumable: TusResumable,
    upload_offset: Annotated[int, Header(alias="Upload-Offset", ge=0)],
) -> Response:
    """Append the body at ``Upload-Offset`` (up to the rest of the upload; the offset moves
    every ``attachment_commit_bytes`` while it streams, and a request cut off midway keeps
    what arrived: ask ``HEAD`` and go on from there)."""
    body = _Body(request)
    try:
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != OFFSET_MEDIA_TYPE:
            raise Problem(415, ProblemCode.UNSUPPORTED_MEDIA_TYPE, f"the body must be {OFFSET_MEDIA_TYPE}")
        declared = request.headers.get("content-length")
        new = await ctx.attachments.append(
            me,
            attachment,
            upload_offset,
            body.pieces(),
            int(declared) if declared is not None and declared.isdigit() else None,
        )
    except Problem:
        await body.drain()
        raise
    return Response(status_code=204, headers={**_HEADERS, "Upload-Offset": str(new)})


@router.get(
    "/{attachment}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        206: {
            "description": "the requested range",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        404: {"description": "no such attachment"},
        409: {"description": "`attachment_incomplete`"},
        410: {"description": "expired"},
        416: {"description": "`range_not_satisfiable`"},
    },
)
async def download_attachment(
    attachment: AttachmentRef,
    ctx: Ctx,
    me: CurrentDevice,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> StreamingResponse:
    """The padded ciphertext, for any authenticated device presenting the id."""
    row, start, end, partial = await ctx.attachments.open(attachment, range_header)
    headers = {**_HEADERS, "Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{row.length}"
    return StreamingResponse(
        ctx.attachments.stream(row, start, end),
        status_code=206 if partial else 200,
        media_type="application/octet-stream",
        headers=headers,
    )
