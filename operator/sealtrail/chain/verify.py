"""Recompute every chain and compare it with signed checkpoints.

Three verdicts, because they call for different responses:

- **intact**: every row hashes to its `record_hash`, links to the row before it, and every
  checkpoint given agrees with the chain;
- **tampered**: a row was changed, inserted, removed or reordered, a link is broken, a column
  disagrees with the row it indexes, or a checkpoint signature is bad;
- **truncated**: the chain is internally consistent but shorter than a signed checkpoint, or
  its row at a checkpoint's size has another hash: the tail was cut off, the store was rolled
  back to an old copy, or the chain was rewritten from some row on with every later hash
  recomputed. Only a checkpoint kept out of the writer's reach reveals these.

Each tenant's chain is split into ranges of `tenant_seq` that are checked independently (in
worker processes when the store is large: a chain check is CPU-bound and the GIL would keep
threads to one core); the links between ranges are checked when the results are joined.
"""

from __future__ import annotations

import enum
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from sealtrail.chain.canonical import GENESIS_HASH
from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE, Checkpoint
from sealtrail.chain.keys import PublicKey

__all__ = [
    "Finding",
    "Status",
    "TenantReport",
    "VerifyError",
    "VerifyReport",
    "verify_store",
]

_SORTED: Final = orjson.OPT_SORT_KEYS
#: Rows per range handed to a worker.
RANGE_ROWS: Final = 100_000
#: Below this many rows, verify in-process: starting workers costs more than it saves.
PARALLEL_THRESHOLD: Final = 200_000


class VerifyError(Exception):
    """The store or a checkpoint cannot be read: a usage or I/O problem, not a verdict."""


class Status(enum.IntEnum):
    """Verdicts, valued as `sealtrail verify` exit codes."""

    INTACT = 0
    TAMPERED = 1
    TRUNCATED = 2

    @property
    def gravity(self) -> int:
        """Tampering outranks truncation, whatever their exit codes."""
        return _GRAVITY[self]


_GRAVITY: Final = {Status.INTACT: 0, Status.TRUNCATED: 1, Status.TAMPERED: 2}


def _worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=lambda status: status.gravity, default=Status.INTACT)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong, at the first `tenant_seq` where it shows."""

    status: Status
    tenant_seq: int | None
    problem: str


@dataclass(slots=True)
class TenantReport:
    """What verify found for one tenant."""

    tenant_id: str
    rows: int = 0
    head_tenant_seq: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints_checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> Status:
        """The worst finding: tampering outranks truncation."""
        return _worst(finding.status for finding in self.findings)

    @property
    def first_bad(self) -> Finding | None:
        """The finding a person should look at first: the worst, then the earliest."""
        if not self.findings:
            return None
        return min(self.findings, key=lambda item: (-item.status.gravity, item.tenant_seq or 0))


@dataclass(slots=True)
class VerifyReport:
    """The verdict over a whole store (or one tenant of it)."""

    tenants: list[TenantReport]
    store_findings: list[Finding] = field(default_factory=list)
    checkpoints_given: bool = False

    @property
    def rows(self) -> int:
        """Rows checked."""
        return sum(tenant.rows for tenant in self.tenants)

    @property
    def status(self) -> Status:
        """Exit status: the worst verdict anywhere."""
        statuses = [tenant.status for tenant in self.tenants]
        statuses += [finding.status for finding in self.store_findings]
        return _worst(statuses)

    def to_json(self) -> dict[str, Any]:
        """The report as `--json` prints it."""
        return {
            "status": self.status.name.lower(),
            "exit_code": int(self.status),
            "rows": self.rows,
            "checkpoints_given": self.checkpoints_given,
            "store_findings": [_finding_json(item) for item in self.store_findings],
            "tenants": [
                {
                    "tenant_id": tenant.tenant_id,
                    "status": tenant.status.name.lower(),
                    "rows": tenant.rows,
                    "head_tenant_seq": tenant.head_tenant_seq,
                    "head_hash": tenant.head_hash,
                    "checkpoints_checked": tenant.checkpoints_checked,
                    "first_bad_tenant_seq": (
                        tenant.first_bad.tenant_seq if tenant.first_bad else None
                    ),
                    "findings": [_finding_json(item) for item in tenant.findings],
                }
                for tenant in self.tenants
            ],
        }


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "status": finding.status.name.lower(),
        "tenant_seq": finding.tenant_seq,
        "problem": finding.problem,
    }


# -- checking one range of one chain (runs in worker processes) ------------------------------


@dataclass(frozen=True, slots=True)
class _Range:
    tenant_id: str
    low: int  # first tenant_seq, inclusive
    high: int  # last tenant_seq, inclusive


@dataclass(slots=True)
class _RangeResult:
    rows: int = 0
    first_tenant_seq: int = 0
    first_prev_hash: str = ""
    first_seq: int = 0
    last_tenant_seq: int = 0
    last_hash: str = ""
    last_seq: int = 0
    finding: Finding | None = None
    embedded: list[tuple[int, Checkpoint]] = field(default_factory=list)


def _connect(path: Path) -> sqlite3.Connection:
    # Read-only, so verifying can never change the evidence it examines.
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


_worker_db: sqlite3.Connection | None = None


def _worker_init(path: Path) -> None:
    global _worker_db  # noqa: PLW0603 - one read connection per worker process
    _worker_db = _connect(path)


def _worker_check(span: _Range) -> _RangeResult:
    assert _worker_db is not None  # noqa: S101 - set by the pool initializer
    return _check_range(_worker_db, span)


# One flat loop on purpose: it is the hot path of verify (hundreds of thousands of rows a second).
def _check_range(db: sqlite3.Connection, span: _Range) -> _RangeResult:  # noqa: C901, PLR0915
    """Check hashes and links inside one range; the first problem found ends the range."""
    result = _RangeResult()
    cursor = db.execute(
        "SELECT seq, tenant_seq, record_hash, body FROM audit_rows "
        "WHERE tenant_id = ? AND tenant_seq BETWEEN ? AND ? ORDER BY tenant_seq",
        (span.tenant_id, span.low, span.high),
    )
    sha256 = hashlib.sha256
    loads = orjson.loads
    dumps = orjson.dumps
    expected_seq = span.low
    prev_hash = ""
    prev_seq = 0
    for seq, tenant_seq, record_hash, body in cursor:
        if tenant_seq != expected_seq:
            result.finding = Finding(
                Status.TAMPERED,
                expected_seq,
                f"row tenant_seq {expected_seq} is missing (the next row present is {tenant_seq})",
            )
            break
        expected_seq += 1
        try:
            row = loads(body)
        except orjson.JSONDecodeError:
            result.finding = Finding(Status.TAMPERED, tenant_seq, "row is not valid JSON")
            break
        if not isinstance(row, dict):
            result.finding = Finding(Status.TAMPERED, tenant_seq, "row is not a JSON object")
            break
        claimed = row.pop("record_hash", None)
        if sha256(dumps(row, option=_SORTED)).hexdigest() != claimed:
            result.finding = Finding(
                Status.TAMPERED, tenant_seq, "record_hash does not match the row: row changed"
            )
            break
        row["record_hash"] = claimed
        if dumps(row, option=_SORTED) != body:
            result.finding = Finding(Status.TAMPERED, tenant_seq, "row is not in canonical form")
            break
        if (
            claimed != record_hash
            or row.get("seq") != seq
            or row.get("tenant_seq") != tenant_seq
            or row.get("tenant_id") != span.tenant_id
        ):
            result.finding = Finding(
                Status.TAMPERED, tenant_seq, "row disagrees with its index columns"
            )
            break
        if result.rows == 0:
            result.first_tenant_seq = tenant_seq
            result.first_prev_hash = row.get("prev_hash", "")
            result.first_seq = seq
        elif row.get("prev_hash") != prev_hash:
            result.finding = Finding(
                Status.TAMPERED,
                tenant_seq,
                "prev_hash does not match the previous row: a row was removed, inserted or moved",
            )
            break
        elif seq <= prev_seq:
            result.finding = Finding(
                Status.TAMPERED, tenant_seq, "global seq goes backwards: rows were reordered"
            )
            break
        if row.get("event_type") == CHECKPOINT_EVENT_TYPE:
            try:
                result.embedded.append((tenant_seq, Checkpoint.from_row(row)))
            except ValueError as error:
                result.finding = Finding(
                    Status.TAMPERED, tenant_seq, f"bad checkpoint row: {error}"
                )
                break
        prev_hash = claimed
        prev_seq = seq
        result.rows += 1
        result.last_tenant_seq = tenant_seq
    result.last_hash = prev_hash
    result.last_seq = prev_seq
    return result


# -- orchestration ---------------------------------------------------------------------------


def _plan_ranges(db: sqlite3.Connection, tenants: Sequence[str]) -> list[_Range]:
    ranges = []
    for tenant in tenants:
        low, high = db.execute(
            "SELECT MIN(tenant_seq), MAX(tenant_seq) FROM audit_rows WHERE tenant_id = ?",
            (tenant,),
        ).fetchone()
        if low is None:
            continue
        # Start at 1 whatever the lowest row is, so a deleted head shows as a gap.
        start = 1
        while start <= high:
            end = min(start + RANGE_ROWS - 1, high)
            ranges.append(_Range(tenant, start, end))
            start = end + 1
    return ranges


def _join(report: TenantReport, results: Iterable[_RangeResult]) -> list[tuple[int, Checkpoint]]:
    """Join a tenant's range results in order; return its embedded checkpoints."""
    prev_hash = GENESIS_HASH
    prev_tenant_seq = 0
    prev_seq = 0
    embedded: list[tuple[int, Checkpoint]] = []
    for result in results:
        if result.rows:
            if result.first_tenant_seq != prev_tenant_seq + 1:
                report.findings.append(
                    Finding(
                        Status.TAMPERED,
                        prev_tenant_seq + 1,
                        f"row tenant_seq {prev_tenant_seq + 1} is missing",
                    )
                )
                break
            if result.first_prev_hash != prev_hash:
                problem = (
                    "the first row's prev_hash is not the genesis hash"
                    if prev_tenant_seq == 0
                    else "prev_hash does not match the previous row: "
                    "a row was removed, inserted or moved"
                )
                report.findings.append(Finding(Status.TAMPERED, result.first_tenant_seq, problem))
                break
            if result.first_seq <= prev_seq:
                report.findings.append(
                    Finding(
                        Status.TAMPERED,
                        result.first_tenant_seq,
                        "global seq goes backwards: rows were reordered",
                    )
                )
                break
            report.rows += result.rows
            prev_hash, prev_tenant_seq, prev_seq = (
                result.last_hash, result.last_tenant_seq, result.last_seq
            )
            embedded.extend(result.embedded)
        if result.finding is not None:
            report.findings.append(result.finding)
            break
        if result.rows == 0:
            break
    # A range that stopped early leaves later rows unexamined; the head is the last good row.
    report.head_tenant_seq = prev_tenant_seq
    report.head_hash = prev_hash
    return embedded


@dataclass(slots=True)
class _Evidence:
    """Checkpoints to hold one chain against, and how to look up its hashes."""

    db: sqlite3.Connection
    tenant_id: str
    keys: Sequence[PublicKey]

    def hash_at(self, tenant_seq: int) -> str | None:
        found = self.db.execute(
            "SELECT record_hash FROM audit_rows WHERE tenant_id = ? AND tenant_seq = ?",
            (self.tenant_id, tenant_seq),
        ).fetchone()
        return str(found[0]) if found else None

    def key_for(self, checkpoint: Checkpoint) -> PublicKey | None:
        return next((key for key in self.keys if key.key_id == checkpoint.key_id), None)


def _hold_against(
    report: TenantReport, evidence: _Evidence, checkpoints: Iterable[tuple[int | None, Checkpoint]]
) -> None:
    """Check each checkpoint's signature, then hold the chain against it, smallest first.

    A checkpoint that matches bounds where a later mismatch can have started, which the
    message passes on: "rewritten after row 100, at or before row 200".
    """
    confirmed = 0
    for at, checkpoint in sorted(checkpoints, key=lambda item: item[1].tenant_seq):
        where = "checkpoint row" if at is not None else "checkpoint"
        report.checkpoints_checked += 1
        key = evidence.key_for(checkpoint)
        if checkpoint.tenant_id != evidence.tenant_id:
            report.findings.append(Finding(Status.TAMPERED, at, f"{where} names another tenant"))
            continue
        if key is None or not checkpoint.signature_valid(key):
            reason = (
                f"signed by key {checkpoint.key_id}, which is not among the public keys given"
                if key is None
                else "signature does not verify"
            )
            report.findings.append(
                Finding(Status.TAMPERED, at, f"{where} for size {checkpoint.tenant_seq}: {reason}")
            )
            continue
        actual = evidence.hash_at(checkpoint.tenant_seq)
        if actual is None or checkpoint.tenant_seq > report.head_tenant_seq:
            if not report.findings:  # else the chain already fails earlier; that says more
                report.findings.append(
                    Finding(
                        Status.TRUNCATED,
                        report.head_tenant_seq + 1,
                        f"chain has {report.head_tenant_seq} rows but a {where} signed at "
                        f"{checkpoint.signed_at} vouches for {checkpoint.tenant_seq}: "
                        "the tail was removed or the store rolled back",
                    )
                )
        elif actual == checkpoint.head_hash:
            confirmed = max(confirmed, checkpoint.tenant_seq)
        else:
            report.findings.append(
                Finding(
                    Status.TRUNCATED,
                    checkpoint.tenant_seq,
                    f"row {checkpoint.tenant_seq} differs from the {where} signed at "
                    f"{checkpoint.signed_at}: the chain was rewritten after row {confirmed} "
                    f"or rolled back",
                )
            )


def verify_store(
    path: Path,
    *,
    tenant: str | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    public_keys: Sequence[PublicKey] = (),
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify the store at `path` (every tenant, or one).

    `checkpoints` (from a file kept outside the writer's reach) need `public_keys`. With keys,
    the checkpoint rows inside each chain are checked too. `progress(done, total)` is called
    with row counts as ranges finish.
    """
    if checkpoints and not public_keys:
        raise VerifyError("checkpoints can only be trusted with the public key that signed them")
    if not path.exists():
        raise VerifyError(f"{path}: no such store")
    try:
        db = _connect(path)
    except sqlite3.Error as error:
        raise VerifyError(f"cannot open store {path}: {error}") from None
    try:
        return _verify(db, path, tenant, checkpoints, public_keys, processes, progress)
    except sqlite3.Error as error:
        raise VerifyError(f"cannot read store {path}: {error}") from None
    finally:
        db.close()


def _verify(  # noqa: PLR0917 - verify_store's arguments, passed on
    db: sqlite3.Connection,
    path: Path,
    tenant: str | None,
    checkpoints: Sequence[Checkpoint],
    public_keys: Sequence[PublicKey],
    processes: int | None,
    progress: Callable[[int, int], None] | None,
) -> VerifyReport:
    stored = [
        name for (name,) in db.execute("SELECT DISTINCT tenant_id FROM audit_rows ORDER BY 1")
    ]
    # A tenant that only a checkpoint remembers has lost its whole chain: verify it too.
    remembered = {checkpoint.tenant_id for checkpoint in checkpoints}
    names = sorted(set(stored) | remembered) if tenant is None else [tenant]
    ranges = _plan_ranges(db, names)
    total = sum(span.high - span.low + 1 for span in ranges)
    results = _run_ranges(db, path, ranges, processes, progress, total)
    by_tenant: dict[str, list[_RangeResult]] = {}
    for span, result in zip(ranges, results, strict=True):
        by_tenant.setdefault(span.tenant_id, []).append(result)

    report = VerifyReport(tenants=[], checkpoints_given=bool(checkpoints))
    for name in names:
        tenant_report = TenantReport(tenant_id=name)
        embedded = _join(tenant_report, by_tenant.get(name, []))
        evidence = _Evidence(db, name, public_keys)
        held: list[tuple[int | None, Checkpoint]] = list(embedded) if public_keys else []
        held += [(None, item) for item in checkpoints if item.tenant_id == name]
        _hold_against(tenant_report, evidence, held)
        report.tenants.append(tenant_report)
    if tenant is None:
        report.store_findings.extend(_global_seq_findings(db))
    return report


def _run_ranges(  # noqa: PLR0917 - private; every argument is needed
    db: sqlite3.Connection,
    path: Path,
    ranges: list[_Range],
    processes: int | None,
    progress: Callable[[int, int], None] | None,
    total: int,
) -> list[_RangeResult]:
    workers = processes if processes is not None else (os.cpu_count() or 1)
    results: list[_RangeResult] = []
    done = 0
    if workers <= 1 or total < PARALLEL_THRESHOLD or len(ranges) < 2:
        for span in ranges:
            results.append(_check_range(db, span))
            done += span.high - span.low + 1
            if progress:
                progress(done, total)
        return results
    with ProcessPoolExecutor(
        max_workers=min(workers, len(ranges)), initializer=_worker_init, initargs=(path,)
    ) as pool:
        for span, result in zip(ranges, pool.map(_worker_check, ranges), strict=True):
            results.append(result)
            done += span.high - span.low + 1
            if progress:
                progress(done, total)
    return results


def _global_seq_findings(db: sqlite3.Connection) -> list[Finding]:
    """Global seq runs 1..n with no hole; a hole means some tenant lost a row."""
    count, low, high = db.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM audit_rows").fetchone()
    if not count or (low == 1 and high == count):
        return []
    if low != 1:
        return [Finding(Status.TAMPERED, None, f"global seq starts at {low}, not 1: rows removed")]
    (hole,) = db.execute(
        "SELECT r.seq + 1 FROM audit_rows r WHERE r.seq < ? AND NOT EXISTS "
        "(SELECT 1 FROM audit_rows n WHERE n.seq = r.seq + 1) ORDER BY r.seq LIMIT 1",
        (high,),
    ).fetchone()
    return [
        Finding(Status.TAMPERED, None, f"global seq {hole} is missing: a row was removed")
    ]
