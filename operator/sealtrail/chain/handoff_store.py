"""Rows other workers handed off at shutdown, checked on arrival and kept until delivered.

Why this exists: a sidecar's store is an `emptyDir`, which dies with its pod. When its exports
cannot deliver everything before the drain deadline (a SIEM outage during a rollout), the
sidecar posts the undelivered rows to a collector (`POST /v1/handoff`), which keeps them here,
on a volume that outlives pods, and delivers them with the same exports.

Why the rows are kept as they are, not appended to the collector's own chain: a handed-off row
belongs to the chain of the store that wrote it, `(store_id, tenant_id)`, and the SIEM must be
able to verify that chain from its copy. So each row is kept byte for byte, with its own
`store_id`, `seq`, `tenant_seq`, `prev_hash` and `record_hash`; `hseq` is only the order in
which they arrived here, which the export cursors count in.

What is checked before anything is kept (`parse_rows`, then `HandoffStore.receive`, in one
transaction):

- every line is a row in canonical form (the bytes JCS gives for it: nothing re-encoded on the
  way) whose `record_hash` is the hash of the rest, and which names its store (a row of a store
  made before stores had ids cannot be told apart from another replica's);
- rows of one chain link: a row right after another (in the request or already held) names
  that row's hash as its `prev_hash`, and its `seq` is larger; row 1 links to the genesis hash;
- a position already held with the same bytes is a duplicate (a retry): acknowledged, not kept
  twice; with other bytes it is a fork, refused.

A chain may start anywhere (the rows before were delivered by the sidecar itself), and may
continue after a gap: a sidecar that restarted with its store kept can hand off twice, its
exports having delivered the rows in between. What cannot be checked across a gap is left to
the SIEM's verify, which sees the whole chain. Any refusal refuses the whole request: nothing
of it is kept.

Durable before answering: `synchronous=FULL` and one transaction per request, so the sender,
whose store is about to disappear, is told "safe" only once the rows survive a power cut here.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from sealtrail.api.event import format_timestamp
from sealtrail.chain.canonical import GENESIS_HASH, canonical_json, hash_row
from sealtrail.chain.store import StoredRow, StoreError, Synchronous, _create_private

__all__ = [
    "HANDOFF_SCHEMA_VERSION",
    "HandedHead",
    "HandedRow",
    "HandoffRefusedError",
    "HandoffStore",
    "Received",
    "parse_rows",
]

HANDOFF_SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS handed_rows (
    hseq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order here (never reused)
    store_id     TEXT    NOT NULL,          -- the store that wrote the row
    tenant_id    TEXT    NOT NULL,
    tenant_seq   INTEGER NOT NULL,
    seq          INTEGER NOT NULL,          -- the row's seq in its own store
    record_hash  TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    severity     TEXT    NOT NULL,
    timestamp    TEXT    NOT NULL,
    body         BLOB    NOT NULL,          -- the row's canonical bytes, as its store holds them
    UNIQUE (store_id, tenant_id, tenant_seq)
);
CREATE TABLE IF NOT EXISTS handoff_heads (
    store_id     TEXT    NOT NULL,
    tenant_id    TEXT    NOT NULL,
    tenant_seq   INTEGER NOT NULL,          -- the furthest row of the chain held here
    record_hash  TEXT    NOT NULL,
    rows         INTEGER NOT NULL,          -- rows of the chain held here
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (store_id, tenant_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS handoff_export_cursor (
    export_name  TEXT    PRIMARY KEY,
    last_seq     INTEGER NOT NULL,          -- every row with hseq <= last_seq is delivered
    updated_at   TEXT    NOT NULL
) WITHOUT ROWID;
"""

_INSERT: Final = (
    "INSERT INTO handed_rows (store_id, tenant_id, tenant_seq, seq, record_hash, prev_hash, "
    "event_type, severity, timestamp, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_HASH: Final = re.compile(r"[0-9a-f]{64}")
_INT64_MAX: Final = 2**63 - 1

#: What is wrong with a request, as the HTTP answer will tell it: `malformed` (not rows at
#: all), `invalid` (a row that is not what it claims), `conflict` (rows that contradict what
#: is held, or each other), `too_many` (over the row limit).
RefusalKind = Literal["malformed", "invalid", "conflict", "too_many"]


class HandoffRefusedError(ValueError):
    """The rows of a request cannot be taken; nothing of it was kept.

    The message names the line, or the chain and position, where the problem is.
    """

    def __init__(self, kind: RefusalKind, message: str, *, line: int | None = None,
                 chain: tuple[str, str] | None = None, tenant_seq: int | None = None) -> None:
        """Say what is wrong and where."""
        super().__init__(message)
        self.kind: RefusalKind = kind
        self.line = line
        self.chain = chain
        self.tenant_seq = tenant_seq

    def problem(self) -> dict[str, Any]:
        """Where the problem is, as a JSON object for the answer."""
        found: dict[str, Any] = {"message": str(self)}
        if self.line is not None:
            found["line"] = self.line
        if self.chain is not None:
            found["store_id"], found["tenant_id"] = self.chain
        if self.tenant_seq is not None:
            found["tenant_seq"] = self.tenant_seq
        return found


@dataclass(frozen=True, slots=True)
class HandedRow:
    """One row of a request, checked in itself (hash, canonical form, fields)."""

    line: int
    store_id: str
    tenant_id: str
    tenant_seq: int
    seq: int
    record_hash: str
    prev_hash: str
    event_type: str
    severity: str
    timestamp: str
    body: bytes

    @property
    def chain(self) -> tuple[str, str]:
        """`(store_id, tenant_id)`: the chain the row belongs to."""
        return self.store_id, self.tenant_id

    def where(self) -> str:
        """The row's place, for messages."""
        return f"row {self.tenant_seq} of chain (store {self.store_id}, tenant {self.tenant_id})"


@dataclass(frozen=True, slots=True)
class HandedHead:
    """How far a chain's rows held here go."""

    store_id: str
    tenant_id: str
    tenant_seq: int
    record_hash: str
    rows: int


@dataclass(frozen=True, slots=True)
class Received:
    """What became of a request's rows."""

    stored: int
    duplicates: int
    last_seq: int  # the newest hseq after the request


def _text(row: dict[str, Any], name: str, line: int) -> str:
    value = row.get(name)
    if type(value) is not str or not value:
        raise HandoffRefusedError("invalid", f"line {line}: {name} must be a non-empty string",
                                  line=line)
    return value


def _count(row: dict[str, Any], name: str, line: int) -> int:
    value = row.get(name)
    if type(value) is not int or not 1 <= value <= _INT64_MAX:
        raise HandoffRefusedError("invalid", f"line {line}: {name} must be a whole number from "
                                  f"1 to {_INT64_MAX}", line=line)
    return value


def _digest(row: dict[str, Any], name: str, line: int) -> str:
    value = row.get(name)
    if type(value) is not str or not _HASH.fullmatch(value):
        raise HandoffRefusedError("invalid", f"line {line}: {name} must be 64 lowercase hex "
                                  "digits (a SHA-256)", line=line)
    return value


def _parse_line(number: int, line: bytes) -> HandedRow:
    """One NDJSON line as a row, checked in itself."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise HandoffRefusedError("malformed", f"line {number} is not JSON",
                                  line=number) from None
    if not isinstance(row, dict):
        raise HandoffRefusedError("malformed", f"line {number} is not a JSON object",
                                  line=number)
    if row.get("store_id") is None:
        raise HandoffRefusedError(
            "invalid", f"line {number} has no store_id: only rows of a store with an id can be "
            "handed off (without it, one replica's chain cannot be told from another's); such "
            "rows stay in the store that wrote them", line=number)
    store_id, tenant_id = _text(row, "store_id", number), _text(row, "tenant_id", number)
    tenant_seq, seq = _count(row, "tenant_seq", number), _count(row, "seq", number)
    record_hash = _digest(row, "record_hash", number)
    prev_hash = _digest(row, "prev_hash", number)
    event_type, severity = _text(row, "event_type", number), _text(row, "severity", number)
    timestamp = _text(row, "timestamp", number)
    chain = (store_id, tenant_id)
    where = f"line {number}, row {tenant_seq} of chain (store {store_id}, tenant {tenant_id})"
    try:
        canonical = canonical_json(row)
    except orjson.JSONEncodeError:
        canonical = b""
    if canonical != line:
        raise HandoffRefusedError(
            "invalid", f"{where}: not the row's canonical bytes (rows are handed off byte for "
            "byte as their store holds them)", line=number, chain=chain, tenant_seq=tenant_seq)
    del row["record_hash"]
    if hash_row(row) != record_hash:
        raise HandoffRefusedError(
            "invalid", f"{where}: does not match its record_hash (changed after it was sealed)",
            line=number, chain=chain, tenant_seq=tenant_seq)
    if tenant_seq == 1 and prev_hash != GENESIS_HASH:
        raise HandoffRefusedError(
            "invalid", f"{where}: the first row of a chain must link to the genesis hash",
            line=number, chain=chain, tenant_seq=tenant_seq)
    return HandedRow(number, store_id, tenant_id, tenant_seq, seq, record_hash, prev_hash,
                     event_type, severity, timestamp, bytes(line))


def parse_rows(raw: bytes, max_rows: int) -> list[HandedRow]:
    """The rows of an NDJSON body, each checked in itself; `HandoffRefusedError` if not."""
    lines = [(number, line) for number, line in enumerate(raw.split(b"\n"), start=1)
             if line.strip()]
    if not lines:
        raise HandoffRefusedError("malformed", "the body holds no rows; send NDJSON, one "
                                  "sealed row a line, as the sender's store holds them")
    if len(lines) > max_rows:
        raise HandoffRefusedError("too_many", f"{len(lines)} rows in one request; the limit is "
                                  f"{max_rows} (handoff.accept.maxRowsPerRequest)")
    return [_parse_line(number, line) for number, line in lines]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Held:
    """A row already held, as far as linking needs it."""

    seq: int
    record_hash: str
    prev_hash: str
    body: bytes


def _runs(positions: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Maximal runs of consecutive numbers in sorted `positions`, as (first, last)."""
    start = previous = positions[0]
    for position in positions[1:]:
        if position != previous + 1:
            yield start, previous
            start = position
        previous = position
    yield start, previous


class HandoffStore:
    """The collector's store of handed-off rows. Thread-safe; one process writes it.

    It is also what the collector's second export engine reads (`export.loop.RowSource`):
    `export_rows` gives each row with its own `store_id` and `row_seq`, `seq` being `hseq`.
    """

    def __init__(self, path: Path | str, *, synchronous: Synchronous = "FULL") -> None:
        """Open (creating if needed) the store at `path`, mode 0600 like the chain store."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=60.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            with self._transaction():
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > HANDOFF_SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has handoff schema version {version}; this sealtrail "
                        f"reads up to {HANDOFF_SCHEMA_VERSION}. Upgrade sealtrail; the store "
                        "is left untouched.")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={HANDOFF_SCHEMA_VERSION}")
        except sqlite3.Error as error:
            raise StoreError(f"cannot open handoff store {self.path}: {error}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` if the block raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise StoreError(f"commit failed; nothing of it was stored: {error}") from None

    def close(self) -> None:
        """Close the connections. What was acknowledged is already durable."""
        with self._lock:
            self._db.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- receiving -------------------------------------------------------------------------

    def receive(self, rows: Sequence[HandedRow]) -> Received:
        """Check `rows` against each other and what is held, keep the new ones, commit.

        All or nothing: `HandoffRefusedError` (a fork, a broken link) keeps nothing, and so
        does a failed write (`StoreError`). Returns only after the commit.
        """
        try:
            with self._lock, self._transaction():
                return self._receive(rows)
        except sqlite3.Error as error:
            raise StoreError(f"cannot keep handed-off rows: {error}") from None

    def _receive(self, rows: Sequence[HandedRow]) -> Received:
        chains: dict[tuple[str, str], dict[int, HandedRow]] = {}
        duplicates = 0
        for row in rows:
            positions = chains.setdefault(row.chain, {})
            seen = positions.get(row.tenant_seq)
            if seen is None:
                positions[row.tenant_seq] = row
            elif seen.body == row.body:
                duplicates += 1
            else:
                raise HandoffRefusedError(
                    "conflict", f"lines {seen.line} and {row.line} are two different versions "
                    f"of {row.where()}: a fork", line=row.line, chain=row.chain,
                    tenant_seq=row.tenant_seq)
        held_already: set[tuple[tuple[str, str], int]] = set()
        for chain, positions in chains.items():
            held_already |= {(chain, position) for position in self._check_chain(chain, positions)}
        duplicates += len(held_already)
        new = [row for chain, positions in chains.items() for row in positions.values()
               if (chain, row.tenant_seq) not in held_already]
        new.sort(key=lambda row: row.line)  # kept in the order the sender sent them
        self._db.executemany(_INSERT, [
            (row.store_id, row.tenant_id, row.tenant_seq, row.seq, row.record_hash,
             row.prev_hash, row.event_type, row.severity, row.timestamp, row.body)
            for row in new])
        self._move_heads(new)
        last = self._db.execute("SELECT COALESCE(MAX(hseq), 0) FROM handed_rows").fetchone()[0]
        return Received(stored=len(new), duplicates=duplicates, last_seq=int(last))

    def _check_chain(self, chain: tuple[str, str], positions: dict[int, HandedRow]) -> set[int]:
        """Check one chain's rows against each other and the rows held; return those held."""
        ordered = sorted(positions)
        held_already: set[int] = set()
        for first, last in _runs(ordered):
            held = self._held(chain, first - 1, last + 1)
            for position in range(first, last + 1):
                row = positions[position]
                before = positions.get(position - 1)
                kept = held.get(position)
                if kept is not None:
                    if kept.body != row.body:
                        raise HandoffRefusedError(
                            "conflict", f"line {row.line}: {row.where()} differs from the row "
                            "already received at that position: a fork", line=row.line,
                            chain=chain, tenant_seq=position)
                    held_already.add(position)
                link = before if before is not None else held.get(position - 1)
                if link is not None:
                    self._check_link(row, link.record_hash, link.seq)
            after = held.get(last + 1)
            if after is not None:
                row = positions[last]
                if after.prev_hash != row.record_hash or after.seq <= row.seq:
                    raise HandoffRefusedError(
                        "conflict", f"line {row.line}: {row.where()} is not the row that row "
                        f"{last + 1}, already received, links to: a fork", line=row.line,
                        chain=chain, tenant_seq=last)
        return held_already

    @staticmethod
    def _check_link(row: HandedRow, previous_hash: str, previous_seq: int) -> None:
        if row.prev_hash != previous_hash:
            raise HandoffRefusedError(
                "conflict", f"line {row.line}: {row.where()} does not link to row "
                f"{row.tenant_seq - 1} (its prev_hash is not that row's record_hash): a row "
                "was changed, removed or forked", line=row.line, chain=row.chain,
                tenant_seq=row.tenant_seq)
        if row.seq <= previous_seq:
            raise HandoffRefusedError(
                "conflict", f"line {row.line}: {row.where()}: seq {row.seq} does not grow along "
                f"the chain (row {row.tenant_seq - 1} has seq {previous_seq})", line=row.line,
                chain=row.chain, tenant_seq=row.tenant_seq)

    def _held(self, chain: tuple[str, str], first: int, last: int) -> dict[int, _Held]:
        found = self._db.execute(
            "SELECT tenant_seq, seq, record_hash, prev_hash, body FROM handed_rows "
            "WHERE store_id = ? AND tenant_id = ? AND tenant_seq BETWEEN ? AND ?",
            (*chain, first, last)).fetchall()
        return {position: _Held(seq, digest, prev, bytes(body))
                for position, seq, digest, prev, body in found}

    def _move_heads(self, new: Sequence[HandedRow]) -> None:
        furthest: dict[tuple[str, str], HandedRow] = {}
        counts: dict[tuple[str, str], int] = {}
        for row in new:
            counts[row.chain] = counts.get(row.chain, 0) + 1
            if row.chain not in furthest or row.tenant_seq > furthest[row.chain].tenant_seq:
                furthest[row.chain] = row
        stamp = format_timestamp(_utc_now())
        self._db.executemany(
            "INSERT INTO handoff_heads (store_id, tenant_id, tenant_seq, record_hash, rows, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (store_id, tenant_id) DO UPDATE "
            "SET rows = rows + excluded.rows, updated_at = excluded.updated_at, "
            "record_hash = CASE WHEN excluded.tenant_seq > tenant_seq THEN excluded.record_hash "
            "ELSE record_hash END, "
            "tenant_seq = MAX(tenant_seq, excluded.tenant_seq)",
            [(*chain, row.tenant_seq, row.record_hash, counts[chain], stamp)
             for chain, row in furthest.items()])

    # -- reading ---------------------------------------------------------------------------

    def heads(self) -> list[HandedHead]:
        """How far each chain held here goes, by store and tenant."""
        with self._lock:
            found = self._db.execute(
                "SELECT store_id, tenant_id, tenant_seq, record_hash, rows FROM handoff_heads "
                "ORDER BY store_id, tenant_id").fetchall()
        return [HandedHead(*values) for values in found]

    def _reader_db(self) -> sqlite3.Connection:
        """The read-only connection (the caller holds `_read_lock`)."""
        if self._reader is None:
            self._reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                           check_same_thread=False)
        return self._reader

    def data_version(self) -> int:
        """A number that changes whenever another connection has committed (cheap to poll)."""
        with self._read_lock:
            return int(self._reader_db().execute("PRAGMA data_version").fetchone()[0])

    def last_seq(self) -> int:
        """The newest `hseq` (0 when nothing was ever handed off here)."""
        with self._lock:
            found = self._db.execute("SELECT COALESCE(MAX(hseq), 0) FROM handed_rows").fetchone()
        return int(found[0])

    def export_rows(self, after_seq: int, limit: int) -> list[StoredRow]:
        """Up to `limit` rows after `hseq` `after_seq`, in arrival order, for an export loop.

        Each keeps its own store's id and seq (`StoredRow.row_seq`): exports send them, and
        their dedupe keys, exactly as the sidecar would have.
        """
        after = min(max(after_seq, 0), _INT64_MAX)
        with self._read_lock:
            found = self._reader_db().execute(
                "SELECT hseq, tenant_id, tenant_seq, record_hash, event_type, severity, "
                "timestamp, body, store_id, seq FROM handed_rows WHERE hseq > ? "
                "ORDER BY hseq LIMIT ?", (after, min(max(limit, 0), _INT64_MAX))).fetchall()
        return [StoredRow(hseq, tenant, tenant_seq, digest, event_type, severity, stamp,
                          bytes(body), store_id, row_seq)
                for hseq, tenant, tenant_seq, digest, event_type, severity, stamp, body,
                store_id, row_seq in found]

    # -- export cursors --------------------------------------------------------------------

    def cursor(self, export_name: str) -> int:
        """The `hseq` up to which `export_name` has delivered handed-off rows (0 if never)."""
        with self._lock:
            found = self._db.execute(
                "SELECT last_seq FROM handoff_export_cursor WHERE export_name = ?",
                (export_name,)).fetchone()
        return int(found[0]) if found else 0

    def set_cursor(self, export_name: str, last_seq: int) -> None:
        """Record delivery up to `last_seq`; a cursor never moves backwards."""
        stamp = format_timestamp(_utc_now())
        try:
            with self._lock, self._transaction():
                self._db.execute(
                    "INSERT INTO handoff_export_cursor (export_name, last_seq, updated_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (export_name) DO UPDATE SET "
                    "last_seq = MAX(last_seq, excluded.last_seq), "
                    "updated_at = excluded.updated_at", (export_name, last_seq, stamp))
        except sqlite3.Error as error:
            raise StoreError(f"cannot record delivery of handed-off rows: {error}") from None
