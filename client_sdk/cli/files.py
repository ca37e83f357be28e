"""``saltline download REF [--to DIR]`` and how attachments are shown (``send --file`` is in
:mod:`saltline.client_sdk.cli.messaging`). A reference is the start of the attachment's id (at least 8
characters), as ``messages`` and ``follow`` print it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from saltline.client_sdk.cli.app import (
    IDS_MAY_START_WITH_DASH,
    app,
    cli_state,
    emit,
    fail,
    open_client,
    out,
    run,
)
from saltline.client_sdk.core.attachments import AttachmentPointer, pointer_of

if TYPE_CHECKING:
    from saltline.client_sdk.client import Client
    from saltline.client_sdk.stores.base import MessageRecord

REF_CHARS = 12
MIN_REF_CHARS = 8


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def attachment_label(pointer: AttachmentPointer | None) -> str:
    """`` [file NAME, SIZE, ref REF]`` (empty without an attachment)."""
    if pointer is None:
        return ""
    return f" [file {pointer.name}, {human_size(pointer.size)}, ref {pointer.ref[:REF_CHARS]}]"


def message_pointer(record: MessageRecord) -> AttachmentPointer | None:
    return pointer_of(record.body) if record.body else None


def find_attachment(client: Client, ref: str) -> AttachmentPointer:
    if len(ref) < MIN_REF_CHARS:
        fail(f"a reference has at least {MIN_REF_CHARS} characters (as `messages` prints it)")
    found: dict[str, AttachmentPointer] = {}
    for conversation in client.store.conversations.conversations():
        for record in client.messages(conversation.conversation_id, limit=100_000):
            pointer = message_pointer(record)
            if pointer is not None and pointer.ref.startswith(ref):
                found[pointer.ref] = pointer
    if not found:
        fail(f"no attachment {ref!r} in this device's messages (run `saltline messages` first)")
    if len(found) > 1:
        fail(f"{ref!r} names {len(found)} attachments: give more characters")
    return next(iter(found.values()))


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def download(
    ctx: typer.Context,
    ref: str,
    to: Annotated[Path, typer.Option("--to", help="Directory to save the file in")] = Path("."),
) -> None:
    """Download, verify and decrypt an attachment received in a message (REF as `messages` shows)."""
    state = cli_state(ctx)
    if not to.is_dir():
        fail(f"not a directory: {to}")

    async def work() -> Path:
        async with open_client(state) as client:
            return await client.download(find_attachment(client, ref), to)

    saved = run(work())
    if state.json:
        emit({"path": str(saved)})
    else:
        out.print(f"saved {saved}", markup=False)
