"""Group commit: one writer task turns concurrent sends and acknowledgements into few transactions.

Rules (docs/protocol/delivery.md § 3.6):

- Callers enqueue a job and await its future. The future resolves only after the transaction that
  contains the job has committed, so nothing is acknowledged before it is durable.
- The writer takes everything queued when it becomes free (up to ``max_batch`` jobs) and applies
  it in ONE transaction. No artificial delay: under load, batches form by themselves while the
  previous commit is in flight; when idle, a lone job is committed at once.
- A failed batch must not fail innocent jobs: the writer retries each job of the failed batch in
  its own transaction, and only the job that fails alone gets the exception.
- One writer per process also means SQLite never sees two writers fight for its lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from saltline.server.clock import Clock
from saltline.server.storage.envelopes_repo import AckRequest, NewEnvelope, SendOutcome

log = logging.getLogger(__name__)


class BatchStore(Protocol):
    async def write_batch(
        self, sends: Sequence[NewEnvelope], acks: Sequence[AckRequest], now_ms: int
    ) -> list[SendOutcome]: ...


class WriterClosedError(RuntimeError):
    """The writer is shutting down and takes no new jobs."""


@dataclass(slots=True)
class _Job:
    send: NewEnvelope | None = None
    ack: AckRequest | None = None
    future: asyncio.Future[SendOutcome | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitWriter:
    def __init__(
        self,
        store: BatchStore,
        clock: Clock,
        *,
        max_batch: int = 512,
        on_batch: Callable[[int], None] | None = None,
        on_commit: Callable[[Sequence[NewEnvelope], Sequence[SendOutcome]], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def close(self) -> None:
        """Finish the jobs already queued, then stop."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def send(self, envelope: NewEnvelope) -> SendOutcome:
        result = await self._submit(_Job(send=envelope))
        assert result is not None
        return result

    async def ack(self, ack: AckRequest) -> None:
        await self._submit(_Job(ack=ack))

    async def _submit(self, job: _Job) -> SendOutcome | None:
        if self._closed or self._task is None:
            raise WriterClosedError("the delivery writer is not running")
        self._queue.put_nowait(job)
        job.future.add_done_callback(_consume_exception)
        # Shield: a caller that goes away (client disconnect) must not cancel a job that may be
        # committing; the job completes and its result is simply dropped.
        return await asyncio.shield(job.future)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            await self._commit(batch)

    async def _commit(self, batch: list[_Job]) -> None:
        try:
            await self._apply(batch)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning(
                "group commit of %d jobs failed (%s); retrying them one by one",
                len(batch),
                type(exc).__name__,
            )
            for job in batch:
                try:
                    await self._apply([job])
                except Exception as single_exc:
                    _fail(job, single_exc)

    async def _apply(self, batch: list[_Job]) -> None:
        sends = [j for j in batch if j.send is not None]
        acks = [j.ack for j in batch if j.ack is not None]
        envelopes = [j.send for j in sends if j.send is not None]
        outcomes = await self._store.write_batch(envelopes, acks, self._clock())
        if self._on_batch is not None:
            self._on_batch(len(batch))
        if self._on_commit is not None and envelopes:
            # Committed: hand the new queue entries to the sockets held here before anyone is
            # answered (in commit order, so a device sees its queue_seqs in order). Must not raise.
            try:
                self._on_commit(envelopes, outcomes)
            except Exception:
                log.exception("delivery writer on_commit hook failed")
        for job, outcome in zip(sends, outcomes, strict=True):
            if not job.future.done():
                job.future.set_result(outcome)
        for job in batch:
            if job.ack is not None and not job.future.done():
                job.future.set_result(None)


def _consume_exception(future: asyncio.Future[SendOutcome | None]) -> None:
    # Mark the exception retrieved: the awaiting caller may have gone away.
    if not future.cancelled():
        future.exception()


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
