"""The chain store: positions, atomic batches, checkpoint policy, cursors, reopening.

Covers: append returns where each event landed, per tenant from 1; a batch that fails stores
nothing; checkpoints every N rows and every T seconds (with a fake clock) are signed, appended
to the chain and listed as latest; an on-demand checkpoint skips unchanged tenants; export
cursors persist and never move back; a reopened store continues every chain; a store from a
newer schema is refused untouched.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from sealtrail.api.event import Event
from sealtrail.chain import store as store_module
from sealtrail.chain.checkpoint import Checkpoint
from sealtrail.chain.keys import Signer
from sealtrail.chain.store import (
    SCHEMA_VERSION,
    ChainStore,
    CheckpointPolicy,
    EventTooLargeError,
    StoreError,
)
from sealtrail.chain.verify import Status, verify_store

from .conftest import events


def make(tenant: str, **fields: str) -> Event:
    return Event.model_validate({"event_type": "a.b", "severity": "INFO", "tenant_id": tenant,
                                 **fields})


def test_positions_are_global_and_per_tenant(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        stored = store.append([make("a"), make("b"), make("a"), Event.model_validate(
            {"event_type": "a.b", "severity": "LOW"})])
    assert [(s.seq, s.tenant_id, s.tenant_seq) for s in stored] == [
        (1, "a", 1), (2, "b", 1), (3, "a", 2), (4, "default", 1)
    ]
    assert stored[0].record_hash != stored[2].record_hash


def test_rows_carry_the_link_and_the_append_time(db_path: Path) -> None:
    moment = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    with ChainStore(db_path, clock=lambda: moment) as store:
        first, second = store.append([make("a"), make("a", timestamp="2020-01-01T00:00:00Z")])
        rows = [orjson.loads(body) for body in store.rows()]
    assert rows[0]["prev_hash"] == "0" * 64
    assert rows[1]["prev_hash"] == first.record_hash
    assert rows[0]["timestamp"] == "2026-11-22T09:30:00.000000Z"
    assert rows[1]["timestamp"] == "2020-01-01T00:00:00.000000Z"  # the event's own time is kept
    assert rows[1]["record_hash"] == second.record_hash


def test_a_failing_batch_stores_nothing(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append([make("a")])
        huge = make("a", reason="x" * 16000)
        too_big = Event.model_validate({
            "event_type": "a.b", "severity": "INFO", "tenant_id": "a",
            "extra": {f"k{i}": "y" * 8000 for i in range(40)},
        })
        with pytest.raises(EventTooLargeError) as caught:
            store.append([make("a"), huge, too_big, make("b")])
        assert caught.value.index == 2
        assert store.last_seq() == 1
        assert [s.tenant_seq for s in store.append([make("a")])] == [2]


@pytest.mark.parametrize("timestamp", ["20260101T00Z", "2026W011T00Z", "2026-01-01T00:00:00Z"])
def test_a_row_never_outgrows_its_source_by_more_than_the_margin(timestamp: str) -> None:
    """What lets the store skip measuring each row of a small body (`source_bytes`)."""
    source = (b'{"event_type":"a.b","severity":"INFO","timestamp":"' + timestamp.encode()
              + b'","reason":"\\u00e9\\/\\u000a\\ud83d\\ude00 x","extra":{"k":""}}')
    fields = Event.model_validate_json(source).row_fields()
    assert len(orjson.dumps(fields)) <= len(source) + store_module._MAX_GROWTH_BYTES
    assert len(orjson.dumps(fields)) - len(source) <= 15  # the most a timestamp grows


def test_a_row_over_the_limit_is_refused_whatever_its_source_size(db_path: Path) -> None:
    too_big = Event.model_validate({
        "event_type": "a.b", "severity": "INFO", "tenant_id": "a",
        "extra": {f"k{i}": "y" * 8000 for i in range(40)}}).row_fields()
    with ChainStore(db_path) as store:
        source = len(orjson.dumps(too_big))
        with pytest.raises(EventTooLargeError):
            store.append_fields([dict(too_big)], source_bytes=source)
        assert store.last_seq() == 0
        small = make("a").row_fields()
        assert len(store.append_fields([small], source_bytes=1000)) == 1


def test_a_failure_inside_the_transaction_rolls_back(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append([make("a")])
        # A trigger stands in for a write that fails half way (disk full, I/O error).
        with sqlite3.connect(db_path) as conn:
            conn.execute(
                "CREATE TRIGGER fail BEFORE INSERT ON audit_rows WHEN NEW.tenant_id = 'b' "
                "BEGIN SELECT RAISE(ABORT, 'simulated I/O error'); END"
            )
        with pytest.raises(StoreError, match="nothing of it was stored"):
            store.append([make("a"), make("b")])
        assert [orjson.loads(b)["tenant_id"] for b in store.rows()] == ["a"]


def test_checkpoint_every_n_rows(db_path: Path, signer: Signer) -> None:
    with ChainStore(db_path, checkpoints=CheckpointPolicy(signer, 10, None)) as store:
        for _ in range(5):
            store.append([make("a")] * 4)
        latest = store.latest_checkpoints()
        rows = [orjson.loads(b) for b in store.rows(tenant="a")]
    kinds = [row["event_type"] for row in rows]
    # 12 rows reach 10 after the 3rd batch (checkpoint row 13), then 10 more after the 6th...
    assert [i + 1 for i, kind in enumerate(kinds) if kind == "sealtrail.checkpoint"] == [13]
    assert len(latest) == 1
    assert latest[0].tenant_seq == 12
    assert latest[0].signature_valid(signer.public)
    assert Checkpoint.from_row(rows[12]) == latest[0]
    assert latest[0].head_hash == rows[11]["record_hash"]


def test_checkpoint_every_t_seconds(db_path: Path, signer: Signer) -> None:
    now = [datetime(2026, 11, 22, tzinfo=UTC)]
    policy = CheckpointPolicy(signer, 1000, 30.0)
    with ChainStore(db_path, checkpoints=policy, clock=lambda: now[0]) as store:
        store.checkpoint(signer)  # nothing written yet: no checkpoint
        assert store.latest_checkpoints() == []
        store.append([make("a")])
        store.checkpoint(signer)
        assert [c.tenant_seq for c in store.latest_checkpoints()] == [1]
        store.append([make("a")])
        now[0] += timedelta(seconds=29)
        assert store.emit_due_checkpoints() == []
        now[0] += timedelta(seconds=1)
        (made,) = store.emit_due_checkpoints()
        assert made.tenant_seq == 3  # rows 1, 2 (the first checkpoint row), 3
        assert store.emit_due_checkpoints() == []  # nothing new since


def test_on_demand_checkpoint_skips_unchanged_tenants(db_path: Path, signer: Signer) -> None:
    with ChainStore(db_path) as store:
        store.append([make("a"), make("b")])
        assert {c.tenant_id for c in store.checkpoint(signer)} == {"a", "b"}
        store.append([make("b")])
        assert [c.tenant_id for c in store.checkpoint(signer)] == ["b"]
        assert store.checkpoint(signer) == []
        assert [c.tenant_seq for c in store.latest_checkpoints()] == [1, 3]


def test_cursors_persist_and_never_move_back(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        assert store.cursor("splunk") == 0
        store.set_cursor("splunk", 10)
        store.set_cursor("splunk", 7)
        assert store.cursor("splunk") == 10
    with ChainStore(db_path) as store:
        assert store.cursor("splunk") == 10
        assert store.cursor("elastic") == 0


def test_reopened_store_continues_every_chain(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append(events(30))
    with ChainStore(db_path) as store:
        store.append(events(30, seed=2))
        heads = {head.tenant_id: head.tenant_seq for head in store.heads()}
        assert sum(heads.values()) == 60
        assert store.last_seq() == 60
    assert verify_store(db_path).status is Status.INTACT


def test_rows_filter_by_tenant_and_seq(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append(events(20))
        acme = [orjson.loads(b) for b in store.rows(tenant="acme", after_seq=5)]
        assert acme
        assert all(row["tenant_id"] == "acme" and row["seq"] > 5 for row in acme)
        assert [orjson.loads(b)["seq"] for b in store.rows(after_seq=15, limit=3)] == [16, 17, 18]


def test_newer_schema_is_refused_untouched(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append([make("a")])
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        ChainStore(db_path)
    assert db_path.read_bytes() == before


def test_store_defaults_to_wal_and_full_sync(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(StoreError, match="synchronous must be"):
        ChainStore(db_path, synchronous="OFF")  # type: ignore[arg-type]


def test_checkpoint_policy_refuses_nonsense(signer: Signer) -> None:
    with pytest.raises(ValueError, match="every_rows"):
        CheckpointPolicy(signer, 0)
    with pytest.raises(ValueError, match="every_seconds"):
        CheckpointPolicy(signer, 10, 0)


def test_a_cursor_is_recorded_while_an_append_holds_the_store(db_path: Path) -> None:
    """Cursors have their own file: an export never waits behind ingest's transactions."""
    with ChainStore(db_path) as store, ChainStore(db_path) as other:
        store.append([make("a")])
        with other._lock, other._transaction():  # another process mid-append, lock held
            store.set_cursor("es", 1)
            assert store.cursor("es") == 1
        store.set_cursor("es", 0)  # never backwards
        assert store.cursor("es") == 1
    assert (db_path.parent / f"{db_path.name}.cursors").stat().st_mode & 0o777 == 0o600
    with ChainStore(db_path) as reopened:
        assert reopened.cursor("es") == 1


def test_a_store_from_before_the_cursor_file_keeps_its_cursors(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append([make("a"), make("a"), make("a")])
    with sqlite3.connect(db_path) as db:  # as an older sealtrail wrote it
        db.execute("INSERT INTO audit_export_cursor VALUES ('es', 2, '2026-01-01T00:00:00Z')")
    (db_path.parent / f"{db_path.name}.cursors").unlink()
    with ChainStore(db_path) as store:
        assert store.cursor("es") == 2
        assert store.cursor("other") == 0
        store.set_cursor("es", 1)  # still never backwards, across the move
        assert store.cursor("es") == 2
        store.set_cursor("es", 3)
        assert store.cursor("es") == 3
