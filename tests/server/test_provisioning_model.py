"""Property test of the provisioning mailbox (issue 12) against a model, on the real database:
for any sequence of puts, takes and deletes with the right, the swapped or a wrong secret, the
repository answers exactly what a one-slot mailbox with a put budget answers."""

from __future__ import annotations

import asyncio
import hashlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saltline.server.storage import migrate
from saltline.server.storage.db import Database
from saltline.server.storage.provisioning_repo import ProvisioningRepo, PutOutcome, TakeOutcome

MAX_PUTS = 3
# (operation, which secret): "own" = the operation's secret, "other" = the other one, "wrong"
OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "take", "delete"]), st.sampled_from(["own", "own", "own", "other", "wrong"])
    ),
    max_size=14,
)


class Model:
    def __init__(self) -> None:
        self.alive = True
        self.slot: bytes | None = None
        self.puts = 0

    def put(self, ok: bool, payload: bytes) -> PutOutcome:
        if not (ok and self.alive):
            return PutOutcome.NOT_FOUND
        if self.puts >= MAX_PUTS:
            return PutOutcome.TOO_MANY_PUTS
        if self.slot is not None:
            return PutOutcome.SLOT_FULL
        self.slot, self.puts = payload, self.puts + 1
        return PutOutcome.STORED

    def take(self, ok: bool) -> tuple[TakeOutcome, bytes | None]:
        if not (ok and self.alive):
            return TakeOutcome.NOT_FOUND, None
        if self.slot is None:
            return TakeOutcome.EMPTY, None
        taken, self.slot = self.slot, None
        return TakeOutcome.TAKEN, taken

    def delete(self, ok: bool) -> bool:
        if not (ok and self.alive):
            return False
        self.alive = False
        return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_mailbox_matches_the_model(sqlite_url: str, ops: list[tuple[str, str]]) -> None:
    migrate.upgrade(sqlite_url)

    async def run() -> None:
        db = Database.open(sqlite_url)
        try:
            repo = ProvisioningRepo(db)
            channel = os.urandom(16)
            put_hash, take_hash, wrong = (hashlib.sha256(os.urandom(32)).digest() for _ in range(3))
            await repo.create(channel, put_hash, take_hash, 1_000, 10_000_000)
            model = Model()
            for op, which in ops:
                if op == "put":
                    secret = {"own": put_hash, "other": take_hash, "wrong": wrong}[which]
                    payload = os.urandom(8)
                    got = await repo.put(channel, secret, payload, 2_000, MAX_PUTS)
                    assert got == model.put(which == "own", payload)
                elif op == "take":
                    secret = {"own": take_hash, "other": put_hash, "wrong": wrong}[which]
                    assert await repo.take(channel, secret, 2_000) == model.take(which == "own")
                else:
                    secret = {"own": take_hash, "other": put_hash, "wrong": wrong}[which]
                    assert await repo.delete(channel, secret, 2_000) == model.delete(which == "own")
            # and everything is gone once the channel expired
            assert await repo.take(channel, take_hash, 10_000_000) == (TakeOutcome.NOT_FOUND, None)
        finally:
            await db.dispose()

    asyncio.run(run())
