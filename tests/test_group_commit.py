"""Group commit (worker/group_commit.py): requests ready together share one transaction.

What a client relies on, checked on a real store: each request gets exactly its own rows'
positions, in one gap-free chain; a request's `Idempotency-Key` works inside a group (the same
key twice in one group stores once); a failed transaction fails every request in it and stores
none of them; and requests that arrive while another process holds the write lock wait for
it together and commit in fewer transactions than there are requests.
"""

from __future__ import annotations

import asyncio
import fcntl
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from sealtrail.api.event import Event, Severity
from sealtrail.chain.ingest_keys import IngestKey, KeyReplay
from sealtrail.chain.store import ChainStore, StoreError
from sealtrail.chain.verify import Status, verify_store
from sealtrail.worker.group_commit import MAX_GROUP_ROWS, GroupCommit


def rows(tenant: str, count: int, tag: str) -> list[dict[str, Any]]:
    return [Event(event_type="safety.decision", severity=Severity.INFO, tenant_id=tenant,
                  action=f"{tag}-{n}").row_fields() for n in range(count)]


def key(name: str) -> IngestKey:
    return IngestKey(name, "digest", lambda stored: orjson.dumps([s.seq for s in stored]))


class Counted(ChainStore):
    """A store that counts its transactions."""

    transactions = 0

    def group_transaction(self) -> Any:
        self.transactions += 1
        return super().group_transaction()


def test_requests_waiting_for_the_lock_commit_together_each_with_its_own_answer(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = Counted(path)
    other = ChainStore(path)  # another ingest process, holding the write lock for a while
    release = threading.Event()

    def hold() -> None:
        fcntl.flock(other._lock_fd, fcntl.LOCK_EX)
        release.wait(10)
        fcntl.flock(other._lock_fd, fcntl.LOCK_UN)

    async def main() -> list[Any]:
        commits = GroupCommit(store)
        holder = threading.Thread(target=hold)
        holder.start()
        requests = [asyncio.create_task(commits.append(rows(f"t{n % 3}", 10, f"r{n}"),
                                                       key(f"k{n}") if n % 2 else None))
                    for n in range(20)]
        await asyncio.sleep(0.3)  # all queued (the first waits in the store for the lock)
        release.set()
        answers = await asyncio.gather(*requests)
        holder.join()
        return answers

    answers = asyncio.run(main())
    assert store.transactions <= 2  # the first alone (it took the queue), then the other 19
    seqs = [stored.seq for answer in answers for stored in answer]
    assert sorted(seqs) == list(range(1, 201))
    with ChainStore(path) as reader:
        stored_rows = {orjson.loads(body)["seq"]: orjson.loads(body) for body in reader.rows()}
    for n, answer in enumerate(answers):  # each request's answer names its own rows
        assert [stored_rows[s.seq]["action"] for s in answer] == [f"r{n}-{i}" for i in range(10)]
        assert {stored_rows[s.seq]["tenant_id"] for s in answer} == {f"t{n % 3}"}
    assert verify_store(path).status is Status.INTACT
    store.close()
    other.close()


def test_one_key_twice_in_a_group_stores_once(tmp_path: Path) -> None:
    store = ChainStore(tmp_path / "audit.db")

    async def main() -> list[Any]:
        commits = GroupCommit(store)
        return list(await asyncio.gather(commits.append(rows("a", 3, "x"), key("same")),
                                         commits.append(rows("a", 3, "x"), key("same"))))

    first, second = asyncio.run(main())
    assert isinstance(first, list)
    assert second == KeyReplay(orjson.dumps([s.seq for s in first]))
    assert store.last_seq() == 3
    store.close()


def test_a_failed_transaction_fails_every_request_in_it_and_stores_none(tmp_path: Path) -> None:
    store = ChainStore(tmp_path / "audit.db")
    store.append_fields(rows("a", 1, "before"))

    def broken(_: list[Any]) -> bytes:
        raise StoreError("the disk is full")

    async def main() -> list[Any]:
        commits = GroupCommit(store)
        return list(await asyncio.gather(
            commits.append(rows("a", 3, "x"), None),
            commits.append(rows("b", 3, "y"), IngestKey("k", "d", broken)),
            commits.append(rows("a", 3, "z"), None), return_exceptions=True))

    outcomes = asyncio.run(main())
    # All three were queued before the committer ran: one transaction, failed by the key's
    # answer, and none of the three stored.
    assert all(isinstance(outcome, StoreError) for outcome in outcomes)
    assert store.last_seq() == 1
    assert store.find_key("k", "d") is None
    store.close()


def test_a_group_is_bounded_in_rows(tmp_path: Path) -> None:
    store = Counted(tmp_path / "audit.db")

    async def main() -> None:
        commits = GroupCommit(store)
        await asyncio.gather(*(commits.append(rows("a", 1000, f"r{n}"), None)
                               for n in range(12)))

    asyncio.run(main())
    assert store.last_seq() == 12_000
    assert store.transactions >= 12_000 // MAX_GROUP_ROWS + 1
    store.close()


@pytest.mark.parametrize("count", [0, 1])
def test_nothing_waits_for_company(tmp_path: Path, count: int) -> None:
    store = Counted(tmp_path / "audit.db")

    async def main() -> Any:
        return await asyncio.wait_for(GroupCommit(store).append(rows("a", count + 1, "x"), None),
                                      5)

    assert len(asyncio.run(main())) == count + 1
    assert store.transactions == 1
    store.close()


def test_a_cancelled_commit_never_keeps_the_write_lock(tmp_path: Path) -> None:
    """Cancelled while its thread waits for the lock, the committer lets the lock go."""
    path = tmp_path / "audit.db"
    store, other = ChainStore(path), ChainStore(path)
    release = threading.Event()

    def hold() -> None:  # another ingest process in a long transaction
        fcntl.flock(other._lock_fd, fcntl.LOCK_EX)
        release.wait(10)
        fcntl.flock(other._lock_fd, fcntl.LOCK_UN)

    async def main() -> None:
        commits = GroupCommit(store)
        holder = threading.Thread(target=hold)
        holder.start()
        request = asyncio.create_task(commits.append(rows("a", 1, "x"), None))
        await asyncio.sleep(0.2)  # the committer's thread now waits for the lock
        committer = commits._committer
        assert committer is not None
        committer.cancel()
        release.set()  # its thread gets the lock, and must let it go again
        await asyncio.wait([committer], timeout=10)
        assert committer.cancelled()
        request.cancel()
        holder.join()

    asyncio.run(main())
    done = threading.Event()

    def append_elsewhere() -> None:
        other.append_fields(rows("b", 1, "y"))
        done.set()

    threading.Thread(target=append_elsewhere, daemon=True).start()
    assert done.wait(10), "the cancelled commit kept the store's write lock"
    assert store.last_seq() == 1  # only the other process's row: the cancelled one never was
    store.close()
    other.close()


def test_what_status_reads_never_waits_for_a_group_commit_in_flight(tmp_path: Path) -> None:
    """Status, the UI and new export loops read on the event loop that runs the appends.

    Between `begin` (in a thread) and `append` (on the loop) the group commit holds the write
    lock; a read on the loop that waited for it would wait for itself, and the worker would
    hang (CI saw status polls do this: a request then got no answer at all).
    """
    path = tmp_path / "audit.db"
    store = ChainStore(path)
    store.append_fields(rows("a", 3, "before"))
    transaction = store.group_transaction()
    transaction.begin()  # the write lock is held, as between a group commit's steps
    read: dict[str, Any] = {}

    def status_reads() -> None:
        read["heads"] = store.heads()
        read["checkpoints"] = store.latest_checkpoints()
        read["tenants"] = store.tenants()
        read["anchors"] = store.anchors()
        read["cursor"] = store.cursor("new-export")

    reader = threading.Thread(target=status_reads, daemon=True)
    reader.start()
    reader.join(10)
    try:
        assert not reader.is_alive(), "a read waited for the write lock"
        assert [head.tenant_seq for head in read["heads"]] == [3]
        assert read["tenants"] == ["a"]
        assert (read["checkpoints"], read["anchors"], read["cursor"]) == ([], [], 0)
    finally:
        transaction.abort(RuntimeError("test over"))
        store.close()
