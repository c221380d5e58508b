"""`sealtrail verify --rows`: a SIEM's copy held to the same evidence as `--db` (issue 12, item 3).

Covers: a copy cut back behind a signed checkpoint (from `--checkpoints`, or from the checkpoint
rows the copy itself holds) exits 2 as the store would; a chain that only a checkpoint
remembers is truncated; a fork (two different rows at one store, tenant and tenant_seq) exits
1 while the same row received twice stays intact; a row at tenant_seq 0 or 10**12 is answered,
not hung on; `--json` and `--tenant` work as with `--db`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sealtrail.chain.canonical import seal
from sealtrail.chain.keys import Signer
from sealtrail.chain.store import ChainStore, CheckpointPolicy

from .conftest import CliResult, events

Cli = Callable[..., CliResult]


@pytest.fixture
def shipped(tmp_path: Path, signer: Signer) -> list[bytes]:
    """The rows of a store with acme and globex, as a SIEM received them (checkpoint rows too)."""
    path = tmp_path / "audit.db"
    with ChainStore(path, checkpoints=CheckpointPolicy(signer, 10, None)) as chain:
        batch = events(60, tenants=("acme", "globex"))
        for start in range(0, 60, 10):
            chain.append(batch[start : start + 10])
    with ChainStore(path) as chain:
        return list(chain.rows())


@pytest.fixture
def checkpoints(cli: Cli, tmp_path: Path) -> Path:
    out = tmp_path / "checkpoints.json"
    result = cli("checkpoint", "--db", tmp_path / "audit.db", "--key", tmp_path / "signing.key",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def rows_of(rows: list[bytes], tenant: str) -> list[dict[str, Any]]:
    return [row for row in map(orjson.loads, rows) if row["tenant_id"] == tenant]


def verify_rows(cli: Cli, tmp_path: Path, rows: list[bytes],
                *extra: str | Path) -> tuple[int, dict[str, Any]]:
    export = tmp_path / "siem-export.ndjson"
    export.write_bytes(b"".join(row + b"\n" for row in rows))
    result = cli("verify", "--rows", export, "--json", *extra)
    assert result.returncode in (0, 1, 2), result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["exit_code"] == result.returncode
    return result.returncode, report


def chain(report: dict[str, Any], tenant: str) -> dict[str, Any]:
    return next(item for item in report["tenants"] if item["tenant_id"] == tenant)


def keys(tmp_path: Path) -> list[str | Path]:
    return ["--pubkey", tmp_path / "signing.key.pub"]


def test_the_whole_copy_with_its_checkpoints_is_intact(
    cli: Cli, tmp_path: Path, shipped: list[bytes], checkpoints: Path
) -> None:
    code, report = verify_rows(cli, tmp_path, shipped, *keys(tmp_path),
                               "--checkpoints", checkpoints)
    assert code == 0
    # The file's checkpoints vouch for the heads shipped (their own rows came later).
    assert report["rows"] == len(shipped)
    assert all(item["checkpoints_checked"] >= 2 for item in report["tenants"])


def test_a_copy_cut_back_behind_a_checkpoints_file_is_truncated(
    cli: Cli, tmp_path: Path, shipped: list[bytes], checkpoints: Path
) -> None:
    # The issue: the same evidence exits 2 with --db, and exited 0 with --rows.
    acme = rows_of(shipped, "acme")
    kept = [row for row in shipped if orjson.loads(row)["tenant_id"] != "acme"
            or orjson.loads(row)["tenant_seq"] <= len(acme) - 5]
    code, report = verify_rows(cli, tmp_path, kept, *keys(tmp_path), "--checkpoints", checkpoints)
    assert code == 2
    assert chain(report, "acme")["status"] == "truncated"
    assert chain(report, "acme")["first_bad_tenant_seq"] == len(acme) - 4
    assert chain(report, "globex")["status"] == "intact"
    with_db = cli("verify", "--db", tmp_path / "audit.db", "--pubkey",
                  tmp_path / "signing.key.pub", "--checkpoints", checkpoints)
    assert with_db.returncode == 0  # the store itself was not cut


def test_a_copy_rewritten_under_its_own_checkpoint_rows_is_truncated(
    cli: Cli, tmp_path: Path, shipped: list[bytes]
) -> None:
    # The checkpoint rows the copy holds are evidence too, as they are for --db: the chain
    # rewritten from the row the newest one vouches for, every later hash recomputed.
    acme = rows_of(shipped, "acme")
    last_checkpoint = max(row["tenant_seq"] for row in acme
                          if row["event_type"] == "sealtrail.checkpoint")
    size = int(next(row for row in acme if row["tenant_seq"] == last_checkpoint)["extra"][
        "checkpoint_tenant_seq"])
    rewritten = []
    previous = "0" * 64
    for row in acme:  # a rewrite from the covered head on, with every later hash recomputed
        if row["tenant_seq"] >= size:
            if row["tenant_seq"] == size:
                row["reason"] = "rewritten by an intruder"
            row["prev_hash"] = previous
            row.pop("record_hash")
            seal(row)
        previous = row["record_hash"]
        rewritten.append(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
    others = [row for row in shipped if orjson.loads(row)["tenant_id"] != "acme"]
    code, _ = verify_rows(cli, tmp_path, others + rewritten)
    assert code == 0, "without keys, a rewrite with recomputed hashes is consistent"
    code, report = verify_rows(cli, tmp_path, others + rewritten, *keys(tmp_path))
    assert code == 2
    assert chain(report, "acme")["first_bad_tenant_seq"] == size


def test_a_chain_only_a_checkpoint_remembers_is_truncated(
    cli: Cli, tmp_path: Path, shipped: list[bytes], checkpoints: Path
) -> None:
    kept = [row for row in shipped if orjson.loads(row)["tenant_id"] != "globex"]
    code, report = verify_rows(cli, tmp_path, kept, *keys(tmp_path), "--checkpoints", checkpoints)
    assert code == 2
    assert chain(report, "globex")["rows"] == 0
    assert chain(report, "globex")["status"] == "truncated"


def test_a_fork_is_tampering_and_a_duplicate_is_not(
    cli: Cli, tmp_path: Path, shipped: list[bytes]
) -> None:
    code, _ = verify_rows(cli, tmp_path, shipped + shipped[:9] + shipped[4:6])  # at least once
    assert code == 0
    acme = rows_of(shipped, "acme")
    fork = dict(acme[-1])  # the newest row, rewritten: both versions hash and link
    fork["reason"] = "the other story"
    fork.pop("record_hash")
    _, body = seal(fork)
    code, report = verify_rows(cli, tmp_path, [*shipped, body])
    assert code == 1
    problem = chain(report, "acme")["findings"][0]["problem"]
    assert f"row {fork['tenant_seq']} arrived as 2 different rows" in problem
    assert "fork" in problem
    text = cli("verify", "--rows", tmp_path / "siem-export.ndjson")
    assert text.returncode == 1
    assert f"TAMPERED  acme (store {fork['store_id']}): row {fork['tenant_seq']}".encode() in (
        text.stdout)


@pytest.mark.parametrize("tenant_seq", [0, -1, 10**12])
def test_a_row_far_away_or_below_1_is_tampering(
    cli: Cli, tmp_path: Path, shipped: list[bytes], tenant_seq: int
) -> None:
    row = orjson.loads(shipped[0])
    row.update(tenant_seq=tenant_seq, seq=10**12)
    row.pop("record_hash")
    _, body = seal(row)
    code, report = verify_rows(cli, tmp_path, [*shipped, body])
    assert code == 1
    assert chain(report, row["tenant_id"])["status"] == "tampered"


def test_one_tenant_only(cli: Cli, tmp_path: Path, shipped: list[bytes],
                         checkpoints: Path) -> None:
    kept = [row for row in shipped if orjson.loads(row)["tenant_id"] != "globex"]
    code, report = verify_rows(cli, tmp_path, kept, *keys(tmp_path), "--checkpoints", checkpoints,
                               "--tenant", "acme")
    assert code == 0
    assert [item["tenant_id"] for item in report["tenants"]] == ["acme"]


def test_checkpoints_need_a_public_key(cli: Cli, tmp_path: Path, shipped: list[bytes],
                                       checkpoints: Path) -> None:
    export = tmp_path / "siem-export.ndjson"
    export.write_bytes(b"\n".join(shipped))
    result = cli("verify", "--rows", export, "--checkpoints", checkpoints)
    assert result.returncode == 3
    assert b"--checkpoints needs --pubkey" in result.stderr
