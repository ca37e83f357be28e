"""Conversations: who may send to whom. Membership is server-visible routing metadata.

Rules:
- A conversation is ``direct`` (exactly two accounts; at most one per pair: creating it again
  returns the existing one) or ``group`` (the creator plus 0..max_recipients-1 others).
- The creator is always a member. Ids are 16 random bytes.
- Only members can see a conversation, list its envelopes, send to it or change its members;
  to anyone else it does not exist (404 ``conversation_not_found``).
- In a group any member may add an account or remove one (including leaving). There are no
  admins on the server: the clients' signed membership operations carry the policy; the server's
  list only decides routing. A direct conversation's membership never changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from enum import StrEnum

from saltline.crypto.errors import EncodingError
from saltline.crypto.keys import b64decode, b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.storage.conversations_repo import ConversationRow, ConversationsRepo

CONVERSATION_ID_SIZE = 16
#: ``GET /v1/conversations`` page size: the default is the largest page, so a client that does
#: not page (before cursors existed) sees the first 1000 as before.
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 1000
#: A list cursor: base64url (no padding) of created_at_ms (8 bytes, big-endian) || id (16 bytes).
CURSOR_BYTES = 8 + CONVERSATION_ID_SIZE
#: created_at_ms below 2^62 (its first character carries the top six bits: at most 0b001111).
CURSOR_PATTERN = r"^[A-P][A-Za-z0-9_-]{31}$"
MAX_CURSOR_MS = 2**62


def encode_cursor(row: ConversationRow) -> str:
    return b64encode(row.created_at_ms.to_bytes(8, "big") + row.id)


def decode_cursor(cursor: str) -> tuple[int, bytes]:
    try:
        raw = b64decode(cursor)
    except (EncodingError, ValueError):
        raw = b""
    at_ms = int.from_bytes(raw[:8], "big")
    if len(raw) != CURSOR_BYTES or at_ms >= MAX_CURSOR_MS:
        raise Problem(
            422, ProblemCode.VALIDATION_FAILED, "after is not a cursor this server gave", field="after"
        )
    return at_ms, raw[8:]


class ConversationKind(StrEnum):
    DIRECT = "direct"
    GROUP = "group"


def _not_found() -> Problem:
    return Problem(404, ProblemCode.CONVERSATION_NOT_FOUND, "no such conversation")


class ConversationsService:
    def __init__(
        self,
        repo: ConversationsRepo,
        clock: Clock,
        *,
        max_members: int,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._repo = repo
        self._clock = clock
        self._max_members = max_members
        self._rng = rng

    @property
    def repo(self) -> ConversationsRepo:
        return self._repo

    async def create(
        self, creator: bytes, kind: ConversationKind, members: Sequence[bytes]
    ) -> tuple[ConversationRow, bool]:
        """Create a conversation; returns it and whether it is new."""
        everyone = list(dict.fromkeys([creator, *members]))
        if kind is ConversationKind.DIRECT and len(everyone) != 2:
            raise Problem(
                422,
                ProblemCode.VALIDATION_FAILED,
                "a direct conversation has exactly one other member",
            )
        if len(everyone) > self._max_members:
            raise Problem(
                413,
                ProblemCode.TOO_MANY_RECIPIENTS,
                f"a conversation has at most {self._max_members} members",
            )
        known = await self._repo.existing_accounts(everyone)
        unknown = [m for m in everyone if m not in known]
        if unknown:
            raise Problem(
                422,
                ProblemCode.UNKNOWN_ACCOUNTS,
                "some members are not registered accounts",
                accounts=[b64encode(m) for m in unknown],
            )
        direct_key = b"".join(sorted(everyone)) if kind is ConversationKind.DIRECT else None
        conversation_id, created = await self._repo.create(
            conversation_id=self._rng(CONVERSATION_ID_SIZE),
            kind=kind.value,
            direct_key=direct_key,
            created_by=creator,
            members=everyone,
            now_ms=self._clock(),
        )
        row = await self._repo.get(conversation_id)
        if row is None:  # pragma: no cover - deleted in between
            raise _not_found()
        return row, created

    async def list_for(
        self, account_id: bytes, *, limit: int = DEFAULT_LIST_LIMIT, cursor: str | None = None
    ) -> tuple[list[ConversationRow], str | None]:
        """One page of the account's conversations (oldest first) and the cursor of the next
        page (``None`` when this page is the last)."""
        after = None if cursor is None else decode_cursor(cursor)
        rows = await self._repo.list_for_account(account_id, limit=limit + 1, after=after)
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1])

    async def get_for(self, account_id: bytes, conversation_id: bytes) -> ConversationRow:
        row = await self._repo.get(conversation_id)
        if row is None or account_id not in row.members:
            raise _not_found()
        return row

    async def require_member(self, account_id: bytes, conversation_id: bytes) -> None:
        if not await self._repo.is_member(conversation_id, account_id):
            raise _not_found()

    async def add_member(self, caller: bytes, conversation_id: bytes, account_id: bytes) -> ConversationRow:
        row = await self.get_for(caller, conversation_id)
        if row.kind == ConversationKind.DIRECT:
            raise Problem(
                409, ProblemCode.DIRECT_CONVERSATION_FIXED, "a direct conversation's members are fixed"
            )
        if account_id in row.members:
            return row
        if len(row.members) + 1 > self._max_members:
            raise Problem(
                413,
                ProblemCode.TOO_MANY_RECIPIENTS,
                f"a conversation has at most {self._max_members} members",
            )
        if not await self._repo.existing_accounts([account_id]):
            raise Problem(
                422,
                ProblemCode.UNKNOWN_ACCOUNTS,
                "not a registered account",
                accounts=[b64encode(account_id)],
            )
        await self._repo.add_member(conversation_id, account_id, self._clock())
        return await self.get_for(caller, conversation_id)

    async def remove_member(
        self, caller: bytes, conversation_id: bytes, account_id: bytes
    ) -> ConversationRow | None:
        """Remove ``account_id``; returns the conversation as the caller now sees it (``None`` if
        the caller removed themselves)."""
        row = await self.get_for(caller, conversation_id)
        if row.kind == ConversationKind.DIRECT:
            raise Problem(
                409, ProblemCode.DIRECT_CONVERSATION_FIXED, "a direct conversation's members are fixed"
            )
        if account_id not in row.members:
            raise Problem(404, ProblemCode.NOT_FOUND, "not a member of this conversation")
        await self._repo.remove_member(conversation_id, account_id)
        if account_id == caller:
            return None
        return await self.get_for(caller, conversation_id)
