"""The registry of open delivery sockets in this process: at most one per device.

Registering a second connection for a device closes the first with close code 4001 (replaced).
A connection removes itself in its ``finally``; :meth:`ConnectionRegistry.unregister` only removes
the entry if it is still that connection, so a replaced connection's late cleanup never removes
its successor.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from saltline.server.services.delivery_protocol import CLOSE_REPLACED

__all__ = ["CLOSE_REPLACED", "ConnectionRegistry", "RegisteredConnection"]


class RegisteredConnection(Protocol):
    @property
    def device_id(self) -> bytes: ...

    def close_soon(self, code: int, reason: str) -> None: ...

    async def wait_closed(self) -> None: ...


class ConnectionRegistry:
    def __init__(self) -> None:
        self._by_device: dict[bytes, RegisteredConnection] = {}

    def register(self, conn: RegisteredConnection) -> RegisteredConnection | None:
        """Make ``conn`` the device's connection; the previous one (returned) is told to close."""
        old = self._by_device.get(conn.device_id)
        self._by_device[conn.device_id] = conn
        if old is not None and old is not conn:
            old.close_soon(CLOSE_REPLACED, "replaced by a newer connection")
            return old
        return None

    def unregister(self, conn: RegisteredConnection) -> None:
        if self._by_device.get(conn.device_id) is conn:
            del self._by_device[conn.device_id]

    def get(self, device_id: bytes) -> RegisteredConnection | None:
        return self._by_device.get(device_id)

    def __len__(self) -> int:
        return len(self._by_device)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._by_device

    async def close_all(self, code: int, reason: str, timeout_s: float = 5.0) -> None:
        conns = list(self._by_device.values())
        for conn in conns:
            conn.close_soon(code, reason)
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in conns], timeout=timeout_s)
