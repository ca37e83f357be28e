"""Authoring: this device's next operation in a conversation (docs/protocol/sync.md § 3, § 9)."""

from __future__ import annotations

from saltline.client_sdk.core.sync.clock import Dot
from saltline.client_sdk.core.sync.ops import Body, Op, Typing
from saltline.client_sdk.core.sync.state import ConversationState


class Composer:
    """Makes this device's operations: ticks its counter (persist :attr:`counter` and
    :attr:`lamport` before sending; a reused dot would be dropped as a duplicate) and stamps the
    compact clock of what ``state`` has applied."""

    def __init__(self, device_id: bytes, account_id: bytes, counter: int = 0, lamport: int = 0) -> None:
        self.device_id = device_id
        self.account_id = account_id
        self.counter = counter
        self.lamport = lamport

    def compose(self, state: ConversationState, body: Body) -> Op:
        if isinstance(body, Typing):  # ephemeral: no dot of its own, no tick
            clock = state.local_clock(self.device_id, self.counter)
            return Op(Dot(self.device_id, 0), self.account_id, clock, self.lamport, body)
        self.counter = max(self.counter, state.applied_clock().get(self.device_id, 0)) + 1
        self.lamport = max(self.lamport, state.max_lamport) + 1
        clock = state.local_clock(self.device_id, self.counter)
        return Op(Dot(self.device_id, self.counter), self.account_id, clock, self.lamport, body)
