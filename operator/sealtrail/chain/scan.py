"""Scanning stored rows for verify: each row's hash, form, columns and link, range by range.

The store is cut into ranges of global `seq` (or, for one tenant, of `tenant_seq`) that are
scanned independently, in worker processes when the store is large: checking rows is
CPU-bound, and the GIL would hold threads to one core. A scan returns, per tenant, the two ends
of what it saw and the first problem; `verify` joins the ends across ranges.

Scanning in `seq` order reads the table in its own order (cheaper than walking the tenant
index) and checks on the way that global `seq` has no hole.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE, Checkpoint

__all__ = [
    "Problem",
    "RangeResult",
    "Segment",
    "connect_read_only",
    "read_store_id",
    "scan_store",
]

#: Rows per range handed to a worker.
RANGE_ROWS: Final = 100_000
#: Below this many rows, scan in-process: starting workers costs more than it saves.
PARALLEL_THRESHOLD: Final = 200_000

_SORTED: Final = orjson.OPT_SORT_KEYS
_MEMBER: Final = b',"record_hash":"'
_MEMBER_END: Final = len(_MEMBER) + 64 + 1  # the member, 64 hex digits, the closing quote


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing wrong with a chain in a range, at `tenant_seq`."""

    tenant_seq: int
    message: str


@dataclass(slots=True)
class Segment:
    """One tenant's rows within one range: its ends, for joining, and its first problem."""

    rows: int = 0
    first_tenant_seq: int = 0
    first_prev_hash: str = ""
    first_seq: int = 0
    last_tenant_seq: int = 0
    last_hash: str = ""
    last_seq: int = 0
    problem: Problem | None = None
    checkpoints: list[tuple[int, Checkpoint]] = field(default_factory=list)


@dataclass(slots=True)
class RangeResult:
    """What one range held."""

    size: int
    segments: dict[str, Segment] = field(default_factory=dict)
    missing_seq: int | None = None  # first global seq absent from the range (all-tenant scans)


@dataclass(frozen=True, slots=True)
class _Range:
    low: int
    high: int
    tenant_id: str | None
    store_id: str | None  # every row must name this store (None: rows name none)

    @property
    def size(self) -> int:
        return self.high - self.low + 1


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the evidence it examines."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def read_store_id(db: sqlite3.Connection) -> str | None:
    """The store's id, or None for a store made before stores had ids (schema 1)."""
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_meta'"
    ).fetchone()
    if not has_meta:
        return None
    found = db.execute("SELECT value FROM audit_meta WHERE key = 'store_id'").fetchone()
    return str(found[0]) if found else None


_worker_db: sqlite3.Connection | None = None


def _worker_init(path: Path) -> None:
    global _worker_db  # noqa: PLW0603 - one read connection per worker process
    _worker_db = connect_read_only(path)


def _worker_scan(span: _Range) -> RangeResult:
    assert _worker_db is not None  # noqa: S101 - set by the pool initializer
    return _scan(_worker_db, span)


def _plan(db: sqlite3.Connection, tenant: str | None, store_id: str | None) -> list[_Range]:
    if tenant is None:
        (high,) = db.execute("SELECT MAX(seq) FROM audit_rows").fetchone()
    else:
        (high,) = db.execute(
            "SELECT MAX(tenant_seq) FROM audit_rows WHERE tenant_id = ?", (tenant,)
        ).fetchone()
    # From 1 whatever the lowest row is, so that a deleted first row shows as a gap.
    return [
        _Range(low, min(low + RANGE_ROWS - 1, high), tenant, store_id)
        for low in range(1, (high or 0) + 1, RANGE_ROWS)
    ]


def scan_store(
    db: sqlite3.Connection,
    path: Path,
    tenant: str | None,
    processes: int | None,
    progress: Callable[[int, int], None] | None,
) -> list[RangeResult]:
    """Scan every row (of one tenant, or all), in range order."""
    ranges = _plan(db, tenant, read_store_id(db))
    total = sum(span.size for span in ranges)
    workers = processes if processes is not None else (os.cpu_count() or 1)
    pool = None
    if workers > 1 and total >= PARALLEL_THRESHOLD and len(ranges) > 1:
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(ranges)), initializer=_worker_init, initargs=(path,)
        )
        scanned: Iterable[RangeResult] = pool.map(_worker_scan, ranges)
    else:
        scanned = (_scan(db, span) for span in ranges)
    results = []
    try:
        for result in scanned:
            results.append(result)
            if progress:
                progress(sum(item.size for item in results), total)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


# One flat loop on purpose: it is the hot path of verify (hundreds of thousands of rows a second).
def _scan(db: sqlite3.Connection, span: _Range) -> RangeResult:  # noqa: C901, PLR0912, PLR0915
    """Check every row of a range: its form, its hash, its columns, its link to the row before.

    The hash is taken over the stored bytes with the `record_hash` member cut out. That equals
    JCS(row without record_hash) exactly when the stored bytes are canonical, which is checked
    first: re-serializing the parsed row must give the stored bytes back.
    """
    if span.tenant_id is None:
        cursor = db.execute(
            "SELECT seq, tenant_id, tenant_seq, record_hash, body FROM audit_rows "
            "WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (span.low, span.high),
        )
        expected_seq: int | None = span.low
    else:
        cursor = db.execute(
            "SELECT seq, tenant_id, tenant_seq, record_hash, body FROM audit_rows "
            "WHERE tenant_id = ? AND tenant_seq BETWEEN ? AND ? ORDER BY tenant_seq",
            (span.tenant_id, span.low, span.high),
        )
        expected_seq = None
    result = RangeResult(span.size)
    segments = result.segments
    sha256 = hashlib.sha256
    loads = orjson.loads
    dumps = orjson.dumps
    for seq, tenant, tenant_seq, record_hash, body in cursor:
        if expected_seq is not None:
            if seq != expected_seq and result.missing_seq is None:
                result.missing_seq = expected_seq
            expected_seq = seq + 1
        segment = segments.get(tenant)
        if segment is None:
            segment = segments[tenant] = Segment()
        elif segment.problem is not None:
            continue  # this chain already failed in this range; its first problem is reported
        if segment.rows and tenant_seq != segment.last_tenant_seq + 1:
            if tenant_seq > segment.last_tenant_seq + 1:
                missing = segment.last_tenant_seq + 1
                segment.problem = Problem(
                    missing, f"row tenant_seq {missing} is missing or out of place "
                    f"(the next row in seq order is tenant_seq {tenant_seq})"
                )
            else:
                segment.problem = Problem(
                    tenant_seq, "rows are out of order: global seq and tenant_seq disagree"
                )
            continue
        message = None
        try:
            row = loads(body)
        except orjson.JSONDecodeError:
            row = None
        if type(row) is not dict:
            message = "row is not a JSON object"
        elif dumps(row, option=_SORTED) != body:
            message = "row is not in canonical form (re-serializing it changes its bytes)"
        else:
            claimed = row.get("record_hash")
            cut = body.rfind(_MEMBER)
            digest = sha256(body[:cut])
            digest.update(body[cut + _MEMBER_END :])
            if cut < 0 or digest.hexdigest() != claimed:
                message = "record_hash does not match the row: row changed"
            elif (
                claimed != record_hash
                or row.get("seq") != seq
                or row.get("tenant_seq") != tenant_seq
                or row.get("tenant_id") != tenant
            ):
                message = "row disagrees with its index columns"
            elif row.get("store_id") != span.store_id:
                message = (
                    f"row names store {row.get('store_id')!r}, not this store's "
                    f"{span.store_id!r}: it was written into another store's chain"
                )
            elif segment.rows == 0:
                segment.first_tenant_seq = tenant_seq
                segment.first_prev_hash = row.get("prev_hash", "")
                segment.first_seq = seq
            elif row.get("prev_hash") != segment.last_hash:
                message = (
                    "prev_hash does not match the previous row: "
                    "a row was removed, inserted or moved"
                )
            elif seq <= segment.last_seq:
                message = "global seq goes backwards: rows were reordered"
            if message is None and row.get("event_type") == CHECKPOINT_EVENT_TYPE:
                try:
                    segment.checkpoints.append((tenant_seq, Checkpoint.from_row(row)))
                except ValueError as error:
                    message = f"bad checkpoint row: {error}"
        if message is not None:
            segment.problem = Problem(tenant_seq, message)
            continue
        segment.rows += 1
        segment.last_tenant_seq = tenant_seq
        segment.last_hash = record_hash  # equal to the row's own, checked above
        segment.last_seq = seq
    if expected_seq is not None and expected_seq <= span.high and result.missing_seq is None:
        result.missing_seq = expected_seq
    return result
