"""Small reads batched into one thread hand-off (the reconnect storm, issue 13).

Every delivery socket open needs one small read (:func:`saltline.server.storage.connect_reads
.holder_and_snapshot`, ~0.1 ms of SQLite) and every authenticated HTTP request one more (the
token's holder). Handing each to a reader thread on its own costs the event loop far more than
the read: an executor submission, a future chained back with ``call_soon_threadsafe``, and a GIL
hand-over each way (py-spy: ~15 % of the server's time in a storm of 2,000 opens, in
``ThreadPoolExecutor.submit`` and its semaphore). Here reads that arrive while one batch is on
the reader thread wait for it and go together as the next batch: one hand-off, one read
transaction for all of them (as the group-commit writer does for writes). A lone read goes at
once, so nothing waits for a timer.

Each read is a function of its own on the shared connection; if one raises, the batch's
transaction may be unusable (PostgreSQL aborts it), so the reads of that batch that have not
got a result are run again one transaction each, and only the failing read gets its exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

T = TypeVar("T")
#: One batch's reads run in one transaction; more wait for the next batch.
MAX_BATCH = 64

_Job = tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]


class ReadBatcher:
    """Runs small read functions in batches through ``run`` (one read transaction per call)."""

    def __init__(self, run: Callable[[Callable[[Connection], Any]], Awaitable[Any]]) -> None:
        self._run = run
        self._queue: list[_Job] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    async def read(self, fn: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, future))
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._run_batch(batch)
        finally:
            self._draining = False
            for _fn, future in self._queue:  # only if the loop is shutting down mid-batch
                if not future.done():
                    future.set_exception(RuntimeError("read batcher stopped"))
            self._queue = []

    async def _run_batch(self, batch: list[_Job]) -> None:
        def run_all(conn: Connection) -> list[Any]:
            return [fn(conn) for fn, _future in batch]

        try:
            results = await self._run(run_all)
        except Exception as exc:
            if len(batch) == 1:
                _fn, future = batch[0]
                if not future.done():
                    future.set_exception(exc)
                return
            for job in batch:  # find the failing read: each in its own transaction
                await self._settle_one(job)
            return
        for (_fn, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _settle_one(self, job: _Job) -> None:
        fn, future = job
        try:
            result = await self._run(fn)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)
