"""The answers of `POST /v1/events` remembered by `Idempotency-Key`, so a retry stores nothing.

A client whose connection dies after the commit but before the answer cannot know whether its
events were stored. Sending the same body again under the same key gets the first answer back
instead of a second copy of the events. Keys live in a small SQLite file beside the store
(`<store>.idempotency`), so they outlast a restart of the worker and are shared by its ingest
processes; they are kept for `ingest.idempotency.keepSeconds`, at most `maxKeys` of them.

How a key goes: `claim` records it as in flight (a concurrent request with the same key gets
`InFlight`: answer 409 and let it retry), the events are appended, then `record` keeps the
answer. A request that stores nothing (refused, or failed) `release`s its claim, so a retry may
try again. The answer is recorded right after the store's commit, in a transaction of its own:
if the worker dies in the instant between the two, the claim is left in flight, and a retry is
answered 409 until `abandon_after_seconds` have passed, when it may store the events again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Claimed", "Conflict", "IdempotencyKeys", "InFlight", "Replay"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key         TEXT    PRIMARY KEY,
    digest      TEXT    NOT NULL,         -- SHA-256 of the request (content type and body)
    created     REAL    NOT NULL,         -- Unix time of the claim
    status      INTEGER,                  -- NULL while the request is in flight
    answer      BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created);
"""

#: Expired keys are swept at most this often (seconds), by whichever request comes.
_SWEEP_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key is new: go ahead, then `record` (or `release`)."""


@dataclass(frozen=True, slots=True)
class Replay:
    """The key's request was stored before: here is its answer."""

    status: int
    answer: bytes


@dataclass(frozen=True, slots=True)
class Conflict:
    """The key was used for a different request."""


@dataclass(frozen=True, slots=True)
class InFlight:
    """A request with this key is being stored right now."""


class IdempotencyKeys:
    """Keys and answers in `path` (SQLite, WAL); safe for threads and for several processes."""

    def __init__(self, path: Path | str, *, keep_seconds: float, max_keys: int,
                 abandon_after_seconds: float, synchronous: str = "FULL") -> None:
        """Open (creating, owner-only) the key file at `path`."""
        self.path = Path(path)
        self.keep_seconds = keep_seconds
        self.max_keys = max_keys
        self.abandon_after_seconds = abandon_after_seconds
        self._lock = threading.Lock()
        self._swept = 0.0
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=60.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the file; what was recorded is already durable."""
        with self._lock:
            self._db.close()

    def claim(self, key: str, digest: str) -> Claimed | Replay | Conflict | InFlight:
        """Look `key` up, claiming it when it is new (or its claim was abandoned)."""
        now = time.time()
        with self._lock, self._transaction():
            if now - self._swept >= _SWEEP_SECONDS:
                self._sweep(now)
            found = self._db.execute(
                "SELECT digest, created, status, answer FROM idempotency_keys WHERE key = ?",
                (key,)).fetchone()
            if found is not None:
                known, created, status, answer = found
                if known != digest:
                    return Conflict()
                if status is not None:
                    return Replay(int(status), bytes(answer))
                if now - created < self.abandon_after_seconds:
                    return InFlight()
            self._db.execute(
                "INSERT INTO idempotency_keys (key, digest, created) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET digest = excluded.digest, "
                "created = excluded.created, status = NULL, answer = NULL",
                (key, digest, now))
        return Claimed()

    def record(self, key: str, status: int, answer: bytes) -> None:
        """Keep the answer given for `key` (after the events were committed)."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE idempotency_keys SET status = ?, answer = ? WHERE key = ?",
                             (status, answer, key))

    def release(self, key: str) -> None:
        """Forget an in-flight claim whose request stored nothing."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM idempotency_keys WHERE key = ? AND status IS NULL",
                             (key,))

    def _sweep(self, now: float) -> None:
        self._swept = now
        self._db.execute("DELETE FROM idempotency_keys WHERE created < ?",
                         (now - self.keep_seconds,))
        count = self._db.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()[0]
        if count >= self.max_keys:
            self._db.execute(
                "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys "
                "ORDER BY created LIMIT ?)", (count - self.max_keys + 1,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
