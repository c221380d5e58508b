"""The modes of the files sealtrail creates, whatever the umask (issue 12, item 15).

Covers: the store and its -wal, -shm and lock files are 0600 (audit events are for the
worker's user alone); `keygen`'s private key 0600 and public key 0644; `checkpoint`'s file 0644
(evidence to hand around, written only by its owner). Each is created by the real command in
a process whose umask is 0, where modes that relied on the umask came out 0644 or 0666.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, ndjson


def run(tmp_path: Path, *args: str | Path, stdin: bytes = b"") -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sealtrail", *map(str, args)], input=stdin, capture_output=True,
        cwd=tmp_path, timeout=120, check=False, umask=0,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
    )
    assert result.returncode == 0, result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


EVENTS = ndjson([{"event_type": "system.auth", "severity": "INFO", "tenant_id": "acme"}] * 5)


def test_files_have_their_modes_under_umask_0(tmp_path: Path) -> None:
    run(tmp_path, "keygen", "--out", tmp_path / "k.key")
    assert mode(tmp_path / "k.key") == 0o600
    assert mode(tmp_path / "k.key.pub") == 0o644

    db = tmp_path / "audit.db"
    # A process that keeps the store open while we look: the -wal and -shm files exist then.
    code = (
        "import sys; from sealtrail.chain.store import ChainStore\n"
        "store = ChainStore(sys.argv[1]); store.last_seq(); print('open', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        umask=0, env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"open\n"
        run(tmp_path, "append", "--db", db, stdin=EVENTS)
        for name in ("audit.db", "audit.db-wal", "audit.db-shm", "audit.db.lock",
                     "audit.db.cursors", "audit.db.cursors-wal", "audit.db.cursors-shm"):
            assert mode(tmp_path / name) == 0o600, name
    finally:
        holder.communicate(b"", timeout=30)

    out = tmp_path / "checkpoints.json"
    run(tmp_path, "checkpoint", "--db", db, "--key", tmp_path / "k.key", "--out", out)
    assert mode(out) == 0o644
    run(tmp_path, "checkpoint", "--db", db, "--key", tmp_path / "k.key", "--out", out)
    assert mode(out) == 0o644  # replaced, same mode
    assert sorted(path.name for path in tmp_path.iterdir() if ".tmp" in path.name) == []


def test_an_existing_store_keeps_the_mode_its_operator_chose(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    run(tmp_path, "append", "--db", db, stdin=EVENTS)
    db.chmod(0o640)
    run(tmp_path, "append", "--db", db, stdin=EVENTS)
    assert mode(db) == 0o640
