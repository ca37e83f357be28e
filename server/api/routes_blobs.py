"""Blobs: encrypted uploads shared between the devices of one account (history bundles for a
newly linked device). Ciphertext only; the key travels end-to-end encrypted."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from saltline.crypto.keys import b64encode
from saltline.server.api.deps import Ctx, CurrentDevice
from saltline.server.api.schemas import B64, Strict

router = APIRouter(prefix="/v1/blobs", tags=["blobs"])


class BlobUpload(Strict):
    data: Annotated[str, Field(min_length=1, max_length=1_000_000, pattern=B64)] = Field(
        description="the ciphertext (base64url); the server's `max_blob_bytes` limits its size"
    )


class BlobCreated(BaseModel):
    blob_id: str
    size: int


class BlobData(BaseModel):
    blob_id: str
    data: str


@router.post(
    "",
    status_code=201,
    response_model=BlobCreated,
    responses={
        413: {"description": "too large (`limit`: max_blob_bytes)"},
        429: {"description": "rate limited"},
    },
)
async def upload_blob(body: BlobUpload, ctx: Ctx, me: CurrentDevice) -> BlobCreated:
    blob_id, size = await ctx.blobs.upload(me, body.data)
    return BlobCreated(blob_id=blob_id, size=size)


@router.get("/{blob_id:id}", response_model=BlobData, responses={404: {"description": "no such blob"}})
async def download_blob(blob_id: str, ctx: Ctx, me: CurrentDevice) -> BlobData:
    """For any device of the uploader's account; 404 for others and for unknown ids."""
    return BlobData(blob_id=blob_id, data=b64encode(await ctx.blobs.download(me, blob_id)))
