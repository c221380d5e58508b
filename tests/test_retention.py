"""Retention: pruning delivered, old rows while every kept row stays provable.

Covers, on real stores: a pruned store verifies intact and says what was pruned and which
signed checkpoint vouches for the rest; the cut sits right below a kept checkpoint row, and
nothing above the smallest export cursor, younger than the cutoff, or in a chain without a
checkpoint is pruned; a prune cut short between its transactions leaves a store that verifies
and goes on from there; an edit, deletion or truncation after the cut is still caught, and so
is a dropped or edited anchor table and a row removed below the cut; checkpoints given for
pruned rows are reported as pruned, one at the cut must match it; a store that cannot vouch for
its cut is refused; the file shrinks (and a store made before retention can be compacted so it
does); an older store is upgraded; the CLI shows it all. Then the issue's test: a million rows
through a store with retention on stay within a bounded size, and verify agrees with the SIEM's
copy of every row. Last, the worker: `store.retention` needs a signing key; a worker prunes only
what every export delivered (a paused export holds it back, no export prunes nothing) and
counts it on its metrics; a real worker process pruning as it ships to an Elasticsearch-like
receiver leaves a store that verifies and agrees with what the receiver holds.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from sealtrail import drill
from sealtrail.api.event import Event, format_timestamp
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.chain.canonical import seal
from sealtrail.chain.checkpoint import Checkpoint, read_checkpoints, write_checkpoints
from sealtrail.chain.keys import PublicKey, Signer, load_public_key
from sealtrail.chain.store import (
    JOURNAL_SIZE_LIMIT_BYTES,
    SCHEMA_VERSION,
    ChainStore,
    CheckpointPolicy,
)
from sealtrail.chain.verify import Status, VerifyReport, verify_rows, verify_store
from sealtrail.worker.core import WorkerCore

from .conftest import CliResult, events
from .receivers.elastic import ElasticReceiver
from .test_export_conformance import write_credential
from .worker_process import running_worker

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
#: Appends in the `pruned` store: one batch a minute.
BATCHES = 10
PER_BATCH = 40


class Clock:
    """The store's clock, moved by hand: checkpoints are signed at its time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def key(signer: Signer, tmp_path: Path) -> PublicKey:
    return load_public_key(tmp_path / "signing.key.pub")


def open_store(path: Path, signer: Signer, clock: Clock, every_rows: int = 25) -> ChainStore:
    return ChainStore(path, checkpoints=CheckpointPolicy(signer, every_rows, None), clock=clock)


def fill(store: ChainStore, clock: Clock, batches: int = BATCHES,
         tenants: tuple[str, ...] = ("acme", "globex")) -> dict[datetime, list[int]]:
    """`batches` appends of PER_BATCH events, a minute apart; the seqs stored at each time."""
    stored = {}
    for number in range(batches):
        stored[clock.now] = [item.seq for item in store.append(
            events(PER_BATCH, seed=number + 1, tenants=tenants))]
        clock.advance(60)
    return stored


#: A cutoff between the fifth and the sixth batch of the first `fill`.
HALF_WAY = T0 + timedelta(seconds=60 * BATCHES // 2 - 30)


@pytest.fixture
def pruned(db_path: Path, signer: Signer, clock: Clock) -> Path:
    """Two tenants, ten batches; everything delivered, the first half old enough."""
    with open_store(db_path, signer, clock) as store:
        fill(store, clock)
        result = store.prune(delivered_through_seq=store.last_seq(), older_than=HALF_WAY)
    assert sorted(result.chains) == ["acme", "globex"]
    assert result.refused == {}
    return db_path


def check(path: Path, key: PublicKey, **options: Any) -> VerifyReport:
    return verify_store(path, public_keys=[key], **options)


def by_tenant(report: VerifyReport) -> dict[str, Any]:
    return {item.tenant_id: item for item in report.tenants}


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


def first_kept(path: Path, tenant: str) -> tuple[int, int, str]:
    """`(seq, tenant_seq, event_type)` of a chain's first kept row."""
    (row,) = query(path, "SELECT seq, tenant_seq, event_type FROM audit_rows WHERE tenant_id = ? "
                         "ORDER BY tenant_seq LIMIT 1", (tenant,))
    return row


def anchor_of(path: Path, tenant: str) -> dict[str, Any]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM audit_pruned WHERE tenant_id = ?",
                               (tenant,)).fetchone())


# -- what pruning keeps -------------------------------------------------------------------------


def test_a_pruned_store_verifies_intact_and_says_what_was_pruned(pruned: Path,
                                                                  key: PublicKey) -> None:
    report = check(pruned, key)
    assert report.status is Status.INTACT, report.to_json()
    for name, tenant in by_tenant(report).items():
        anchor = anchor_of(pruned, name)
        assert tenant.pruned_through == anchor["tenant_seq"] > 0
        assert tenant.pruned.checkpoint.signed_at < format_timestamp(HALF_WAY)
        assert tenant.checkpoints_checked >= 1
        # Kept rows are counted as checked; pruned ones are not.
        (kept,) = query(pruned, "SELECT COUNT(*) FROM audit_rows WHERE tenant_id = ?", (name,))[0]
        assert tenant.rows == kept
    assert report.pruned_rows == sum(item.pruned_through for item in report.tenants)
    document = report.to_json()
    assert document["pruned_rows"] == report.pruned_rows
    entry = document["tenants"][0]["pruned"]
    assert entry["first_tenant_seq"] == 1
    assert entry["last_tenant_seq"] == report.tenants[0].pruned_through
    assert entry["vouched_for_by"]["tenant_seq"] == entry["last_tenant_seq"]


def test_the_cut_is_right_below_a_kept_checkpoint_row(pruned: Path) -> None:
    for name in ("acme", "globex"):
        anchor = anchor_of(pruned, name)
        seq, tenant_seq, event_type = first_kept(pruned, name)
        assert (tenant_seq, event_type) == (anchor["tenant_seq"] + 1, "sealtrail.checkpoint")
        assert anchor["checkpoint_tenant_seq"] == anchor["tenant_seq"]
        assert anchor["through_seq"] < seq
        (body,) = query(pruned, "SELECT body FROM audit_rows WHERE seq = ?", (seq,))[0]
        row = orjson.loads(body)
        assert row["prev_hash"] == anchor["record_hash"]
        assert row["extra"]["checkpoint_signature"] == anchor["checkpoint_signature"]
        # Entries of pruned checkpoint rows are gone; the cut's own (its row stays) is kept.
        sizes = [size for (size,) in query(
            pruned, "SELECT tenant_seq FROM audit_checkpoints WHERE tenant_id = ?", (name,))]
        assert min(sizes) == anchor["tenant_seq"]


def test_nothing_above_the_smallest_cursor_is_pruned(db_path: Path, signer: Signer,
                                                     clock: Clock) -> None:
    after = "SELECT seq FROM audit_rows WHERE seq > ? ORDER BY seq"
    with open_store(db_path, signer, clock) as store:
        fill(store, clock)
        late = clock.now + timedelta(seconds=1)
        assert store.prune(delivered_through_seq=0, older_than=late).rows == 0
        through = store.last_seq() // 3
        undelivered = query(db_path, after, (through,))
        result = store.prune(delivered_through_seq=through, older_than=late)
        anchors = store.anchors()
    assert result.rows > 0
    assert query(db_path, after, (through,)) == undelivered
    for anchor in anchors:
        (row_seq,) = query(db_path, "SELECT seq FROM audit_rows WHERE tenant_id = ? AND "
                                    "tenant_seq = ?", (anchor.tenant_id, anchor.tenant_seq + 1))[0]
        assert row_seq <= through  # the vouching checkpoint row itself was delivered


def test_nothing_younger_than_the_cutoff_is_pruned(db_path: Path, signer: Signer,
                                                   clock: Clock) -> None:
    with open_store(db_path, signer, clock) as store:
        stored = fill(store, clock)
        assert store.prune(delivered_through_seq=store.last_seq(), older_than=T0).rows == 0
        result = store.prune(delivered_through_seq=store.last_seq(), older_than=HALF_WAY)
    assert result.rows > 0
    young = [seq for moment, seqs in stored.items() if moment >= HALF_WAY for seq in seqs]
    present = {seq for (seq,) in query(db_path, "SELECT seq FROM audit_rows")}
    assert set(young) <= present
    old = [seq for moment, seqs in stored.items() if moment < HALF_WAY for seq in seqs]
    assert not set(old) <= present  # and the old ones went (up to the last old checkpoint)
    for (signed_at,) in query(db_path, "SELECT checkpoint_signed_at FROM audit_pruned"):
        assert signed_at < format_timestamp(HALF_WAY)


def test_a_chain_without_a_checkpoint_is_kept_whole(db_path: Path, signer: Signer,
                                                    clock: Clock) -> None:
    with open_store(db_path, signer, clock) as store:
        fill(store, clock)
        store.append(events(5, seed=99, tenants=("quiet",)))  # 5 rows: no checkpoint yet
        result = store.prune(delivered_through_seq=store.last_seq(),
                             older_than=clock.now + timedelta(hours=1))
    assert "quiet" not in result.chains
    assert [size for (size,) in query(db_path, "SELECT tenant_seq FROM audit_rows WHERE "
                                               "tenant_id = 'quiet'")] == [1, 2, 3, 4, 5]


def test_pruning_again_repeats_nothing_and_moves_the_cut_up(db_path: Path, signer: Signer,
                                                            clock: Clock, key: PublicKey) -> None:
    with open_store(db_path, signer, clock) as store:
        fill(store, clock)
        first = store.prune(delivered_through_seq=store.last_seq(), older_than=HALF_WAY)
        again = store.prune(delivered_through_seq=store.last_seq(), older_than=HALF_WAY)
        assert (again.rows, again.chains, again.transactions) == (0, [], 0)
        fill(store, clock, batches=2)
        later = store.prune(delivered_through_seq=store.last_seq(), older_than=clock.now)
    assert first.rows > 0
    assert later.rows > 0
    assert check(db_path, key).status is Status.INTACT


class CrashError(Exception):
    """The process dies between two transactions of a prune."""


def test_a_prune_cut_short_between_transactions_verifies_and_resumes(
        db_path: Path, signer: Signer, key: PublicKey) -> None:
    moments = {"calls": 0, "crash_after": None}

    def crashing_clock() -> datetime:
        moments["calls"] += 1
        if moments["crash_after"] is not None and moments["calls"] > moments["crash_after"]:
            raise CrashError
        return T0

    # One checkpoint per chain, far up: every cut goes part-way in transactions of 30 rows.
    with ChainStore(db_path, checkpoints=CheckpointPolicy(signer, 150, None),
                    clock=crashing_clock) as store:
        store.append(events(400, tenants=("acme", "globex")))
        last = store.last_seq()
        moments["calls"], moments["crash_after"] = 0, 3
        with pytest.raises(CrashError):
            store.prune(delivered_through_seq=last, older_than=T0 + timedelta(seconds=1),
                        chunk_rows=30)
        anchors = store.anchors()
        report = check(db_path, key)
        assert report.status is Status.INTACT, report.to_json()
        # Three transactions committed, 30 rows each at most, all of one chain, part-way.
        (anchor,) = anchors
        assert anchor.tenant_seq == 90
        assert anchor.tenant_seq < anchor.checkpoint.tenant_seq
        assert first_kept(db_path, anchor.tenant_id)[1] == 91
        moments["crash_after"] = None
        result = store.prune(delivered_through_seq=last, older_than=T0 + timedelta(seconds=1),
                             chunk_rows=30)
        assert result.transactions == math.ceil(result.rows / 30)
        finished = store.anchors()
    assert all(item.complete for item in finished)
    assert len(finished) == 2
    assert check(db_path, key).status is Status.INTACT


def test_a_prune_stops_between_transactions_when_the_store_is_closed(
        db_path: Path, signer: Signer, key: PublicKey) -> None:
    """A worker stopping closes its store while retention prunes in a thread."""
    closer: list[threading.Thread] = []

    def clock() -> datetime:
        if closer and not closer[0].is_alive() and not closer[0].ident:
            closer[0].start()  # close() now waits for the transaction under way
            time.sleep(0.1)
        return T0

    store = ChainStore(db_path, checkpoints=CheckpointPolicy(signer, 150, None), clock=clock)
    store.append(events(400, tenants=("acme", "globex")))
    closer.append(threading.Thread(target=store.close))
    result = store.prune(delivered_through_seq=store.last_seq(),
                         older_than=T0 + timedelta(seconds=1), chunk_rows=30)
    closer[0].join()
    assert (result.transactions, result.rows) == (1, 30)
    assert not result.wal_truncated
    report = check(db_path, key)
    assert report.status is Status.INTACT, report.to_json()
    assert report.pruned_rows == 30


# -- what is still caught --------------------------------------------------------------------


def kept_tenant_seq(path: Path, tenant: str, offset: int) -> int:
    """The tenant_seq `offset` rows into the kept part of a chain."""
    return first_kept(path, tenant)[1] + offset


@pytest.mark.parametrize(("attack", "status", "words"), [
    (lambda path: drill.modify_field(path, "acme", kept_tenant_seq(path, "acme", 5), "reason",
                                     "rewritten"), Status.TAMPERED, "row changed"),
    (lambda path: drill.delete_row(path, "acme", kept_tenant_seq(path, "acme", 5)),
     Status.TAMPERED, "missing"),
    (lambda path: drill.delete_row(path, "acme", kept_tenant_seq(path, "acme", 0)),
     Status.TAMPERED, "must go on from there"),
    (lambda path: drill.swap_rows(path, "acme", kept_tenant_seq(path, "acme", 3),
                                  kept_tenant_seq(path, "acme", 4)), Status.TAMPERED, ""),
], ids=["edited", "deleted", "checkpoint-row-deleted", "swapped"])
def test_tampering_after_the_cut_is_caught(pruned: Path, key: PublicKey,
                                           attack: Callable[[Path], None], status: Status,
                                           words: str) -> None:
    attack(pruned)
    report = check(pruned, key)
    acme = by_tenant(report)["acme"]
    assert acme.status is status, report.to_json()
    assert words in acme.first_bad.problem
    assert by_tenant(report)["globex"].status is Status.INTACT


def test_a_removed_tail_after_the_cut_is_truncated(pruned: Path, key: PublicKey,
                                                   signer: Signer, tmp_path: Path) -> None:
    with ChainStore(pruned) as store:
        store.checkpoint(signer)
        evidence = tmp_path / "checkpoints.json"
        write_checkpoints(evidence, store.latest_checkpoints())
    drill.delete_store_tail(pruned, 10)
    report = check(pruned, key, checkpoints=read_checkpoints(evidence))
    assert report.status is Status.TRUNCATED, report.to_json()


def test_a_row_forged_into_the_pruned_range_is_caught(pruned: Path, key: PublicKey) -> None:
    """A well-formed row 2 of acme at a pruned seq: a history nobody can check any more."""
    (body,) = query(pruned, "SELECT body FROM audit_rows WHERE tenant_id = 'acme' "
                            "ORDER BY tenant_seq DESC LIMIT 1")[0]
    row = orjson.loads(body)
    del row["record_hash"]
    row.update(seq=1, tenant_seq=2, reason="approved after all")
    digest, forged = seal(row)
    with sqlite3.connect(pruned) as db:
        db.execute("INSERT INTO audit_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (1, "acme", 2, digest, row["event_type"], row["severity"], row["timestamp"],
                    forged))
    report = check(pruned, key)
    assert report.status is Status.TAMPERED
    assert "is in the range audit_pruned says was pruned" in by_tenant(
        report)["acme"].first_bad.problem


def test_a_dropped_anchor_table_is_tampering(pruned: Path, key: PublicKey) -> None:
    with sqlite3.connect(pruned) as db:
        db.execute("DROP TABLE audit_pruned")
    report = check(pruned, key)
    assert report.status is Status.TAMPERED
    assert any("audit_pruned is missing" in item.problem for item in report.store_findings)
    assert all(item.first_bad.tenant_seq == 1 for item in report.tenants)


def test_a_dropped_anchor_table_of_an_old_schema_is_tampering_too(pruned: Path,
                                                                  key: PublicKey) -> None:
    with sqlite3.connect(pruned) as db:  # and pretend the store never had one
        db.execute("DROP TABLE audit_pruned")
        db.execute("PRAGMA user_version = 2")
    report = check(pruned, key)
    assert report.status is Status.TAMPERED
    assert "row tenant_seq 1 is missing" in by_tenant(report)["acme"].first_bad.problem


@pytest.mark.parametrize(("edit", "words"), [
    ("DELETE FROM audit_pruned WHERE tenant_id = 'acme'", "row tenant_seq 1 is missing"),
    (("UPDATE audit_pruned SET record_hash = replace(record_hash, substr(record_hash, 1, 1), "
     "'f') WHERE tenant_id = 'acme'"), "prev_hash is not the hash audit_pruned records"),
    ("UPDATE audit_pruned SET tenant_seq = tenant_seq - 1 WHERE tenant_id = 'acme'",
     "must go on from there"),
    ("UPDATE audit_pruned SET tenant_seq = tenant_seq + 1 WHERE tenant_id = 'acme'",
     "is in the range audit_pruned says was pruned"),
    ("UPDATE audit_pruned SET checkpoint_signature = 'AAAA' WHERE tenant_id = 'acme'",
     "column checkpoint_signature"),
    (("UPDATE audit_pruned SET checkpoint_signed_at = '2020-01-01T00:00:00.000000Z' "
     "WHERE tenant_id = 'acme'"), "column checkpoint_signed_at"),
    (("UPDATE audit_pruned SET checkpoint_tenant_seq = checkpoint_tenant_seq + 3 "
     "WHERE tenant_id = 'acme'"), "is not the checkpoint row audit_pruned says"),
    ("UPDATE audit_pruned SET through_seq = 1000000 WHERE tenant_id = 'acme'",
     "where audit_pruned says the pruned rows end"),
    ("UPDATE audit_pruned SET tenant_seq = 'many' WHERE tenant_id = 'acme'",
     "holds values no anchor can"),
], ids=["deleted", "hash", "lower", "higher", "signature", "signed-at", "checkpoint-size",
        "through-seq", "not-a-number"])
def test_an_edited_anchor_is_tampering(pruned: Path, key: PublicKey, edit: str,
                                       words: str) -> None:
    with sqlite3.connect(pruned) as db:
        db.execute(edit)
    report = check(pruned, key)
    assert report.status is Status.TAMPERED, report.to_json()
    problems = [item.problem for item in report.store_findings]
    problems += [item.problem for item in by_tenant(report)["acme"].findings]
    assert any(words in problem for problem in problems), problems
    assert by_tenant(report)["globex"].status is Status.INTACT


def test_a_row_removed_below_the_cut_is_counted(db_path: Path, signer: Signer, clock: Clock,
                                                key: PublicKey) -> None:
    """A quiet tenant's last row, far below the cut: no chain link and no seq hole shows it."""
    with open_store(db_path, signer, clock) as store:
        store.append(events(6, seed=7, tenants=("quiet",)))
        fill(store, clock)
        store.prune(delivered_through_seq=store.last_seq(), older_than=HALF_WAY)
    assert check(db_path, key).status is Status.INTACT
    drill.delete_tail(db_path, "quiet", 1)
    report = check(db_path, key)
    assert report.status is Status.TAMPERED
    assert by_tenant(report)["quiet"].status is Status.INTACT  # its chain alone looks whole
    assert any("neither a row kept nor one audit_pruned accounts for" in item.problem
               for item in report.store_findings)


# -- checkpoints kept elsewhere -------------------------------------------------------------


def test_checkpoints_given_for_pruned_rows_are_reported_pruned(
        db_path: Path, signer: Signer, clock: Clock, key: PublicKey, tmp_path: Path) -> None:
    with open_store(db_path, signer, clock) as store:
        fill(store, clock, batches=3)
        early = store.latest_checkpoints()  # an auditor's copy from back then
        fill(store, clock, batches=7)
        store.prune(delivered_through_seq=store.last_seq(), older_than=HALF_WAY)
        anchors = {item.tenant_id: item for item in store.anchors()}
    assert all(item.tenant_seq < anchors[item.tenant_id].tenant_seq for item in early)
    report = check(db_path, key, checkpoints=early)
    assert report.status is Status.INTACT, report.to_json()
    assert all(item.checkpoints_pruned == 1 for item in report.tenants)

    # One for exactly the cut is checked against the hash the chain links to.
    at_cut = [item.checkpoint for item in anchors.values()]
    report = check(db_path, key, checkpoints=at_cut)
    assert report.status is Status.INTACT
    assert all(item.checkpoints_pruned == 0 for item in report.tenants)
    acme = anchors["acme"]
    other = Checkpoint.sign(signer, "acme", acme.tenant_seq, "0" * 64, acme.checkpoint.signed_at,
                            acme.checkpoint.store_id)
    report = check(db_path, key, checkpoints=[other])
    assert report.status is Status.TRUNCATED
    assert f"row {acme.tenant_seq} differs" in by_tenant(report)["acme"].first_bad.problem

    # A forged one for pruned rows is still a forgery.
    forged = Checkpoint(**{**early[0].to_json(), "signature": early[1].signature})
    assert check(db_path, key, checkpoints=[forged]).status is Status.TAMPERED


def test_the_siem_copy_of_every_row_still_verifies(db_path: Path, signer: Signer, clock: Clock,
                                                   key: PublicKey) -> None:
    with open_store(db_path, signer, clock) as store:
        fill(store, clock)
        siem = list(store.rows())
        store.prune(delivered_through_seq=store.last_seq(), older_than=HALF_WAY)
    local = check(db_path, key)
    remote = verify_rows(siem, public_keys=[key])
    assert local.status is remote.status is Status.INTACT
    assert [(t.tenant_id, t.head_tenant_seq, t.head_hash) for t in local.tenants] == [
        (t.tenant_id, t.head_tenant_seq, t.head_hash) for t in remote.tenants]


# -- what pruning refuses ---------------------------------------------------------------------


def test_a_chain_whose_checkpoint_row_disagrees_is_not_pruned(db_path: Path, signer: Signer,
                                                              clock: Clock) -> None:
    with open_store(db_path, signer, clock) as store:
        fill(store, clock)
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE audit_checkpoints SET head_hash = ? WHERE tenant_id = 'acme'",
                       ("0" * 64,))
        result = store.prune(delivered_through_seq=store.last_seq(),
                             older_than=HALF_WAY)
    assert result.chains == ["globex"]
    assert "disagrees with audit_checkpoints" in result.refused["acme"]
    assert query(db_path, "SELECT MIN(tenant_seq) FROM audit_rows WHERE tenant_id = 'acme'") == [
        (1,)]


def test_a_chain_with_a_hole_below_its_checkpoint_is_not_pruned(db_path: Path, signer: Signer,
                                                                clock: Clock) -> None:
    with open_store(db_path, signer, clock) as store:
        fill(store, clock)
        drill.delete_row(db_path, "acme", 3)
        result = store.prune(delivered_through_seq=store.last_seq(),
                             older_than=HALF_WAY)
    assert "should be" in result.refused["acme"]
    assert "acme" not in result.chains


# -- the file ----------------------------------------------------------------------------------


def test_the_store_file_shrinks(db_path: Path, signer: Signer, clock: Clock) -> None:
    with open_store(db_path, signer, clock, every_rows=100) as store:
        for _ in range(20):
            store.append(events(500, seed=3))
        before = store.disk_bytes()
        before_db = db_path.stat().st_size
        result = store.prune(delivered_through_seq=store.last_seq(),
                             older_than=T0 + timedelta(seconds=1))
        after = store.disk_bytes()
    assert result.rows > 9_000
    assert result.pages_freed > 0
    assert result.wal_truncated
    assert after < before / 3
    assert db_path.stat().st_size < before_db / 3
    assert Path(f"{db_path}-wal").stat().st_size == 0


def test_a_store_made_before_retention_reuses_its_pages_until_compacted(
        db_path: Path, signer: Signer, clock: Clock, cli: Callable[..., CliResult]) -> None:
    with sqlite3.connect(db_path) as db:  # as an older sealtrail left it: auto-vacuum off
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.execute("DROP TABLE t")
    with open_store(db_path, signer, clock, every_rows=100) as store:
        assert not store.incremental_vacuum
        for _ in range(10):
            store.append(events(500, seed=3))
        clock.advance(60)
        result = store.prune(delivered_through_seq=store.last_seq(), older_than=clock.now)
        assert result.rows > 4_000
        assert result.pages_freed == 0
        full = db_path.stat().st_size
        assert full > 0
        for _ in range(8):  # fewer rows than were pruned: they fit in the freed pages
            store.append(events(500, seed=4))
        with sqlite3.connect(db_path) as db:  # every new page into the file itself
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        assert db_path.stat().st_size <= full
    done = cli("compact", "--db", db_path)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["was_incremental"] is False
    with open_store(db_path, signer, clock, every_rows=100) as store:
        assert store.incremental_vacuum
        clock.advance(60)
        before = store.disk_bytes()
        assert store.prune(delivered_through_seq=store.last_seq(), older_than=clock.now).rows
        assert store.disk_bytes() < before / 2


def test_an_older_store_is_upgraded(db_path: Path, signer: Signer, clock: Clock,
                                    key: PublicKey) -> None:
    with open_store(db_path, signer, clock) as store:
        fill(store, clock, batches=2)
    with sqlite3.connect(db_path) as db:  # schema 2: no table of anchors
        db.execute("DROP TABLE audit_pruned")
        db.execute("PRAGMA user_version = 2")
    assert check(db_path, key).status is Status.INTACT  # a schema-2 store has none to miss
    with open_store(db_path, signer, clock) as store:
        assert store.anchors() == []
        fill(store, clock, batches=2)
        assert store.prune(delivered_through_seq=store.last_seq(), older_than=clock.now).rows
    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert check(db_path, key).status is Status.INTACT


# -- the command line -------------------------------------------------------------------------


def test_the_cli_says_what_was_pruned(pruned: Path, tmp_path: Path,
                                      cli: Callable[..., CliResult]) -> None:
    result = cli("verify", "--db", pruned, "--pubkey", tmp_path / "signing.key.pub")
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout.decode()
    acme = anchor_of(pruned, "acme")
    assert (f"rows 1..{acme['tenant_seq']} pruned, vouched for by the checkpoint of rows "
            f"1..{acme['tenant_seq']} signed at {acme['checkpoint_signed_at']} by key "
            f"{acme['checkpoint_key_id']}") in text
    assert "older rows were pruned" in text
    unchecked = cli("verify", "--db", pruned)
    assert "its signature was not checked: no --pubkey" in unchecked.stdout.decode()
    document = orjson.loads(cli("verify", "--db", pruned, "--json").stdout)
    assert document["pruned_rows"] > 0
    assert {item["tenant_id"]: item["pruned"]["last_tenant_seq"]
            for item in document["tenants"]}["acme"] == acme["tenant_seq"]


# -- a million rows ----------------------------------------------------------------------------

MILLION = 1_000_000
BATCH = 1_000
#: Simulated seconds a batch takes; retention keeps 10 of them, and prunes every 10.
KEEP_BATCHES = 10
PRUNE_EVERY_BATCHES = 10
#: Batches appended before the first prune: the store then holds more rows than retention
#: ever keeps afterwards (see the bound below).
REFERENCE_BATCHES = 30


def test_a_million_rows_through_a_store_with_retention(tmp_path: Path, signer: Signer,
                                                       key: PublicKey) -> None:
    """The issue's test: the size stays bounded, and verify agrees with the SIEM's copy.

    The bound: after the first prune, the store keeps at most the rows of the last
    KEEP_BATCHES batches, those appended since the last prune (PRUNE_EVERY_BATCHES), and what
    lies between a chain's cut and the older of its checkpoints (under 1,000 rows per tenant,
    three tenants): under 23,000 rows. REFERENCE_BATCHES (30,000 rows) is therefore more
    than it keeps, and what the store took on disk holding them, before anything was pruned,
    plus one WAL's limit, is the bound. Without retention the store would reach ~33 times it.

    With the worker's default `synchronous=FULL` (an fsync per commit): ~45 s on 2 cores.
    """
    clock = Clock()
    path = tmp_path / "audit.db"
    siem_path = tmp_path / "siem.ndjson"
    batch = events(BATCH, seed=5, tenants=("acme", "globex", "initech"))
    policy = CheckpointPolicy(signer, every_rows=1000, every_seconds=None)
    started = time.monotonic()
    largest = 0
    bound = 0
    with ChainStore(path, checkpoints=policy, clock=clock) as store, \
            siem_path.open("wb") as siem:
        cursor = 0
        for number in range(1, MILLION // BATCH + 1):
            store.append(batch)
            clock.advance(1)
            while rows := store.export_rows(cursor, 20_000):  # "deliver" to the SIEM
                siem.writelines(row.body + b"\n" for row in rows)
                cursor = rows[-1].seq
            store.set_cursor("siem", cursor)
            if number == REFERENCE_BATCHES:
                bound = store.disk_bytes() + JOURNAL_SIZE_LIMIT_BYTES
            if number >= REFERENCE_BATCHES and number % PRUNE_EVERY_BATCHES == 0:
                store.prune(delivered_through_seq=store.cursor("siem"),
                            older_than=clock.now - timedelta(seconds=KEEP_BATCHES))
                largest = max(largest, store.disk_bytes())
            elif number > REFERENCE_BATCHES:
                largest = max(largest, store.disk_bytes())
        last_seq = store.last_seq()
        kept = store.export_rows(0, MILLION)
    assert bound > 0
    assert largest <= bound, (largest, bound)
    assert len(kept) < 25_000

    local = verify_store(path, public_keys=[key])
    assert local.status is Status.INTACT, local.to_json()
    assert local.pruned_rows > 950_000
    assert local.rows + local.pruned_rows == last_seq
    assert all(item.pruned is not None and item.pruned.complete for item in local.tenants)

    with siem_path.open("rb") as copy:  # line by line: the copy is 700 MB
        remote = verify_rows(copy, public_keys=[key])
    assert remote.status is Status.INTACT, remote.to_json()
    assert remote.rows == last_seq
    assert [(t.tenant_id, t.head_tenant_seq, t.head_hash) for t in local.tenants] == [
        (t.tenant_id, t.head_tenant_seq, t.head_hash) for t in remote.tenants]
    print(f"1M rows with retention: {time.monotonic() - started:.1f} s, largest "
          f"{largest / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB")


# -- the worker --------------------------------------------------------------------------------

SIEM_KEY = "siem-api-key-0123456789"


def test_retention_needs_a_signing_key(tmp_path: Path, signer: Signer) -> None:
    with pytest.raises(ValidationError, match=r"keepSeconds needs checkpoints\.signingKey"):
        WorkerConfig.model_validate({"store": {"retention": {"keepSeconds": 60}}})
    assert WorkerConfig.model_validate({}).store.retention is None
    assert WorkerConfig.model_validate(
        {"store": {"retention": {"everySeconds": 5}}}).store.retention is not None  # keep all
    config = WorkerConfig.model_validate({
        "store": {"retention": {"keepSeconds": 60}},
        "checkpoints": {"signingKey": {"file": str(tmp_path / "signing.key")}}})
    assert config.store.retention is not None
    assert config.store.retention.keep_seconds == 60
    assert config.store.retention.every_seconds == 30


@pytest.fixture
def siem() -> Any:
    receiver = ElasticReceiver(credential=SIEM_KEY)
    receiver.start()
    yield receiver
    receiver.stop()


def elastic(tmp_path: Path, siem: ElasticReceiver, name: str, **extra: Any) -> dict[str, Any]:
    key = tmp_path / "siem.key"
    write_credential(key, SIEM_KEY)
    return {"name": name, "elastic": {"url": siem.url, "auth": {"apiKey": {"file": str(key)}}},
            "retry": {"initialBackoffMs": 20, "maxBackoffMs": 200},
            "batch": {"intervalMs": 20, "maxIntervalMs": 200}, **extra}


def retaining_config(tmp_path: Path, exports: list[dict[str, Any]]) -> WorkerConfig:
    """Prune as soon as delivered and checkpointed, every 50 ms; a checkpoint every 50 rows."""
    return WorkerConfig.model_validate({
        "store": {"path": str(tmp_path / "audit.db"), "synchronous": "NORMAL",
                  "retention": {"keepSeconds": 0, "everySeconds": 0.05}},
        "checkpoints": {"signingKey": {"file": str(tmp_path / "signing.key")},
                        "everyRows": 50, "everySeconds": 0.2},
        "exports": exports,
    })


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def sample(count: int) -> list[Event]:
    return events(count, seed=11, tenants=("acme", "globex"))


def test_the_worker_prunes_only_what_every_export_delivered(
        tmp_path: Path, signer: Signer, siem: ElasticReceiver, key: PublicKey) -> None:
    registry = CollectorRegistry()
    config = retaining_config(tmp_path, [elastic(tmp_path, siem, "live"),
                                         elastic(tmp_path, siem, "held", paused=True)])

    def pruned() -> float:
        return registry.get_sample_value("sealtrail_audit_store_pruned_rows_total") or 0.0

    async def main() -> None:
        core = WorkerCore(config, registry)
        assert (registry.get_sample_value("sealtrail_audit_store_used_bytes") or 0) > 0  # at start
        core.start()
        try:
            await core.append(sample(400))
            live, held = core.engine.loops["live"], core.engine.loops["held"]
            await until(lambda: live.cursor > 400, 10, "the live export to deliver")
            await asyncio.sleep(0.5)  # ten rounds of retention with the held export at 0
            assert pruned() == 0
            assert core.store.anchors() == []
            core.engine.resume("held")
            await until(lambda: held.cursor > 400, 10, "the held export to deliver")
            await until(lambda: pruned() > 0, 10, "retention to prune")
            anchors = core.store.anchors()
            assert anchors
            assert pruned() == sum(item.tenant_seq for item in anchors)
            assert max(item.through_seq for item in anchors) < min(live.cursor, held.cursor)
            size = registry.get_sample_value("sealtrail_audit_store_used_bytes")
            assert size is not None
            assert size > 0
        finally:
            await core.drain_and_stop(2)

    asyncio.run(main())
    report = verify_store(tmp_path / "audit.db", public_keys=[key])
    assert report.status is Status.INTACT, report.to_json()
    assert report.pruned_rows > 0


def test_a_worker_without_exports_prunes_nothing(tmp_path: Path, signer: Signer) -> None:
    registry = CollectorRegistry()
    config = retaining_config(tmp_path, [])

    async def main() -> None:
        core = WorkerCore(config, registry)
        core.start()
        try:
            await core.append(sample(200))
            await until(lambda: len(core.store.latest_checkpoints()) == 2, 5, "checkpoints")
            await asyncio.sleep(0.5)  # ten rounds of retention
            assert core.store.anchors() == []
        finally:
            await core.drain_and_stop(1)

    asyncio.run(main())
    assert registry.get_sample_value("sealtrail_audit_store_pruned_rows_total") == 0
    assert query(tmp_path / "audit.db", "SELECT MIN(seq) FROM audit_rows") == [(1,)]


def test_a_worker_process_prunes_as_it_ships(tmp_path: Path, signer: Signer,
                                             siem: ElasticReceiver, key: PublicKey) -> None:
    lines = [orjson.dumps(item.row_fields()) for item in sample(2_000)]
    config = {
        "store": {"retention": {"keepSeconds": 0, "everySeconds": 0.1}},
        "checkpoints": {"signingKey": {"file": str(tmp_path / "signing.key")},
                        "everyRows": 100, "everySeconds": 0.5},
        "exports": [elastic(tmp_path, siem, "siem")],
    }
    with running_worker(tmp_path / "worker", **config) as worker:
        with worker.client() as client:
            for start in range(0, len(lines), 500):
                answer = client.post("/v1/events", content=b"\n".join(lines[start:start + 500]),
                                     headers={"Content-Type": "application/x-ndjson"})
                assert answer.status_code == 200, answer.text

            def metric(name: str) -> float:
                text = client.get("/metrics").text
                found = [line.split()[-1] for line in text.splitlines()
                         if line.startswith(name + " ")]
                return float(found[0]) if found else -1.0

            deadline = time.monotonic() + 30
            while metric("sealtrail_audit_store_pruned_rows_total") < 1_900:
                assert time.monotonic() < deadline, worker.log()
                time.sleep(0.1)
            assert metric("sealtrail_audit_store_used_bytes") > 0
        assert worker.row_count() < 500
    # Stopped: everything it stored reached the SIEM, and the two agree.
    received = siem.sources()
    local = verify_store(worker.db, public_keys=[key])
    assert local.status is Status.INTACT, local.to_json()
    assert local.pruned_rows >= 1_900
    remote = verify_rows(received, public_keys=[key])
    assert remote.status is Status.INTACT, remote.to_json()
    assert remote.rows == local.rows + local.pruned_rows
    assert [(t.tenant_id, t.head_tenant_seq, t.head_hash) for t in local.tenants] == [
        (t.tenant_id, t.head_tenant_seq, t.head_hash) for t in remote.tenants]
