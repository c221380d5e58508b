"""Group commit: the requests an ingest process has ready share one transaction and one fsync.

Why: with `synchronous=FULL` every commit waits for the disk (about 2 ms here), and it does so
holding the store's write lock, which every ingest process needs. One commit per request made
the write lock, not the cores, what capped ingest. Here a process's requests queue once they
are validated; one task appends them, and takes what is queued only once it holds the write
lock, so every request validated while it waited (for another process's commit, say) goes
into the same transaction. Each request still gets exactly its own answer, and is acknowledged
only after the commit that holds it.

Where each step runs (`ChainStore.group_transaction`): waiting for the lock and the commit's
fsync run in a thread, GIL released, so the event loop goes on reading and validating other
requests meanwhile; appending the rows (canonical JSON, hashing, inserts) runs on the event
loop itself. Run in a thread, it shared the GIL with the event loop's validation of the next
requests and took about twice as long, and the write lock it holds is every process's
bottleneck (about 13.6 µs of lock per row with it in a thread, ~8 on the loop: see
docs/performance.md, and how it was measured).

Nothing waits for company: a request that finds the queue empty and no commit running is
committed at once, alone. A group is at most `MAX_GROUP_ROWS` rows, so that the write lock is
never held for long. If the transaction fails, every request in it fails, and none of them is
stored (as for a single request).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sealtrail.chain.ingest_keys import IngestKey
from sealtrail.chain.store import ChainStore, Outcome

__all__ = ["MAX_GROUP_ROWS", "GroupCommit"]

#: The most rows one transaction takes from the queue (a single request may have more).
MAX_GROUP_ROWS: Final = 5_000


@dataclass(slots=True)
class _Waiting:
    rows: list[dict[str, Any]]
    key: IngestKey | None
    answer: asyncio.Future[Outcome]


class GroupCommit:
    """The queue of one process's validated requests, and the task that commits them."""

    def __init__(self, store: ChainStore) -> None:
        """Commit into `store`."""
        self._store = store
        self._queue: deque[_Waiting] = deque()
        self._committer: asyncio.Task[None] | None = None

    async def append(self, rows: list[dict[str, Any]], key: IngestKey | None) -> Outcome:
        """Append `rows` (under `key`, if given) in the next transaction; its outcome."""
        waiting = _Waiting(rows, key, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_all(), name="group-commit")
        return await waiting.answer

    async def _commit_all(self) -> None:
        try:
            while self._queue:
                await self._commit_next()
        finally:
            self._committer = None

    async def _commit_next(self) -> None:
        """Wait for the lock, take what is queued then, append it, commit; answer each."""
        transaction = self._store.group_transaction()
        try:
            await _in_thread(transaction.begin)
        except asyncio.CancelledError:  # begin ran to its end: the lock is held, let it go
            transaction.abort(asyncio.CancelledError())
            raise
        except Exception as error:  # noqa: BLE001 - each queued request gets the error
            self._fail([self._queue.popleft() for _ in range(len(self._queue))], error)
            return
        taken = self._take()
        try:
            outcomes = transaction.append([(item.rows, item.key) for item in taken])
        except BaseException as error:
            try:
                transaction.abort(error)
            except Exception as failure:  # noqa: BLE001 - the rollback's own error is the news
                error = failure
            self._fail(taken, error)
            if not isinstance(error, Exception):
                raise
            return
        try:
            await _in_thread(transaction.commit)
        except asyncio.CancelledError:  # the commit ran to its end: the rows are stored
            self._answer(taken, outcomes)
            raise
        except Exception as error:  # noqa: BLE001 - each request in the group gets the error
            self._fail(taken, error)
            return
        self._answer(taken, outcomes)

    @staticmethod
    def _answer(items: list[_Waiting], outcomes: list[Outcome]) -> None:
        for item, outcome in zip(items, outcomes, strict=True):
            if not item.answer.done():
                item.answer.set_result(outcome)

    def _take(self) -> list[_Waiting]:
        """What is queued, up to `MAX_GROUP_ROWS` rows (at least one request)."""
        taken: list[_Waiting] = []
        rows = 0
        while self._queue and (not taken or rows + len(self._queue[0].rows) <= MAX_GROUP_ROWS):
            item = self._queue.popleft()
            taken.append(item)
            rows += len(item.rows)
        return taken

    @staticmethod
    def _fail(items: list[_Waiting], error: BaseException) -> None:
        for item in items:
            if not item.answer.done():
                item.answer.set_exception(error)


async def _in_thread(step: Callable[[], None]) -> None:
    """Run a step that takes or lets go of the write lock in a thread, to its end.

    Never abandoned half way: if the caller is cancelled meanwhile, the step still finishes
    (a lock taken and never let go would stop every ingest process) before the cancellation
    goes on; a CancelledError from here means the step itself succeeded.
    """
    running = asyncio.ensure_future(asyncio.to_thread(step))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        await running
        raise
