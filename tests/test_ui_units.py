"""Fast tests of the audit UI's pure parts, without a worker or a browser.

The store search (chain/query.py), the URL view (ui/view.py) and the sessions (ui/sessions.py).
Covers: every filter's SQL on a real store (wildcards in free text taken literally, an empty
tenant list matching nothing), keyset pages, the timeline's slices, tenant names read by
skipping along the index, malformed URL parameters named and dropped, file-name slugs, and
sessions expiring, being bounded, and getting a new id at sign-in, and what a delivery badge
says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sealtrail.api.event import Event
from sealtrail.api.worker_api import ExportReport
from sealtrail.chain.query import (
    SEARCH_INDEXES,
    Search,
    connect,
    ensure_search_indexes,
    histogram,
    row_at,
    rows_ascending,
    search,
    tenant_names,
)
from sealtrail.chain.store import ChainStore
from sealtrail.ui.app import delivery_state
from sealtrail.ui.sessions import IDLE_SECONDS, MAX_SESSIONS, Sessions
from sealtrail.ui.view import parse_view


def _event(index: int) -> dict[str, Any]:
    return {"event_type": "safety.decision" if index % 2 else "system.auth",
            "severity": ("INFO", "HIGH")[index % 2], "tenant_id": ("a", "b", "c")[index % 3],
            "timestamp": f"2026-11-22T10:{index:02d}:00Z", "agent_id": f"agent-{index % 4}",
            "decision": "deny" if index % 5 == 0 else "allow",
            "reason": "100% sure_thing" if index == 7 else f"reason {index}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("query") / "audit.db"
    with ChainStore(path) as chain:
        chain.append([Event.model_validate(_event(index)) for index in range(60)])
    ensure_search_indexes(path)
    return path


def _seqs(path: Path, wanted: Search, **options: Any) -> list[int]:
    db = connect(path)
    try:
        return [found.seq for found in search(db, wanted, **options)]
    finally:
        db.close()


@pytest.mark.parametrize(("wanted", "keep"), [
    (Search(tenants=["a"]), lambda e: e["tenant_id"] == "a"),
    (Search(tenants=[]), lambda _: False),
    (Search(event_types=["system.auth"]), lambda e: e["event_type"] == "system.auth"),
    (Search(severities=["HIGH"]), lambda e: e["severity"] == "HIGH"),
    (Search(decisions=["deny"]), lambda e: e["decision"] == "deny"),
    (Search(actor="agent-3"), lambda e: e["agent_id"] == "agent-3"),
    (Search(since="2026-11-22T10:10:00.000000Z", until="2026-11-22T10:20:00.000000Z"),
     lambda e: "2026-11-22T10:10" <= e["timestamp"] < "2026-11-22T10:20"),
    (Search(text="100% sure_"), lambda e: e["reason"] == "100% sure_thing"),
    (Search(text="0%"), lambda e: "0%" in e["reason"]),  # % is a character, not a wildcard
    (Search(text="REASON 1"), lambda e: "reason 1" in e["reason"]),  # ASCII case folds
    (Search(seq_from=5, seq_to=9), lambda e: 5 <= e["seq"] <= 9),
], ids=["tenant", "no-tenant", "type", "severity", "decision", "actor", "time", "text",
        "percent", "case", "seq-range"])
def test_each_filter_matches_exactly_its_rows(store: Path, wanted: Search, keep: Any) -> None:
    expected = sorted((index + 1 for index, event in enumerate(_event(i) for i in range(60))
                       if keep({**event, "seq": index + 1})), reverse=True)
    assert _seqs(store, wanted, limit=100) == expected


def test_pages_by_keyset_cover_every_row_once(store: Path) -> None:
    seen: list[int] = []
    before = None
    while page := _seqs(store, Search(tenants=["b"]), before_seq=before, limit=7):
        seen += page
        before = page[-1]
    assert seen == sorted((i + 1 for i in range(60) if i % 3 == 1), reverse=True)


def test_rows_ascending_comes_in_chunks_in_chain_order(store: Path) -> None:
    db = connect(store)
    try:
        chunks = list(rows_ascending(db, Search(), chunk=25))
        assert [len(chunk) for chunk in chunks] == [25, 25, 10]
        assert [row.seq for chunk in chunks for row in chunk] == list(range(1, 61))
        assert row_at(db, "c", 2) is not None
        assert row_at(db, "c", 999) is None
        assert tenant_names(db) == ["a", "b", "c"]
        names = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {statement.split()[5] for statement in SEARCH_INDEXES} <= names
    finally:
        db.close()


def test_the_timeline_counts_every_row_of_the_range_in_its_slice(store: Path) -> None:
    db = connect(store)
    start = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    try:
        width, slices = histogram(db, Search(tenants=["a", "b", "c"]), start=start,
                                  end=start + timedelta(hours=1), buckets=6)
    finally:
        db.close()
    assert width == timedelta(minutes=10)
    assert len(slices) == 6
    assert [item.total for item in slices] == [10] * 6
    assert slices[0].counts == {"INFO": 5, "HIGH": 5}
    assert slices[1].start == start + timedelta(minutes=10)


def _view(query: str) -> Any:
    pairs = [tuple(part.split("=", 1)) for part in query.split("&") if part]
    return parse_view(dict(pairs), pairs)


def test_a_view_round_trips_and_names_what_it_dropped() -> None:
    view = _view("tenant=a&severity=HIGH&severity=LOUD&decision=deny&range=7d&q=x&seq_from=4")
    assert view.severities == ("HIGH",)
    assert view.problems == ("severity: 'LOUD' is not one of CRITICAL, HIGH, MEDIUM, LOW, INFO",)
    assert _view(view.query()) == view
    custom = _view("range=24h&from=2026-11-22T10:00&to=nonsense")
    assert custom.range is None
    assert custom.start == "2026-11-22T10:00"
    assert custom.end is None
    assert "to: 'nonsense'" in custom.problems[0]
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert _view("range=1h").search(["a"], now).since == "2026-11-22T23:00:00.000000Z"
    assert _view("tenant=z").search(["a"], now).tenants == []  # not among the visible
    assert _view("").search(None, now).tenants is None


def test_a_slug_names_the_filter_for_a_file() -> None:
    assert _view("").slug() == "all"
    assert _view("tenant=acme&decision=deny&range=24h").slug() == "acme_deny_24h"
    assert "/" not in _view("q=../../etc&actor=a b").slug()


def test_sessions_expire_are_bounded_and_change_id_at_sign_in() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    first = sessions.new()
    assert sessions.get(first.id) is first
    signed = sessions.sign_in(first, sessions.digest("token"))
    assert signed.id != first.id
    assert sessions.get(first.id) is None
    assert signed.signed_in
    assert signed.csrf_ok(signed.csrf)
    assert not signed.csrf_ok(first.csrf)
    assert not signed.csrf_ok(None)
    now[0] += IDLE_SECONDS + 1
    assert sessions.get(signed.id) is None
    kept = sessions.sign_in(None, sessions.digest("token"))
    many = [sessions.new() for _ in range(MAX_SESSIONS + 1)]  # a flood of sign-in pages
    assert sessions.get(many[0].id) is None
    assert sessions.get(many[-1].id) is many[-1]
    assert sessions.get(kept.id) is kept  # never pushed out by sessions not signed in
    sessions.end(kept)
    assert sessions.get(kept.id) is None
    assert Sessions().digest("token") != sessions.digest("token")  # keyed per process


def _export(**fields: Any) -> ExportReport:
    base: dict[str, Any] = {
        "name": "siem", "kind": "webhook", "cursor": 10, "paused": False, "pause_reason": None,
        "last_error": None, "consecutive_failures": 0, "interval_ms": 100,
        "interval_at_max": False, "credential_version": None, "delivered_rows": 10,
        "rejected_row": None, "last_stored_seq": 10, "acked_seq": 10, "lag_rows": 0,
        "lag_seconds": 0.0}
    return ExportReport.model_validate({**base, **fields})


@pytest.mark.parametrize(("fields", "state"), [
    ({}, ("ok", "delivering")),
    ({"lag_rows": 25, "lag_seconds": 3.25}, ("warn", "lagging 25 rows / 3.2 s")),
    ({"paused": True, "pause_reason": "paused by request"}, ("bad", "paused")),
    ({"paused": True, "pause_reason": "5 consecutive permanent failures; last: HTTP 401"},
     ("bad", "credentials rejected")),
    ({"paused": True, "pause_reason": "3 consecutive permanent failures; last: HEC token: "
      "invalid"}, ("bad", "credentials rejected")),
    ({"paused": True, "pause_reason": "5 consecutive permanent failures; last: HTTP 4010 "
      "bytes"}, ("bad", "paused")),
])
def test_a_delivery_badge_says_what_the_export_does(fields: dict[str, Any],
                                                    state: tuple[str, str]) -> None:
    assert delivery_state(_export(**fields)) == state
