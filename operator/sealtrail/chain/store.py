"""The chain store: per-tenant hash chains, signed checkpoints and export cursors in SQLite.

Why SQLite in WAL mode with `synchronous=FULL`: an audit event is acknowledged to its sender
only after the transaction holding it is durably committed, and FULL makes that commit survive
power loss, not just a process crash. Batching is what keeps that affordable: one transaction
(one WAL sync) per batch.

How concurrent appenders stay on one chain: every append runs inside `BEGIN IMMEDIATE`, which
takes SQLite's write lock *before* the chain heads are read, so two writers (threads or
processes) can never both extend the same head. `UNIQUE (tenant_id, tenant_seq)` is the
backstop that would turn any such bug into an error instead of a fork.

Why a lock file (`<store>.lock`, `flock`) in front of that: when SQLite's write lock is taken,
its busy handler sleeps and polls (1, 2, 5, 10 ms ...), so two ingest processes sharing a store
spend most of their time asleep while the lock is free (measured: two processes together were
no faster than one). A blocking `flock` wakes the waiter the moment the holder commits, and the
kernel releases it when a holder dies, even by SIGKILL. Writers that don't take it (the
`sqlite3` shell) are still kept out by SQLite's own lock; only their speed differs.

Why export cursors live in a file of their own (`<store>.cursors`, table `audit_export_cursor`,
`synchronous=NORMAL`): SQLite has one writer per database file, so a cursor written into the
store waited for every ingest transaction ahead of it (and their fsyncs); with two ingest
processes appending, the export loop spent most of its time waiting for that lock. The cursor
file has no other writer. NORMAL, because a cursor is delivery state, not evidence: a process
crash loses nothing (WAL), and a power loss can only take it back to an earlier position, so
rows are sent again (at least once), never skipped; every row a cursor names was committed,
with FULL, before it was delivered. A store from before this keeps its old cursors in the
store's own table; they are read from there until the cursor file has its own.

A row is stored as its canonical JSON bytes (`body`), exactly as it is exported and hashed;
the other columns are indexes into it, and `verify` checks that they agree with it.

Why every row names its store (`store_id`, random, made when the store is created): a tenant's
chain is only a chain within one store. Two replicas of a Deployment each keep a store, and each
has its own row 1 of tenant `payments`; in the SIEM, where both arrive, `(store_id, tenant_id)`
is what tells the two chains apart. The id is inside the hash, so a row cannot be moved from one
chain to another. Stores made before the id existed (schema 1) keep writing rows without it:
adding it half-way would split their chains.

Retention (`prune`, schema 3) deletes the front of a chain once it is delivered to every export
and old enough, but only ever up to a signed checkpoint whose own row stays, and records the cut
in `audit_pruned` (see `chain/anchor.py`): what stays is still provable, and `verify` checks it
from the cut. It deletes in transactions of at most `PRUNE_CHUNK_ROWS` rows, so an appender
waits for one such transaction at most, and a crash between two leaves a store that verifies.

Why the file can shrink: a store is created with `auto_vacuum=INCREMENTAL` (which SQLite only
takes before the first table exists), so the pages a prune frees are handed back to the
filesystem (`PRAGMA incremental_vacuum`), and the WAL is truncated after a prune and kept to
`JOURNAL_SIZE_LIMIT_BYTES` whenever it is reset. A store created before that has auto-vacuum
off: the pages a prune frees go to SQLite's free list and new rows reuse them, so the file stops
growing but does not shrink, until `compact` (`sealtrail compact`) rewrites it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Self

import orjson

from sealtrail.api.event import MAX_EVENT_BYTES, Event, format_timestamp
from sealtrail.chain.anchor import ANCHOR_SCHEMA, ANCHOR_TABLE, Anchor, read_anchors
from sealtrail.chain.canonical import GENESIS_HASH, seal
from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE, Checkpoint
from sealtrail.chain.ingest_keys import (
    INGEST_KEYS_SCHEMA,
    IngestKey,
    KeyConflict,
    KeyLimits,
    KeyReplay,
    KeySweeper,
    find_key,
    keep_key,
)
from sealtrail.chain.keys import Signer

__all__ = [
    "JOURNAL_SIZE_LIMIT_BYTES",
    "PRUNE_CHUNK_ROWS",
    "SCHEMA_VERSION",
    "Anchor",
    "Batch",
    "ChainStore",
    "CheckpointPolicy",
    "EventTooLargeError",
    "GroupTransaction",
    "Head",
    "Outcome",
    "PruneResult",
    "StoreError",
    "Stored",
    "StoredRow",
    "Synchronous",
    "check_sizes",
]

#: 1: rows; 2: `store_id`; 3: `audit_pruned` (retention). A store is upgraded when opened; an
#: older sealtrail refuses a newer store rather than write what it does not understand.
SCHEMA_VERSION: Final = 3
#: Rows a prune deletes per transaction: what an appender may have to wait for. On 2 cores
#: with synchronous=FULL (bench/prune_bench.py, a million rows), a transaction of 2,500 rows
#: and the pages they free holds the lock ~35 ms, and appends wait 38 ms at the 99th
#: percentile while the prune runs at ~69,000 rows/s; 10,000 rows held it ~100 ms (the
#: commit's WAL checkpoint grows with the transaction) for little more speed.
PRUNE_CHUNK_ROWS: Final = 2_500
#: Free pages a prune hands back to the filesystem per transaction (8 MiB of 4 KiB pages; the
#: rows one transaction deletes free ~700). Each transaction hands back what it freed: with a
#: short free list, moving a page costs ~25 µs; with a long one (a gigabyte freed first, then
#: handed back) ~140 µs, as SQLite searches the list for every page it takes off.
VACUUM_CHUNK_PAGES: Final = 2_048
#: The pause between two of a prune's transactions. Neither Python's lock nor `flock` is fair:
#: a loop that takes the lock straight back would keep every appender waiting to the end.
PRUNE_YIELD_SECONDS: Final = 0.002
#: The size SQLite cuts the WAL back to whenever it is reset (by default it keeps its largest
#: size for good: one large transaction would hold that disk space for the store's life).
JOURNAL_SIZE_LIMIT_BYTES: Final = 16 * 1024 * 1024
#: How long the WAL truncation after a prune waits for readers to move on; it holds new writers
#: meanwhile, so it gives up soon (the next prune tries again).
TRUNCATE_WAIT_MS: Final = 200

Synchronous = Literal["FULL", "EXTRA", "NORMAL"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit_rows (
    seq          INTEGER PRIMARY KEY,      -- global order, from 1, no gaps
    tenant_id    TEXT    NOT NULL,
    tenant_seq   INTEGER NOT NULL,         -- position in the tenant's chain, from 1
    record_hash  TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    severity     TEXT    NOT NULL,
    timestamp    TEXT    NOT NULL,
    body         BLOB    NOT NULL,         -- canonical JSON of the row, as hashed and exported
    UNIQUE (tenant_id, tenant_seq)
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tenant_id    TEXT    NOT NULL,
    tenant_seq   INTEGER NOT NULL,         -- size of the chain the checkpoint covers
    head_hash    TEXT    NOT NULL,
    signed_at    TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    TEXT    NOT NULL,
    row_seq      INTEGER NOT NULL,         -- global seq of the checkpoint's own row
    PRIMARY KEY (tenant_id, tenant_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_meta (
    key          TEXT    PRIMARY KEY,      -- 'store_id'
    value        TEXT    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_export_cursor (
    export_name  TEXT    PRIMARY KEY,
    last_seq     INTEGER NOT NULL,         -- every row with seq <= last_seq is delivered
    updated_at   TEXT    NOT NULL
) WITHOUT ROWID;
""" + ANCHOR_SCHEMA + ";" + INGEST_KEYS_SCHEMA

_CURSOR_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit_export_cursor (
    export_name  TEXT    PRIMARY KEY,
    last_seq     INTEGER NOT NULL,         -- every row with seq <= last_seq is delivered
    updated_at   TEXT    NOT NULL
) WITHOUT ROWID;
"""

_INSERT_ROW: Final = (
    "INSERT INTO audit_rows "
    "(seq, tenant_id, tenant_seq, record_hash, event_type, severity, timestamp, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class StoreError(Exception):
    """The store cannot be opened, read or written."""


class EventTooLargeError(ValueError):
    """An event is over the size limit; `index` is its position in the batch."""

    def __init__(self, index: int, size: int) -> None:
        """Name the event and its size."""
        super().__init__(
            f"event {index} is {size} bytes serialized; the limit is {MAX_EVENT_BYTES}"
        )
        self.index = index
        self.size = size


@dataclass(slots=True)
class Stored:
    """Where an appended event landed (not frozen: one per stored row, see `StoredRow`)."""

    seq: int
    tenant_id: str
    tenant_seq: int
    record_hash: str


@dataclass(slots=True)
class StoredRow:
    """A stored row with the columns an export needs to route it without parsing it.

    Not frozen, though nothing changes one: an export reads one per row, and a frozen
    dataclass's `__init__` costs five times as much (see `ExportRow`).
    """

    seq: int
    tenant_id: str
    tenant_seq: int
    record_hash: str
    event_type: str
    severity: str
    timestamp: str
    body: bytes
    store_id: str | None  # the store's id (None for a store made before ids existed)
    #: The row's own seq, when `seq` is another order: a collector's handed-off rows are read
    #: in the order they arrived (`HandoffStore`), and each keeps the seq its store gave it.
    row_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Head:
    """The last row of a tenant's chain."""

    tenant_id: str
    tenant_seq: int
    record_hash: str
    seq: int


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When the store signs checkpoints on its own.

    A tenant gets a checkpoint at the end of the append batch in which it reaches `every_rows`
    rows since its last one, or once `every_seconds` have passed since then (checked on append
    and by `emit_due_checkpoints`, which a long-running worker calls from a timer).
    """

    signer: Signer
    every_rows: int = 1000
    every_seconds: float | None = 60.0

    def __post_init__(self) -> None:
        """Refuse settings that would never checkpoint or checkpoint on every row."""
        if self.every_rows < 1:
            raise ValueError("checkpoint every_rows must be at least 1")
        if self.every_seconds is not None and self.every_seconds <= 0:
            raise ValueError("checkpoint every_seconds must be positive")


@dataclass(slots=True)
class PruneResult:
    """What one `prune` did."""

    rows: int = 0  # rows deleted
    chains: list[str] = field(default_factory=list)  # tenants whose chain was cut further
    transactions: int = 0
    #: Chains that had a prunable checkpoint but were left whole, and why (see `prune`).
    refused: dict[str, str] = field(default_factory=dict)
    pages_freed: int = 0  # pages handed back to the filesystem
    wal_truncated: bool = False  # False: readers kept the WAL busy (the next prune tries again)


@dataclass(frozen=True, slots=True)
class _Cut:
    """A chain to cut right below the row of `checkpoint` (global seq `row_seq`)."""

    checkpoint: Checkpoint
    row_seq: int


#: One request's rows (row fields) and its `Idempotency-Key`, if any.
Batch = tuple[list[dict[str, Any]], IngestKey | None]
#: What became of a batch: where its rows landed, or its key's earlier answer, or a conflict.
Outcome = list[Stored] | KeyReplay | KeyConflict


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ChainStore:
    """An open chain store. Thread-safe; several processes may share one file."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Synchronous = "FULL",
        default_tenant: str = "default",
        checkpoints: CheckpointPolicy | None = None,
        clock: Callable[[], datetime] = _utc_now,
        busy_timeout_seconds: float = 60.0,
    ) -> None:
        """Open (creating if needed) the store at `path`."""
        if synchronous not in ("FULL", "EXTRA", "NORMAL"):
            raise StoreError(f"synchronous must be FULL, EXTRA or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.default_tenant = default_tenant
        self.checkpoint_policy = checkpoints
        self._clock = clock
        self._busy_timeout_ms = round(busy_timeout_seconds * 1000)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        # Monotonic time of the first append since the last checkpoint, per tenant that has no
        # checkpoint yet: the time rule needs a starting point for a brand-new chain.
        self._pending_since: dict[str, float] = {}
        #: Set by `close`: a prune running in another thread stops at its next transaction.
        self._closing = False
        #: How long and how many ingest `Idempotency-Key`s to keep (chain/ingest_keys.py).
        self.key_limits = KeyLimits()
        self._key_sweeper = KeySweeper()
        _create_private(self.path)
        try:
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o600)
        except OSError as error:
            raise StoreError(f"cannot open the store's lock file {self.path}.lock: "
                             f"{error.strerror}") from None
        try:
            self._db = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=busy_timeout_seconds,
            )
            # Before anything else: SQLite takes auto_vacuum only before the first table exists
            # (after journal_mode=WAL it is too late); on an existing store this does nothing.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
            self.store_id = self._create_schema()
            #: True when freed pages can be handed back (a store made before retention: False).
            self.incremental_vacuum = (
                self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == _AUTO_VACUUM_INCREMENTAL)
            self._cursor_lock = threading.Lock()
            self._cursor_db = _open_cursors(Path(f"{self.path}.cursors"), busy_timeout_seconds)
        except sqlite3.Error as error:
            os.close(self._lock_fd)
            raise StoreError(f"cannot open store {self.path}: {error}") from None

    # -- lifecycle ---------------------------------------------------------------------------

    def _create_schema(self) -> str | None:
        """Create or upgrade the tables; return the store's id (see the module docstring)."""
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; this sealtrail reads up to "
                    f"{SCHEMA_VERSION}. Upgrade sealtrail; the store is left untouched."
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            found = self._db.execute(
                "SELECT value FROM audit_meta WHERE key = 'store_id'").fetchone()
            store_id: str | None = found[0] if found else None
            has_rows = self._db.execute("SELECT 1 FROM audit_rows LIMIT 1").fetchone()
            if store_id is None and not has_rows:
                store_id = uuid.uuid4().hex
                self._db.execute(
                    "INSERT INTO audit_meta (key, value) VALUES ('store_id', ?)", (store_id,))
            if version != SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return store_id

    def close(self) -> None:
        """Close the connection. Committed data is already durable."""
        self._closing = True
        with self._lock:
            self._db.close()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
        with self._cursor_lock:
            self._cursor_db.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> Self:
        """Use as a context manager that closes the store."""
        return self

    def __exit__(self, *_: object) -> None:
        """Close the store."""
        self.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock_fd)

    # -- appending ---------------------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> list[Stored]:
        """Append a batch in one transaction; return where each event landed.

        Returns only after the commit, so a caller may acknowledge the events. If anything
        fails, nothing of the batch is stored.
        """
        return self.append_fields([event.row_fields() for event in events])

    def append_fields(self, rows: list[dict[str, Any]], source_bytes: int | None = None,
                      ) -> list[Stored]:
        """`append` for events already validated into their row fields (`Event.row_fields`).

        The dicts are completed in place into the rows they become. `source_bytes`: the size
        of the JSON the rows were decoded from, if known (see `check_sizes`).
        """
        stored = self._append_fields(rows, None, source_bytes)
        assert isinstance(stored, list)  # noqa: S101 - no key, so no replay or conflict
        return stored

    def append_keyed(self, rows: list[dict[str, Any]], key: IngestKey,
                     source_bytes: int | None = None) -> list[Stored] | KeyReplay | KeyConflict:
        """`append_fields` under an `Idempotency-Key`, kept in the same transaction.

        If the key is already stored, nothing is appended and its answer (or the conflict) is
        returned instead; otherwise the rows and the key with `key.answer(stored)` commit
        together (chain/ingest_keys.py says why).
        """
        return self._append_fields(rows, key, source_bytes)

    def find_key(self, key: str, digest: str) -> KeyReplay | KeyConflict | None:
        """Look an `Idempotency-Key` up without the write lock (a retry answered at once)."""
        with self._read_lock:
            return find_key(self._reader_db(), key, digest)

    def _append_fields(self, rows: list[dict[str, Any]], key: IngestKey | None,
                       source_bytes: int | None) -> Outcome:
        if not rows:
            return []
        check_sizes(rows, source_bytes)
        transaction = self.group_transaction()
        transaction.begin()
        try:
            (outcome,) = transaction.append([(rows, key)])
        except BaseException as error:
            transaction.abort(error)
            raise
        transaction.commit()
        return outcome

    def group_transaction(self) -> GroupTransaction:
        """A write transaction in three steps, for a caller that runs each where it costs least.

        `begin` waits for the write lock and `commit` for the disk, both in C with the GIL
        released: a worker's ingest process runs them in a thread. `append` is pure Python
        work: it runs them on its event loop, so that no other thread of the process competes
        for the GIL while the write lock, which every ingest process needs, is held
        (worker/group_commit.py).
        """
        return GroupTransaction(self)

    def _append_group(self, group: list[Batch], now: datetime) -> list[Outcome]:
        """The body of a group's transaction; the caller holds the lock and the transaction."""
        stamp = format_timestamp(now)
        wall = time.time()
        if any(key is not None for _, key in group):
            self._key_sweeper.sweep(self._db, self.key_limits, wall)
        outcomes: list[Outcome] = []
        touched: set[str] = set()
        for rows, key in group:
            if key is not None:
                known = find_key(self._db, key.key, key.digest)
                if known is not None:
                    outcomes.append(known)
                    continue
            stored = self._append_rows(rows, stamp)
            touched.update(item.tenant_id for item in stored)
            if key is not None:
                keep_key(self._db, key, key.answer(stored), wall)
            outcomes.append(stored)
        if self.checkpoint_policy is not None and touched:
            self._checkpoint_due(touched, now)
        return outcomes

    def _append_rows(self, rows: Iterable[dict[str, Any]], stamp: str) -> list[Stored]:
        """Chain and insert rows; the caller holds the lock and the write transaction.

        The loop runs once per row with the write lock held, so what it needs is looked up
        once, before it.
        """
        db = self._db
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_rows").fetchone()[0]
        heads: dict[str, tuple[int, str]] = {}
        params = []
        stored = []
        default_tenant, store_id = self.default_tenant, self.store_id
        for row in rows:
            tenant = row.get("tenant_id") or default_tenant
            head = heads.get(tenant)
            if head is None:
                head = self._load_head(tenant)
                self._pending_since.setdefault(tenant, time.monotonic())
            seq += 1
            tenant_seq = head[0] + 1
            row["seq"] = seq
            row["tenant_id"] = tenant
            row["tenant_seq"] = tenant_seq
            row["prev_hash"] = head[1]
            if store_id is not None:
                row["store_id"] = store_id
            if "timestamp" not in row:
                row["timestamp"] = stamp
            digest, body = seal(row)
            heads[tenant] = (tenant_seq, digest)
            params.append((seq, tenant, tenant_seq, digest, row["event_type"], row["severity"],
                           row["timestamp"], body))
            stored.append(Stored(seq, tenant, tenant_seq, digest))
        db.executemany(_INSERT_ROW, params)
        return stored

    def _load_head(self, tenant: str) -> tuple[int, str]:
        found = self._db.execute(
            "SELECT tenant_seq, record_hash FROM audit_rows WHERE tenant_id = ? "
            "ORDER BY tenant_seq DESC LIMIT 1",
            (tenant,),
        ).fetchone()
        return (found[0], found[1]) if found else (0, GENESIS_HASH)

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint_due(self, tenants: Iterable[str], now: datetime) -> list[Checkpoint]:
        policy = self.checkpoint_policy
        assert policy is not None  # noqa: S101 - callers check; mypy needs to know
        due = []
        for tenant in sorted(tenants):
            head = self._load_head(tenant)
            last = self._last_checkpoint(tenant)
            # The checkpoint's own row follows the head it covers; it is not "new data".
            covered = last.tenant_seq + 1 if last else 0
            fresh = head[0] - covered
            if fresh <= 0:
                continue
            if fresh >= policy.every_rows or self._time_due(tenant, last, now, policy):
                due.append(tenant)
        return [self._sign_head(tenant, policy.signer, now) for tenant in due]

    def _time_due(
        self, tenant: str, last: Checkpoint | None, now: datetime, policy: CheckpointPolicy
    ) -> bool:
        if policy.every_seconds is None:
            return False
        if last is not None:
            signed = datetime.fromisoformat(last.signed_at)
            return (now - signed).total_seconds() >= policy.every_seconds
        # A chain with no checkpoint yet whose rows this store object did not write (they
        # are from before a restart, or from another process): its clock starts now, so they
        # get a checkpoint within every_seconds instead of never.
        since = self._pending_since.setdefault(tenant, time.monotonic())
        return time.monotonic() - since >= policy.every_seconds

    def _sign_head(self, tenant: str, signer: Signer, now: datetime) -> Checkpoint:
        tenant_seq, head_hash = self._load_head(tenant)
        checkpoint = Checkpoint.sign(signer, tenant, tenant_seq, head_hash, format_timestamp(now),
                                     self.store_id)
        row = checkpoint.row_fields()
        row["tenant_id"] = tenant
        (stored,) = self._append_rows([row], checkpoint.signed_at)
        self._db.execute(
            "INSERT INTO audit_checkpoints "
            "(tenant_id, tenant_seq, head_hash, signed_at, key_id, signature, row_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tenant, tenant_seq, head_hash, checkpoint.signed_at, checkpoint.key_id,
             checkpoint.signature, stored.seq),
        )
        self._pending_since.pop(tenant, None)
        return checkpoint

    def _last_checkpoint(self, tenant: str) -> Checkpoint | None:
        found = self._db.execute(
            "SELECT tenant_id, tenant_seq, head_hash, signed_at, key_id, signature "
            "FROM audit_checkpoints WHERE tenant_id = ? ORDER BY tenant_seq DESC LIMIT 1",
            (tenant,),
        ).fetchone()
        return self._checkpoint(found) if found else None

    def _checkpoint(self, values: Sequence[Any]) -> Checkpoint:
        """A checkpoint from an `audit_checkpoints` row (tenant_id ... signature)."""
        tenant_id, tenant_seq, head_hash, signed_at, key_id, signature = values
        return Checkpoint(tenant_id, tenant_seq, head_hash, signed_at, key_id, signature,
                          self.store_id)

    def checkpoint(self, signer: Signer, tenants: Iterable[str] | None = None) -> list[Checkpoint]:
        """Sign, now, the head of every tenant (or those named) that moved since its last one."""
        now = self._clock()
        with self._lock, self._transaction():
            names = list(tenants) if tenants is not None else self._tenant_names()
            made = []
            for tenant in names:
                head_seq, _ = self._load_head(tenant)
                last = self._last_checkpoint(tenant)
                if head_seq == 0 or (last is not None and head_seq == last.tenant_seq + 1):
                    continue  # nothing written since the last checkpoint (or at all)
                made.append(self._sign_head(tenant, signer, now))
        return made

    def emit_due_checkpoints(self) -> list[Checkpoint]:
        """Apply the checkpoint policy to every tenant now; for a worker's timer."""
        if self.checkpoint_policy is None:
            return []
        now = self._clock()
        with self._lock, self._transaction():
            return self._checkpoint_due(self._tenant_names(), now)

    def latest_checkpoints(self, tenant: str | None = None) -> list[Checkpoint]:
        """The newest checkpoint of each tenant (or of one)."""
        query = (
            "SELECT c.tenant_id, c.tenant_seq, c.head_hash, c.signed_at, c.key_id, c.signature "
            "FROM audit_checkpoints c WHERE c.tenant_seq = (SELECT MAX(tenant_seq) "
            "FROM audit_checkpoints WHERE tenant_id = c.tenant_id)"
        )
        params: tuple[str, ...] = ()
        if tenant is not None:
            query += " AND c.tenant_id = ?"
            params = (tenant,)
        with self._read_lock:
            found = self._reader_db().execute(query + " ORDER BY c.tenant_id",
                                              params).fetchall()
        return [self._checkpoint(values) for values in found]

    # -- reading -----------------------------------------------------------------------------

    def _tenant_names(self, db: sqlite3.Connection | None = None) -> list[str]:
        found = (db or self._db).execute(
            "SELECT DISTINCT tenant_id FROM audit_rows ORDER BY tenant_id")
        return [name for (name,) in found]

    # What status, the UI and new export loops read runs on the worker's event loop, so it
    # never takes the write lock (`_lock`): the event loop may be the one holding it, between
    # the steps of a group commit (`GroupTransaction`), and would wait for itself for good.
    # Reads go to the reader connection; WAL shows them every committed row.

    def tenants(self) -> list[str]:
        """Every tenant that has a chain."""
        with self._read_lock:
            return self._tenant_names(self._reader_db())

    def heads(self) -> list[Head]:
        """The last row of every tenant's chain."""
        with self._read_lock:
            found = self._reader_db().execute(
                "SELECT tenant_id, tenant_seq, record_hash, seq FROM audit_rows r "
                "WHERE tenant_seq = (SELECT MAX(tenant_seq) FROM audit_rows "
                "WHERE tenant_id = r.tenant_id) ORDER BY tenant_id"
            ).fetchall()
        return [Head(*values) for values in found]

    def _reader_db(self) -> sqlite3.Connection:
        """The store's read-only connection (the caller holds `_read_lock`)."""
        if self._reader is None:
            self._reader = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
            )
        return self._reader

    def data_version(self) -> int:
        """A number that changes whenever any other connection or process has committed.

        Cheap enough to poll every few milliseconds: a worker uses it to notice rows appended
        by its other ingest processes (or by `sealtrail append`) and wake its exports.
        """
        with self._read_lock:
            return int(self._reader_db().execute("PRAGMA data_version").fetchone()[0])

    def last_seq(self) -> int:
        """The global seq of the newest row (0 for an empty store).

        On the reader connection: it sees every commit, and never waits for an append.
        """
        with self._read_lock:
            found = self._reader_db().execute(
                "SELECT COALESCE(MAX(seq), 0) FROM audit_rows").fetchone()
        return int(found[0])

    def rows(
        self,
        *,
        tenant: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[bytes]:
        """Canonical row bytes in global order, exactly as exported.

        Reads on a connection of its own, so a long dump does not hold up appenders
        (WAL readers see the snapshot from when they started).
        """
        query = "SELECT body FROM audit_rows WHERE seq > ?"
        params: list[Any] = [_after(after_seq)]
        if tenant is not None:
            query += " AND tenant_id = ?"
            params.append(tenant)
        query += " ORDER BY seq"
        if limit is not None:
            query += " LIMIT ?"
            params.append(_limit(limit))
        reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            for (body,) in reader.execute(query, params):
                yield bytes(body)
        finally:
            reader.close()

    def export_rows(self, after_seq: int, limit: int) -> list[StoredRow]:
        """Up to `limit` rows after `after_seq`, in global order, for an export loop.

        Reads on the store's own reader connection (WAL: readers never wait for the writer).
        """
        with self._read_lock:
            found = self._reader_db().execute(
                "SELECT seq, tenant_id, tenant_seq, record_hash, event_type, severity, "
                "timestamp, body FROM audit_rows WHERE seq > ? ORDER BY seq LIMIT ?",
                (_after(after_seq), _limit(limit)),
            ).fetchall()
        store_id = self.store_id
        return [
            StoredRow(seq, tenant, tenant_seq, digest, event_type, severity, stamp, body, store_id)
            for seq, tenant, tenant_seq, digest, event_type, severity, stamp, body in found
        ]

    def query(
        self,
        *,
        tenant: str | None = None,
        event_type: str | None = None,
        severities: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[bytes]:
        """Stored rows matching every filter given, in seq order (for `GET /v1/events`).

        `since`/`until` compare the rows' RFC 3339 UTC timestamps, which sort as text.
        """
        clauses = ["seq > ?"]
        params: list[Any] = [_after(after_seq)]
        for column, value in (("tenant_id", tenant), ("event_type", event_type)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if severities:
            clauses.append("severity IN (" + ",".join("?" * len(severities)) + ")")
            params.extend(severities)
        if since is not None:
            clauses.append("timestamp >= ?")
            params.append(since)
        if until is not None:
            clauses.append("timestamp < ?")
            params.append(until)
        sql = ("SELECT body FROM audit_rows WHERE " + " AND ".join(clauses)
               + " ORDER BY seq LIMIT ?")
        params.append(_limit(limit))
        with self._read_lock:
            return [bytes(body) for (body,) in self._reader_db().execute(sql, params)]

    # -- export cursors ----------------------------------------------------------------------

    def cursor(self, export_name: str) -> int:
        """The seq up to which `export_name` has delivered (0 if it never has)."""
        with self._cursor_lock:
            found = self._cursor_db.execute(
                "SELECT last_seq FROM audit_export_cursor WHERE export_name = ?", (export_name,)
            ).fetchone()
        if found is not None:
            return int(found[0])
        return self._cursor_in_store(export_name)

    def _cursor_in_store(self, export_name: str) -> int:
        """A store from before the cursor file: the cursor in its own table, if any (or 0)."""
        with self._read_lock:
            legacy = self._reader_db().execute(
                "SELECT last_seq FROM audit_export_cursor WHERE export_name = ?", (export_name,)
            ).fetchone()
        return int(legacy[0]) if legacy else 0

    def set_cursor(self, export_name: str, last_seq: int) -> None:
        """Record delivery up to `last_seq`; a cursor never moves backwards.

        In the cursor file, so it never waits for an append (see the module docstring).
        """
        stamp = format_timestamp(self._clock())
        with self._cursor_lock, _Transaction(self._cursor_db, None):
            self._cursor_db.execute(
                "INSERT INTO audit_export_cursor (export_name, last_seq, updated_at) "
                "VALUES (?, ?, ?) ON CONFLICT (export_name) DO UPDATE SET "
                "last_seq = MAX(last_seq, excluded.last_seq), updated_at = excluded.updated_at",
                (export_name, max(last_seq, self._legacy_cursor(export_name)), stamp),
            )

    def _legacy_cursor(self, export_name: str) -> int:
        """What the store's own table says (0 once the cursor file has the cursor)."""
        found = self._cursor_db.execute(
            "SELECT 1 FROM audit_export_cursor WHERE export_name = ?", (export_name,)).fetchone()
        if found is not None:
            return 0
        return self._cursor_in_store(export_name)

    # -- retention ---------------------------------------------------------------------------

    def prune(
        self,
        *,
        delivered_through_seq: int,
        older_than: datetime,
        chunk_rows: int = PRUNE_CHUNK_ROWS,
    ) -> PruneResult:
        """Delete the front of each chain that is delivered everywhere and old enough.

        `delivered_through_seq` is the smallest cursor of every export the caller ships to
        (paused ones included: their backlog is not delivered). A caller with no export must
        not call this: nothing is delivered anywhere, and no number here can say so. Each
        tenant's chain is cut right below its newest checkpoint whose own row is at or below
        that seq and that was signed before `older_than`: rows 1..N go, the checkpoint row
        (N+1) stays and vouches for the rest, and `audit_pruned` records the cut. Every row
        deleted was stored before the checkpoint was signed, so before `older_than`. A chain
        without such a checkpoint is kept whole.

        Before cutting a chain, the store checks what it is about to rely on: the checkpoint's
        row is in place and says what `audit_checkpoints` says, row N has the hash the
        checkpoint signed, and no row below it is missing. A chain that fails is left whole
        and named in `refused` (pruning would erase the evidence; `verify` reports it).

        Deletes at most `chunk_rows` rows per transaction, each handing the pages it freed back
        to the filesystem, then truncates the WAL (skipped, not waited for, while readers hold
        it). A store closed meanwhile (a worker stopping) ends the prune between transactions.
        """
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        result = PruneResult()
        cuts = deque(self._plan_cuts(delivered_through_seq, format_timestamp(older_than),
                                     result.refused))
        while cuts:
            with self._lock:
                if self._closing:  # closed meanwhile: a prune cut short is a valid store
                    return result
                with self._transaction():
                    deleted, moved = self._cut(cuts, chunk_rows, format_timestamp(self._clock()))
                    result.pages_freed += self._hand_back_pages()
            time.sleep(PRUNE_YIELD_SECONDS)  # let appenders in (see the constant)
            result.transactions += 1
            result.rows += deleted
            result.chains += [name for name in moved if name not in result.chains]
        if result.rows:
            result.pages_freed += self._release_free_pages()
            result.wal_truncated = self._truncate_wal()
        return result

    def _plan_cuts(self, through_seq: int, cutoff: str, refused: dict[str, str]) -> list[_Cut]:
        """Where each chain may be cut, checked (on the reader connection: appends go on).

        What a cut relies on cannot change under it: checkpoints and delivered rows are never
        rewritten, and a prune running elsewhere only moves a cut up, which `_cut` re-reads.
        """
        with self._read_lock:
            if self._closing:
                return []
            db = self._reader_db()
            newest = db.execute(
                "SELECT tenant_id, MAX(tenant_seq) FROM audit_checkpoints "
                "WHERE row_seq <= ? AND signed_at < ? GROUP BY tenant_id ORDER BY tenant_id",
                (_after(through_seq), cutoff),
            ).fetchall()
            found = [db.execute(
                "SELECT tenant_id, tenant_seq, head_hash, signed_at, key_id, signature, row_seq "
                "FROM audit_checkpoints WHERE tenant_id = ? AND tenant_seq = ?", key,
            ).fetchone() for key in newest]
            anchors = read_anchors(db, self.store_id)
            done = {} if anchors is None else {
                name: anchor.tenant_seq for name, anchor in anchors[0].items()}
            cuts = []
            for *values, row_seq in found:
                checkpoint = self._checkpoint(values)
                if checkpoint.tenant_seq <= done.get(checkpoint.tenant_id, 0):
                    continue  # cut there already
                problem = self._cut_problem(db, checkpoint, row_seq,
                                            done.get(checkpoint.tenant_id, 0))
                if problem is None:
                    cuts.append(_Cut(checkpoint, row_seq))
                else:
                    refused[checkpoint.tenant_id] = problem
        return cuts

    def _cut_problem(
        self, db: sqlite3.Connection, checkpoint: Checkpoint, row_seq: int, done: int
    ) -> str | None:
        """Why the chain may not be cut below `checkpoint`, or None."""
        tenant, size = checkpoint.tenant_id, checkpoint.tenant_seq
        row = db.execute(
            "SELECT tenant_id, tenant_seq, event_type, body FROM audit_rows WHERE seq = ?",
            (row_seq,),
        ).fetchone()
        if row is None or row[:3] != (tenant, size + 1, CHECKPOINT_EVENT_TYPE):
            return f"the checkpoint of rows 1..{size} has no row at seq {row_seq}"
        try:
            kept = Checkpoint.from_row(orjson.loads(row[3]))
        except (ValueError, orjson.JSONDecodeError):
            kept = None
        if kept != checkpoint:
            return f"the checkpoint row at seq {row_seq} disagrees with audit_checkpoints"
        head = db.execute(
            "SELECT record_hash FROM audit_rows WHERE tenant_id = ? AND tenant_seq = ?",
            (tenant, size),
        ).fetchone()
        if head is None or head[0] != checkpoint.head_hash:
            return f"row {size} does not have the hash the checkpoint signed"
        (count,) = db.execute(
            "SELECT COUNT(*) FROM audit_rows WHERE tenant_id = ? AND tenant_seq <= ?",
            (tenant, size),
        ).fetchone()
        if count != size - done:
            return f"rows {done + 1}..{size} should be {size - done} rows, and are {count}"
        return None

    def _cut(self, cuts: deque[_Cut], budget: int, stamp: str) -> tuple[int, list[str]]:
        """One transaction's share: cut chains, first in line first, until `budget` rows go.

        A cut that does not fit is made part-way (rows 1..k, k below the checkpoint's size):
        the rows from k+1 up stay, vouched for by the checkpoint row above them as any kept row
        is, and the anchor says so; the next transaction goes on from there.
        """
        deleted = 0
        moved = []
        while cuts and deleted < budget:
            cut = cuts[0]
            tenant, size = cut.checkpoint.tenant_id, cut.checkpoint.tenant_seq
            found = self._db.execute(
                f"SELECT tenant_seq FROM {ANCHOR_TABLE} WHERE tenant_id = ?", (tenant,)
            ).fetchone()
            done = int(found[0]) if found else 0
            end = min(size, done + budget - deleted)
            if end <= done:  # a prune elsewhere got there first
                cuts.popleft()
                continue
            last = self._db.execute(
                "SELECT record_hash, seq FROM audit_rows WHERE tenant_id = ? AND tenant_seq = ?",
                (tenant, end),
            ).fetchone()
            removed = self._db.execute(
                "DELETE FROM audit_rows WHERE tenant_id = ? AND tenant_seq <= ?", (tenant, end)
            ).rowcount
            if last is None or removed != end - done:
                raise StoreError(f"rows 1..{end} of {tenant} changed while being pruned; this "
                                 "prune stored nothing of its last transaction")
            # Entries whose checkpoint rows went (a checkpoint of size k has its row at k+1).
            self._db.execute(
                "DELETE FROM audit_checkpoints WHERE tenant_id = ? AND tenant_seq < ?",
                (tenant, end),
            )
            self._db.execute(
                f"INSERT OR REPLACE INTO {ANCHOR_TABLE} (tenant_id, tenant_seq, record_hash, "
                "through_seq, checkpoint_tenant_seq, checkpoint_head_hash, checkpoint_signed_at, "
                "checkpoint_key_id, checkpoint_signature, pruned_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, end, last[0], last[1], size, cut.checkpoint.head_hash,
                 cut.checkpoint.signed_at, cut.checkpoint.key_id, cut.checkpoint.signature,
                 stamp),
            )
            deleted += removed
            moved.append(tenant)
            if end == size:
                cuts.popleft()
        return deleted, moved

    def _hand_back_pages(self) -> int:
        """Give up to `VACUUM_CHUNK_PAGES` free pages back to the filesystem; how many went.

        Inside the caller's transaction. Without incremental auto-vacuum (a store made before
        retention), nothing: freed pages stay on SQLite's free list and new rows reuse them.
        One `PRAGMA incremental_vacuum` per page: Python's sqlite3 steps a statement that
        returns no columns once, and each step of this one frees one page.
        """
        if not self.incremental_vacuum:
            return 0
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        for _ in range(min(free, VACUUM_CHUNK_PAGES)):
            self._db.execute("PRAGMA incremental_vacuum")
        return free - int(self._db.execute("PRAGMA freelist_count").fetchone()[0])

    def _release_free_pages(self) -> int:
        """Hand back what free pages are left (from before, say), a transaction at a time."""
        freed = 0
        while self.incremental_vacuum:
            with self._lock:
                if self._closing or not self._db.execute("PRAGMA freelist_count").fetchone()[0]:
                    break
                with self._transaction():
                    moved = self._hand_back_pages()
            time.sleep(PRUNE_YIELD_SECONDS)
            freed += moved
            if not moved:
                break
        return freed

    def _truncate_wal(self) -> bool:
        """Checkpoint the WAL into the store and truncate it; False if readers kept it busy.

        A TRUNCATE checkpoint holds new writers while it waits for readers, so it waits
        `TRUNCATE_WAIT_MS` at most; between prunes, `journal_size_limit` still bounds the WAL.
        """
        with self._lock, self._write_lock():
            if self._closing:
                return False
            self._db.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            try:
                busy = int(self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
            except sqlite3.OperationalError:
                busy = 1  # "database is locked": another process's writer held on
            finally:
                self._db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return busy == 0

    def _write_lock(self) -> contextlib.AbstractContextManager[None]:
        """The lock file alone, for what must not run inside a transaction (see `_Transaction`)."""
        return _FileLock(self._lock_fd)

    def compact(self) -> tuple[int, int]:
        """Rewrite the store (VACUUM) with incremental auto-vacuum on; bytes before and after.

        For a store made before retention (auto-vacuum off), once: from then on a prune
        hands freed pages back. VACUUM copies the whole store, so it needs that much free
        space, and holds every writer out until it is done: run it with the worker stopped.
        """
        before = self.disk_bytes()
        with self._lock, self._write_lock():
            try:
                self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as error:
                raise StoreError(f"cannot compact {self.path}: {error}") from None
            self.incremental_vacuum = (
                self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == _AUTO_VACUUM_INCREMENTAL)
        return before, self.disk_bytes()

    def anchors(self) -> list[Anchor]:
        """Where each pruned chain now starts (see `chain/anchor.py`), by tenant."""
        with self._read_lock:
            found = read_anchors(self._reader_db(), self.store_id)
        return [] if found is None else list(found[0].values())

    def disk_bytes(self) -> int:
        """What the store takes on disk: the database, its WAL and its shared-memory index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total


#: `PRAGMA auto_vacuum` of a store whose free pages can be handed back.
_AUTO_VACUUM_INCREMENTAL: Final = 2

#: Mode of the store and (SQLite gives them its mode) its -wal and -shm files.
STORE_FILE_MODE: Final = 0o600
_INT64_MAX: Final = 2**63 - 1


#: How much larger an event's row fields can serialize than the JSON it was decoded from:
#: only a timestamp grows (normalised to 27 characters; the shortest RFC 3339 form accepted is
#: 12); whitespace, nulls and escapes (`\u00e9`, `\u000a`, `\/`) only shrink, since orjson
#: writes each character in its shortest JCS form.
_MAX_GROWTH_BYTES: Final = 64


def check_sizes(rows: list[dict[str, Any]], source_bytes: int | None = None) -> None:
    """Refuse a batch with a row over `MAX_EVENT_BYTES` serialized, naming the first.

    `source_bytes`: the size of the JSON the rows were decoded from, if known; when it is
    small enough that no row in it can be over (`_MAX_GROWTH_BYTES`), nothing is measured
    (measuring costs a serialization per row).
    """
    if source_bytes is not None and source_bytes + _MAX_GROWTH_BYTES <= MAX_EVENT_BYTES:
        return
    for index, fields in enumerate(rows):
        size = len(orjson.dumps(fields))
        if size > MAX_EVENT_BYTES:
            raise EventTooLargeError(index, size)


def _open_cursors(path: Path, busy_timeout_seconds: float) -> sqlite3.Connection:
    """Open (creating, owner-only) the cursor file beside a store (see the module docstring)."""
    _create_private(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                         timeout=busy_timeout_seconds)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_CURSOR_SCHEMA)
    return db


def _create_private(path: Path) -> None:
    """Create the store file, if it does not exist, readable and writable by its owner only.

    SQLite would create it 0644 less the umask (world-readable audit events); it creates the
    -wal and -shm files with the database file's own mode, so this covers them too. 0600, not
    0640: in WAL mode a reader needs write access to -shm, so a group that may only read could
    not open the store anyway. The mode is set with fchmod, so no umask changes it. An
    existing file keeps its mode (an operator may have chosen it).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, STORE_FILE_MODE)
    except FileExistsError:
        return
    except OSError as error:
        raise StoreError(f"cannot create store {path}: {error.strerror}") from None
    try:
        os.fchmod(fd, STORE_FILE_MODE)
    finally:
        os.close(fd)


def _after(after_seq: int) -> int:
    """A read's lower bound clamped to the rows a store can hold.

    Rows start at seq 1: "after -1" means "from the first row", never "also rows below it"
    (which only tampering puts there, and which `verify` reports). Past 64 bits, nothing.
    """
    return min(max(after_seq, 0), _INT64_MAX)


def _limit(limit: int) -> int:
    """A read's row limit clamped to 0..2**63-1 (SQLite reads a negative LIMIT as none)."""
    return min(max(limit, 0), _INT64_MAX)


class GroupTransaction:
    """`ChainStore.group_transaction`: begin, append, then commit (or abort), each a call.

    Between `begin` and `commit` or `abort` the caller holds the store's write lock; exactly
    one of the two must follow `begin`, from any thread. Whatever else runs on the caller's
    event loop must not take that lock meanwhile (it would wait for itself): the store's reads
    use the reader connection for this reason.
    """

    def __init__(self, store: ChainStore) -> None:
        """A transaction on `store`, not begun."""
        self._store = store
        self._transaction = store._transaction()  # noqa: SLF001 - the store's own helper
        self._now = _utc_now()

    def begin(self) -> None:
        """Wait for the write lock and open the transaction (blocks: call it in a thread)."""
        self._store._lock.acquire()  # noqa: SLF001 - released by commit or abort
        try:
            self._transaction.__enter__()
        except BaseException:
            self._store._lock.release()  # noqa: SLF001
            raise
        self._now = self._store._clock()  # noqa: SLF001

    def append(self, group: list[Batch]) -> list[Outcome]:
        """Append each batch; their outcomes (pure Python: the caller's own thread)."""
        return self._store._append_group(group, self._now)  # noqa: SLF001

    def commit(self) -> None:
        """Commit, durably, and let go of the lock (blocks on the disk: call it in a thread)."""
        try:
            self._transaction.__exit__(None, None, None)
        finally:
            self._store._lock.release()  # noqa: SLF001

    def abort(self, error: BaseException) -> None:
        """Roll back after `error` and let go of the lock; nothing of the group is stored."""
        try:
            self._transaction.__exit__(type(error), error, None)
        finally:
            self._store._lock.release()  # noqa: SLF001


class _FileLock:
    """The store's lock file (see the module docstring), held for the block."""

    def __init__(self, lock_fd: int) -> None:
        self._lock_fd = lock_fd

    def __enter__(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` if the block raises.

    With the store's lock file held throughout (`lock_fd`; None for the cursor file, which
    has no other writer to wake).
    """

    def __init__(self, db: sqlite3.Connection, lock_fd: int | None) -> None:
        self._db = db
        self._lock_fd = lock_fd

    def __enter__(self) -> None:
        self._flock(fcntl.LOCK_EX)  # other processes' writers: see the module doc
        try:
            self._rollback()  # what a failed ROLLBACK may have left open
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            self._flock(fcntl.LOCK_UN)
            raise StoreError(f"cannot start a write transaction: {error}") from None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        try:
            self._finish(kind, error)
        finally:
            self._flock(fcntl.LOCK_UN)

    def _flock(self, operation: int) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, operation)

    def _finish(self, kind: type[BaseException] | None, error: BaseException | None) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as failure:
                self._rollback()
                raise StoreError(f"commit failed; nothing of it was stored: {failure}") from None
            return
        self._rollback()
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"write failed; nothing of it was stored: {error}") from None

    def _rollback(self) -> None:
        """Roll back what is left of the transaction.

        After SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM (and a few others) SQLite may already
        have rolled the whole transaction back by itself; a ROLLBACK then raises "cannot
        rollback - no transaction is active", which would hide the real error (a full disk)
        behind a confusing one. So: only if a transaction is still open, and a failing
        ROLLBACK never replaces the error that caused it.
        """
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
