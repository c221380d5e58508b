"""Group commit: the requests an ingest process has ready share one transaction and one fsync.

Why: with `synchronous=FULL` every commit waits for the disk (about 2 ms here), and it does so
holding the store's write lock, which every ingest process needs. One commit per request made
the write lock, not the cores, what capped ingest. Here a process's requests queue once they
are validated; one task appends them, and asks for what is queued only once it holds the write
lock (`ChainStore.append_group`), so every request validated while it waited (for another
process's commit, say) goes into the same transaction. Each request still gets exactly its own
answer, and is acknowledged only after the commit that holds it.

Nothing waits for company: a request that finds the queue empty and no commit running is
committed at once, alone. A group is at most `MAX_GROUP_ROWS` rows, so that the write lock is
never held for long. If the transaction fails, every request in it fails, and none of them is
stored (as for a single request).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from sealtrail.chain.ingest_keys import IngestKey, KeyConflict, KeyReplay
from sealtrail.chain.store import ChainStore, Stored

__all__ = ["MAX_GROUP_ROWS", "GroupCommit", "Outcome"]

#: The most rows one transaction takes from the queue (a single request may have more).
MAX_GROUP_ROWS: Final = 5_000

Outcome = list[Stored] | KeyReplay | KeyConflict


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
                taken: list[_Waiting] = []

                def take(taken: list[_Waiting] = taken) -> list[
                        tuple[list[dict[str, Any]], IngestKey | None]]:
                    # Runs in the store's thread, holding the write lock: deque's popleft and
                    # the event loop's append are each atomic.
                    rows = 0
                    while self._queue and (not taken
                                           or rows + len(self._queue[0].rows) <= MAX_GROUP_ROWS):
                        item = self._queue.popleft()
                        taken.append(item)
                        rows += len(item.rows)
                    return [(item.rows, item.key) for item in taken]

                try:
                    outcomes = await asyncio.to_thread(self._store.append_group, take)
                except Exception as error:  # noqa: BLE001 - every request in it gets the error
                    # The lock was never held (nothing taken): fail what is queued rather than
                    # try again for good.
                    failed = taken or [self._queue.popleft() for _ in range(len(self._queue))]
                    for item in failed:
                        if not item.answer.done():
                            item.answer.set_exception(error)
                    continue
                for item, outcome in zip(taken, outcomes, strict=True):
                    if not item.answer.done():
                        item.answer.set_result(outcome)
        finally:
            self._committer = None
