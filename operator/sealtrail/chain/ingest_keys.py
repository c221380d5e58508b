"""`Idempotency-Key`s of ingest, kept in the chain store, in the transaction of their rows.

Why in the same transaction: a client whose connection dies after the commit but before the
answer sends the batch again under the same key. If the key were recorded after the rows, in a
transaction of its own (as it once was, in a file beside the store), a worker killed between the
two commits would leave the rows stored and the key unknown or "in flight", and the retry would
eventually store the batch a second time. Here the rows and the key with its answer commit
together, or neither does: a retry finds either the answer or nothing stored. It is also one
fsync per request instead of three.

Two requests with one key at once need no "in flight" state: appends hold the store's write
lock, so the second finds the first's key once it gets the lock, and is answered from it.

The table is `ingest_keys` (not part of the chain: `verify` and exports never read it). A key is
kept `keep_seconds` and at most `max_keys` of them, the oldest going first; expired keys are
swept inside an append at most once a second.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sealtrail.chain.store import Stored

__all__ = ["INGEST_KEYS_SCHEMA", "IngestKey", "KeyConflict", "KeyLimits", "KeyReplay",
           "KeySweeper", "find_key", "keep_key"]

INGEST_KEYS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ingest_keys (
    key          TEXT    PRIMARY KEY,      -- the client's Idempotency-Key
    digest       TEXT    NOT NULL,         -- SHA-256 of the request (content type and body)
    created      REAL    NOT NULL,         -- Unix time of the commit
    answer       BLOB    NOT NULL          -- the 200 answer given, replayed to a retry
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ingest_keys_created ON ingest_keys (created);
"""

#: Expired keys are swept at most this often (seconds), inside whichever append comes.
SWEEP_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """How long and how many keys a store keeps (`ingest.idempotency`)."""

    keep_seconds: float = 86_400.0
    max_keys: int = 100_000


@dataclass(frozen=True, slots=True)
class IngestKey:
    """A request's key, the digest of its body, and how to spell the answer to keep.

    `answer` is called inside the transaction with where the rows landed; what it returns is
    committed with them and replayed to every retry.
    """

    key: str
    digest: str
    answer: Callable[[list[Stored]], bytes]


@dataclass(frozen=True, slots=True)
class KeyReplay:
    """The key's request was stored before: here is the answer it got."""

    answer: bytes


@dataclass(frozen=True, slots=True)
class KeyConflict:
    """The key was used for a different request (another body or content type)."""


def find_key(db: sqlite3.Connection, key: str, digest: str) -> KeyReplay | KeyConflict | None:
    """What the store knows of `key`: its answer, a conflict, or nothing (None)."""
    found = db.execute("SELECT digest, answer FROM ingest_keys WHERE key = ?", (key,)).fetchone()
    if found is None:
        return None
    if found[0] != digest:
        return KeyConflict()
    return KeyReplay(bytes(found[1]))


class KeySweeper:
    """When a store last swept its expired keys (once a second at most)."""

    def __init__(self) -> None:
        """Sweep at the first append."""
        self.swept = 0.0

    def sweep(self, db: sqlite3.Connection, limits: KeyLimits, now: float) -> None:
        """Delete keys past `keep_seconds`, then the oldest past `max_keys`, if it is time."""
        if now - self.swept < SWEEP_SECONDS:
            return
        self.swept = now
        db.execute("DELETE FROM ingest_keys WHERE created < ?", (now - limits.keep_seconds,))
        count = db.execute("SELECT COUNT(*) FROM ingest_keys").fetchone()[0]
        if count >= limits.max_keys:
            db.execute(
                "DELETE FROM ingest_keys WHERE key IN (SELECT key FROM ingest_keys "
                "ORDER BY created LIMIT ?)", (count - limits.max_keys + 1,))


def keep_key(db: sqlite3.Connection, key: IngestKey, answer: bytes,
             now: float | None = None) -> None:
    """Record `key` with its answer; the caller holds the write transaction of its rows."""
    db.execute("INSERT INTO ingest_keys (key, digest, created, answer) VALUES (?, ?, ?, ?)",
               (key.key, key.digest, time.time() if now is None else now, answer))
