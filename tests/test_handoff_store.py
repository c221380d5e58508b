"""The collector's store of handed-off rows (chain/handoff_store.py), checked on arrival.

Covers: rows are kept byte for byte with their own store, seq and chain fields, and read back
in arrival order for exports; a chain may start mid-way and continue after a gap; duplicates
(in one request or across requests) are acknowledged and kept once; a fork (another row at a
held position, in the request or against what is held), a broken link, a seq that does not
grow, a bad hash, bytes that are not canonical, a row without a store_id, malformed lines and
too many rows are refused, naming the line or the chain and position, and nothing of that
request is kept; cursors never move backwards; the file is private (0600).
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import orjson
import pytest

from sealtrail.chain.canonical import GENESIS_HASH, canonical_json, seal
from sealtrail.chain.handoff_store import HandoffRefusedError, HandoffStore, parse_rows
from sealtrail.chain.store import ChainStore

from .conftest import events


def sidecar_rows(path: Path, count: int, *, tenants: tuple[str, ...] = ("acme", "globex"),
                 seed: int = 1) -> list[bytes]:
    """`count` rows as a sidecar's store holds them, in its seq order."""
    with ChainStore(path) as store:
        store.append(events(count, seed=seed, tenants=tenants))
        return list(store.rows())


def body(rows: list[bytes]) -> bytes:
    return b"".join(row + b"\n" for row in rows)


def held(path: Path) -> list[bytes]:
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [bytes(row) for (row,) in reader.execute(
            "SELECT body FROM handed_rows ORDER BY hseq")]
    finally:
        reader.close()


def resealed(row: bytes, **changes: object) -> bytes:
    """`row` changed and sealed again: a well-formed row that is not the original."""
    fields = orjson.loads(row)
    fields.pop("record_hash")
    fields.update(changes)
    return seal(fields)[1]


@pytest.fixture
def rows(tmp_path: Path) -> list[bytes]:
    return sidecar_rows(tmp_path / "sidecar.db", 60, tenants=("acme",))


@pytest.fixture
def store(tmp_path: Path) -> HandoffStore:
    opened = HandoffStore(tmp_path / "handoff.db")
    yield opened  # type: ignore[misc]
    opened.close()


def receive(store: HandoffStore, rows: list[bytes]) -> tuple[int, int]:
    received = store.receive(parse_rows(body(rows), 10_000))
    return received.stored, received.duplicates


def refused(store: HandoffStore, rows: list[bytes] | bytes) -> HandoffRefusedError:
    raw = rows if isinstance(rows, bytes) else body(rows)
    with pytest.raises(HandoffRefusedError) as caught:
        store.receive(parse_rows(raw, 10_000))
    return caught.value


def test_rows_are_kept_verbatim_and_read_back_in_arrival_order_with_their_own_fields(
        tmp_path: Path, store: HandoffStore) -> None:
    first = sidecar_rows(tmp_path / "one.db", 30)
    second = sidecar_rows(tmp_path / "two.db", 30, seed=2)
    assert receive(store, first[5:20]) == (15, 0)
    assert receive(store, second) == (30, 0)
    assert held(tmp_path / "handoff.db") == first[5:20] + second
    exported = store.export_rows(0, 1000)
    assert [row.seq for row in exported] == list(range(1, 46))  # the collector's own order
    assert [row.body for row in exported] == first[5:20] + second
    for row in exported:
        fields = orjson.loads(row.body)
        assert (row.store_id, row.tenant_id, row.tenant_seq, row.record_hash, row.row_seq) == (
            fields["store_id"], fields["tenant_id"], fields["tenant_seq"],
            fields["record_hash"], fields["seq"])
    assert store.export_rows(40, 3) == exported[40:43]
    assert store.last_seq() == 45
    heads = {(head.store_id, head.tenant_id): head.tenant_seq for head in store.heads()}
    assert len(heads) == 4  # two stores, two tenants each


def test_a_chain_may_start_mid_way_and_continue_after_a_gap(rows: list[bytes],
                                                           store: HandoffStore) -> None:
    assert receive(store, rows[20:30]) == (10, 0)  # rows 1-20 went to the SIEM directly
    assert receive(store, rows[30:35]) == (5, 0)  # links to the head
    assert receive(store, rows[50:]) == (10, 0)  # 36-50 delivered directly after a restart
    assert receive(store, rows[10:20]) == (10, 0)  # and rows just before the first, linking
    (head,) = store.heads()
    assert (head.tenant_seq, head.rows) == (60, 35)


def test_duplicates_are_acknowledged_and_kept_once(tmp_path: Path, rows: list[bytes],
                                                   store: HandoffStore) -> None:
    assert receive(store, rows[:20]) == (20, 0)
    assert receive(store, rows[:20]) == (0, 20)  # a retry of a request that was kept
    assert receive(store, rows[15:25]) == (5, 5)  # overlapping
    assert receive(store, rows[25:30] + rows[25:30]) == (5, 5)  # the same row twice at once
    assert held(tmp_path / "handoff.db") == rows[:30]


def test_a_fork_against_a_held_row_is_refused_and_nothing_of_the_request_is_kept(
        tmp_path: Path, rows: list[bytes], store: HandoffStore) -> None:
    receive(store, rows[:20])
    fork = resealed(rows[9], message="rewritten")
    error = refused(store, [*rows[20:25], fork])
    assert error.kind == "conflict"
    assert (error.chain, error.tenant_seq, error.line) == (
        (orjson.loads(rows[0])["store_id"], "acme"), 10, 6)
    assert "fork" in str(error)
    assert "row 10 of chain (store" in str(error)
    assert held(tmp_path / "handoff.db") == rows[:20]  # rows 21-25 were not kept either


def test_two_versions_of_a_row_in_one_request_are_a_fork(rows: list[bytes],
                                                         store: HandoffStore) -> None:
    error = refused(store, [rows[3], resealed(rows[3], message="other")])
    assert (error.kind, error.tenant_seq) == ("conflict", 4)
    assert "lines 1 and 2 are two different versions of row 4" in str(error)
    assert store.last_seq() == 0


def test_a_row_that_does_not_link_to_the_held_head_is_refused(rows: list[bytes],
                                                             store: HandoffStore) -> None:
    receive(store, rows[:20])
    stranger = resealed(rows[20], prev_hash="f" * 64)
    error = refused(store, [stranger])
    assert (error.kind, error.tenant_seq) == ("conflict", 21)
    assert "does not link to row 20" in str(error)


def test_a_row_before_a_held_row_must_be_the_one_it_links_to(rows: list[bytes],
                                                             store: HandoffStore) -> None:
    receive(store, rows[20:30])
    error = refused(store, [*rows[15:19], resealed(rows[19], message="not row 20")])
    assert (error.kind, error.tenant_seq) == ("conflict", 20)
    assert "is not the row that row 21, already received, links to" in str(error)


def test_rows_in_one_request_must_link_to_each_other(rows: list[bytes],
                                                     store: HandoffStore) -> None:
    error = refused(store, [rows[0], rows[1], resealed(rows[2], prev_hash="e" * 64)])
    assert (error.kind, error.tenant_seq, error.line) == ("conflict", 3, 3)
    assert store.last_seq() == 0


def test_a_seq_that_does_not_grow_along_the_chain_is_refused(rows: list[bytes],
                                                            store: HandoffStore) -> None:
    first = orjson.loads(rows[0])
    second = resealed(rows[1], seq=first["seq"])
    error = refused(store, [rows[0], second])
    assert "does not grow along the chain" in str(error)


def test_a_row_that_does_not_match_its_hash_is_refused(rows: list[bytes],
                                                       store: HandoffStore) -> None:
    fields = orjson.loads(rows[4])
    fields["message"] = "changed after sealing"
    error = refused(store, [rows[3], canonical_json(fields)])
    assert (error.kind, error.line, error.tenant_seq) == ("invalid", 2, 5)
    assert "does not match its record_hash" in str(error)
    assert store.last_seq() == 0


def test_bytes_that_are_not_canonical_are_refused(rows: list[bytes],
                                                  store: HandoffStore) -> None:
    spaced = orjson.dumps(orjson.loads(rows[0]), option=orjson.OPT_INDENT_2).replace(b"\n", b"")
    error = refused(store, [spaced])
    assert error.kind == "invalid"
    assert "not the row's canonical bytes" in str(error)


def test_a_row_without_a_store_id_is_refused_saying_why(tmp_path: Path,
                                                        store: HandoffStore) -> None:
    fields = {"seq": 1, "tenant_id": "acme", "tenant_seq": 1, "prev_hash": GENESIS_HASH,
              "event_type": "x.y", "severity": "INFO", "timestamp": "2026-01-01T00:00:00.000000Z"}
    error = refused(store, [seal(fields)[1]])
    assert (error.kind, error.line) == ("invalid", 1)
    assert "has no store_id" in str(error)
    assert "one replica's chain cannot be told from another's" in str(error)


def test_the_first_row_of_a_chain_must_link_to_genesis(rows: list[bytes],
                                                       store: HandoffStore) -> None:
    error = refused(store, [resealed(rows[0], prev_hash="a" * 64)])
    assert "genesis" in str(error)


@pytest.mark.parametrize(("raw", "kind", "says"), [
    (b"", "malformed", "holds no rows"),
    (b"\n\n", "malformed", "holds no rows"),
    (b"{not json\n", "malformed", "line 1 is not JSON"),
    (b"[1, 2]\n", "malformed", "line 1 is not a JSON object"),
    (b'{"store_id": "s", "tenant_id": "t"}\n', "invalid", "tenant_seq must be a whole number"),
])
def test_malformed_bodies_are_refused_naming_the_line(raw: bytes, kind: str, says: str,
                                                      store: HandoffStore) -> None:
    error = refused(store, raw)
    assert error.kind == kind
    assert says in str(error)


def test_too_many_rows_in_one_request_are_refused(rows: list[bytes]) -> None:
    with pytest.raises(HandoffRefusedError) as caught:
        parse_rows(body(rows[:11]), 10)
    assert caught.value.kind == "too_many"
    assert "11 rows in one request; the limit is 10" in str(caught.value)


def test_cursors_never_move_backwards_and_the_file_is_private(tmp_path: Path,
                                                              store: HandoffStore) -> None:
    assert store.cursor("siem") == 0
    store.set_cursor("siem", 40)
    store.set_cursor("siem", 12)
    assert store.cursor("siem") == 40
    assert stat.S_IMODE((tmp_path / "handoff.db").stat().st_mode) == 0o600
