"""Canonical bytes and the hash rule.

    record_hash = hex(sha256(JCS(row without record_hash)))

JCS is RFC 8785. For sealtrail rows it reduces to: object keys sorted, no whitespace, UTF-8,
strings escaped as ECMAScript's JSON.stringify does, integers only. The event model guarantees
the preconditions that make orjson's `OPT_SORT_KEYS` output byte-identical to JCS: every key is
ASCII (so code-point order equals JCS's UTF-16 order), no floats, integers within ±2**53, no
unpaired surrogates. A test compares it with an independent JCS routine on random rows.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import orjson

__all__ = [
    "GENESIS_HASH",
    "MAX_SAFE_INTEGER",
    "canonical_json",
    "hash_row",
    "seal",
]

#: `prev_hash` of the first row of every tenant's chain.
GENESIS_HASH: Final = "0" * 64

#: Largest integer an ECMAScript number holds exactly; JCS serialises numbers as such.
MAX_SAFE_INTEGER: Final = 2**53 - 1

_SORTED: Final = orjson.OPT_SORT_KEYS


def canonical_json(value: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of a row-shaped object (see the module docstring for the preconditions)."""
    return orjson.dumps(value, option=_SORTED)


def hash_row(row_without_hash: dict[str, Any]) -> str:
    """The `record_hash` of a row given without its `record_hash`."""
    return hashlib.sha256(orjson.dumps(row_without_hash, option=_SORTED)).hexdigest()


def seal(row_without_hash: dict[str, Any]) -> tuple[str, bytes]:
    """Hash a row and return `(record_hash, canonical bytes of the row with it)`.

    The dict is completed in place with `record_hash`.
    """
    digest = hashlib.sha256(orjson.dumps(row_without_hash, option=_SORTED)).hexdigest()
    row_without_hash["record_hash"] = digest
    return digest, orjson.dumps(row_without_hash, option=_SORTED)
