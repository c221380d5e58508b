"""Scanning stored rows for verify: each row's hash, form, columns and link, range by range.

The store is cut into ranges of global `seq` (or, for one tenant, of `tenant_seq`) that are
scanned independently, in worker processes when the store is large: checking rows is
CPU-bound, and the GIL would hold threads to one core. A scan returns, per tenant, the two ends
of what it saw and the first problem; `verify` joins the ends across ranges.

Scanning in `seq` order reads the table in its own order (cheaper than walking the tenant
index) and checks on the way that global `seq` has no hole, above the seqs retention pruned
(`hole_floor`: below it, holes are what pruning leaves, and `verify` accounts for them by count).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

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
    #: Checkpoint rows: `(tenant_seq, seq, checkpoint)`.
    checkpoints: list[tuple[int, int, Checkpoint]] = field(default_factory=list)


@dataclass(slots=True)
class RangeResult:
    """What one range held."""

    size: int = 0  # rows seen
    segments: dict[str, Segment] = field(default_factory=dict)
    missing_seq: int | None = None  # first global seq absent from the range (all-tenant scans)
    #: Rows that belong to no tenant's chain as their columns stand (a `tenant_id` that is not
    #: text, a `tenant_seq` that is not an integer): `(seq, message)` of the first.
    stray: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class _Range:
    low: int
    high: int
    tenant_id: str | None
    store_id: str | None  # every row must name this store (None: rows name none)
    hole_floor: int = 0  # global seq holes at or below this are pruning's, not reported here


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


def _plan(
    db: sqlite3.Connection, tenant: str | None, store_id: str | None, hole_floor: int = 0
) -> tuple[list[_Range], int]:
    """Ranges over the rows present, never over the span of values they claim; and their count.

    The first range starts at 1 (so that a deleted first row shows as a gap) or at the lowest
    row present if that is below 1 (a row inserted before the first, which the scan reports).
    In a store as written, `seq` (and each tenant's `tenant_seq`) runs 1..N without a hole, so
    ranges of values are ranges of rows and cost nothing to plan. A store with holes (rows
    removed, or a row planted at `seq` 10**12) is cut by walking the rows present instead:
    however far apart the values are, there are never more ranges than rows / RANGE_ROWS + 1.
    """
    column, where, params = _where(tenant)
    # Separate queries: MIN and MAX alone are one index lookup each; COUNT(*) walks the
    # smallest index, not the table.
    (low,) = db.execute(f"SELECT MIN({column}) FROM audit_rows {where}", params).fetchone()
    (high,) = db.execute(f"SELECT MAX({column}) FROM audit_rows {where}", params).fetchone()
    (count,) = db.execute(f"SELECT COUNT(*) FROM audit_rows {where}", params).fetchone()
    if not count:
        return [], 0
    start = min(low, 1)
    if high - start + 1 == count:  # no hole: ranges of values are ranges of rows
        return [
            _Range(first, min(first + RANGE_ROWS - 1, high), tenant, store_id, hole_floor)
            for first in range(start, high + 1, RANGE_ROWS)
        ], count
    ranges = []
    step = (
        f"SELECT {column} FROM audit_rows {where} {'AND' if where else 'WHERE'} {column} >= ? "
        f"ORDER BY {column} LIMIT 1 OFFSET {RANGE_ROWS - 1}"
    )
    first = start
    while first <= high:
        found = db.execute(step, (*params, first)).fetchone()
        last = high if found is None else int(found[0])
        ranges.append(_Range(first, last, tenant, store_id, hole_floor))
        first = last + 1
    return ranges, count


def _where(tenant: str | None) -> tuple[str, str, tuple[Any, ...]]:
    """The ordering column and the condition for planning a scan of every tenant or of one.

    A tenant's ranges are planned over integer `tenant_seq` values only (text sorts after every
    integer in SQLite); a row whose column was made text or real is reported by the scan of every
    tenant, and leaves a hole in this tenant's chain.
    """
    if tenant is None:
        return "seq", "", ()
    return "tenant_seq", "WHERE tenant_id = ? AND typeof(tenant_seq) = 'integer'", (tenant,)


def scan_store(
    db: sqlite3.Connection,
    path: Path,
    tenant: str | None,
    processes: int | None,
    progress: Callable[[int, int], None] | None,
    *,
    hole_floor: int = 0,
) -> list[RangeResult]:
    """Scan every row (of one tenant, or all), in range order.

    `hole_floor`: the largest global seq retention pruned (0: none); holes in global seq are
    looked for above it only.
    """
    ranges, total = _plan(db, tenant, read_store_id(db), hole_floor)
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
    done = 0
    try:
        for result in scanned:
            results.append(result)
            done += result.size
            if progress:
                progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


#: Index columns compared with the row's own fields, in the order the scan selects them.
_COLUMNS: Final = ("seq", "tenant_id", "tenant_seq", "record_hash", "event_type", "severity",
                   "timestamp")


def _disagreeing(row: dict[str, Any], values: tuple[Any, ...]) -> str:
    """Which index columns disagree with the row, for the message."""
    return "; ".join(
        f"column {name} holds {value!r}, the row {row.get(name)!r}"
        for name, value in zip(_COLUMNS, values, strict=True)
        if row.get(name) != value or type(row.get(name)) is not type(value)
    )


# One flat loop on purpose: it is the hot path of verify (hundreds of thousands of rows a second).
def _scan(db: sqlite3.Connection, span: _Range) -> RangeResult:  # noqa: C901, PLR0912, PLR0915
    """Check every row of a range: its form, its hash, its columns, its link to the row before.

    The hash is taken over the stored bytes with the `record_hash` member cut out. That equals
    JCS(row without record_hash) exactly when the stored bytes are canonical, which is checked
    first: re-serializing the parsed row must give the stored bytes back. Every column anything
    reads (routing, `GET /v1/events` filters, dump, this scan) is compared with the row.
    """
    select = (
        "SELECT seq, tenant_id, tenant_seq, record_hash, event_type, severity, timestamp, body "
        "FROM audit_rows "
    )
    if span.tenant_id is None:
        cursor = db.execute(
            select + "WHERE seq BETWEEN ? AND ? ORDER BY seq", (span.low, span.high)
        )
        # Global seq runs from 1 (from above what was pruned); rows below 1 are reported, not
        # counted as part of the run.
        expected_seq: int | None = max(span.low, span.hole_floor + 1, 1)
    else:
        cursor = db.execute(
            select + "WHERE tenant_id = ? AND tenant_seq BETWEEN ? AND ? ORDER BY tenant_seq",
            (span.tenant_id, span.low, span.high),
        )
        expected_seq = None
    result = RangeResult()
    segments = result.segments
    sha256 = hashlib.sha256
    loads = orjson.loads
    dumps = orjson.dumps
    size = 0
    for seq, tenant, tenant_seq, record_hash, event_type, severity, stamp, body in cursor:
        size += 1
        if expected_seq is not None and seq > span.hole_floor:  # hole_floor >= 0
            if seq != expected_seq and result.missing_seq is None:
                result.missing_seq = expected_seq
            expected_seq = seq + 1
        if type(tenant) is not str or type(tenant_seq) is not int:
            if result.stray is None:
                result.stray = (seq, (
                    f"row at seq {seq}: its index columns tenant_id, tenant_seq hold "
                    f"{tenant!r}, {tenant_seq!r}, which no row can have: a column was changed"
                ))
            continue
        segment = segments.get(tenant)
        if segment is None:
            segment = segments[tenant] = Segment()
        elif segment.problem is not None:
            continue  # this chain already failed in this range; its first problem is reported
        if seq < 1 or tenant_seq < 1:
            segment.problem = Problem(
                tenant_seq, f"row at seq {seq}, tenant_seq {tenant_seq} is below 1, where "
                "every chain starts: a row was inserted before the first"
            )
            continue
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
        except (orjson.JSONDecodeError, TypeError):
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
                or row.get("event_type") != event_type
                or row.get("severity") != severity
                or row.get("timestamp") != stamp
                or type(row.get("seq")) is not int  # JSON true equals 1 in Python
                or type(row.get("tenant_seq")) is not int
            ):
                values = (seq, tenant, tenant_seq, record_hash, event_type, severity, stamp)
                message = (
                    f"row at seq {seq} disagrees with its index columns (what routing, "
                    f"queries and dump read): {_disagreeing(row, values)}"
                )
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
            if message is None and event_type == CHECKPOINT_EVENT_TYPE:
                try:
                    segment.checkpoints.append((tenant_seq, seq, Checkpoint.from_row(row)))
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
    result.size = size
    return result
