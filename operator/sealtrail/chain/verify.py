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

The rows are checked range by range (`scan.py`, in parallel on a large store); here the ranges
are joined into one verdict per tenant chain, and the chains are held against checkpoints.

A chain retention pruned (`chain/anchor.py`) is checked from its cut: its kept rows must start
right above the rows the anchor says were pruned and link to the hash it records, and the anchor
must copy the kept checkpoint row that vouches for them. Pruned rows are reported as pruned,
never as history that was checked, and never as tampering; a checkpoint given for a size inside
the pruned rows cannot be re-checked here (the SIEM holds those rows: `verify_rows`). Global seq
holes below the cut are pruning's, so there they are counted instead: the rows kept plus the rows
the anchors account for must fill every seq up to it.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from sealtrail.chain.anchor import ANCHOR_TABLE, ANCHORS_SINCE_SCHEMA, Anchor, read_anchors
from sealtrail.chain.canonical import GENESIS_HASH, hash_row
from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE, Checkpoint
from sealtrail.chain.keys import PublicKey
from sealtrail.chain.scan import (
    RangeResult,
    Segment,
    connect_read_only,
    read_store_id,
    scan_store,
)

__all__ = [
    "Finding",
    "Status",
    "TenantReport",
    "VerifyError",
    "VerifyReport",
    "verify_rows",
    "verify_store",
]


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
    store_id: str | None = None  # the store whose chain this is (a SIEM copy holds several)
    rows: int = 0
    head_tenant_seq: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Where retention cut the chain (None: never pruned). Its rows 1..`pruned.tenant_seq` are
    #: not in the store; the checkpoint it names vouches for the rows kept.
    pruned: Anchor | None = None
    #: Checkpoints given for a size inside the pruned rows: signature checked, chain not.
    checkpoints_pruned: int = 0

    @property
    def status(self) -> Status:
        """The worst finding: tampering outranks truncation."""
        return _worst(finding.status for finding in self.findings)

    @property
    def pruned_through(self) -> int:
        """The last pruned `tenant_seq` (0: nothing pruned)."""
        return 0 if self.pruned is None else self.pruned.tenant_seq

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
    store_id: str | None = None
    #: Checkpoints given that vouch for other stores' chains (a SIEM export holds every
    #: replica's), by store id: not evidence about this store, so not used.
    other_stores: dict[str | None, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows checked."""
        return sum(tenant.rows for tenant in self.tenants)

    @property
    def pruned_rows(self) -> int:
        """Rows retention removed from the store (not checked here; the SIEM holds them)."""
        return sum(tenant.pruned_through for tenant in self.tenants)

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
            "pruned_rows": self.pruned_rows,
            "checkpoints_given": self.checkpoints_given,
            "store_id": self.store_id,
            "checkpoints_of_other_stores": [
                {"store_id": store, "checkpoints": count}
                for store, count in sorted(self.other_stores.items(), key=str)
            ],
            "store_findings": [_finding_json(item) for item in self.store_findings],
            "tenants": [
                {
                    "tenant_id": tenant.tenant_id,
                    "store_id": tenant.store_id,
                    "status": tenant.status.name.lower(),
                    "rows": tenant.rows,
                    "head_tenant_seq": tenant.head_tenant_seq,
                    "head_hash": tenant.head_hash,
                    "checkpoints_checked": tenant.checkpoints_checked,
                    "pruned": _pruned_json(tenant.pruned),
                    "checkpoints_pruned": tenant.checkpoints_pruned,
                    "first_bad_tenant_seq": (
                        tenant.first_bad.tenant_seq if tenant.first_bad else None
                    ),
                    "findings": [_finding_json(item) for item in tenant.findings],
                }
                for tenant in self.tenants
            ],
        }


def _pruned_json(anchor: Anchor | None) -> dict[str, Any] | None:
    if anchor is None:
        return None
    return {
        "first_tenant_seq": 1,
        "last_tenant_seq": anchor.tenant_seq,
        "last_record_hash": anchor.record_hash,
        "through_seq": anchor.through_seq,
        "pruned_at": anchor.pruned_at,
        "vouched_for_by": anchor.checkpoint.to_json(),
    }


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "status": finding.status.name.lower(),
        "tenant_seq": finding.tenant_seq,
        "problem": finding.problem,
    }


@dataclass(slots=True)
class _Evidence:
    """Checkpoints to hold one chain against, and how to look up its hashes."""

    hash_at: Callable[[int], str | None]
    tenant_id: str
    keys: Sequence[PublicKey]
    pruned: Anchor | None = None

    def key_for(self, checkpoint: Checkpoint) -> PublicKey | None:
        return next((key for key in self.keys if key.key_id == checkpoint.key_id), None)

    def hash_of(self, tenant_seq: int) -> str | None:
        """The chain's hash at `tenant_seq`; at the cut, the one its anchor records."""
        if self.pruned is not None and tenant_seq == self.pruned.tenant_seq:
            return self.pruned.record_hash
        return self.hash_at(tenant_seq)


def _hold_against(
    report: TenantReport, evidence: _Evidence, checkpoints: Iterable[tuple[int | None, Checkpoint]]
) -> None:
    """Check each checkpoint's signature, then hold the chain against it, smallest first.

    A checkpoint that matches bounds where a later mismatch can have started, which the
    message passes on: "rewritten after row 100 and at or before row 200".
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
        if evidence.pruned is not None and checkpoint.tenant_seq < evidence.pruned.tenant_seq:
            report.checkpoints_pruned += 1  # pruned: cannot be re-checked, and is no finding
            continue
        actual = evidence.hash_of(checkpoint.tenant_seq)
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
            since = f"after row {confirmed} and " if confirmed else ""
            report.findings.append(
                Finding(
                    Status.TRUNCATED,
                    checkpoint.tenant_seq,
                    f"row {checkpoint.tenant_seq} differs from the {where} signed at "
                    f"{checkpoint.signed_at}: the chain was rewritten {since}at or before row "
                    f"{checkpoint.tenant_seq}, or rolled back",
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
        db = connect_read_only(path)
    except sqlite3.Error as error:
        raise VerifyError(f"cannot open store {path}: {error}") from None
    try:
        return _verify(db, path, tenant, checkpoints, public_keys, processes, progress)
    except sqlite3.Error as error:
        raise VerifyError(f"cannot read store {path}: {error}") from None
    finally:
        db.close()


def _join(
    report: TenantReport, segments: Iterable[Segment]
) -> list[tuple[int, int, Checkpoint]]:
    """Join one tenant's segments in range order; return its checkpoint rows (as scanned).

    A pruned chain (`report.pruned`) starts at its cut: the row above the last pruned one,
    linking to that row's hash, at a global seq above it.
    """
    anchor = report.pruned
    prev_hash = GENESIS_HASH if anchor is None else anchor.record_hash
    prev_tenant_seq = 0 if anchor is None else anchor.tenant_seq
    prev_seq = 0 if anchor is None else anchor.through_seq
    checkpoints: list[tuple[int, int, Checkpoint]] = []
    for segment in segments:
        if segment.rows:
            at = segment.first_tenant_seq
            problem = (
                _cut_link_problem(segment, anchor)
                if anchor is not None and prev_tenant_seq == anchor.tenant_seq
                else _link_problem(segment, prev_tenant_seq, prev_hash, prev_seq)
            )
            if segment.first_tenant_seq > prev_tenant_seq + 1:
                at = prev_tenant_seq + 1
            if problem is not None:
                report.findings.append(Finding(Status.TAMPERED, at, problem))
                break
            report.rows += segment.rows
            prev_hash = segment.last_hash
            prev_tenant_seq = segment.last_tenant_seq
            prev_seq = segment.last_seq
            checkpoints.extend(segment.checkpoints)
        if segment.problem is not None:
            report.findings.append(
                Finding(Status.TAMPERED, segment.problem.tenant_seq, segment.problem.message)
            )
            break
    # A chain that failed leaves later rows unexamined; its head is its last good row.
    report.head_tenant_seq = prev_tenant_seq
    report.head_hash = prev_hash
    return checkpoints


def _link_problem(
    segment: Segment, prev_tenant_seq: int, prev_hash: str, prev_seq: int
) -> str | None:
    """What is wrong with how `segment` follows the rows before it, or None."""
    if segment.first_tenant_seq > prev_tenant_seq + 1:
        return f"row tenant_seq {prev_tenant_seq + 1} is missing"
    if segment.first_tenant_seq <= prev_tenant_seq:
        return "rows are out of order: global seq and tenant_seq disagree"
    if segment.first_prev_hash != prev_hash:
        return (
            "the first row's prev_hash is not the genesis hash"
            if prev_tenant_seq == 0
            else "prev_hash does not match the previous row: a row was removed, inserted or moved"
        )
    if segment.first_seq <= prev_seq:
        return "global seq goes backwards: rows were reordered"
    return None


def _cut_link_problem(segment: Segment, anchor: Anchor) -> str | None:
    """What is wrong with how a pruned chain's first kept rows follow its cut, or None."""
    last = anchor.tenant_seq
    if segment.first_tenant_seq > last + 1:
        return (f"row tenant_seq {last + 1} is missing: rows 1..{last} were pruned "
                f"({ANCHOR_TABLE}) and the chain must go on from there")
    if segment.first_tenant_seq <= last:
        return (f"row tenant_seq {segment.first_tenant_seq} is in the range {ANCHOR_TABLE} "
                f"says was pruned (1..{last}): a row was inserted or the table was changed")
    if segment.first_prev_hash != anchor.record_hash:
        return (f"the first kept row's prev_hash is not the hash {ANCHOR_TABLE} records for "
                f"row {last}, the last pruned: the row or the table was changed")
    if segment.first_seq <= anchor.through_seq:
        return (f"the first kept row is at global seq {segment.first_seq}, not above "
                f"{anchor.through_seq}, where {ANCHOR_TABLE} says the pruned rows end: the "
                "table was changed")
    return None


def _store_names(stores: dict[str | None, int]) -> str:
    names = sorted(store or "a store without id" for store in stores)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _verify(  # noqa: PLR0917 - verify_store's arguments, passed on
    db: sqlite3.Connection,
    path: Path,
    tenant: str | None,
    checkpoints: Sequence[Checkpoint],
    public_keys: Sequence[PublicKey],
    processes: int | None,
    progress: Callable[[int, int], None] | None,
) -> VerifyReport:
    store_id = read_store_id(db)
    report = VerifyReport(tenants=[], checkpoints_given=bool(checkpoints), store_id=store_id)
    anchors = _read_anchors(db, store_id, report)
    floor = max((anchor.through_seq for anchor in anchors.values()), default=0)
    results: list[RangeResult] = scan_store(db, path, tenant, processes, progress,
                                            hole_floor=floor)
    by_tenant: dict[str, list[Segment]] = {}
    for result in results:
        for name, segment in result.segments.items():
            by_tenant.setdefault(name, []).append(segment)
    ours = [item for item in checkpoints if item.store_id == store_id]
    for item in checkpoints:
        if item.store_id != store_id:
            report.other_stores[item.store_id] = report.other_stores.get(item.store_id, 0) + 1
    if checkpoints and not ours:
        report.store_findings.append(Finding(
            Status.TRUNCATED, None,
            f"none of the {len(checkpoints)} checkpoints given is for this store "
            f"({store_id or 'no store id'}); they vouch for "
            f"{_store_names(report.other_stores)}: this store replaced the one they were "
            "signed for, or the evidence belongs to another store",
        ))
    checkpoints = ours
    # A tenant that only a checkpoint remembers has lost its whole chain: report it too; so is
    # one that only the store's table of checkpoints names.
    remembered = {checkpoint.tenant_id for checkpoint in checkpoints}
    tabled = _tabled_tenants(db, report)
    has_table = tabled is not None
    tabled = tabled or set()
    names = (sorted(set(by_tenant) | remembered | tabled | set(anchors), key=str)
             if tenant is None else [tenant])

    for name in names:
        tenant_report = TenantReport(tenant_id=name, store_id=store_id, pruned=anchors.get(name))
        _verify_chain(tenant_report, db, by_tenant.get(name, []),
                      [(None, item) for item in checkpoints if item.tenant_id == name],
                      public_keys, has_table=has_table)
        report.tenants.append(tenant_report)
    missing = [result.missing_seq for result in results if result.missing_seq is not None]
    if missing:
        report.store_findings.append(
            Finding(
                Status.TAMPERED, None, f"global seq {min(missing)} is missing: a row was removed"
            )
        )
    stray = [result.stray for result in results if result.stray is not None]
    if stray:
        report.store_findings.append(Finding(Status.TAMPERED, None, min(stray)[1]))
    if tenant is None and anchors:
        _count_below_cut(db, report, anchors, floor)
    return report


def _verify_chain(
    report: TenantReport,
    db: sqlite3.Connection,
    segments: list[Segment],
    given: list[tuple[int | None, Checkpoint]],
    public_keys: Sequence[PublicKey],
    *,
    has_table: bool,
) -> None:
    """Join one chain's scanned segments and hold it against its cut and its checkpoints."""
    embedded = _join(report, segments)
    if report.pruned is not None:
        _check_anchor(report, report.pruned, embedded)
    held: list[tuple[int | None, Checkpoint]] = (
        [(at, item) for at, _, item in embedded] if public_keys else []
    )
    evidence = _Evidence(_hash_in(db, report.tenant_id), report.tenant_id, public_keys,
                         report.pruned)
    _hold_against(report, evidence, held + given)
    if has_table:
        _check_checkpoint_table(report, db, embedded)


def _read_anchors(
    db: sqlite3.Connection, store_id: str | None, report: VerifyReport
) -> dict[str, Anchor]:
    """The anchors of pruned chains; a table that should be there and is not is reported."""
    found = read_anchors(db, store_id)
    if found is None:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version >= ANCHORS_SINCE_SCHEMA:
            report.store_findings.append(Finding(
                Status.TAMPERED, None,
                f"table {ANCHOR_TABLE} is missing (every store of schema {version} has one): "
                "it was dropped",
            ))
        return {}
    anchors, problems = found
    report.store_findings += [Finding(Status.TAMPERED, None, problem) for problem in problems]
    return anchors


def _check_anchor(
    report: TenantReport, anchor: Anchor, embedded: list[tuple[int, int, Checkpoint]]
) -> None:
    """Hold a pruned chain's anchor against the kept checkpoint row it says vouches for it.

    `_join` has held the kept rows against the cut (where they start, what they link to).
    What is left: the checkpoint the anchor names must be a row of the kept chain, at its size
    plus one, and the anchor's copy of it must be exact. Its signature, and that it covers the
    hash the chain links to, are checked with the other checkpoint rows (with public keys).
    """
    if any(finding.status is Status.TAMPERED for finding in report.findings):
        return  # the chain already fails; past its first problem nothing is compared
    size = anchor.checkpoint.tenant_seq
    if size < anchor.tenant_seq:
        report.findings.append(Finding(
            Status.TAMPERED, None,
            f"{ANCHOR_TABLE} names the checkpoint of rows 1..{size} for a chain pruned through "
            f"row {anchor.tenant_seq}: that checkpoint's row would be pruned too; the table "
            "was changed",
        ))
        return
    row = next((item for at, _, item in embedded if at == size + 1), None)
    if row is None and report.head_tenant_seq <= size:
        report.findings.append(Finding(
            Status.TRUNCATED, report.head_tenant_seq + 1,
            f"the chain ends at row {report.head_tenant_seq}, but {ANCHOR_TABLE} says the "
            f"checkpoint row at {size + 1}, signed at {anchor.checkpoint.signed_at}, vouches for "
            "its kept rows: the tail was removed",
        ))
        return
    if row is None:
        report.findings.append(Finding(
            Status.TAMPERED, size + 1,
            f"row {size + 1} is not the checkpoint row {ANCHOR_TABLE} says vouches for the kept "
            "rows: the table was changed",
        ))
        return
    wrong = [
        f"column checkpoint_{name} holds {getattr(anchor.checkpoint, name)!r}, the row "
        f"{getattr(row, name)!r}"
        for name in ("head_hash", "signed_at", "key_id", "signature")
        if getattr(anchor.checkpoint, name) != getattr(row, name)
    ]
    if wrong:
        report.findings.append(Finding(
            Status.TAMPERED, size + 1,
            f"{ANCHOR_TABLE} disagrees with the checkpoint row it names: {'; '.join(wrong)}",
        ))


def _count_below_cut(
    db: sqlite3.Connection, report: VerifyReport, anchors: dict[str, Anchor], floor: int
) -> None:
    """Every global seq up to the highest cut is a row kept or a row an anchor accounts for.

    Below the cut, global seq has pruning's holes, so a removed row cannot show as a hole
    there; it shows in the count. A chain's pruned rows are its rows 1..N, all at or below
    its anchor's `through_seq`, so kept and pruned together fill seqs 1..`floor` exactly.
    """
    (kept,) = db.execute(
        "SELECT COUNT(*) FROM audit_rows WHERE seq BETWEEN 1 AND ?", (floor,)
    ).fetchone()
    pruned = sum(anchor.tenant_seq for anchor in anchors.values())
    if kept + pruned < floor:
        report.store_findings.append(Finding(
            Status.TAMPERED, None,
            f"{floor - kept - pruned} of global seqs 1..{floor} are neither a row kept nor one "
            f"{ANCHOR_TABLE} accounts for as pruned ({kept} kept, {pruned} pruned): rows were "
            "removed",
        ))
    elif kept + pruned > floor:
        report.store_findings.append(Finding(
            Status.TAMPERED, None,
            f"global seqs 1..{floor} hold {kept} rows and {ANCHOR_TABLE} accounts for {pruned} "
            f"more pruned, {kept + pruned - floor} more than there are seqs: the table was "
            "changed",
        ))


def _tabled_tenants(db: sqlite3.Connection, report: VerifyReport) -> set[str] | None:
    """Tenants `audit_checkpoints` names; None, reported, if the table is gone."""
    if db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_checkpoints'"
    ).fetchone() is None:
        report.store_findings.append(Finding(
            Status.TAMPERED, None,
            "table audit_checkpoints is missing (every store has one): it was dropped",
        ))
        return None
    return {name for (name,) in db.execute("SELECT DISTINCT tenant_id FROM audit_checkpoints")}


def _hash_in(db: sqlite3.Connection, tenant: str) -> Callable[[int], str | None]:
    def hash_at(tenant_seq: int) -> str | None:
        found = db.execute(
            "SELECT record_hash FROM audit_rows WHERE tenant_id = ? AND tenant_seq = ?",
            (tenant, tenant_seq),
        ).fetchone()
        return str(found[0]) if found else None

    return hash_at


def _beyond_the_chain(
    db: sqlite3.Connection, report: TenantReport, size: object, row_seq: object
) -> bool:
    """True for an entry whose checkpoint row would follow the chain's last row and is absent.

    That is the table remembering a tail that was removed. The table is the writer's own, as
    open to change as the rows, so it is no proof of truncation (a signed checkpoint kept
    elsewhere is); such an entry is left alone, as verify always left a cut tail.
    """
    if type(size) is not int or size < report.head_tenant_seq:
        return False
    return db.execute("SELECT 1 FROM audit_rows WHERE seq = ?", (row_seq,)).fetchone() is None


_TABLE_COLUMNS: Final = ("tenant_seq", "head_hash", "signed_at", "key_id", "signature")


def _check_checkpoint_table(
    report: TenantReport, db: sqlite3.Connection, embedded: list[tuple[int, int, Checkpoint]]
) -> None:
    """Hold the store's `audit_checkpoints` table against the checkpoint rows of the chain.

    The table is what the store reads to decide when the next checkpoint is due and what
    `sealtrail checkpoint --out` exports; each entry must be a copy of a checkpoint row
    (`row_seq` points at it) and each checkpoint row must have its entry. Only the part of
    the chain that verified is compared: past a chain's first problem, nothing is trusted.
    """
    if any(finding.status is Status.TAMPERED for finding in report.findings):
        return
    rows = {seq: (tenant_seq, checkpoint) for tenant_seq, seq, checkpoint in embedded}
    entries = db.execute(
        "SELECT tenant_seq, head_hash, signed_at, key_id, signature, row_seq "
        "FROM audit_checkpoints WHERE tenant_id = ? ORDER BY tenant_seq",
        (report.tenant_id,),
    ).fetchall()
    for *values, row_seq in entries:
        found = rows.pop(row_seq, None)
        if found is None:
            if _beyond_the_chain(db, report, values[0], row_seq):
                continue
            report.findings.append(Finding(
                Status.TAMPERED, None,
                f"audit_checkpoints entry for size {values[0]!r} points at seq {row_seq!r}, "
                "which is no checkpoint row of this chain: the table was changed",
            ))
            continue
        at, checkpoint = found
        wrong = [
            f"column {name} holds {value!r}, the row {getattr(checkpoint, name)!r}"
            for name, value in zip(_TABLE_COLUMNS, values, strict=True)
            if value != getattr(checkpoint, name)
            or type(value) is not type(getattr(checkpoint, name))
        ]
        if wrong:
            report.findings.append(Finding(
                Status.TAMPERED, at,
                f"audit_checkpoints entry of the checkpoint row at seq {row_seq} disagrees "
                f"with it: {'; '.join(wrong)}",
            ))
    for seq, (at, _) in sorted(rows.items()):
        report.findings.append(Finding(
            Status.TAMPERED, at,
            f"checkpoint row at seq {seq} has no audit_checkpoints entry: it was removed",
        ))


# -- a SIEM's copy -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Received:
    """One row of a SIEM's copy, checked on arrival; `identity` tells two versions apart.

    The identity is the hash of the row without `record_hash`, and the `record_hash` it
    claims: equal exactly when the rows are (SHA-256), and a few dozen bytes where the row's
    own bytes would be its size again (over 8 KiB each, as orjson allocates them: 9 GB for a
    copy of a million rows).
    """

    seq: object
    record_hash: str
    prev_hash: object
    hash_ok: bool
    identity: tuple[str, str]
    checkpoint: Checkpoint | str | None  # the checkpoint a checkpoint row holds, or its defect


def _receive(number: int, line: bytes) -> tuple[str | None, str, int, _Received]:
    """Parse one NDJSON line into its chain, position and checked content."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise VerifyError(f"line {number} is not JSON") from None
    if not isinstance(row, dict):
        raise VerifyError(f"line {number} is not a JSON object")
    store_id, tenant, tenant_seq = row.get("store_id"), row.get("tenant_id"), row.get("tenant_seq")
    claimed = row.pop("record_hash", None)
    if (store_id is not None and type(store_id) is not str) or type(tenant) is not str or (
        type(tenant_seq) is not int or type(claimed) is not str
    ):
        raise VerifyError(f"line {number} is not a row as sealtrail ships it (it needs a string "
                          "tenant_id and record_hash, an integer tenant_seq)")
    digest = hash_row(row)
    checkpoint: Checkpoint | str | None = None
    if row.get("event_type") == CHECKPOINT_EVENT_TYPE:
        try:
            checkpoint = Checkpoint.from_row(row)
        except ValueError as error:
            checkpoint = f"bad checkpoint row: {error}"
    row["record_hash"] = claimed
    return store_id, tenant, tenant_seq, _Received(
        seq=row.get("seq"), record_hash=claimed, prev_hash=row.get("prev_hash"),
        hash_ok=digest == claimed, identity=(digest, claimed), checkpoint=checkpoint,
    )


def verify_rows(
    lines: Iterable[bytes],
    *,
    tenant: str | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    public_keys: Sequence[PublicKey] = (),
) -> VerifyReport:
    """Verify a SIEM's copy of the rows (NDJSON, one row a line, in any order) as a store is.

    Chains are `(store_id, tenant_id)`: a SIEM holds every replica's. Each is checked like a
    store's chain: every row hashes to its `record_hash`, `tenant_seq` runs 1, 2, 3 ... with no
    gap, each `prev_hash` is the previous row's hash, global `seq` grows along the chain; with
    `public_keys`, its checkpoint rows are checked and held against it, and so is every
    checkpoint given (`checkpoints`, each for the chain it names: one whose chain is absent
    from the copy reports that chain as truncated). The same row received twice is fine
    (delivery is at least once); two different rows at one position are a fork: tampered.
    `VerifyError` for a line that is not a row.
    """
    if checkpoints and not public_keys:
        raise VerifyError("checkpoints can only be trusted with the public key that signed them")
    chains: dict[tuple[str | None, str], dict[int, list[_Received]]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        store_id, name, tenant_seq, received = _receive(number, line)
        if tenant is not None and name != tenant:
            continue
        versions = chains.setdefault((store_id, name), {}).setdefault(tenant_seq, [])
        if all(item.identity != received.identity for item in versions):
            versions.append(received)
    given = [item for item in checkpoints if tenant is None or item.tenant_id == tenant]
    report = VerifyReport(tenants=[], checkpoints_given=bool(checkpoints))
    # A chain that only a checkpoint remembers lost every row: report it too.
    names = set(chains) | {item.chain for item in given}
    for chain in sorted(names, key=lambda item: (item[1], item[0] or "")):
        store_id, name = chain
        tenant_report = TenantReport(tenant_id=name, store_id=store_id)
        rows = chains.get(chain, {})
        embedded = _check_received_chain(tenant_report, rows)
        held: list[tuple[int | None, Checkpoint]] = list(embedded) if public_keys else []
        held += [(None, item) for item in given if item.chain == chain]

        def hash_at(tenant_seq: int, rows: dict[int, list[_Received]] = rows) -> str | None:
            versions = rows.get(tenant_seq)
            return versions[0].record_hash if versions and len(versions) == 1 else None

        _hold_against(tenant_report, _Evidence(hash_at, name, public_keys), held)
        report.tenants.append(tenant_report)
    return report


def _check_received_chain(
    report: TenantReport, rows: dict[int, list[_Received]]
) -> list[tuple[int, Checkpoint]]:
    """Walk one chain of a SIEM's copy in `tenant_seq` order, up to its first problem.

    Walks the positions present (sorted), never the span they claim, so that a row at
    `tenant_seq` 10**12 costs one step.
    """
    checkpoints: list[tuple[int, Checkpoint]] = []
    prev_seq: object = None
    for tenant_seq in sorted(rows):
        versions = rows[tenant_seq]
        problem = _received_problem(report, tenant_seq, versions, prev_seq)
        if problem is not None:
            report.findings.append(Finding(Status.TAMPERED, *problem))
            break
        row = versions[0]
        if isinstance(row.checkpoint, Checkpoint):
            checkpoints.append((tenant_seq, row.checkpoint))
        prev_seq = row.seq
        report.rows += 1
        report.head_tenant_seq = tenant_seq
        report.head_hash = row.record_hash
    return checkpoints


def _received_problem(
    report: TenantReport, tenant_seq: int, versions: list[_Received], prev_seq: object
) -> tuple[int, str] | None:
    """What is wrong with the next row of a received chain, at which `tenant_seq`."""
    row = versions[0]
    expected = report.head_tenant_seq + 1
    problem = None
    if tenant_seq < 1:
        problem = f"row {tenant_seq} is below 1, where every chain starts: a forged row"
    elif tenant_seq != expected:
        return expected, f"row {expected} never arrived"
    elif len(versions) > 1:
        hashes = ", ".join(sorted(item.record_hash[:16] + "…" for item in versions))
        problem = (f"row {tenant_seq} arrived as {len(versions)} different rows ({hashes}): "
                   "a fork, the chain was rewritten after some of its rows had been shipped")
    elif not row.hash_ok:
        problem = f"row {tenant_seq} does not match its hash"
    elif row.prev_hash != report.head_hash:
        problem = f"row {tenant_seq} does not link to row {tenant_seq - 1}"
    elif type(row.seq) is not int or (type(prev_seq) is int and row.seq <= prev_seq):
        problem = f"row {tenant_seq}: global seq {row.seq!r} does not grow along the chain"
    elif isinstance(row.checkpoint, str):
        problem = f"row {tenant_seq}: {row.checkpoint}"
    return None if problem is None else (tenant_seq, problem)
