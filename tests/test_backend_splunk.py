"""The Splunk HEC backend against a protocol-faithful HEC receiver on 127.0.0.1.

Covers: rows from the real store arrive in order with `event` byte-identical to the stored row,
metadata (time, source, sourcetype, index, dedupe key, record hash) beside it, and a request
body exactly the sum of `row_size`; a receiver-side chain check recomputes every hash and link
from what the SIEM received alone; `hecUrl` with or without the collector path; the failure
table (HEC codes 5-7 and 10-16 permanent with `invalid-event-number`, 401/403 auth, 500/503,
timeouts and refused connections retryable, 429 with `Retry-After`, 413 too large), with
reasons that never hold the token or row content; a token rotated in its file used on the very
next send; indexer acknowledgement (success only after `true`, retryable poll errors, timeout,
a constant GUID channel, a 200 without `ackId`); index templates and limits; and the receiver's
own answers to what the backend never sends (no token, no channel, malformed bodies).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sealtrail.api.destinations import (
    SPLUNK_INDEX,
    TemplateError,
    check_template,
    render_template,
)
from sealtrail.api.export import CredentialRef, ExportSpec, RetrySpec, SplunkSpec
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import ExportRow, check_backend_templates
from sealtrail.export.backends.splunk import SplunkBackend, epoch_text, hec_base_url
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind

from .conftest import events
from .receivers.http_base import Request, Response
from .receivers.splunk import SplunkCase, SplunkReceiver

TOKEN = "11111111-aaaa-4bbb-8ccc-000000000001"  # noqa: S105 - a test value
ROTATED = "22222222-aaaa-4bbb-8ccc-000000000002"
RULE = SplunkBackend.destination_rule
assert RULE is not None


# -- helpers ---------------------------------------------------------------------------------


def stored_rows(db_path: Path, count: int = 24) -> tuple[list[bytes], list[ExportRow]]:
    """Append `count` sample events and read them back as stored bytes and ExportRows."""
    with ChainStore(db_path) as store:
        store.append(events(count))
        bodies = list(store.rows())
    return bodies, [export_row(body) for body in bodies]


def export_row(body: bytes, destination: str | None = None) -> ExportRow:
    row = orjson.loads(body)
    return ExportRow(row["seq"], row["tenant_id"], row["tenant_seq"], row["record_hash"],
                     row["event_type"], row["severity"], row["timestamp"], body, destination)


def write_token(path: Path, value: str) -> None:
    """Replace the file as the kubelet does: a new file swapped in."""
    staging = path.with_suffix(".new")
    staging.write_text(value + "\n", encoding="utf-8")
    staging.replace(path)


def make_backend(url: str, token_file: Path, **splunk: Any) -> SplunkBackend:
    timeout = splunk.pop("request_timeout_seconds", 5.0)
    spec = ExportSpec(
        name="siem",
        splunk=SplunkSpec(hec_url=url, token=CredentialRef(file=str(token_file)), **splunk),
        retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200,
                        request_timeout_seconds=timeout),
    )
    return SplunkBackend(spec, HttpClients())


def send(backend: SplunkBackend, *batches: Sequence[ExportRow]) -> list[Outcome]:
    """Send each batch in turn on one event loop, then close the client."""

    async def run() -> list[Outcome]:
        try:
            return [await backend.send(batch) for batch in batches]
        finally:
            await backend.clients.aclose()

    return asyncio.run(run())


def envelopes(request: Request) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    text = request.body.decode()
    found, position = [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        value, position = decoder.raw_decode(text, position)
        found.append(value)
    return found


def hec(status: int, code: int | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"text": "whatever the server says"}
    if code is not None:
        body["code"] = code
    return json.dumps({**body, **extra}).encode()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "hec-token"
    write_token(path, TOKEN)
    return path


@pytest.fixture
def receiver() -> Iterator[SplunkReceiver]:
    server = SplunkReceiver(TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ack_receiver() -> Iterator[SplunkReceiver]:
    server = SplunkReceiver(TOKEN, indexer_ack=True)
    server.start()
    yield server
    server.stop()


# -- order, exactness, metadata --------------------------------------------------------------


def test_rows_arrive_in_order_byte_identical_with_metadata_beside_them(
        receiver: SplunkReceiver, token_file: Path, db_path: Path) -> None:
    bodies, rows = stored_rows(db_path, 30)
    backend = make_backend(receiver.url, token_file)
    outcomes = send(backend, rows[:7], rows[7:20], rows[20:])

    assert [o.kind for o in outcomes] == [OutcomeKind.SUCCESS] * 3
    assert receiver.event_bytes() == bodies  # order and every byte
    requests = receiver.event_requests()
    assert [r.path for r in requests] == ["/services/collector/event"] * 3
    for request, batch in zip(requests, (rows[:7], rows[7:20], rows[20:]), strict=True):
        assert request.header("authorization") == f"Splunk {TOKEN}"
        assert request.header("content-type") == "application/json"
        assert len(request.body) == sum(backend.row_size(row) for row in batch)
        for envelope, row in zip(envelopes(request), batch, strict=True):
            assert envelope["fields"] == {"dedupe_key": f"{row.tenant_id}:{row.tenant_seq}",
                                          "record_hash": row.record_hash}
            assert envelope["source"] == "sealtrail"
            assert envelope["sourcetype"] == "sealtrail:audit"
            assert "index" not in envelope  # none configured: the token's default index
            moment = datetime.strptime(row.timestamp, "%Y-%m-%dT%H:%M:%S.%f%z")
            assert envelope["time"] == pytest.approx(moment.timestamp(), abs=1e-6)
            assert envelope["event"] == orjson.loads(row.body)  # nothing added to the row


def test_receiver_side_chain_check_from_received_rows_alone(
        receiver: SplunkReceiver, token_file: Path, db_path: Path) -> None:
    _, rows = stored_rows(db_path, 40)
    assert send(make_backend(receiver.url, token_file), rows)[0].ok

    heads: dict[str, tuple[int, str]] = {}
    for received in receiver.event_bytes():
        row = json.loads(received)
        claimed = row.pop("record_hash")
        canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == claimed
        seq, previous = heads.get(row["tenant_id"], (0, "0" * 64))
        assert row["tenant_seq"] == seq + 1
        assert row["prev_hash"] == previous
        heads[row["tenant_id"]] = (row["tenant_seq"], claimed)
    assert set(heads) == {"acme", "globex"}
    assert sum(seq for seq, _ in heads.values()) == 40


def test_a_changed_row_fails_that_check(receiver: SplunkReceiver, token_file: Path,
                                        db_path: Path) -> None:
    """The check above is not vacuous: one altered byte in a row is caught."""
    _, rows = stored_rows(db_path, 3)
    tampered = rows[1].body.replace(b'"severity":"', b'"severity":"X', 1)
    assert send(make_backend(receiver.url, token_file),
                [rows[0], export_row(tampered), rows[2]])[0].ok
    row = json.loads(receiver.event_bytes()[1])
    claimed = row.pop("record_hash")
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() != claimed


def test_event_is_spliced_in_not_re_serialized(receiver: SplunkReceiver, token_file: Path,
                                               db_path: Path) -> None:
    """Bytes a parser would normalise (spaces, escapes, key order) still arrive untouched."""
    _, rows = stored_rows(db_path, 1)
    odd = rows[0].body[:-1] + b' , "z" : "\\u00e9\\/" ,"b":1.50 }'
    assert send(make_backend(receiver.url, token_file), [export_row(odd)])[0].ok
    assert receiver.event_bytes() == [odd]


@pytest.mark.parametrize("suffix", ["", "/", "/services/collector", "/services/collector/",
                                    "/services/collector/event", "/services/collector/event/1.0"])
def test_hec_url_with_or_without_the_collector_path(
        receiver: SplunkReceiver, token_file: Path, db_path: Path, suffix: str) -> None:
    _, rows = stored_rows(db_path, 2)
    backend = make_backend(receiver.url + suffix, token_file)
    assert backend.event_url == receiver.url + "/services/collector/event"
    assert send(backend, rows)[0].ok
    assert receiver.event_requests()[0].path == "/services/collector/event"


def test_hec_base_url_keeps_a_path_prefix() -> None:
    assert hec_base_url("https://proxy.example/splunk/services/collector/event") == (
        "https://proxy.example/splunk")
    assert hec_base_url("https://hec.example:8088") == "https://hec.example:8088"


def test_time_is_exact_epoch_seconds_from_the_row_timestamp() -> None:
    assert epoch_text("2026-11-22T10:00:00.000000Z") == f"{int(datetime(2026, 11, 22, 10, tzinfo=UTC).timestamp())}.000000"
    assert epoch_text("1970-01-01T00:00:01.000250Z") == "1.000250"
    assert epoch_text("1969-12-31T23:59:59.750000Z") == "-0.250000"
    assert epoch_text("not a time") is None


# -- the failure table ----------------------------------------------------------------------

PERMANENT_CODES = [5, 6, 7, 10, 11, 12, 13, 14, 15, 16]


@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_hec_400_codes_are_permanent_and_name_the_event(
        receiver: SplunkReceiver, token_file: Path, db_path: Path, code: int) -> None:
    _, rows = stored_rows(db_path, 4)
    receiver.fail_next(1, 400, hec(400, code, **{"invalid-event-number": 2}))
    outcome = send(make_backend(receiver.url, token_file), rows)[0]
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.status == 400
    assert outcome.rejected_index == 2
    assert f"code {code}" in outcome.reason
    assert "invalid-event-number 2" in outcome.reason
    assert not outcome.too_large


@pytest.mark.parametrize(("status", "code"), [(401, 2), (401, 3), (403, 1), (403, 4)])
def test_401_and_403_are_auth(receiver: SplunkReceiver, token_file: Path, db_path: Path,
                              status: int, code: int) -> None:
    _, rows = stored_rows(db_path, 2)
    receiver.fail_next(1, status, hec(status, code))
    outcome = send(make_backend(receiver.url, token_file), rows)[0]
    assert outcome.kind is OutcomeKind.AUTH
    assert outcome.status == status


@pytest.mark.parametrize(("status", "code"), [(500, 8), (503, 9), (503, 18), (502, None)])
def test_server_errors_are_retryable(receiver: SplunkReceiver, token_file: Path,
                                     db_path: Path, status: int, code: int | None) -> None:
    _, rows = stored_rows(db_path, 2)
    receiver.fail_next(1, status, hec(status, code))
    outcome = send(make_backend(receiver.url, token_file), rows)[0]
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.retry_after_seconds is None


def test_429_honours_retry_after(receiver: SplunkReceiver, token_file: Path,
                                 db_path: Path) -> None:
    _, rows = stored_rows(db_path, 2)
    receiver.fail_next(1, 429, b"{}", {"Retry-After": "7"})
    outcome = send(make_backend(receiver.url, token_file), rows)[0]
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.retry_after_seconds == 7.0


def test_413_from_the_receiver_is_too_large(token_file: Path, db_path: Path) -> None:
    _, rows = stored_rows(db_path, 6)
    backend_probe = make_backend("http://127.0.0.1:1", token_file)
    one_row = max(backend_probe.row_size(row) for row in rows)
    server = SplunkReceiver(TOKEN, max_content_length=one_row * 3)
    server.start()
    try:
        backend = make_backend(server.url, token_file)
        big, small = send(backend, rows, rows[:2])
    finally:
        server.stop()
    assert big.kind is OutcomeKind.PERMANENT
    assert big.too_large
    assert big.status == 413
    assert small.ok
    assert server.event_bytes() == [row.body for row in rows[:2]]


def test_a_forbidden_index_is_refused_at_its_event(token_file: Path, db_path: Path) -> None:
    bodies, _ = stored_rows(db_path, 4)
    rows = [export_row(body, "audit") for body in bodies]
    rows[2] = export_row(bodies[2], "secret_index")
    server = SplunkReceiver(TOKEN, allowed_indexes={"audit"})
    server.start()
    try:
        outcome = send(make_backend(server.url, token_file), rows)[0]
    finally:
        server.stop()
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.rejected_index == 2
    assert "code 7" in outcome.reason
    assert server.events[0].index == "audit"
    assert server.event_bytes() == bodies[:2]  # HEC keeps what came before the bad event


def test_reasons_never_hold_the_token_or_row_content(
        receiver: SplunkReceiver, token_file: Path, db_path: Path) -> None:
    _, rows = stored_rows(db_path, 2)
    echo = json.dumps({"text": f"bad token {TOKEN} in {rows[0].body.decode()}", "code": 6,
                       "invalid-event-number": 0}).encode()
    receiver.fail_next(1, 400, echo)
    receiver.fail_next(1, 403, json.dumps({"text": f"Invalid token {TOKEN}", "code": 4}).encode())
    outcomes = send(make_backend(receiver.url, token_file), rows, rows)
    assert [o.kind for o in outcomes] == [OutcomeKind.PERMANENT, OutcomeKind.AUTH]
    for outcome in outcomes:
        assert TOKEN not in outcome.reason
        assert rows[0].record_hash not in outcome.reason
        assert "agent-" not in outcome.reason


def test_a_timeout_is_retryable(receiver: SplunkReceiver, token_file: Path,
                                db_path: Path) -> None:
    _, rows = stored_rows(db_path, 2)
    receiver.delay_seconds = 0.6
    started = time.monotonic()
    outcome = send(make_backend(receiver.url, token_file, request_timeout_seconds=0.15), rows)[0]
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert "no answer from HEC within" in outcome.reason
    assert time.monotonic() - started < 0.55


def test_connection_refused_is_retryable_then_recovers(
        receiver: SplunkReceiver, token_file: Path, db_path: Path) -> None:
    bodies, rows = stored_rows(db_path, 3)
    backend = make_backend(receiver.url, token_file)
    receiver.stop()
    down = send(backend, rows)[0]
    assert down.kind is OutcomeKind.RETRYABLE
    receiver.start()
    assert send(backend, rows)[0].ok
    assert receiver.event_bytes() == bodies


def test_an_unreadable_token_file_is_auth_not_an_exception(
        receiver: SplunkReceiver, tmp_path: Path, db_path: Path) -> None:
    _, rows = stored_rows(db_path, 1)
    outcome = send(make_backend(receiver.url, tmp_path / "missing"), rows)[0]
    assert outcome.kind is OutcomeKind.AUTH
    assert receiver.requests == []


# -- credentials -----------------------------------------------------------------------------


def test_a_rotated_token_is_used_on_the_very_next_send(
        receiver: SplunkReceiver, token_file: Path, db_path: Path) -> None:
    _, rows = stored_rows(db_path, 3)
    backend = make_backend(receiver.url, token_file)
    assert send(backend, rows[:1])[0].ok
    before = backend.credential_version()

    write_token(token_file, ROTATED)  # the Secret changes; the receiver still wants the old one
    assert send(backend, rows[1:2])[0].kind is OutcomeKind.AUTH
    with receiver.lock:
        receiver.token = ROTATED
    assert send(backend, rows[2:])[0].ok  # no refresh_credentials() call in between

    assert [r.header("authorization") for r in receiver.event_requests()] == [
        f"Splunk {TOKEN}", f"Splunk {ROTATED}", f"Splunk {ROTATED}"]
    assert backend.credentials() == [backend._token]
    assert backend.credential_version() not in (None, before)


# -- indexer acknowledgement -----------------------------------------------------------------


def test_ack_success_only_after_true(ack_receiver: SplunkReceiver, token_file: Path,
                                     db_path: Path) -> None:
    _, rows = stored_rows(db_path, 5)
    ack_receiver.ack_delay_polls = 3
    backend = make_backend(ack_receiver.url, token_file, indexer_ack=True, ack_poll_ms=10,
                           ack_timeout_seconds=5)
    outcome = send(backend, rows)[0]
    assert outcome.ok
    assert "indexer acknowledgement" in outcome.reason
    assert ack_receiver.ack_polls == 4  # three `false`, then `true`, then no more polling
    polls = [r for r in ack_receiver.requests if r.path == "/services/collector/ack"]
    assert {json.loads(r.body)["acks"][0] for r in polls} == {0}
    assert {r.header("authorization") for r in polls} == {f"Splunk {TOKEN}"}


def test_ack_timeout_is_retryable(ack_receiver: SplunkReceiver, token_file: Path,
                                  db_path: Path) -> None:
    _, rows = stored_rows(db_path, 2)
    ack_receiver.ack_lost = True
    backend = make_backend(ack_receiver.url, token_file, indexer_ack=True, ack_poll_ms=20,
                           ack_timeout_seconds=0.3)
    started = time.monotonic()
    outcome = send(backend, rows)[0]
    elapsed = time.monotonic() - started
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.reason.startswith("indexer acknowledgement timed out")
    assert 0.3 <= elapsed < 2.0
    assert ack_receiver.ack_polls >= 5
    assert ack_receiver.event_bytes() == []  # lost, as far as Splunk is concerned


def test_ack_poll_errors_that_are_retryable_keep_polling(
        ack_receiver: SplunkReceiver, token_file: Path, db_path: Path) -> None:
    _, rows = stored_rows(db_path, 2)
    handle = ack_receiver.handle
    busy = [2]

    def flaky(request: Request) -> Response:
        if request.path == "/services/collector/ack" and busy[0] > 0:
            busy[0] -= 1
            return Response(503, hec(503, 9))
        return handle(request)

    ack_receiver.handle = flaky  # type: ignore[method-assign]
    backend = make_backend(ack_receiver.url, token_file, indexer_ack=True, ack_poll_ms=10,
                           ack_timeout_seconds=5)
    assert send(backend, rows)[0].ok
    assert busy == [0]


def test_ack_poll_auth_failure_is_auth(ack_receiver: SplunkReceiver, token_file: Path,
                                       db_path: Path) -> None:
    _, rows = stored_rows(db_path, 2)
    ack_receiver.ack_delay_polls = 10_000  # pending until the token is revoked
    handle = ack_receiver.handle

    def revoke_after_first_poll(request: Request) -> Response:
        response = handle(request)
        if request.path == "/services/collector/ack":
            ack_receiver.token = ROTATED  # revoked between this poll and the next
        return response

    ack_receiver.handle = revoke_after_first_poll  # type: ignore[method-assign]
    backend = make_backend(ack_receiver.url, token_file, indexer_ack=True, ack_poll_ms=10,
                           ack_timeout_seconds=5)
    outcome = send(backend, rows)[0]
    assert outcome.kind is OutcomeKind.AUTH
    assert "ack poll" in outcome.reason
    assert ack_receiver.ack_polls == 1  # the second poll was refused before it counted


def test_the_channel_is_one_guid_per_backend(ack_receiver: SplunkReceiver, token_file: Path,
                                             db_path: Path) -> None:
    _, rows = stored_rows(db_path, 6)
    first = make_backend(ack_receiver.url, token_file, indexer_ack=True, ack_poll_ms=10,
                         ack_timeout_seconds=2)
    second = make_backend(ack_receiver.url, token_file, indexer_ack=True, ack_poll_ms=10,
                          ack_timeout_seconds=2)
    assert all(o.ok for o in send(first, rows[:2], rows[2:4]))
    assert send(second, rows[4:])[0].ok

    channels = [r.header("x-splunk-request-channel") for r in ack_receiver.requests]
    assert len(channels) == 6  # three posts, three polls (acks are immediate)
    assert channels[:4] == [first.channel] * 4
    assert channels[4:] == [second.channel] * 2
    assert first.channel != second.channel
    assert uuid.UUID(first.channel).version == 4
    assert str(uuid.UUID(first.channel)) == first.channel
    # ackIds are numbered per channel, as Splunk does
    assert [json.loads(r.body)["acks"] for r in ack_receiver.requests
            if r.path.endswith("/ack")] == [[0], [1], [0]]


def test_200_without_ack_id_is_success_and_says_so(receiver: SplunkReceiver, token_file: Path,
                                                    db_path: Path) -> None:
    _, rows = stored_rows(db_path, 2)
    backend = make_backend(receiver.url, token_file, indexer_ack=True, ack_poll_ms=10)
    outcome = send(backend, rows)[0]
    assert outcome.ok
    assert "without an ackId" in outcome.reason
    assert all(not r.path.endswith("/ack") for r in receiver.requests)


# -- destinations and limits -----------------------------------------------------------------


@pytest.mark.parametrize("template", [
    "Audit_${tenant:id}", "_x", "-audit", "audit.${tenant:id}", "a" * 81, "audit-${tenant:name}",
    "${tenant:id}",  # the `_system` tenant would render `_system`, which Splunk reserves
])
def test_illegal_index_templates_are_refused(template: str) -> None:
    assert RULE is not None
    with pytest.raises(TemplateError):
        check_template(template, RULE)
    with pytest.raises(TemplateError):
        check_backend_templates(SplunkBackend, [template])


@pytest.mark.parametrize("template", ["audit", "audit_${tenant:id}", "t-${tenant:id}",
                                      "${event:type}", "sec-${event:type}", "a" * 80])
def test_legal_index_templates_pass(template: str) -> None:
    assert RULE is not None
    check_template(template, RULE)


def test_tenant_ids_are_lowercased_and_fitted() -> None:
    assert RULE is not None
    assert render_template("audit_${tenant:id}", "Acme.Corp-1", "x.y", RULE) == (
        "audit_acme_corp-1")
    assert render_template("sec-${event:type}", "t", "safety.decision", RULE) == (
        "sec-safety_decision")


def test_index_from_row_destination_or_export_template(
        token_file: Path, db_path: Path) -> None:
    bodies, rows = stored_rows(db_path, 6)
    server = SplunkReceiver(TOKEN, allowed_indexes={"audit_acme", "audit_globex", "routed"})
    server.start()
    try:
        backend = make_backend(server.url, token_file, index="audit_${tenant:id}")
        assert backend.default_destination() == "audit_${tenant:id}"
        rendered = [export_row(row.body, render_template("audit_${tenant:id}", row.tenant_id,
                                                          row.event_type, SPLUNK_INDEX))
                    for row in rows[1:]]  # as the export loop renders them
        routed = [export_row(rows[0].body, "routed"), *rendered]
        assert send(backend, routed)[0].ok
    finally:
        server.stop()
    assert server.event_bytes() == bodies
    assert [e.index for e in server.events] == ["routed"] + [
        f"audit_{row.tenant_id}" for row in rows[1:]]
    assert all(e.sourcetype == "sealtrail:audit" for e in server.events)


def test_limits_leave_room_for_the_largest_envelope(token_file: Path) -> None:
    backend = make_backend("http://127.0.0.1:1", token_file)
    limits = backend.limits
    assert (limits.max_events, limits.max_bytes) == (10_000, 1_000_000)
    body = orjson.dumps({"tenant_id": "t" * 63, "record_hash": "f" * 64, "x": "y" * 1000})
    row = ExportRow(10**15, "t" * 63, 10**15, "f" * 64, "a.b", "INFO",
                    "2026-11-22T10:00:00.000000Z", body, "i" * 80)
    overhead = backend.row_size(row) - len(body)
    assert 0 < overhead <= limits.max_bytes - limits.max_row_bytes
    assert limits.max_row_bytes > 900_000


# -- the receiver itself: answers the backend never provokes ---------------------------------


def test_receiver_answers_as_hec_documents(token_file: Path) -> None:
    server = SplunkReceiver(TOKEN, indexer_ack=True)
    server.start()
    channel = str(uuid.uuid4())
    auth = {"Authorization": f"Splunk {TOKEN}", "X-Splunk-Request-Channel": channel}
    url = server.url + "/services/collector/event"
    try:
        with httpx.Client() as client:
            def post(body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
                reply = client.post(url, content=body, headers=headers)
                return reply.status_code, reply.json()

            good = b'{"event":{"a":1}}'
            assert post(good, {}) == (401, {"text": "Token is required", "code": 2})
            assert post(good, {"Authorization": "Bearer x"})[1]["code"] == 3
            assert post(good, {"Authorization": "Splunk nope"}) == (
                403, {"text": "Invalid token", "code": 4})
            assert post(good, {"Authorization": f"Splunk {TOKEN}"})[1]["code"] == 10
            assert post(good, {**auth, "X-Splunk-Request-Channel": "chan-1"})[1]["code"] == 11
            assert post(b"", auth) == (400, {"text": "No data", "code": 5})
            assert post(good + b'{"event":', auth) == (
                400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 1})
            assert post(good + b'\n{"time":1}', auth) == (
                400, {"text": "Event field is required", "code": 12, "invalid-event-number": 1})
            assert post(b'{"event":"  "}', auth)[1]["code"] == 13
            status, reply = post(good + b' {"event": "x"}', auth)
            assert (status, reply["code"]) == (200, 0)
            ack = client.post(server.url + "/services/collector/ack", headers=auth,
                              content=json.dumps({"acks": [reply["ackId"]]}).encode())
            assert ack.json() == {"acks": {str(reply["ackId"]): True}}
            again = client.post(server.url + "/services/collector/ack", headers=auth,
                                content=json.dumps({"acks": [reply["ackId"]]}).encode())
            assert again.json() == {"acks": {str(reply["ackId"]): False}}  # forgotten
    finally:
        server.stop()
    # the events of the partly bad batches before their bad event, then both good ones
    assert server.event_bytes() == [b'{"a":1}', b'{"a":1}', b'{"a":1}', b'"x"']


def test_splunk_case_contract(tmp_path: Path, db_path: Path) -> None:
    case = SplunkCase()
    credential = tmp_path / "token"
    write_token(credential, TOKEN)
    case.start()
    try:
        spec = case.export_spec("splunk-one", credential)
        assert spec.kind == "splunk"
        assert spec.retry.initial_backoff_ms == 10
        bodies, rows = stored_rows(db_path, 3)
        backend = SplunkBackend(spec, HttpClients())
        case.fail_next("retryable", 1)
        case.fail_next("permanent", 1)
        case.fail_next("auth", 1)
        outcomes = send(backend, rows, rows, rows, rows)
        assert [o.kind for o in outcomes] == [OutcomeKind.RETRYABLE, OutcomeKind.PERMANENT,
                                              OutcomeKind.AUTH, OutcomeKind.SUCCESS]
        case.set_credential(ROTATED)
        assert send(backend, rows)[0].kind is OutcomeKind.AUTH
        assert case.received() == bodies
    finally:
        case.close()
