"""Every store names itself in its rows, so a SIEM can tell several replicas' chains apart.

Two pods of a Deployment each write row 1 of tenant `payments`.

These tests build two real stores writing the same tenant (as two sidecars would), mix their
rows as a SIEM holds them, and check what users of the SIEM side and of `sealtrail verify` see.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson

from sealtrail.chain.checkpoint import Checkpoint, read_checkpoints, write_checkpoints
from sealtrail.chain.keys import Signer
from sealtrail.chain.store import SCHEMA_VERSION, ChainStore, CheckpointPolicy
from sealtrail.chain.verify import Status, verify_store
from sealtrail.demo_siem import check_received
from sealtrail.export.backends.base import ExportRow

from .conftest import CliResult, events

Cli = Callable[..., CliResult]


def replica(path: Path, signer: Signer, seed: int) -> list[bytes]:
    """A store like a sidecar's: one tenant, checkpoints every 5 rows; its rows as shipped."""
    with ChainStore(path, checkpoints=CheckpointPolicy(signer, every_rows=5)) as store:
        for event in events(12, seed=seed, tenants=("payments",)):
            store.append([event])  # checkpoints after rows 5 and 11 (rows 6 and 12)
        rows = list(store.rows())
    assert len(rows) == 14
    return rows


def test_every_row_of_a_new_store_names_it_and_the_id_survives_reopening(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append(events(5))
        first = store.store_id
    assert first is not None
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    with ChainStore(db_path) as store:
        assert store.store_id == first
        store.append(events(3, seed=2))
        ids = {orjson.loads(row)["store_id"] for row in store.rows()}
    assert ids == {first}
    with ChainStore(db_path.with_name("other.db")) as other:
        assert other.store_id not in {None, first}


def test_a_store_made_before_store_ids_keeps_its_chains_whole(db_path: Path) -> None:
    """A schema-1 store: its rows carry no id, and adding one half-way would split its chains."""
    with ChainStore(db_path) as store:
        store.store_id = None  # write as a schema-1 store did
        store.append(events(6))
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TABLE audit_meta")
        conn.execute("PRAGMA user_version = 1")
    before = [bytes(body) for (body,) in sqlite3.connect(db_path).execute(
        "SELECT body FROM audit_rows ORDER BY seq")]

    with ChainStore(db_path) as store:
        assert store.store_id is None
        store.append(events(4, seed=3))
        after = list(store.rows())
    assert after[:6] == before  # nothing stored is changed
    assert all("store_id" not in orjson.loads(row) for row in after)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    report = verify_store(db_path)
    assert report.status is Status.INTACT
    assert report.rows == 10
    assert report.store_id is None


def test_two_replicas_of_one_tenant_check_out_from_the_siems_copy(tmp_path: Path,
                                                                   signer: Signer) -> None:
    first = replica(tmp_path / "pod-a.db", signer, seed=1)
    second = replica(tmp_path / "pod-b.db", signer, seed=2)
    mixed = [row for pair in zip(first, second, strict=True) for row in pair]  # as a SIEM holds them

    check = check_received(mixed, [signer.public])
    assert check.problems == []
    assert (check.tenants, check.chains, check.stores) == (1, 2, 2)
    assert check.rows == len(first) + len(second)
    assert check.checkpoints == 4  # two per replica, each checked against its own chain

    gone = orjson.loads(second[3])  # one row of the second replica lost on the way
    problems = check_received([row for row in mixed if row != second[3]], [signer.public]).problems
    assert problems == [(f"payments (store {gone['store_id']}): row {gone['tenant_seq']} "
                         "never arrived")]


def test_a_store_holds_against_a_siem_export_with_every_replicas_checkpoints(
        tmp_path: Path, signer: Signer) -> None:
    """The SIEM export holds both replicas' checkpoint rows; each store uses only its own."""
    first = replica(tmp_path / "pod-a.db", signer, seed=1)
    second = replica(tmp_path / "pod-b.db", signer, seed=2)
    export = tmp_path / "siem.ndjson"
    export.write_bytes(b"\n".join(first + second) + b"\n")
    evidence = read_checkpoints(export)
    assert len(evidence) == 4

    report = verify_store(tmp_path / "pod-a.db", checkpoints=evidence, public_keys=[signer.public])
    assert report.status is Status.INTACT
    assert [t.checkpoints_checked for t in report.tenants] == [4]  # 2 embedded + 2 from the SIEM
    assert report.other_stores == {orjson.loads(second[0])["store_id"]: 2}

    # Cut the first replica's tail: its own checkpoints in the SIEM catch it.
    with sqlite3.connect(tmp_path / "pod-a.db") as conn:
        conn.execute("DELETE FROM audit_rows WHERE seq > 8")
    cut = verify_store(tmp_path / "pod-a.db", checkpoints=evidence, public_keys=[signer.public])
    assert cut.status is Status.TRUNCATED


def test_evidence_that_is_all_another_stores_is_not_taken_as_intact(
        tmp_path: Path, signer: Signer) -> None:
    """A store replaced by a fresh one (same tenant, new id) must not pass as the old one."""
    replica(tmp_path / "pod-a.db", signer, seed=1)
    with ChainStore(tmp_path / "pod-a.db") as store:
        kept = tmp_path / "checkpoints.json"
        write_checkpoints(kept, [*store.latest_checkpoints()])
    (tmp_path / "pod-a.db").unlink()
    replica(tmp_path / "pod-a.db", signer, seed=1)  # same content, a new store in its place

    report = verify_store(tmp_path / "pod-a.db", checkpoints=read_checkpoints(kept),
                          public_keys=[signer.public])
    assert report.status is Status.TRUNCATED
    (finding,) = report.store_findings
    assert "none of the 1 checkpoints given is for this store" in finding.problem


def test_a_checkpoint_cannot_be_moved_to_another_stores_chain(tmp_path: Path,
                                                               signer: Signer) -> None:
    replica(tmp_path / "pod-a.db", signer, seed=1)
    with ChainStore(tmp_path / "pod-a.db") as store:
        (checkpoint,) = store.latest_checkpoints()
    assert checkpoint.store_id is not None
    assert checkpoint.signature_valid(signer.public)
    moved = replace(checkpoint, store_id="0" * 32)
    assert not moved.signature_valid(signer.public)
    # And the file form keeps the id: what `sealtrail checkpoint --out` writes reads back equal.
    path = tmp_path / "cp.json"
    write_checkpoints(path, [checkpoint])
    assert read_checkpoints(path) == [checkpoint]
    assert Checkpoint.from_json(orjson.loads(path.read_bytes())["checkpoints"][0]) == checkpoint


def test_a_row_copied_into_another_store_is_named(tmp_path: Path) -> None:
    with ChainStore(tmp_path / "a.db") as store:
        store.append(events(1, tenants=("payments",)))
    with ChainStore(tmp_path / "b.db") as store:
        store.append(events(1, tenants=("payments",)))
    with sqlite3.connect(tmp_path / "a.db") as conn:
        row = conn.execute("SELECT * FROM audit_rows").fetchone()
    with sqlite3.connect(tmp_path / "b.db") as conn:  # replace b's row 1 by a's, columns and all
        conn.execute("DELETE FROM audit_rows")
        conn.execute("INSERT INTO audit_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    report = verify_store(tmp_path / "b.db")
    assert report.status is Status.TAMPERED
    finding = report.tenants[0].first_bad
    assert finding is not None
    assert "written into another store's chain" in finding.problem


def test_dedupe_keys_of_two_replicas_differ() -> None:
    def key(store_id: str | None) -> str:
        return ExportRow(1, "payments", 1, "h", "a.b", "INFO", "t", b"{}",
                         store_id=store_id).dedupe_key

    assert key("a" * 32) != key("b" * 32)
    assert key("a" * 32) == f"{'a' * 32}:payments:1"
    assert key(None) == "payments:1"  # a store made before ids: as before


def test_verify_rows_names_chains_and_stores(cli: Cli, tmp_path: Path, signer: Signer) -> None:
    first = replica(tmp_path / "pod-a.db", signer, seed=1)
    second = replica(tmp_path / "pod-b.db", signer, seed=2)
    export = tmp_path / "siem.ndjson"
    export.write_bytes(b"\n".join(second + first) + b"\n")
    done = cli("verify", "--rows", export, "--pubkey", tmp_path / "signing.key.pub")
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"intact: 28 rows in 2 chains (1 tenants from 2 stores), 4 signed checkpoints" \
        in done.stdout

    done = cli("verify", "--db", tmp_path / "pod-a.db", "--checkpoints", export,
               "--pubkey", tmp_path / "signing.key.pub")
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"2 checkpoints given are other stores'" in done.stdout
