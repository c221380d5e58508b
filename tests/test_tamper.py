"""Every kind of tampering, through the real `sealtrail verify` command and its exit codes.

Covers: a modified field, a deleted middle row, an inserted row, two swapped rows (exit 1); a
deleted tail and a rollback to an old copy against a checkpoints file (exit 2); a rewrite from
row k with every later hash recomputed (exit 0 without checkpoints, which is why they exist;
exit 2 with them); forged and foreign-key checkpoints (exit 1); usage errors (exit 3). Each
message names the tenant and the first bad tenant_seq.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sealtrail import drill
from sealtrail.chain.keys import Signer, generate_keypair
from sealtrail.chain.store import ChainStore, CheckpointPolicy

from .conftest import CliResult, events

Cli = Callable[..., CliResult]


@pytest.fixture
def store(tmp_path: Path, signer: Signer) -> Path:
    """Interleaved acme and globex (100 events), then 40 acme-only events.

    The store signs a checkpoint for a tenant every 25 of its rows (at batch ends).
    """
    path = tmp_path / "audit.db"
    with ChainStore(path, checkpoints=CheckpointPolicy(signer, 25, None)) as chain:
        batch = events(100, tenants=("acme", "globex"))
        for start in range(0, 100, 20):
            chain.append(batch[start : start + 20])
        chain.append(events(40, seed=3, tenants=("acme",)))
    return path


def checkpoint_file(cli: Cli, db: Path, tmp_path: Path) -> Path:
    out = tmp_path / "checkpoints.json"
    result = cli("checkpoint", "--db", db, "--key", tmp_path / "signing.key", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def verify(cli: Cli, db: Path, tmp_path: Path, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    result = cli("verify", "--db", db, "--json", *extra)
    assert result.returncode in (0, 1, 2), result.stderr
    report = orjson.loads(result.stdout)
    assert report["exit_code"] == result.returncode
    return result.returncode, report


def with_keys(tmp_path: Path, checkpoints: Path | None = None) -> list[str | Path]:
    args: list[str | Path] = ["--pubkey", tmp_path / "signing.key.pub"]
    if checkpoints is not None:
        args += ["--checkpoints", checkpoints]
    return args


def tenant(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in report["tenants"] if item["tenant_id"] == name)


def acme_size(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(
            "SELECT MAX(tenant_seq) FROM audit_rows WHERE tenant_id = 'acme'"
        ).fetchone()[0])


def checkpoint_sizes(db: Path, name: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [size for (size,) in conn.execute(
            "SELECT tenant_seq FROM audit_checkpoints WHERE tenant_id = ? ORDER BY 1", (name,)
        )]


def test_untouched_store_is_intact(cli: Cli, store: Path, tmp_path: Path) -> None:
    checkpoints = checkpoint_file(cli, store, tmp_path)
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path, checkpoints))
    assert code == 0
    assert report["status"] == "intact"
    with sqlite3.connect(store) as conn:
        checkpoint_rows = conn.execute(
            "SELECT COUNT(*) FROM audit_rows WHERE event_type = 'sealtrail.checkpoint'"
        ).fetchone()[0]
    assert report["rows"] == 140 + checkpoint_rows
    assert all(t["checkpoints_checked"] >= 2 for t in report["tenants"])


def test_modified_field(cli: Cli, store: Path, tmp_path: Path) -> None:
    drill.modify_field(store, "acme", 7, "reason", "rewritten by an intruder")
    code, report = verify(cli, store, tmp_path)
    assert code == 1
    assert tenant(report, "acme")["first_bad_tenant_seq"] == 7
    assert "row changed" in tenant(report, "acme")["findings"][0]["problem"]
    assert tenant(report, "globex")["status"] == "intact"


def test_deleted_middle_row(cli: Cli, store: Path, tmp_path: Path) -> None:
    drill.delete_row(store, "globex", 12)
    code, report = verify(cli, store, tmp_path)
    assert code == 1
    assert tenant(report, "globex")["first_bad_tenant_seq"] == 12
    assert "missing" in tenant(report, "globex")["findings"][0]["problem"]
    assert any("global seq" in f["problem"] for f in report["store_findings"])


def test_inserted_row(cli: Cli, store: Path, tmp_path: Path) -> None:
    drill.insert_row(store, "acme", 20, {"decision": "allow", "reason": "forged approval"})
    code, report = verify(cli, store, tmp_path)
    assert code == 1
    # The forged row hashes and links correctly, but it got the newest global seq, so in seq
    # order its place is empty, and the row it displaced no longer hashes.
    acme = tenant(report, "acme")
    assert acme["first_bad_tenant_seq"] == 21
    assert "row tenant_seq 21 is missing or out of place" in acme["findings"][0]["problem"]


def test_swapped_rows(cli: Cli, store: Path, tmp_path: Path) -> None:
    drill.swap_rows(store, "acme", 30, 31)
    code, report = verify(cli, store, tmp_path)
    assert code == 1
    assert tenant(report, "acme")["first_bad_tenant_seq"] == 30


def test_deleted_tail_against_checkpoints(cli: Cli, store: Path, tmp_path: Path) -> None:
    checkpoints = checkpoint_file(cli, store, tmp_path)
    size = acme_size(store)
    # The newest 17 rows of the store: globex's and acme's last checkpoint rows, and 15 acme rows.
    drill.delete_store_tail(store, 17)
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path, checkpoints))
    assert code == 2
    acme = tenant(report, "acme")
    assert acme["status"] == "truncated"
    assert acme["first_bad_tenant_seq"] == size - 16 + 1
    assert tenant(report, "globex")["status"] == "intact"
    assert report["store_findings"] == []


def test_deleted_tail_is_invisible_without_checkpoints(cli: Cli, store: Path, tmp_path: Path) -> None:
    # Stated plainly in docs: this is the gap that only checkpoints close.
    drill.delete_store_tail(store, 15)
    code, _ = verify(cli, store, tmp_path)
    assert code == 0


def test_deleted_tail_of_one_tenant_shows_as_a_global_seq_hole(
    cli: Cli, tmp_path: Path, signer: Signer
) -> None:
    db = tmp_path / "interleaved.db"
    with ChainStore(db) as chain:
        chain.append(events(30, tenants=("acme",)))
        chain.append(events(30, tenants=("globex",)))
    drill.delete_tail(db, "acme", 5)
    code, report = verify(cli, db, tmp_path)
    assert code == 1
    assert report["store_findings"][0]["problem"] == "global seq 26 is missing: a row was removed"


def test_rollback_to_an_old_copy(cli: Cli, store: Path, tmp_path: Path, signer: Signer) -> None:
    old = tmp_path / "old.db"
    shutil.copy(store, old)
    with ChainStore(store, checkpoints=CheckpointPolicy(signer, 25, None)) as chain:
        chain.append(events(60, seed=9))
    checkpoints = checkpoint_file(cli, store, tmp_path)
    code, report = verify(cli, old, tmp_path, *with_keys(tmp_path, checkpoints))
    assert code == 2
    assert {t["status"] for t in report["tenants"]} == {"truncated"}


def test_rewrite_with_recomputed_hashes(cli: Cli, store: Path, tmp_path: Path) -> None:
    checkpoints = checkpoint_file(cli, store, tmp_path)
    drill.rewrite_from(store, "acme", 40, "reason", "rewritten by an intruder")
    code, _ = verify(cli, store, tmp_path)
    assert code == 0, "a rewrite with recomputed hashes is internally consistent"
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path, checkpoints))
    assert code == 2
    acme = tenant(report, "acme")
    assert acme["status"] == "truncated"
    # Only the file is given: its checkpoint (the newest) is the evidence.
    newest = checkpoint_sizes(store, "acme")[-1]
    assert acme["first_bad_tenant_seq"] == newest


def test_rewrite_is_caught_by_checkpoint_rows_in_the_chain(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    sizes = checkpoint_sizes(store, "acme")
    assert len(sizes) >= 2
    drill.rewrite_from(store, "acme", sizes[0] + 5, "reason", "rewritten by an intruder")
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path))
    assert code == 2
    acme = tenant(report, "acme")
    # The checkpoint rows bracket the rewrite: after sizes[0] (still matches), by sizes[1].
    assert acme["first_bad_tenant_seq"] == sizes[1]
    problem = acme["findings"][0]["problem"]
    assert "checkpoint row" in problem
    assert f"rewritten after row {sizes[0]} and at or before row {sizes[1]}" in problem


def test_forged_checkpoint_signature(cli: Cli, store: Path, tmp_path: Path) -> None:
    checkpoints = checkpoint_file(cli, store, tmp_path)
    document = orjson.loads(checkpoints.read_bytes())
    document["checkpoints"][0]["tenant_seq"] -= 1  # claim a shorter chain, keep the signature
    checkpoints.write_bytes(orjson.dumps(document))
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path, checkpoints))
    assert code == 1
    assert "signature does not verify" in report["tenants"][0]["findings"][0]["problem"]


def test_checkpoint_row_edited_in_the_chain(cli: Cli, store: Path, tmp_path: Path) -> None:
    with sqlite3.connect(store) as conn:
        tenant_seq = conn.execute(
            "SELECT tenant_seq FROM audit_rows WHERE tenant_id='globex' "
            "AND event_type='sealtrail.checkpoint' ORDER BY tenant_seq LIMIT 1"
        ).fetchone()[0]
    drill.rewrite_from(store, "globex", tenant_seq, "extra", {
        "checkpoint_head_hash": "0" * 64, "checkpoint_key_id": "x", "checkpoint_signature": "AA==",
        "checkpoint_signed_at": "2026-01-01T00:00:00.000000Z", "checkpoint_tenant_seq": "1",
    })
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path))
    assert code == 1
    assert tenant(report, "globex")["first_bad_tenant_seq"] == tenant_seq


def test_checkpoints_from_another_key_are_refused(cli: Cli, store: Path, tmp_path: Path) -> None:
    checkpoints = checkpoint_file(cli, store, tmp_path)
    generate_keypair(tmp_path / "other.key")
    result = cli("verify", "--db", store, "--checkpoints", checkpoints,
                 "--pubkey", tmp_path / "other.key.pub")
    assert result.returncode == 1
    assert b"not among the public keys given" in result.stdout


def test_checkpoints_exported_from_a_siem_are_accepted(cli: Cli, store: Path, tmp_path: Path) -> None:
    exported = tmp_path / "siem-export.ndjson"
    exported.write_bytes(cli("dump", "--db", store).stdout)  # what the SIEM received
    drill.delete_store_tail(store, 45)  # cuts into what the exported checkpoint rows vouch for
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path, exported))
    assert code == 2
    assert tenant(report, "acme")["status"] == "truncated"


def test_whole_tenant_deleted(cli: Cli, store: Path, tmp_path: Path) -> None:
    checkpoints = checkpoint_file(cli, store, tmp_path)
    with sqlite3.connect(store) as conn:
        conn.execute("DELETE FROM audit_rows WHERE tenant_id = 'globex'")
    code, report = verify(cli, store, tmp_path, *with_keys(tmp_path, checkpoints))
    assert code in (1, 2)
    assert tenant(report, "globex")["status"] != "intact"
    assert tenant(report, "globex")["first_bad_tenant_seq"] == 1


def test_text_report_names_tenant_and_first_bad_row(cli: Cli, store: Path) -> None:
    drill.modify_field(store, "globex", 3, "severity", "LOW")
    result = cli("verify", "--db", store)
    assert result.returncode == 1
    assert b"tenant globex: first bad tenant_seq 3" in result.stdout


def test_one_tenant_only(cli: Cli, store: Path, tmp_path: Path) -> None:
    drill.modify_field(store, "globex", 3, "severity", "LOW")
    code, report = verify(cli, store, tmp_path, "--tenant", "acme")
    assert code == 0
    assert [t["tenant_id"] for t in report["tenants"]] == ["acme"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--db", "missing.db"], b"no such store"),
        (["verify", "--db", "audit.db", "--checkpoints", "c.json"], b"--checkpoints needs --pubkey"),
        (["verify", "--db", "audit.db", "--pubkey", "nope.pub"], b"cannot read key file"),
        (["verify"], b"required"),
        (["verify", "--db", "audit.db", "--bogus"], b"unrecognized arguments"),
    ],
)
def test_usage_and_io_errors_exit_3(
    cli: Cli, store: Path, args: list[str], message: bytes
) -> None:
    result = cli(*args)
    assert result.returncode == 3
    assert message in result.stderr
    assert b"Traceback" not in result.stderr


def test_garbage_checkpoints_file_exits_3(cli: Cli, store: Path, tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"format": "something else"}')
    result = cli("verify", "--db", store, *with_keys(tmp_path, bad))
    assert result.returncode == 3
    assert b"is not a sealtrail.checkpoints/v1 document" in result.stderr


def test_not_a_database_exits_3(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    result = cli("verify", "--db", tmp_path / "junk.db")
    assert result.returncode == 3
    assert b"cannot" in result.stderr
