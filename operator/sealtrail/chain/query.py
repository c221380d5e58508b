"""Search over a whole store, newest first, for people: the audit UI's filters and exports.

Why a module of its own, beside `ChainStore.query`: that one serves machines (`GET
/v1/events`, oldest first, column filters); a person investigating wants the newest rows first,
filters on fields inside the row (decision, actor, free text), counts over time, and a way to
page through a million rows without an offset that grows with every page. Everything here reads
on read-only connections of its own, so a search never holds up an appender, and never writes.

Paging is by keyset on `seq` (`before_seq`): page N costs what page 1 costs. Rows are matched
on the store's own columns where it has them (tenant, type, severity, time) and inside the
stored JSON otherwise; `SEARCH_INDEXES` are the indexes that keep the column filters fast on
a large store (`ensure_search_indexes` adds them once).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sealtrail.api.event import format_timestamp
from sealtrail.chain.anchor import ANCHOR_TABLE

__all__ = [
    "SEARCH_INDEXES",
    "Bucket",
    "Found",
    "Search",
    "connect",
    "ensure_search_indexes",
    "histogram",
    "pruned_through",
    "row_at",
    "rows_ascending",
    "search",
    "tenant_names",
]

#: Indexes the filters use. `(tenant_id, seq)` and `(event_type, seq)` let a filtered page be
#: read newest-first straight from the index (a type nobody logged: 396 ms to find out over a
#: million rows without it); `(timestamp, severity)` bounds a time range and counts the
#: timeline's bars from the index alone (~0.2 s for a million rows, against ~1.5 s reading the
#: rows). Together they cost appends about 30% of their rate (docs/performance.md), which is
#: why a store gets them only once someone uses the UI.
SEARCH_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS audit_rows_tenant_by_seq ON audit_rows (tenant_id, seq)",
    "CREATE INDEX IF NOT EXISTS audit_rows_type_by_seq ON audit_rows (event_type, seq)",
    "CREATE INDEX IF NOT EXISTS audit_rows_time_severity ON audit_rows (timestamp, severity)",
)

_COLUMNS: Final = ("seq, tenant_id, tenant_seq, record_hash, event_type, severity, timestamp, "
                   "body")
#: The row as text: SQLite's JSON functions refuse a BLOB (newer versions read it as JSONB).
_TEXT: Final = "CAST(body AS TEXT)"


@dataclass(frozen=True, slots=True)
class Search:
    """What a person asked for. Empty lists and None mean "any".

    `tenants` is never "any" for a person bound to some tenants: the caller fills it with the
    tenants they may see (None only for a caller who may see every tenant).
    """

    tenants: Sequence[str] | None = None
    event_types: Sequence[str] = ()
    severities: Sequence[str] = ()
    decisions: Sequence[str] = ()
    actor: str | None = None
    since: str | None = None  # RFC 3339 as rows spell it; inclusive
    until: str | None = None  # exclusive
    text: str | None = None
    seq_from: int | None = None  # inclusive global seq bounds (the integrity panel's links)
    seq_to: int | None = None

    def where(self, *, by_time: bool = False) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters (never text pasted into SQL).

        `by_time`: keep SQLite from reading by the tenant or type index (`+column` is not
        indexable), so that it reads a time range by the time index. Without statistics its
        planner prefers an equality, and a tenant's whole history for each bar of a timeline
        cost 13 s on a million rows.
        """
        clauses: list[str] = []
        params: list[Any] = []
        plus = "+" if by_time else ""
        for column, values in (("tenant_id", self.tenants), ("event_type", self.event_types),
                               ("severity", self.severities)):
            if values is None:
                continue
            if column == "tenant_id" or values:
                clauses.append(f"{plus}{column} IN ({','.join('?' * len(values))})")
                params.extend(values)
        if self.decisions:
            clauses.append(f"json_extract({_TEXT}, '$.decision') IN "
                           f"({','.join('?' * len(self.decisions))})")
            params.extend(self.decisions)
        if self.actor:
            clauses.append(f"(json_extract({_TEXT}, '$.agent_id') = ? OR "
                           f"json_extract({_TEXT}, '$.identity') = ?)")
            params += [self.actor, self.actor]
        bounds: tuple[tuple[str, str | int | None], ...] = (
            ("timestamp >= ?", self.since), ("timestamp < ?", self.until),
            ("seq >= ?", self.seq_from), ("seq <= ?", self.seq_to))
        for clause, bound in bounds:
            if bound is not None:
                clauses.append(clause)
                params.append(bound)
        if self.text:
            clauses.append(f"{_TEXT} LIKE ? ESCAPE '\\'")
            params.append(_contains(self.text))
        return (" AND ".join(clauses) or "1"), params


def _contains(text: str) -> str:
    """A LIKE pattern for rows containing `text` (ASCII letters in any case), wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True, slots=True)
class Found:
    """A row as stored, with the columns a list shows without parsing it."""

    seq: int
    tenant_id: str
    tenant_seq: int
    record_hash: str
    event_type: str
    severity: str
    timestamp: str
    body: bytes


@dataclass(slots=True)
class Bucket:
    """Rows per severity in one slice of time `[start, end)`."""

    start: datetime
    end: datetime
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All rows of the slice."""
        return sum(self.counts.values())


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection: the UI can show evidence, never change it."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


def ensure_search_indexes(path: Path) -> None:
    """Add `SEARCH_INDEXES` to the store at `path` (seconds on a large store, once).

    On a connection of its own: SQLite's write lock keeps appenders out meanwhile, and they
    wait for it as for any other writer.
    """
    db = sqlite3.connect(path, timeout=60.0)
    try:
        for statement in SEARCH_INDEXES:
            db.execute(statement)
        db.commit()
    finally:
        db.close()


def _found(values: tuple[Any, ...]) -> Found:
    """A row from its columns.

    A body stored as TEXT (an edit by hand: SQLite's `replace()` makes TEXT of a BLOB) is still
    shown, as its UTF-8 bytes, for verify to judge.
    """
    seq, tenant, tenant_seq, digest, event_type, severity, stamp, body = values
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
    return Found(seq, tenant, tenant_seq, digest, event_type, severity, stamp, raw)


def search(db: sqlite3.Connection, wanted: Search, *, before_seq: int | None = None,
           limit: int = 50) -> list[Found]:
    """Up to `limit` matching rows, newest first, all below `before_seq` if given."""
    where, params = wanted.where()
    if before_seq is not None:
        where += " AND seq < ?"
        params.append(before_seq)
    sql = f"SELECT {_COLUMNS} FROM audit_rows WHERE {where} ORDER BY seq DESC LIMIT ?"
    return [_found(values) for values in db.execute(sql, [*params, max(limit, 0)])]


def rows_ascending(db: sqlite3.Connection, wanted: Search, *, after_seq: int = 0,
                   chunk: int = 2_000) -> Iterator[list[Found]]:
    """Every matching row in chain order, `chunk` at a time (an export, the live tail).

    Keyset paging again: each chunk is its own short read, so a slow download does not keep
    one read transaction (and with it the WAL) open for its whole length.
    """
    where, params = wanted.where()
    sql = (f"SELECT {_COLUMNS} FROM audit_rows WHERE {where} AND seq > ? "
           "ORDER BY seq LIMIT ?")
    while True:
        found = [_found(values) for values in db.execute(sql, [*params, after_seq, chunk])]
        if not found:
            return
        yield found
        after_seq = found[-1].seq
        if len(found) < chunk:
            return


def row_at(db: sqlite3.Connection, tenant: str, tenant_seq: int) -> Found | None:
    """The row at a chain position (the UNIQUE index finds it at once)."""
    values = db.execute(f"SELECT {_COLUMNS} FROM audit_rows WHERE tenant_id = ? AND "
                        "tenant_seq = ?", (tenant, tenant_seq)).fetchone()
    return None if values is None else _found(values)


def pruned_through(db: sqlite3.Connection, tenant: str) -> int:
    """The last `tenant_seq` retention pruned from a chain (0: none, or a store before it)."""
    try:
        found = db.execute(f"SELECT tenant_seq FROM {ANCHOR_TABLE} WHERE tenant_id = ?",
                           (tenant,)).fetchone()
    except sqlite3.OperationalError:  # a store made before retention has no such table
        return 0
    return 0 if found is None else int(found[0])


def tenant_names(db: sqlite3.Connection) -> list[str]:
    """Every tenant with rows, by skipping along the `(tenant_id, tenant_seq)` index.

    `SELECT DISTINCT` would read every index entry (a million on a large store); this reads one
    per tenant.
    """
    found = db.execute(
        "WITH RECURSIVE t(name) AS (SELECT MIN(tenant_id) FROM audit_rows UNION ALL "
        "SELECT (SELECT MIN(tenant_id) FROM audit_rows WHERE tenant_id > t.name) FROM t "
        "WHERE t.name IS NOT NULL) SELECT name FROM t WHERE name IS NOT NULL")
    return [name for (name,) in found]


def histogram(db: sqlite3.Connection, wanted: Search, *, start: datetime, end: datetime,
              buckets: int = 48) -> tuple[timedelta, list[Bucket]]:
    """Rows per severity in `buckets` equal slices of `[start, end)`.

    Returns the slice width and every slice, empty ones included (a gap in traffic is itself
    something to see). One range count per slice, not one GROUP BY over a computed bucket:
    each count reads only the `(timestamp, severity)` index, no row and no date arithmetic.
    """
    width = max((end - start) / max(buckets, 1), timedelta(seconds=1))
    where, params = wanted.where(by_time=True)
    sql = (f"SELECT severity, COUNT(*) FROM audit_rows WHERE {where} AND timestamp >= ? "
           "AND timestamp < ? GROUP BY severity")
    slices = []
    low = start
    while low < end:
        high = min(low + width, end)
        counts = dict(db.execute(sql, [*params, format_timestamp(low),
                                       format_timestamp(high)]).fetchall())
        slices.append(Bucket(low, high, counts))
        low = high
    return width, slices
