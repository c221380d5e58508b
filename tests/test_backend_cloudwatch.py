"""The CloudWatch Logs backend against real moto (server mode on loopback) and botocore.

Covers: rows from the real store arrive in each tenant's stream in order and byte-identical to
`ChainStore.rows()`, and a receiver-side chain check passes on what CloudWatch holds; the group
and stream are created when missing, and with `createMissing: false` a missing stream is
PERMANENT; per-tenant streams from the template, and stream-name rules at config time; a batch
whose timestamps go backwards is split into chronological calls (moto refuses it whole) and
nothing is refused; events outside the time window are PERMANENT with the exact
`rejected_index` and `delivered` set; moto down is RETRYABLE; the call planner keeps to 10,000
events, 1,048,576 bytes (+26 per event) and 24 hours, never reordering; the error table (via
botocore's Stubber), partial delivery across streams; no credentials is AUTH, and
`refresh_credentials` re-reads the chain (including web identity, as IRSA uses, against moto's
STS); the `CloudWatchCase` used by the conformance suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.stub import Stubber

from sealtrail.api.destinations import TemplateError, check_template, render_template
from sealtrail.api.export import CloudWatchSpec, ExportSpec, RetrySpec
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import ExportRow
from sealtrail.export.backends.cloudwatch import (
    MAX_BATCH_BYTES,
    CloudWatchBackend,
    PlannedCall,
    plan_calls,
    timestamp_ms,
)
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind
from tests.conftest import events
from tests.receivers.cloudwatch import (
    REGION,
    TEST_ENVIRONMENT,
    CloudWatchCase,
    MotoServer,
    read_group,
    read_stream,
)
from tests.receivers.http_base import free_port

RULE = CloudWatchBackend.destination_rule
assert RULE is not None


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy keys for moto, and nothing of the machine's own AWS setup or proxies."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in TEST_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def group() -> str:
    return f"/sealtrail/test-{uuid.uuid4().hex[:10]}"


class Clock:
    """A store clock the test moves: rows without their own time get the append time."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def backend_for(endpoint: str, group: str, **options: Any) -> CloudWatchBackend:
    spec = ExportSpec(
        name="cw",
        cloudwatch=CloudWatchSpec(log_group=group, region=REGION, endpoint_url=endpoint,
                                  **options),
        retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200, request_timeout_seconds=5),
    )
    return CloudWatchBackend(spec, HttpClients())


def export_rows(bodies: Sequence[bytes], template: str = "${tenant:id}") -> list[ExportRow]:
    """ExportRows from stored rows, with the destination rendered as the export loop does."""
    rows = []
    for body in bodies:
        row = orjson.loads(body)
        rows.append(ExportRow(
            row["seq"], row["tenant_id"], row["tenant_seq"], row["record_hash"],
            row["event_type"], row["severity"], row["timestamp"], body,
            render_template(template, row["tenant_id"], row["event_type"], RULE),
        ))
    return rows


def send(backend: CloudWatchBackend, rows: Sequence[ExportRow]) -> Outcome:
    return asyncio.run(backend.send(rows))


def fill(store: ChainStore, clock: Clock, plan: Sequence[tuple[timedelta, int]],
         tenants: tuple[str, ...] = ("acme",), seed: int = 3) -> list[bytes]:
    """Append batches of `count` events at `now + offset` each; return every stored row."""
    now = datetime.now(UTC)
    pool = events(sum(count for _, count in plan), seed=seed, tenants=tenants)
    for offset, count in plan:
        clock.now = now + offset
        batch, pool = pool[:count], pool[count:]
        store.append(batch)
    return list(store.rows())


def check_chain_like_a_siem(messages: Sequence[bytes]) -> int:
    """Recompute every record_hash and prev_hash link from the messages alone (chain-format.md)."""
    links: dict[str, list[tuple[int, str, str]]] = {}
    for message in messages:
        row = json.loads(message)
        claimed = row.pop("record_hash")
        canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == claimed, row["seq"]
        links.setdefault(row["tenant_id"], []).append(
            (row["tenant_seq"], row["prev_hash"], claimed))
    for chain in links.values():
        previous = "0" * 64
        for position, (tenant_seq, prev_hash, record_hash) in enumerate(sorted(chain), 1):
            assert tenant_seq == position
            assert prev_hash == previous
            previous = record_hash
    return len(messages)


# -- order, exactness, chain ------------------------------------------------------------------


def test_rows_arrive_in_order_byte_identical_and_the_chain_checks(
    moto: MotoServer, db_path: Path, group: str
) -> None:
    clock = Clock(datetime.now(UTC))
    with ChainStore(db_path, clock=clock) as store:
        stored = fill(store, clock, [(timedelta(seconds=second), 30) for second in range(4)],
                      tenants=("acme", "globex"))
        per_tenant = {tenant: list(store.rows(tenant=tenant)) for tenant in ("acme", "globex")}
    backend = backend_for(moto.url, group)

    outcome = send(backend, export_rows(stored))

    assert outcome.kind is OutcomeKind.SUCCESS, outcome.reason
    held = read_group(moto.client(), group)
    assert held == per_tenant  # one stream per tenant, in chain order, byte for byte
    merged = sorted((m for stream in held.values() for m in stream),
                    key=lambda body: orjson.loads(body)["seq"])
    assert merged == stored
    assert check_chain_like_a_siem(merged) == 120


def test_missing_group_and_stream_are_created(moto: MotoServer, db_path: Path,
                                              group: str) -> None:
    client = moto.client()
    assert not client.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    with ChainStore(db_path) as store:
        store.append(events(6, tenants=("acme",)))
        store.append(events(4, seed=9, tenants=("globex",)))
        stored = list(store.rows())
    backend = backend_for(moto.url, group)

    assert send(backend, export_rows(stored[:6])).ok  # group and stream "acme" created
    assert send(backend, export_rows(stored[6:])).ok  # group exists: only "globex" created

    groups = client.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert [g["logGroupName"] for g in groups] == [group]
    assert read_group(client, group) == {"acme": stored[:6], "globex": stored[6:]}


def test_missing_stream_is_permanent_when_create_missing_is_off(
    moto: MotoServer, db_path: Path, group: str
) -> None:
    client = moto.client()
    with ChainStore(db_path) as store:
        store.append(events(3, tenants=("acme",)))
        rows = export_rows(list(store.rows()))
    backend = backend_for(moto.url, group, create_missing=False)

    no_group = send(backend, rows)
    client.create_log_group(logGroupName=group)
    no_stream = send(backend, rows)

    for outcome in (no_group, no_stream):
        assert outcome.kind is OutcomeKind.PERMANENT
        assert "'acme'" in outcome.reason
        assert group in outcome.reason
        assert "createMissing is false" in outcome.reason
        assert outcome.delivered == frozenset()
    assert read_group(client, group) == {}  # nothing was created


def test_per_tenant_streams_from_the_template(moto: MotoServer, db_path: Path,
                                              group: str) -> None:
    template = "audit/${tenant:id}/${event:type}"
    check_template(template, RULE)
    with ChainStore(db_path) as store:
        store.append(events(40, tenants=("acme", "globex")))
        stored = list(store.rows())
    backend = backend_for(moto.url, group, log_stream=template)
    assert backend.default_destination() == template

    assert send(backend, export_rows(stored, template)).ok

    held = read_group(moto.client(), group)
    expected: dict[str, list[bytes]] = {}
    for body in stored:
        row = orjson.loads(body)
        expected.setdefault(f"audit/{row['tenant_id']}/{row['event_type']}", []).append(body)
    assert held == expected
    assert check_chain_like_a_siem([m for stream in held.values() for m in stream]) == 40


@pytest.mark.parametrize("template", ["audit:${tenant:id}", "audit*", "x" * 513, "${tenant}"])
def test_illegal_stream_templates_are_config_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        check_template(template, RULE)


def test_substituted_values_are_fitted_to_stream_names() -> None:
    assert render_template("t/${tenant:id}", "Acme.Corp-1", "x.y", RULE) == "t/Acme.Corp-1"
    assert render_template("${event:type}", "a", "a:b*c", RULE) == "a_b_c"


# -- time: order and window -------------------------------------------------------------------


def test_backwards_timestamps_are_split_into_chronological_calls(
    moto: MotoServer, db_path: Path, group: str
) -> None:
    clock = Clock(datetime.now(UTC))
    with ChainStore(db_path, clock=clock) as store:
        stored = fill(store, clock, [(timedelta(seconds=10), 3), (timedelta(0), 3),
                                     (timedelta(seconds=5), 2), (timedelta(seconds=2), 2)])
    rows = export_rows(stored)
    stamps = [timestamp_ms(row.timestamp) for row in rows]
    client = moto.client()
    # Whole, in chain order, the batch is refused by CloudWatch (moto) ...
    client.create_log_group(logGroupName=group)
    client.create_log_stream(logGroupName=group, logStreamName="whole")
    with pytest.raises(client.exceptions.InvalidParameterException):
        client.put_log_events(logGroupName=group, logStreamName="whole", logEvents=[
            {"timestamp": stamp, "message": row.body.decode()} for stamp, row in zip(
                stamps, rows, strict=True)])
    # ... so the backend sends it as chronological runs, in order, never sorted.
    calls = plan_calls([row.destination or "" for row in rows], stamps,
                       [len(row.body) + 26 for row in rows])
    assert [call.indices for call in calls] == [(0, 1, 2), (3, 4, 5, 6, 7), (8, 9)]

    outcome = send(backend_for(moto.url, group), rows)

    assert outcome.kind is OutcomeKind.SUCCESS, outcome.reason
    held = read_stream(client, group, "acme")
    assert sorted(held) == sorted(stored)  # every row, once, nothing refused
    # CloudWatch keeps a stream in timestamp order; the chain's order is still recoverable.
    assert sorted(held, key=lambda body: orjson.loads(body)["seq"]) == stored
    assert check_chain_like_a_siem(held) == len(stored)


def test_rows_older_than_14_days_are_permanent_with_the_exact_delivered_set(
    moto: MotoServer, db_path: Path, group: str
) -> None:
    fourteen_days = timedelta(days=14)
    clock = Clock(datetime.now(UTC))
    with ChainStore(db_path, clock=clock) as store:
        stored = fill(store, clock, [
            (timedelta(0), 2),                          # 0, 1: now
            (-fourteen_days - timedelta(hours=1), 2),   # 2, 3: too old
            (-fourteen_days + timedelta(hours=2), 3),   # 4, 5, 6: old, but inside the window
        ])
    rows = export_rows(stored)

    outcome = send(backend_for(moto.url, group), rows)

    # Calls: [0, 1], then (time went back) [2..6]; moto stores 4-6 and refuses 2 and 3.
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.rejected_index == 2
    assert outcome.delivered == frozenset({0, 1, 4, 5, 6})
    assert "older than 14 days" in outcome.reason
    held = read_stream(moto.client(), group, "acme")
    assert sorted(held) == sorted(stored[i] for i in outcome.delivered)


def test_rows_too_far_ahead_are_permanent_with_the_exact_delivered_set(
    moto: MotoServer, db_path: Path, group: str
) -> None:
    clock = Clock(datetime.now(UTC))
    with ChainStore(db_path, clock=clock) as store:
        stored = fill(store, clock, [(timedelta(0), 2), (timedelta(hours=3), 3)])
    rows = export_rows(stored)

    # moto reports the *last* too-new index, AWS the first: the answer must be exact for both.
    outcome = send(backend_for(moto.url, group), rows)

    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.rejected_index == 2
    assert outcome.delivered == frozenset({0, 1})
    assert "2 hours in the future" in outcome.reason
    assert read_stream(moto.client(), group, "acme") == stored[:2]


@pytest.mark.parametrize(("info", "expected"), [
    ({"tooOldLogEventEndIndex": 2}, {0, 1}),   # AWS reference: end index, exclusive
    ({"tooOldLogEventEndIndex": 1}, {0, 1}),   # moto: the last too-old event
    ({"tooNewLogEventStartIndex": 4}, {4, 5}),  # AWS reference: first too-new, inclusive
    ({"tooNewLogEventStartIndex": 5}, {4, 5}),  # moto: the last too-new event
    ({"expiredLogEventEndIndex": 2}, {0, 1, 2}),  # retention unknown: the boundary counts
    ({}, set()),
])
def test_rejected_indices_are_read_safely_under_both_readings(
    info: dict[str, int], expected: set[int]
) -> None:
    now = timestamp_ms(datetime.now(UTC).isoformat())
    day, hour = 86_400_000, 3_600_000
    stamps = [now - 14 * day - hour] * 2 + [now - 14 * day + 2 * hour, now] + [now + 3 * hour] * 2
    events_ = [{"timestamp": now, "message": "{}"}] * 10  # rows of earlier calls
    events_ += [{"timestamp": stamp, "message": "{}"} for stamp in stamps]
    call = PlannedCall("s", tuple(range(10, 16)))  # batch indices need not start at 0
    rejected, _ = CloudWatchBackend._rejected_in_call(info, call, events_)
    assert rejected == {10 + index for index in expected}


# -- outages and the error table --------------------------------------------------------------


def test_moto_down_is_retryable(db_path: Path, group: str) -> None:
    with ChainStore(db_path) as store:
        store.append(events(2))
        rows = export_rows(list(store.rows()))
    backend = backend_for(f"http://127.0.0.1:{free_port()}", group)  # nothing listens there

    outcome = send(backend, rows)

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert "EndpointConnectionError" in outcome.reason
    assert outcome.delivered == frozenset()


def stubbed(backend: CloudWatchBackend) -> Stubber:
    return Stubber(backend._get_client())


def synthetic_rows(streams: Sequence[str]) -> list[ExportRow]:
    now = datetime.now(UTC).isoformat()
    return [ExportRow(seq, "acme", seq, "h", "a.b", "INFO", now, b'{"seq":%d}' % seq, stream)
            for seq, stream in enumerate(streams, 1)]


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("ThrottlingException", 400, OutcomeKind.RETRYABLE),
    ("ServiceUnavailableException", 503, OutcomeKind.RETRYABLE),
    ("RequestExpired", 400, OutcomeKind.RETRYABLE),
    ("RequestTimeout", 408, OutcomeKind.RETRYABLE),
    ("InternalFailure", 500, OutcomeKind.RETRYABLE),
    ("SomethingNew", 502, OutcomeKind.RETRYABLE),
    ("SomethingNew", 429, OutcomeKind.RETRYABLE),
    ("InvalidParameterException", 400, OutcomeKind.PERMANENT),
    ("DataAlreadyAcceptedException", 400, OutcomeKind.PERMANENT),
    ("SomethingNew", 404, OutcomeKind.PERMANENT),
    ("ExpiredTokenException", 400, OutcomeKind.AUTH),
    ("ExpiredToken", 403, OutcomeKind.AUTH),
    ("UnrecognizedClientException", 400, OutcomeKind.AUTH),
    ("InvalidSignatureException", 403, OutcomeKind.AUTH),
    ("AccessDeniedException", 400, OutcomeKind.AUTH),
])
def test_error_table(code: str, status: int, kind: OutcomeKind, group: str) -> None:
    backend = backend_for("http://127.0.0.1:9", group)
    with stubbed(backend) as stub:
        stub.add_client_error("put_log_events", service_error_code=code,
                              service_message="key 'AKIDEXAMPLE' is not valid", http_status_code=status)
        outcome = send(backend, synthetic_rows(["s"]))
    assert outcome.kind is kind
    assert code in outcome.reason
    assert "AKID" not in outcome.reason  # the service's own message is not repeated


def test_invalid_parameter_says_which_rule_but_never_quotes_a_value(group: str) -> None:
    backend = backend_for("http://127.0.0.1:9", group)
    rule = "Log events in a single PutLogEvents request must be in chronological order."
    quoting = "1 validation error detected: Value '{\"seq\":1}' at 'logEvents.1.member.message'"
    with stubbed(backend) as stub:
        stub.add_client_error("put_log_events", "InvalidParameterException", rule, 400)
        stub.add_client_error("put_log_events", "InvalidParameterException", quoting, 400)
        first = send(backend, synthetic_rows(["s"]))
        second = send(backend, synthetic_rows(["s"]))
    assert rule in first.reason
    assert "seq" not in second.reason


def test_a_later_stream_failing_reports_exactly_what_went_through(group: str) -> None:
    backend = backend_for("http://127.0.0.1:9", group)
    with stubbed(backend) as stub:
        stub.add_response("put_log_events", {})
        stub.add_client_error("put_log_events", "ThrottlingException", http_status_code=400)
        outcome = send(backend, synthetic_rows(["a", "b", "a", "b"]))
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.delivered == frozenset({0, 2})


def test_a_permanent_failure_on_one_stream_does_not_stop_the_others(group: str) -> None:
    backend = backend_for("http://127.0.0.1:9", group)
    with stubbed(backend) as stub:
        stub.add_client_error("put_log_events", "InvalidParameterException", http_status_code=400)
        stub.add_response("put_log_events", {})
        outcome = send(backend, synthetic_rows(["a", "b", "a", "b"]))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.delivered == frozenset({1, 3})


def test_no_credentials_is_auth_and_refresh_rereads_the_chain(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, group: str
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = backend_for(moto.url, group)
    rows = synthetic_rows(["s"])

    outcome = send(backend, rows)
    assert outcome.kind is OutcomeKind.AUTH
    assert "no AWS credentials found" in outcome.reason

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    assert send(backend, rows).ok  # no client was kept without credentials: read afresh
    first = backend.credential_version()
    assert first == hashlib.sha256(b"first-key-id").hexdigest()[:12]

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-secret")
    assert send(backend, rows).ok
    assert backend.credential_version() == first  # the client is kept until told ...
    backend.refresh_credentials()
    assert send(backend, rows).ok  # ... and then the chain is read again
    assert backend.credential_version() == hashlib.sha256(b"rotated-key-id").hexdigest()[:12]
    assert "rotated-secret" not in (backend.credential_version() or "")


def test_web_identity_credentials_come_from_botocores_chain(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, group: str
) -> None:
    """IRSA: a projected token file and a role ARN; botocore calls STS (moto's) itself."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/sealtrail")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    backend = backend_for(moto.url, group)

    outcome = send(backend, synthetic_rows(["s"]))

    assert outcome.ok, outcome.reason
    assert backend.credential_version() not in (None,
                                                hashlib.sha256(b"testing").hexdigest()[:12])


# -- limits and call planning -----------------------------------------------------------------


def test_limits_and_row_size() -> None:
    backend = backend_for("http://127.0.0.1:9", "/g")
    assert backend.limits.max_events == 10_000
    assert backend.limits.max_bytes == 1_048_576
    assert backend.limits.max_row_bytes == 1_048_576 - 26
    row = synthetic_rows(["s"])[0]
    assert backend.row_size(row) == len(row.body) + 26


def plan(count: int, *, size: int = 100, stamps: Sequence[int] | None = None,
         streams: Sequence[str] | None = None) -> list[PlannedCall]:
    return plan_calls(list(streams or ["s"] * count), list(stamps or [0] * count), [size] * count)


def lengths(calls: list[PlannedCall]) -> list[int]:
    return [len(call.indices) for call in calls]


def test_call_planning_keeps_to_10000_events() -> None:
    assert lengths(plan(10_000)) == [10_000]
    assert lengths(plan(20_001)) == [10_000, 10_000, 1]


def test_call_planning_keeps_to_1mib_counting_26_bytes_per_event() -> None:
    half = MAX_BATCH_BYTES // 2  # two rows of exactly half (message + 26) fill one call
    assert lengths(plan(2, size=half)) == [2]
    assert lengths(plan(2, size=half + 1)) == [1, 1]
    calls = plan(7, size=300_026)
    assert lengths(calls) == [3, 3, 1]
    assert all(300_026 * len(call.indices) <= MAX_BATCH_BYTES for call in calls)


def test_call_planning_splits_on_time_never_reordering() -> None:
    hour = 3_600_000
    assert lengths(plan(3, stamps=[0, 24 * hour - 1, 24 * hour])) == [2, 1]
    assert [c.indices for c in plan(4, stamps=[5, 3, 4, 4])] == [(0,), (1, 2, 3)]
    calls = plan(5, streams=["a", "b", "a", "b", "a"], stamps=[1, 1, 0, 2, 3])
    assert [(c.stream, c.indices) for c in calls] == [("a", (0,)), ("a", (2, 4)),
                                                       ("b", (1, 3))]


def test_a_batch_over_one_call_is_sent_whole(moto: MotoServer, group: str) -> None:
    """10,001 events: two calls, all stored in order."""
    rows = synthetic_rows(["s"] * 10_001)
    assert send(backend_for(moto.url, group), rows).ok
    assert read_stream(moto.client(), group, "s") == [row.body for row in rows]


# -- the conformance suite's receiver ---------------------------------------------------------


@pytest.fixture
def cloudwatch_case(tmp_path: Path) -> Iterator[CloudWatchCase]:
    made = CloudWatchCase(tmp_path / "receiver")
    made.start()
    try:
        yield made
    finally:
        made.close()


def test_cloudwatch_case(cloudwatch_case: CloudWatchCase, db_path: Path, tmp_path: Path) -> None:
    case = cloudwatch_case
    spec = case.export_spec("siem", tmp_path / "unused")
    backend = CloudWatchBackend(spec, HttpClients())
    with ChainStore(db_path) as store:
        store.append(events(20, tenants=("acme", "globex", "initech")))
        stored = list(store.rows())
    rows = export_rows(stored)

    def ok(batch: Sequence[ExportRow]) -> OutcomeKind:
        return send(backend, batch).kind

    assert ok(rows[:10]) is OutcomeKind.SUCCESS
    case.stop()  # the pooled keep-alive connection is cut too
    assert ok(rows[10:]) is OutcomeKind.RETRYABLE
    case.start()
    case.fail_next("retryable", 1)
    assert ok(rows[10:]) is OutcomeKind.RETRYABLE
    case.fail_next("permanent", 1)
    refused = send(backend, rows[10:])
    assert refused.kind is OutcomeKind.PERMANENT
    assert "chronological order" in refused.reason
    # Only the first stream's call was refused; the other streams' rows went through.
    again = [row for index, row in enumerate(rows[10:]) if index not in refused.delivered]
    assert 0 < len(again) < 10
    assert ok(again) is OutcomeKind.SUCCESS
    assert case.received() == stored  # moto kept what it held through the outage
    assert check_chain_like_a_siem(case.received()) == 20
    with pytest.raises(ValueError, match="auth"):
        case.fail_next("auth", 1)


def test_cloudwatch_case_close_stops_moto_and_restores_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    case = CloudWatchCase(tmp_path)
    case.start()
    process = case.moto.process
    assert process is not None
    assert process.poll() is None
    case.close()
    assert process.poll() is not None
    assert "AWS_ACCESS_KEY_ID" not in os.environ
