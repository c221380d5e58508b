"""Durability and ordering under crashes and contention, with real processes.

Covers: an appender killed with SIGKILL at random moments, twenty times over, loses no row it
had acknowledged and leaves a chain that verifies; several processes with several threads each,
appending to the same tenants with checkpoints on, never fork a chain (every acknowledged row is
present exactly once, every chain is contiguous and verifies).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sealtrail.chain.keys import Signer
from sealtrail.chain.store import ChainStore
from sealtrail.chain.verify import Status, verify_store

from .conftest import ROOT, events

APPENDER = Path(__file__).with_name("appender.py")


def start(
    db: Path, acks: Path, seed: int, batches: int, threads: int, key: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    with acks.with_suffix(".stderr").open("ab") as errors:
        return subprocess.Popen(
            [sys.executable, str(APPENDER), str(db), str(acks), str(seed), str(batches),
             str(threads), str(key)],
            env=env, stderr=errors,
        )


def errors_of(acks: Path) -> str:
    return acks.with_suffix(".stderr").read_text(encoding="utf-8", errors="replace")


def acknowledged(acks: Path) -> list[tuple[int, str, int, str]]:
    found = []
    for line in acks.read_text(encoding="ascii").splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # cut off by the kill: never a complete promise
        seq, tenant, tenant_seq, digest = line.split()
        found.append((int(seq), tenant, int(tenant_seq), digest))
    return found


def stored(db: Path) -> dict[int, tuple[str, int, str]]:
    with sqlite3.connect(db) as conn:
        return {seq: (tenant, tenant_seq, digest) for seq, tenant, tenant_seq, digest in
                conn.execute("SELECT seq, tenant_id, tenant_seq, record_hash FROM audit_rows")}


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_row(tmp_path: Path, signer: Signer) -> None:
    db, acks = tmp_path / "audit.db", tmp_path / "acks.txt"
    acks.touch()
    pick = random.Random(20261122)
    kills = 0
    for round_number in range(20):
        before = len(acknowledged(acks))
        process = start(db, acks, round_number, 0, 2, tmp_path / "signing.key")
        deadline = time.monotonic() + 30
        while len(acknowledged(acks)) == before and process.poll() is None:
            assert time.monotonic() < deadline, "appender acknowledged nothing in 30 s"
            time.sleep(0.01)
        time.sleep(pick.uniform(0.0, 0.3))  # a random moment in the middle of the work
        assert process.poll() is None, errors_of(acks)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        kills += 1
        promised = acknowledged(acks)
        assert len(promised) > before
        rows = stored(db)
        for seq, tenant, tenant_seq, digest in promised:
            assert rows.get(seq) == (tenant, tenant_seq, digest), f"acknowledged row {seq} lost"
        report = verify_store(db, public_keys=[signer.public])
        assert report.status is Status.INTACT, report.to_json()
    assert kills == 20
    assert len(acknowledged(acks)) > 100


@pytest.mark.slow
def test_concurrent_appenders_never_fork_a_chain(tmp_path: Path, signer: Signer) -> None:
    db = tmp_path / "audit.db"
    processes = [
        (start(db, tmp_path / f"acks-{n}.txt", n, 30, 2, tmp_path / "signing.key"), n)
        for n in range(3)
    ]
    for process, n in processes:
        assert process.wait(timeout=120) == 0, errors_of(tmp_path / f"acks-{n}.txt")
    promised = [row for _, n in processes for row in acknowledged(tmp_path / f"acks-{n}.txt")]
    assert len(promised) >= 3 * 2 * 30
    rows = stored(db)
    assert len({seq for seq, *_ in promised}) == len(promised), "two appenders got one seq"
    for seq, tenant, tenant_seq, digest in promised:
        assert rows[seq] == (tenant, tenant_seq, digest)
    checkpoint_rows = len(rows) - len(promised)
    assert checkpoint_rows > 0  # every process signed checkpoints, none forked over them
    report = verify_store(db, public_keys=[signer.public])
    assert report.status is Status.INTACT, report.to_json()
    assert report.rows == len(rows)


def test_threads_sharing_one_store_object(db_path: Path) -> None:
    batch = events(20, tenants=("acme",))
    with ChainStore(db_path) as store:
        results: list[int] = []

        def work() -> None:
            for _ in range(10):
                results.extend(s.tenant_seq for s in store.append(batch))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results) == list(range(1, 801))
    assert verify_store(db_path).status is Status.INTACT
