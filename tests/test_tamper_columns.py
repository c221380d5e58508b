"""Tampering with what the store reads besides the rows' bodies, and rows where none belong.

Covers (issue 12, items 1, 2 and 4): an index column (`event_type`, `severity`, `timestamp`,
`tenant_id`, `tenant_seq`) changed so that routing and `GET /v1/events` filters see another
row than the hashed body says; an `audit_checkpoints` entry changed or removed (what
`sealtrail checkpoint --out` exports); a row planted at `seq` 0 or below (verify must see it,
reads must not return it); a row planted at `seq` (or `tenant_seq`) 10**12, which verify must
answer in bounded time and memory. Each through the real `sealtrail verify` and its exit codes.
"""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sealtrail.chain.canonical import seal
from sealtrail.chain.keys import Signer
from sealtrail.chain.store import ChainStore, CheckpointPolicy

from .conftest import ROOT, CliResult, events

Cli = Callable[..., CliResult]


@pytest.fixture
def store(tmp_path: Path, signer: Signer) -> Path:
    """Tenants acme and globex, 60 events, a checkpoint every 10 rows of a tenant (at batch ends)."""
    path = tmp_path / "audit.db"
    with ChainStore(path, checkpoints=CheckpointPolicy(signer, 10, None)) as chain:
        batch = events(60, tenants=("acme", "globex"))
        for start in range(0, 60, 10):
            chain.append(batch[start : start + 10])
    return path


def verify(cli: Cli, db: Path, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    result = cli("verify", "--db", db, "--json", *extra)
    assert result.returncode in (0, 1, 2), result.stderr
    report = orjson.loads(result.stdout)
    assert report["exit_code"] == result.returncode
    return result.returncode, report


def tenant(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in report["tenants"] if item["tenant_id"] == name)


def problems(report: dict[str, Any]) -> list[str]:
    found = [finding["problem"] for finding in report["store_findings"]]
    for item in report["tenants"]:
        found += [finding["problem"] for finding in item["findings"]]
    return found


def row_at(db: Path, tenant_id: str, tenant_seq: int) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        (body,) = conn.execute(
            "SELECT body FROM audit_rows WHERE tenant_id = ? AND tenant_seq = ?",
            (tenant_id, tenant_seq),
        ).fetchone()
    row: dict[str, Any] = orjson.loads(body)
    return row


def plant(db: Path, row: dict[str, Any]) -> None:
    """Insert a well-formed row (its hash recomputed) at whatever seq it names."""
    row.pop("record_hash", None)
    digest, body = seal(row)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO audit_rows (seq, tenant_id, tenant_seq, record_hash, event_type, "
            "severity, timestamp, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row["seq"], row["tenant_id"], row["tenant_seq"], digest, row["event_type"],
             row["severity"], row["timestamp"], body),
        )


# -- item 1: every column anything reads is checked against the body --------------------------


@pytest.mark.parametrize(("column", "value"), [
    ("severity", "INFO"),
    ("event_type", "system.heartbeat"),
    ("timestamp", "1999-01-01T00:00:00.000000Z"),
])
def test_an_index_column_changed_is_tampering(
    cli: Cli, store: Path, column: str, value: str
) -> None:
    # As in the issue: a CRITICAL row made INFO in its column only, so that routes wanting
    # CRITICAL and `GET /v1/events?severity=CRITICAL` pass it by while its body is untouched.
    with sqlite3.connect(store) as conn:
        seq, tenant_id, tenant_seq = conn.execute(
            f"SELECT seq, tenant_id, tenant_seq FROM audit_rows WHERE {column} != ? "
            "AND event_type != 'sealtrail.checkpoint' ORDER BY seq LIMIT 1 OFFSET 7",
            (value,),
        ).fetchone()
        conn.execute(f"UPDATE audit_rows SET {column} = ? WHERE seq = ?", (value, seq))
    code, report = verify(cli, store)
    assert code == 1
    chain = tenant(report, tenant_id)
    assert chain["first_bad_tenant_seq"] == tenant_seq
    problem = chain["findings"][0]["problem"]
    assert f"row at seq {seq}" in problem
    assert f"column {column} holds {value!r}" in problem


def test_the_severity_column_of_a_critical_row_made_info(cli: Cli, store: Path) -> None:
    with sqlite3.connect(store) as conn:
        found = conn.execute(
            "SELECT seq, tenant_id, tenant_seq FROM audit_rows WHERE severity = 'CRITICAL' "
            "ORDER BY seq LIMIT 1"
        ).fetchone()
        assert found is not None
        conn.execute("UPDATE audit_rows SET severity = 'INFO' WHERE seq = ?", (found[0],))
    result = cli("verify", "--db", store)
    assert result.returncode == 1
    assert (f"TAMPERED  tenant {found[1]}: first bad tenant_seq {found[2]}: row at seq "
            f"{found[0]} disagrees with its index columns").encode() in result.stdout
    assert b"column severity holds 'INFO', the row 'CRITICAL'" in result.stdout


def test_a_tenant_seq_column_made_text_is_reported_not_a_crash(cli: Cli, store: Path) -> None:
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE audit_rows SET tenant_seq = 'x' WHERE tenant_id = 'acme' "
                     "AND tenant_seq = 4")
    code, report = verify(cli, store)
    assert code == 1
    assert any("row at seq" in finding["problem"] and "'x'" in finding["problem"]
               for finding in report["store_findings"])
    assert tenant(report, "acme")["first_bad_tenant_seq"] == 4  # a hole where it was
    code, report = verify(cli, store, "--tenant", "acme")
    assert code == 1
    assert tenant(report, "acme")["first_bad_tenant_seq"] == 4


def test_a_checkpoint_table_entry_changed_is_tampering(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    # The table is what `sealtrail checkpoint --out` exports and what decides the next one.
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE audit_checkpoints SET head_hash = ? WHERE tenant_id = 'globex' "
                     "AND tenant_seq = (SELECT MIN(tenant_seq) FROM audit_checkpoints "
                     "WHERE tenant_id = 'globex')", ("f" * 64,))
    code, report = verify(cli, store)
    assert code == 1
    globex = tenant(report, "globex")
    assert globex["status"] == "tampered"
    assert "column head_hash holds 'ffff" in globex["findings"][0]["problem"]
    assert tenant(report, "acme")["status"] == "intact"


def test_a_checkpoint_table_entry_removed_is_tampering(cli: Cli, store: Path) -> None:
    with sqlite3.connect(store) as conn:
        size, row_seq = conn.execute(
            "SELECT tenant_seq, row_seq FROM audit_checkpoints WHERE tenant_id = 'acme' "
            "ORDER BY tenant_seq LIMIT 1").fetchone()
        conn.execute("DELETE FROM audit_checkpoints WHERE tenant_id = 'acme' AND tenant_seq = ?",
                     (size,))
    code, report = verify(cli, store)
    assert code == 1
    acme = tenant(report, "acme")
    assert acme["first_bad_tenant_seq"] == size + 1  # the checkpoint row follows what it covers
    assert f"checkpoint row at seq {row_seq} has no audit_checkpoints entry" in (
        acme["findings"][0]["problem"])


def test_a_checkpoint_table_entry_for_a_tenant_without_rows_is_tampering(
    cli: Cli, store: Path
) -> None:
    with sqlite3.connect(store) as conn:
        conn.execute("INSERT INTO audit_checkpoints SELECT 'ghost', tenant_seq, head_hash, "
                     "signed_at, key_id, signature, row_seq FROM audit_checkpoints LIMIT 1")
    code, report = verify(cli, store)
    assert code == 1
    assert tenant(report, "ghost")["status"] == "tampered"


def test_the_checkpoint_table_dropped_is_tampering_not_an_error(cli: Cli, store: Path) -> None:
    with sqlite3.connect(store) as conn:
        conn.execute("DROP TABLE audit_checkpoints")
    code, report = verify(cli, store)
    assert code == 1
    assert "table audit_checkpoints is missing" in report["store_findings"][0]["problem"]


# -- item 2: rows at seq 0 and below -----------------------------------------------------------


def forged_first_row(db: Path, seq: int, tenant_id: str = "evil") -> dict[str, Any]:
    """A row that hashes and links as the first of a chain of its own, at `seq`."""
    row = row_at(db, "acme", 1)
    row.update(seq=seq, tenant_id=tenant_id, tenant_seq=1, prev_hash="0" * 64,
               reason="planted before the first row")
    plant(db, row)
    return row


@pytest.mark.parametrize("seq", [0, -1, -(2**62)])
def test_a_row_planted_below_seq_1_is_tampering(cli: Cli, store: Path, seq: int) -> None:
    forged_first_row(store, seq)
    code, report = verify(cli, store)
    assert code == 1
    evil = tenant(report, "evil")
    assert evil["status"] == "tampered"
    assert f"row at seq {seq}" in evil["findings"][0]["problem"]
    assert tenant(report, "acme")["status"] == "intact"
    assert not any("missing" in problem for problem in problems(report))  # not a "hole" at 1
    code, report = verify(cli, store, "--tenant", "evil")
    assert code == 1


def test_a_row_of_an_existing_chain_at_tenant_seq_0_is_tampering(cli: Cli, store: Path) -> None:
    row = row_at(store, "acme", 1)
    row.update(seq=-3, tenant_seq=0, reason="before the first")
    plant(store, row)
    for extra in ((), ("--tenant", "acme")):
        code, report = verify(cli, store, *extra)
        assert code == 1
        assert tenant(report, "acme")["first_bad_tenant_seq"] == 0


def test_reads_never_return_rows_below_seq_1(cli: Cli, store: Path) -> None:
    forged_first_row(store, 0)
    refused = cli("dump", "--db", store, "--since-seq", "-1")
    assert refused.returncode == 3
    assert b"--since-seq: -1 is out of range" in refused.stderr
    assert refused.stdout == b""
    with ChainStore(store) as chain:
        everything = list(chain.rows())
        assert everything == list(chain.rows(after_seq=-1))
        assert all(orjson.loads(body)["seq"] >= 1 for body in everything)
        assert [row.seq for row in chain.export_rows(-1, 5)] == [1, 2, 3, 4, 5]
        assert [orjson.loads(body)["seq"] for body in chain.query(after_seq=-1, limit=3)] == [
            1, 2, 3]
        # SQLite reads a negative LIMIT as "no limit": a limit below 0 must not mean "all".
        assert chain.query(limit=-1) == []
        assert chain.export_rows(0, -1) == []
        assert list(chain.rows(limit=-1)) == []
        assert chain.query(after_seq=2**70) == []  # beyond 64 bits: nothing, not an error
        assert list(chain.rows(after_seq=2**70)) == []


# -- item 4: a row far away ----------------------------------------------------------------------


def bounded(*args: str | Path) -> CliResult:
    """Run the CLI with 1 GiB of address space and a minute: enough for any honest answer."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    return subprocess.run(
        [sys.executable, "-m", "sealtrail", *map(str, args)], capture_output=True, timeout=60,
        check=False, preexec_fn=limit,  # a fresh process, no threads yet
        env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_row_at_seq_10_to_the_12_is_answered_in_bounded_memory(
    store: Path, processes: str
) -> None:
    with sqlite3.connect(store) as conn:
        (last,) = conn.execute("SELECT MAX(seq) FROM audit_rows").fetchone()
    row = row_at(store, "acme", 1)
    row.update(seq=10**12, tenant_id="far", tenant_seq=1)
    plant(store, row)
    result = bounded("verify", "--db", store, "--json", "--processes", processes)
    assert result.returncode == 1, result.stderr
    report = orjson.loads(result.stdout)
    assert report["store_findings"][0]["problem"] == (
        f"global seq {last + 1} is missing: a row was removed")


def test_a_row_at_tenant_seq_10_to_the_12_is_answered_in_bounded_memory(store: Path) -> None:
    row = row_at(store, "acme", 1)
    row.update(seq=10**12, tenant_seq=10**12)
    plant(store, row)
    result = bounded("verify", "--db", store, "--json", "--tenant", "acme")
    assert result.returncode == 1, result.stderr
    report = orjson.loads(result.stdout)
    assert tenant(report, "acme")["status"] == "tampered"


def test_many_far_apart_rows_make_few_ranges(store: Path, tmp_path: Path) -> None:
    # Ranges are planned over the rows present: 60 rows spread over 10**15 values are still
    # one range of 100,000 rows, not ten billion ranges.
    from sealtrail.chain import scan  # noqa: PLC0415

    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE audit_rows SET seq = seq * 10000000000000")
        (count,) = conn.execute("SELECT COUNT(*) FROM audit_rows").fetchone()
    db = scan.connect_read_only(store)
    try:
        ranges, total = scan._plan(db, None, None)
    finally:
        db.close()
    assert total == count
    assert len(ranges) == 1
