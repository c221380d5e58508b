"""Signed checkpoints: a tenant chain's size and head hash, signed with Ed25519.

A plain hash chain cannot show that its tail was cut off, or that it was rewritten from some row
on with every later hash recomputed: the shorter or rewritten chain is still internally valid.
A checkpoint held somewhere the writer cannot change (the SIEM, a file an auditor keeps) can:
`verify` refuses a chain that is shorter than a checkpoint, or whose row at the checkpoint's size
has another hash.

What is signed is the canonical JSON (same rule as rows) of

    {"head_hash", "key_id", "signed_at", "store_id", "tenant_id", "tenant_seq",
     "type": "sealtrail.checkpoint/v1"}

where `tenant_seq` is the size of the chain covered, `head_hash` the `record_hash` of its
last row, and `store_id` the store whose chain it is (left out for a store made before stores
had ids): signed with the rest, so a checkpoint of one replica's chain cannot be passed off as
vouching for another's. Each checkpoint is also appended to the tenant's own chain as a row of type
`sealtrail.checkpoint`, so it travels to the SIEM with the data it vouches for.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from sealtrail.chain.canonical import MAX_SAFE_INTEGER, canonical_json
from sealtrail.chain.keys import PublicKey, Signer

__all__ = [
    "CHECKPOINTS_FILE_MODE",
    "CHECKPOINT_EVENT_TYPE",
    "Checkpoint",
    "CheckpointFileError",
    "read_checkpoints",
    "write_checkpoints",
]

CHECKPOINT_EVENT_TYPE: Final = "sealtrail.checkpoint"
STATEMENT_TYPE: Final = "sealtrail.checkpoint/v1"
FILE_FORMAT: Final = "sealtrail.checkpoints/v1"
#: Mode of a checkpoints file: read by anyone, written by its owner only.
CHECKPOINTS_FILE_MODE: Final = 0o644

_ROW_FIELDS: Final = ("tenant_seq", "head_hash", "signed_at", "key_id", "signature")


class CheckpointFileError(Exception):
    """A checkpoints file cannot be read or is not in a format sealtrail writes."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that `tenant_id`'s chain had `tenant_seq` rows ending in `head_hash`."""

    tenant_id: str
    tenant_seq: int
    head_hash: str
    signed_at: str
    key_id: str
    signature: str  # base64 of the 64-byte Ed25519 signature
    store_id: str | None = None  # None: a store made before stores had ids

    @staticmethod
    def statement_bytes(  # noqa: PLR0917 - the signed fields, in one place
        tenant_id: str, tenant_seq: int, head_hash: str, signed_at: str, key_id: str,
        store_id: str | None = None,
    ) -> bytes:
        """The exact bytes that are signed."""
        statement: dict[str, Any] = {
            "head_hash": head_hash,
            "key_id": key_id,
            "signed_at": signed_at,
            "tenant_id": tenant_id,
            "tenant_seq": tenant_seq,
            "type": STATEMENT_TYPE,
        }
        if store_id is not None:
            statement["store_id"] = store_id
        return canonical_json(statement)

    @classmethod
    def sign(  # noqa: PLR0917 - the signed fields and the key
        cls, signer: Signer, tenant_id: str, tenant_seq: int, head_hash: str, signed_at: str,
        store_id: str | None = None,
    ) -> Checkpoint:
        """Sign the head of a chain."""
        message = cls.statement_bytes(tenant_id, tenant_seq, head_hash, signed_at,
                                      signer.key_id, store_id)
        signature = base64.b64encode(signer.sign(message)).decode("ascii")
        return cls(tenant_id, tenant_seq, head_hash, signed_at, signer.key_id, signature,
                   store_id)

    @property
    def chain(self) -> tuple[str | None, str]:
        """`(store_id, tenant_id)`: the chain this checkpoint is about."""
        return (self.store_id, self.tenant_id)

    def signature_valid(self, key: PublicKey) -> bool:
        """True when `key` made this checkpoint's signature over exactly these fields."""
        if key.key_id != self.key_id:
            return False
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        message = self.statement_bytes(
            self.tenant_id, self.tenant_seq, self.head_hash, self.signed_at, self.key_id,
            self.store_id,
        )
        return key.verifies(raw, message)

    def row_fields(self) -> dict[str, Any]:
        """The event part of the checkpoint's own row in the tenant chain.

        `extra` is str to str like any event's, so the size goes in as decimal text.
        """
        return {
            "action": "checkpoint",
            "event_type": CHECKPOINT_EVENT_TYPE,
            "extra": {
                "checkpoint_head_hash": self.head_hash,
                "checkpoint_key_id": self.key_id,
                "checkpoint_signature": self.signature,
                "checkpoint_signed_at": self.signed_at,
                "checkpoint_tenant_seq": str(self.tenant_seq),
            },
            "severity": "INFO",
            "timestamp": self.signed_at,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Checkpoint:
        """Read a checkpoint back from its row (as stored, or as a SIEM returns it).

        Its store is the row's own `store_id`: the row is in the chain it vouches for.
        """
        extra = row.get("extra")
        if row.get("event_type") != CHECKPOINT_EVENT_TYPE or not isinstance(extra, dict):
            raise ValueError("not a sealtrail.checkpoint row")
        try:
            values = {name: extra[f"checkpoint_{name}"] for name in _ROW_FIELDS}
        except KeyError as error:
            raise ValueError(f"checkpoint row lacks a field: {error}") from None
        text = values.pop("tenant_seq")
        size = _size(int(text) if isinstance(text, str) and text.isascii() and text.isdigit()
                     and text == str(int(text)) else text)
        store_id = row.get("store_id")
        if store_id is not None and not isinstance(store_id, str):
            raise ValueError("store_id must be a string")
        return cls(tenant_id=str(row.get("tenant_id")), tenant_seq=size, store_id=store_id,
                   **values)

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Read one entry of a checkpoints file."""
        if not isinstance(data, dict):
            raise ValueError("a checkpoint must be a JSON object")  # noqa: TRY004 - a format error
        try:
            checkpoint = cls(
                tenant_id=data["tenant_id"],
                tenant_seq=data["tenant_seq"],
                head_hash=data["head_hash"],
                signed_at=data["signed_at"],
                key_id=data["key_id"],
                signature=data["signature"],
                store_id=data.get("store_id"),
            )
        except KeyError as error:
            raise ValueError(f"missing field {error}") from None
        _size(checkpoint.tenant_seq)  # JSON gives no guarantee of the annotated types
        for name in ("tenant_id", "head_hash", "signed_at", "key_id", "signature"):
            if not isinstance(getattr(checkpoint, name), str):
                raise ValueError(f"{name} must be a string")  # noqa: TRY004 - a format error
        if checkpoint.store_id is not None and not isinstance(checkpoint.store_id, str):
            raise ValueError("store_id must be a string")
        return checkpoint

    def to_json(self) -> dict[str, Any]:
        """One entry of a checkpoints file (`store_id` only when the store has one)."""
        entry = asdict(self)
        if self.store_id is None:
            del entry["store_id"]
        return entry


def _size(value: object) -> int:
    """A checkpoint's size: a chain of at least one row, within what a row can number."""
    if type(value) is not int or not 1 <= value <= MAX_SAFE_INTEGER:
        raise ValueError(f"tenant_seq must be a whole number from 1 to {MAX_SAFE_INTEGER}, "
                         f"not {value!r}")
    return value


def write_checkpoints(path: Path, checkpoints: Iterable[Checkpoint]) -> None:
    """Write checkpoints as one JSON document (atomically: a reader never sees half a file).

    The file gets mode 0644 whatever the umask: it is evidence to copy out and hand around
    (what it holds also travels to every SIEM), so anyone may read it, only its owner write it.
    """
    document = {
        "format": FILE_FORMAT,
        "checkpoints": [checkpoint.to_json() for checkpoint in checkpoints],
    }
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    # A fresh temporary name (mkstemp: O_EXCL, never a link someone planted), its mode set
    # explicitly so that the umask cannot make the evidence writable by others.
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CheckpointFileError(f"cannot write {path}: {error.strerror}") from None
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), CHECKPOINTS_FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointFileError(f"cannot write {path}: {error.strerror}") from None


def read_checkpoints(path: Path) -> list[Checkpoint]:
    """Read checkpoints from a file `write_checkpoints` wrote, or from exported rows.

    The second form is NDJSON of rows as a SIEM holds them (a Splunk or Elastic export, say):
    its `sealtrail.checkpoint` rows are taken and every other row is ignored. That is how an
    auditor checks the local store against the evidence the SIEM received.
    """
    try:
        text = path.read_bytes()
    except OSError as error:
        raise CheckpointFileError(f"cannot read {path}: {error.strerror}") from None
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _checkpoints_from_rows(path, text)
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        if isinstance(document, dict) and document.get("event_type") == CHECKPOINT_EVENT_TYPE:
            return _checkpoints_from_rows(path, text)
        raise CheckpointFileError(f"{path} is not a {FILE_FORMAT} document")
    entries = document.get("checkpoints")
    if not isinstance(entries, list):
        raise CheckpointFileError(f"{path}: 'checkpoints' must be a list")
    found = []
    for index, entry in enumerate(entries):
        try:
            found.append(Checkpoint.from_json(entry))
        except ValueError as error:
            raise CheckpointFileError(f"{path}: checkpoints[{index}]: {error}") from None
    return found


def _checkpoints_from_rows(path: Path, text: bytes) -> list[Checkpoint]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise CheckpointFileError(
                f"{path}: line {number} is not JSON "
                "(expected a checkpoints document or NDJSON rows)"
            ) from None
        if isinstance(row, dict) and row.get("event_type") == CHECKPOINT_EVENT_TYPE:
            try:
                found.append(Checkpoint.from_row(row))
            except ValueError as error:
                raise CheckpointFileError(f"{path}: line {number}: {error}") from None
    return found
