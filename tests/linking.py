"""Linking two SDK clients in a test: the new device shows its code and confirmation code, the
approving device confirms only when the code it shows is the one the new device showed (what the
person compares), both run at once (the handshake needs both)."""

from __future__ import annotations

import asyncio

from saltline.client_sdk.client import Client, LinkConfirmation, LinkRequest
from saltline.client_sdk.facets.linking import HistoryDepth


async def link(
    approver: Client,
    new: Client,
    *,
    history: HistoryDepth = "all",
    name: str = "New device",
    wait_s: float = 30.0,
) -> str:
    """Link ``new`` to ``approver``'s account; returns the account id."""
    code = await new.begin_link(name)
    shown: list[str] = []

    def on_code(c: LinkConfirmation) -> None:
        shown.append(c.code)

    def confirm(request: LinkRequest) -> bool:
        return shown == [request.code] and request.name == name

    _, account_id = await asyncio.gather(
        approver.approve_link(code, history=history, confirm=confirm, wait_s=wait_s),
        new.complete_link(wait_s=wait_s, on_code=on_code),
    )
    return account_id
