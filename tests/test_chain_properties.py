"""Property-based tests of the chain rule, on random batches, tenants and attacks.

Covers: whatever is appended, each tenant's chain runs 1..n with every prev_hash equal to the
previous record_hash, global seq runs 1..N, and verify says intact; any single edit of any
byte of any row, removal of any row but the store's newest, or exchange of two rows is
reported as tampered at the right tenant_seq. Verify runs with random range sizes, in-process
or in worker processes, so that joining chains across ranges is exercised too.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealtrail.api.event import Event
from sealtrail.chain import scan
from sealtrail.chain.store import ChainStore
from sealtrail.chain.verify import Status, VerifyReport, verify_store

TENANTS = st.sampled_from(["acme", "globex", "_system", "t-1"])
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
EVENT = st.fixed_dictionaries(
    {"event_type": st.sampled_from(["safety.decision", "system.auth", "x.y"]),
     "severity": st.sampled_from(["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO"]),
     "tenant_id": TENANTS},
    optional={"reason": TEXT, "risk_tags": st.lists(TEXT, max_size=3),
              "extra": st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9_.]{0,10}\Z"), TEXT,
                                       max_size=3)},
)
BATCHES = st.lists(st.lists(EVENT, min_size=1, max_size=12), min_size=1, max_size=6)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def verify_settings(draw: st.DrawFn) -> tuple[int, bool]:
    return draw(st.integers(1, 15)), draw(st.booleans())


def verify(path: Path, how: tuple[int, bool]) -> VerifyReport:
    range_rows, parallel = how
    with (patch.object(scan, "RANGE_ROWS", range_rows),
          patch.object(scan, "PARALLEL_THRESHOLD", 0 if parallel else 10**9)):
        return verify_store(path, processes=2)


def build(batches: list[list[dict[str, Any]]]) -> Path:
    path = Path(tempfile.mkdtemp()) / "audit.db"
    with ChainStore(path) as store:
        for batch in batches:
            store.append([Event.model_validate(raw) for raw in batch])
    return path


def all_rows(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        return [orjson.loads(body) for (body,) in db.execute("SELECT body FROM audit_rows ORDER BY seq")]


@SETTINGS
@given(BATCHES, verify_settings())
def test_every_chain_links_and_verifies(batches: list[list[dict[str, Any]]],
                                        how: tuple[int, bool]) -> None:
    path = build(batches)
    rows = all_rows(path)
    assert [row["seq"] for row in rows] == list(range(1, sum(map(len, batches)) + 1))
    heads: dict[str, tuple[int, str]] = {}
    for row in rows:
        size, prev = heads.get(row["tenant_id"], (0, "0" * 64))
        assert row["tenant_seq"] == size + 1
        assert row["prev_hash"] == prev
        heads[row["tenant_id"]] = (row["tenant_seq"], row["record_hash"])
    report = verify(path, how)
    assert report.status is Status.INTACT
    assert report.rows == len(rows)


@SETTINGS
@given(BATCHES, st.data())
def test_any_byte_edit_is_caught_at_its_row(batches: list[list[dict[str, Any]]],
                                           data: st.DataObject) -> None:
    path = build(batches)
    with sqlite3.connect(path) as db:
        seqs = [seq for (seq,) in db.execute("SELECT seq FROM audit_rows")]
        seq = data.draw(st.sampled_from(seqs))
        tenant, tenant_seq, body = db.execute(
            "SELECT tenant_id, tenant_seq, body FROM audit_rows WHERE seq = ?", (seq,)
        ).fetchone()
        at = data.draw(st.integers(0, len(body) - 1))
        new = data.draw(st.integers(0, 255).filter(lambda b: b != body[at]))
        db.execute("UPDATE audit_rows SET body = ? WHERE seq = ?",
                   (body[:at] + bytes([new]) + body[at + 1:], seq))
    report = verify(path, data.draw(verify_settings()))
    assert report.status is Status.TAMPERED
    bad = next(t for t in report.tenants if t.tenant_id == tenant).first_bad
    assert bad is not None
    assert bad.tenant_seq == tenant_seq


@SETTINGS
@given(BATCHES, st.data())
def test_any_removed_row_is_caught(batches: list[list[dict[str, Any]]],
                                   data: st.DataObject) -> None:
    path = build(batches)
    with sqlite3.connect(path) as db:
        top = db.execute("SELECT MAX(seq) FROM audit_rows").fetchone()[0]
        if top < 2:
            return
        seq = data.draw(st.integers(1, top - 1))  # the store's newest row needs a checkpoint
        db.execute("DELETE FROM audit_rows WHERE seq = ?", (seq,))
    assert verify(path, data.draw(verify_settings())).status is Status.TAMPERED


@SETTINGS
@given(BATCHES, st.data())
def test_any_two_rows_exchanged_are_caught(batches: list[list[dict[str, Any]]],
                                           data: st.DataObject) -> None:
    path = build(batches)
    with sqlite3.connect(path) as db:
        top = db.execute("SELECT MAX(seq) FROM audit_rows").fetchone()[0]
        if top < 2:
            return
        first = data.draw(st.integers(1, top))
        second = data.draw(st.integers(1, top).filter(lambda s: s != first))
        bodies = {s: db.execute("SELECT body FROM audit_rows WHERE seq = ?", (s,)).fetchone()[0]
                  for s in (first, second)}
        for here, there in ((first, second), (second, first)):
            db.execute("UPDATE audit_rows SET body = ? WHERE seq = ?", (bodies[there], here))
    assert verify(path, data.draw(verify_settings())).status is Status.TAMPERED
