"""Tampering drills: what an attacker with write access to the store file can do.

Each function edits a store behind sealtrail's back with plain SQL, the way someone holding the
file would. They exist so that `sealtrail demo` can show `verify` catching each attack and the
tests can hold it to that; they never run on a store in normal operation.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "delete_row",
    "delete_store_tail",
    "delete_tail",
    "insert_row",
    "modify_field",
    "rewrite_from",
    "swap_rows",
]


def _canonical(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


def _rehash(row: dict[str, Any]) -> bytes:
    row.pop("record_hash", None)
    row["record_hash"] = hashlib.sha256(_canonical(row)).hexdigest()
    return _canonical(row)


def _row(db: sqlite3.Connection, tenant: str, tenant_seq: int) -> dict[str, Any]:
    found = db.execute(
        "SELECT body FROM audit_rows WHERE tenant_id = ? AND tenant_seq = ?", (tenant, tenant_seq)
    ).fetchone()
    if found is None:
        raise LookupError(f"tenant {tenant} has no row {tenant_seq}")
    row: dict[str, Any] = orjson.loads(found[0])
    return row


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    finally:
        db.close()


def modify_field(path: Path, tenant: str, tenant_seq: int, name: str, value: Any) -> None:
    """Change one field of one row and leave its hash alone (the naive edit)."""
    with _connect(path) as db:
        row = _row(db, tenant, tenant_seq)
        row[name] = value
        db.execute(
            "UPDATE audit_rows SET body = ? WHERE tenant_id = ? AND tenant_seq = ?",
            (_canonical(row), tenant, tenant_seq),
        )


def delete_row(path: Path, tenant: str, tenant_seq: int) -> None:
    """Remove one row from the middle of a chain."""
    with _connect(path) as db:
        db.execute(
            "DELETE FROM audit_rows WHERE tenant_id = ? AND tenant_seq = ?", (tenant, tenant_seq)
        )


def delete_tail(path: Path, tenant: str, count: int) -> None:
    """Remove the newest `count` rows of a chain."""
    with _connect(path) as db:
        db.execute(
            "DELETE FROM audit_rows WHERE tenant_id = ? AND tenant_seq > "
            "(SELECT MAX(tenant_seq) FROM audit_rows WHERE tenant_id = ?) - ?",
            (tenant, tenant, count),
        )


def delete_store_tail(path: Path, count: int) -> None:
    """Remove the newest `count` rows of the whole store, whatever their tenants."""
    with _connect(path) as db:
        db.execute(
            "DELETE FROM audit_rows WHERE seq > (SELECT MAX(seq) FROM audit_rows) - ?", (count,)
        )


def insert_row(path: Path, tenant: str, after: int, fields: dict[str, Any]) -> None:
    """Forge a well-formed row after row `after`, renumbering the rows behind it.

    The forged row links correctly to its predecessor and hashes correctly; the rows moved
    behind it cannot be re-linked without recomputing their hashes too.
    """
    with _connect(path) as db:
        previous = _row(db, tenant, after)
        top = db.execute(
            "SELECT MAX(tenant_seq) FROM audit_rows WHERE tenant_id = ?", (tenant,)
        ).fetchone()[0]
        for tenant_seq in range(top, after, -1):
            moved = _row(db, tenant, tenant_seq)
            moved["tenant_seq"] = tenant_seq + 1
            db.execute(
                "UPDATE audit_rows SET tenant_seq = ?, body = ? "
                "WHERE tenant_id = ? AND tenant_seq = ?",
                (tenant_seq + 1, _canonical(moved), tenant, tenant_seq),
            )
        seq = db.execute("SELECT MAX(seq) FROM audit_rows").fetchone()[0] + 1
        forged = {**previous, **fields}
        forged.update(seq=seq, tenant_seq=after + 1, prev_hash=previous["record_hash"])
        body = _rehash(forged)
        db.execute(
            "INSERT INTO audit_rows (seq, tenant_id, tenant_seq, record_hash, event_type, "
            "severity, timestamp, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, tenant, after + 1, forged["record_hash"], forged["event_type"],
             forged["severity"], forged["timestamp"], body),
        )


def swap_rows(path: Path, tenant: str, first: int, second: int) -> None:
    """Exchange the contents of two rows, each taking the other's position."""
    with _connect(path) as db:
        rows = {n: _row(db, tenant, n) for n in (first, second)}
        for here, there in ((first, second), (second, first)):
            moved = rows[there]
            db.execute(
                "UPDATE audit_rows SET body = ?, record_hash = ?, event_type = ?, severity = ? "
                "WHERE tenant_id = ? AND tenant_seq = ?",
                (_canonical(moved), moved["record_hash"], moved["event_type"],
                 moved["severity"], tenant, here),
            )


def rewrite_from(path: Path, tenant: str, tenant_seq: int, name: str, value: Any) -> None:
    """Change one row and recompute every later hash of the chain: internally consistent.

    Only a signed checkpoint taken before the rewrite can reveal this one.
    """
    with _connect(path) as db:
        top = db.execute(
            "SELECT MAX(tenant_seq) FROM audit_rows WHERE tenant_id = ?", (tenant,)
        ).fetchone()[0]
        prev_hash = _row(db, tenant, tenant_seq - 1)["record_hash"] if tenant_seq > 1 else "0" * 64
        for position in range(tenant_seq, top + 1):
            row = _row(db, tenant, position)
            if position == tenant_seq:
                row[name] = value
            row["prev_hash"] = prev_hash
            body = _rehash(row)
            prev_hash = row["record_hash"]
            db.execute(
                "UPDATE audit_rows SET body = ?, record_hash = ? "
                "WHERE tenant_id = ? AND tenant_seq = ?",
                (body, prev_hash, tenant, position),
            )
