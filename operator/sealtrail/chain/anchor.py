"""Where a pruned chain now starts: the anchor retention leaves in `audit_pruned`.

Retention (`ChainStore.prune`) deletes the front of a tenant's chain, rows 1..N, once they are
delivered to every export and older than the retention setting. The rows that stay must still
be provable, so a chain is only ever cut just below a signed checkpoint whose own row stays:
that row vouches, with its signature, that the chain's row N had hash H, and the first kept
row links to H by its `prev_hash`. The anchor is the store's record of the cut, one per
tenant, written in the same transaction as each deletion: what was pruned (rows 1..N, the last
of them with hash H at global seq `through_seq`) and which checkpoint vouches for what stays.

The anchor is the writer's own table, as open to change as the rows, so `verify` trusts none
of it on its word: N and H must be where the kept chain starts and what it links to, and the
checkpoint fields must be a copy of the kept checkpoint row (whose signature is checked with the
public keys). While a large prune is under way the cut can sit below the checkpoint
(`tenant_seq` < `checkpoint.tenant_seq`): the rows in between are still kept, and the
checkpoint row above them vouches for them as for any kept row.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

from sealtrail.chain.checkpoint import Checkpoint

__all__ = ["ANCHORS_SINCE_SCHEMA", "ANCHOR_SCHEMA", "ANCHOR_TABLE", "Anchor", "read_anchors"]

#: The table of anchors, which every store has from this schema version on.
ANCHOR_TABLE: Final = "audit_pruned"
ANCHORS_SINCE_SCHEMA: Final = 3

ANCHOR_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS {ANCHOR_TABLE} (
    tenant_id             TEXT    PRIMARY KEY,
    tenant_seq            INTEGER NOT NULL,   -- rows 1..tenant_seq of the chain are pruned
    record_hash           TEXT    NOT NULL,   -- its hash: the first kept row's prev_hash
    through_seq           INTEGER NOT NULL,   -- global seq of row tenant_seq: the largest pruned
    checkpoint_tenant_seq INTEGER NOT NULL,   -- the kept checkpoint vouching for what stays ...
    checkpoint_head_hash  TEXT    NOT NULL,
    checkpoint_signed_at  TEXT    NOT NULL,
    checkpoint_key_id     TEXT    NOT NULL,
    checkpoint_signature  TEXT    NOT NULL,   -- ... a copy of its row, at checkpoint_tenant_seq + 1
    pruned_at             TEXT    NOT NULL    -- when the cut last moved (the writer's clock)
) WITHOUT ROWID
"""

_COLUMNS: Final = (
    "tenant_id, tenant_seq, record_hash, through_seq, checkpoint_tenant_seq, "
    "checkpoint_head_hash, checkpoint_signed_at, checkpoint_key_id, checkpoint_signature, "
    "pruned_at"
)


@dataclass(frozen=True, slots=True)
class Anchor:
    """Rows 1..`tenant_seq` of a chain were pruned; `checkpoint` vouches for the rows kept."""

    tenant_id: str
    tenant_seq: int
    record_hash: str
    through_seq: int
    checkpoint: Checkpoint
    pruned_at: str

    @property
    def complete(self) -> bool:
        """True when the cut is right below the checkpoint row (no prune is half-way)."""
        return self.tenant_seq == self.checkpoint.tenant_seq


def read_anchors(
    db: sqlite3.Connection, store_id: str | None
) -> tuple[dict[str, Anchor], list[str]] | None:
    """Every anchor by tenant, and what is wrong with entries that are not one; None if no table.

    An entry whose columns hold what no anchor can (a `tenant_seq` that is text, a size below
    1) is not read as an anchor: it is returned as a problem, for `verify` to report.
    """
    if db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (ANCHOR_TABLE,)
    ).fetchone() is None:
        return None
    anchors: dict[str, Anchor] = {}
    problems: list[str] = []
    for values in db.execute(f"SELECT {_COLUMNS} FROM {ANCHOR_TABLE} ORDER BY tenant_id"):
        (tenant, size, digest, through, cp_size, cp_hash, signed_at, key_id, signature,
         pruned_at) = values
        texts = (tenant, digest, cp_hash, signed_at, key_id, signature, pruned_at)
        numbers = (size, through, cp_size)
        if not all(type(text) is str for text in texts) or not all(
            type(number) is int and number >= 1 for number in numbers
        ):
            problems.append(
                f"{ANCHOR_TABLE} entry {values[:4]!r} holds values no anchor can "
                "(text where a number belongs, or a size below 1): the table was changed"
            )
            continue
        checkpoint = Checkpoint(tenant, cp_size, cp_hash, signed_at, key_id, signature, store_id)
        anchors[tenant] = Anchor(tenant, size, digest, through, checkpoint, pruned_at)
    return anchors, problems
