"""The Datadog Logs intake v2 backend against a protocol-faithful receiver on loopback.

Covers: rows from a real store arrive in order, byte for byte, as each log's `message`, with
source, service, tags, dedupe key and record hash beside it, and a receiver-side chain check
passes on what arrived; the request is a gzip'd JSON array to `/api/v2/logs` with `DD-API-KEY`;
Datadog's limits hold (batches packed by `row_size` stay within 5,000,000 bytes, a batch over
1,000 logs or 5 MB is refused before sending, a row over 1 MB is PERMANENT and never reaches the
receiver, where Datadog would truncate it and answer 202); every status classifies as Datadog
documents it, as do a refused connection and a timeout; a rotated key file is used on the very
next send; and `DatadogCase` meets the conformance-suite contract.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import orjson
import pytest

from sealtrail.api.event import Event
from sealtrail.api.export import CredentialRef, DatadogSpec, ExportSpec, RetrySpec
from sealtrail.chain.canonical import seal
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import ExportRow
from sealtrail.export.backends.datadog import DatadogBackend, intake_url
from sealtrail.export.backends.registry import backend_class
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind
from tests.conftest import events
from tests.receivers.datadog import DatadogCase, DatadogReceiver
from tests.receivers.harness import Failure

API_KEY = "dd-key-0123456789abcdef0123456789ab"
TAGS = ["env:test", "team:security"]
TRICKY = Event.model_validate({
    "event_type": "safety.decision", "severity": "HIGH", "tenant_id": "acme",
    "reason": 'egress to \u00e9vil.example "blocked" \\ tab\tnl\n\u0001 \u2028 \U0001f512',
    "extra": {"path": "C:\\tmp\\x", "quote": '"'},
})


# -- helpers ---------------------------------------------------------------------------------


def export_row(body: bytes) -> ExportRow:
    row = orjson.loads(body)
    return ExportRow(seq=row["seq"], tenant_id=row["tenant_id"], tenant_seq=row["tenant_seq"],
                     record_hash=row["record_hash"], event_type=row["event_type"],
                     severity=row["severity"], timestamp=row["timestamp"], body=body)


def stored_rows(path: Path, batch: list[Event]) -> list[bytes]:
    with ChainStore(path, synchronous="NORMAL") as store:
        store.append(batch)
        return list(store.rows())


def chain_check(received: Sequence[bytes]) -> None:
    """What a SIEM-side checker does (docs/chain-format.md), with the standard library only."""
    links: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for text in received:
        row = json.loads(text)
        claimed = row.pop("record_hash")
        canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == claimed, row["seq"]
        links[row["tenant_id"]].append((row["tenant_seq"], row["prev_hash"], claimed))
    for chain in links.values():
        previous = "0" * 64
        for position, (tenant_seq, prev_hash, record_hash) in enumerate(sorted(chain), start=1):
            assert tenant_seq == position
            assert prev_hash == previous
            previous = record_hash


def successor(last: bytes, filler: int) -> ExportRow:
    """A genuine next row of `last`'s chain, with `filler` characters of reason (any size)."""
    before = orjson.loads(last)
    row = {"event_type": "safety.decision", "severity": "HIGH", "tenant_id": before["tenant_id"],
           "tenant_seq": before["tenant_seq"] + 1, "seq": before["seq"] + 1,
           "prev_hash": before["record_hash"], "timestamp": before["timestamp"],
           "reason": 'a "quoted" reason ' + "x" * filler}
    _, body = seal(row)
    return export_row(body)


class Driver:
    """One backend on one event loop, driven from a sync test (rotation needs the same one)."""

    def __init__(self, spec: ExportSpec) -> None:
        self.runner = asyncio.Runner()
        self.clients = HttpClients()
        self.backend = DatadogBackend(spec, self.clients)

    def send(self, rows: Sequence[ExportRow]) -> Outcome:
        return self.runner.run(self.backend.send(rows))

    def close(self) -> None:
        self.runner.run(self.clients.aclose())
        self.runner.close()


def make_spec(url: str, key_file: Path, timeout: float = 5.0) -> ExportSpec:
    return ExportSpec(
        name="to-datadog",
        datadog=DatadogSpec(api_key=CredentialRef(file=str(key_file)), url=url,
                            service="sealtrail-test", source="sealtrail", tags=TAGS),
        retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200,
                        request_timeout_seconds=timeout),
    )


def replace_file(path: Path, text: str) -> None:
    """Swap the file as the kubelet swaps a mounted Secret: a new file renamed over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text, encoding="utf-8")
    fresh.replace(path)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[ExportRow]:
    path = tmp_path_factory.mktemp("store") / "audit.db"
    batch = events(60, seed=3)
    batch[7] = TRICKY  # escapes and non-ASCII must survive the trip through `message`
    return [export_row(body) for body in stored_rows(path, batch)]


@pytest.fixture
def receiver() -> Iterator[DatadogReceiver]:
    server = DatadogReceiver(API_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-key"
    path.write_text(API_KEY + "\n", encoding="utf-8")
    return path


@pytest.fixture
def driver(receiver: DatadogReceiver, key_file: Path) -> Iterator[Driver]:
    running = Driver(make_spec(receiver.url, key_file))
    yield running
    running.close()


def payload_of(request_body: bytes) -> list[dict[str, object]]:
    decoded = json.loads(gzip.decompress(request_body))
    assert isinstance(decoded, list)
    return decoded


# -- delivery --------------------------------------------------------------------------------


def test_rows_arrive_in_order_byte_identical_and_the_chain_checks(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow]
) -> None:
    for start in range(0, len(rows), 25):
        outcome = driver.send(rows[start:start + 25])
        assert outcome.kind is OutcomeKind.SUCCESS, outcome
        assert outcome.status == 202

    assert receiver.received() == [row.body for row in rows]
    chain_check(receiver.received())
    assert {row.tenant_id for row in rows} == {"acme", "globex"}
    for log, row in zip(receiver.logs, rows, strict=True):
        assert not log.truncated
        assert log.attributes == {
            "ddsource": "sealtrail",
            "service": "sealtrail-test",
            "ddtags": f"env:test,team:security,tenant:{row.tenant_id}",
            "dedupe_key": f"{row.tenant_id}:{row.tenant_seq}",
            "record_hash": row.record_hash,
        }


def test_request_is_gzip_json_array_to_v2_logs_with_the_api_key(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow]
) -> None:
    assert driver.send(rows[:5]).ok

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/api/v2/logs"
    assert request.header("dd-api-key") == API_KEY
    assert request.header("content-type") == "application/json"
    assert request.header("content-encoding") == "gzip"
    assert request.body[:2] == b"\x1f\x8b"  # really gzip, not just labelled so
    entries = payload_of(request.body)
    assert [entry["message"] for entry in entries] == [row.body.decode() for row in rows[:5]]


def test_intake_url_follows_the_site_unless_a_url_is_given(key_file: Path) -> None:
    ref = CredentialRef(file=str(key_file))
    assert intake_url(DatadogSpec(api_key=ref)) == "https://http-intake.logs.datadoghq.com/api/v2/logs"
    assert intake_url(DatadogSpec(api_key=ref, site="datadoghq.eu")) == (
        "https://http-intake.logs.datadoghq.eu/api/v2/logs")
    assert intake_url(DatadogSpec(api_key=ref, site="ddog-gov.com")) == (
        "https://http-intake.logs.ddog-gov.com/api/v2/logs")
    assert intake_url(DatadogSpec(api_key=ref, url="http://proxy:8080/")) == (
        "http://proxy:8080/api/v2/logs")
    assert intake_url(DatadogSpec(api_key=ref, url="http://proxy:8080/api/v2/logs")) == (
        "http://proxy:8080/api/v2/logs")
    assert backend_class("datadog") is DatadogBackend
    assert DatadogBackend.destination_rule is None


# -- limits ----------------------------------------------------------------------------------


def test_a_row_over_1mb_is_permanent_and_never_reaches_datadog_truncated(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow]
) -> None:
    backend = driver.backend
    assert backend.limits.max_row_bytes == 1_000_000
    big = successor(rows[-1].body, 1_100_000)
    assert backend.row_size(big) > backend.limits.max_row_bytes  # the loop refuses it

    outcome = driver.send([*rows[:3], big])  # and so does send, if ever asked
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.rejected_index == 3
    assert not outcome.too_large
    assert "x" * 20 not in outcome.reason
    assert receiver.requests == []
    assert receiver.logs == []

    # What would have happened: Datadog takes the over-sized log, cuts it, and says 202.
    entry = {"ddsource": "sealtrail", "message": big.body.decode(), "record_hash": big.record_hash}
    answer = httpx.post(receiver.url + "/api/v2/logs", content=gzip.compress(orjson.dumps([entry])),
                        headers={"DD-API-KEY": API_KEY, "Content-Encoding": "gzip",
                                 "Content-Type": "application/json"})
    assert answer.status_code == 202
    [log] = receiver.logs
    assert log.truncated
    assert len(log.message) < len(big.body)
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        json.loads(log.message)  # the chain row is gone: a checker could not even parse it


def test_a_row_just_under_1mb_goes_whole(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow]
) -> None:
    backend = driver.backend
    filler = 990_000
    row = successor(rows[-1].body, filler)
    row = successor(rows[-1].body, filler + backend.limits.max_row_bytes - backend.row_size(row))
    assert backend.row_size(row) == backend.limits.max_row_bytes  # exactly at the limit

    assert driver.send([row]).ok
    [log] = receiver.logs
    assert not log.truncated
    assert log.size == backend.row_size(row)  # row_size is the size Datadog measures
    assert log.message == row.body


def test_batches_packed_by_row_size_stay_within_5mb(
    tmp_path: Path, driver: Driver, receiver: DatadogReceiver
) -> None:
    filler = {f"k{number:02d}": chr(ord("a") + number % 26) * 8000 for number in range(30)}
    big_events = [Event.model_validate({"event_type": "safety.decision", "severity": "LOW",
                                        "tenant_id": ("acme", "globex")[number % 2],
                                        "extra": filler, "job_id": f"job-{number}"})
                  for number in range(26)]
    big_rows = [export_row(body) for body in stored_rows(tmp_path / "big.db", big_events)]
    limits = driver.backend.limits
    assert sum(map(driver.backend.row_size, big_rows)) > 5_000_000

    batches: list[list[ExportRow]] = [[]]
    for row in big_rows:  # greedy packing, as the loop does
        size = sum(map(driver.backend.row_size, batches[-1])) + driver.backend.row_size(row)
        if len(batches[-1]) >= limits.max_events or size > limits.max_bytes:
            batches.append([])
        batches[-1].append(row)
    assert len(batches) == 2

    for batch in batches:
        outcome = driver.send(batch)
        assert outcome.kind is OutcomeKind.SUCCESS, outcome
    sizes = [len(gzip.decompress(request.body)) for request in receiver.requests]
    assert 4_500_000 < sizes[0] <= 5_000_000  # packed close to the limit, never over it
    assert receiver.received() == [row.body for row in big_rows]
    chain_check(receiver.received())

    # The same rows in one batch are over 5 MB: refused before sending, split by the loop.
    outcome = driver.send(big_rows)
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.too_large
    assert len(receiver.requests) == 2


def test_a_batch_over_1000_logs_is_refused_before_sending(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow]
) -> None:
    assert driver.backend.limits.max_events == 1000
    many = (rows * 17)[:1001]
    outcome = driver.send(many)
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.too_large
    assert receiver.requests == []
    assert driver.send(many[:1000]).ok


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (gzip.compress(b"[" + b",".join([b'{"message":"m"}'] * 1001) + b"]"), {}, 413),
        (gzip.compress(b'[{"message":"' + b"m" * 5_000_000 + b'"}]'), {}, 413),
        (gzip.compress(b'{"message":"not an array"}'), {}, 400),
        (gzip.compress(b'[{"message":"m"'), {}, 400),
        (gzip.compress(b'["just a string"]'), {}, 400),
        (gzip.compress(b'[{"message":"m"}]')[:-6], {}, 400),
        (b'[{"message":"plain, not compressed"}]', {"Content-Encoding": "identity"}, 202),
        (gzip.compress(b'[{"message":"m"}]'), {"DD-API-KEY": ""}, 401),
        (gzip.compress(b'[{"message":"m"}]'), {"DD-API-KEY": "wrong"}, 403),
    ],
    ids=["1001-logs", "over-5mb", "not-array", "malformed", "not-object", "cut-gzip",
         "uncompressed", "missing-key", "wrong-key"],
)
def test_the_receiver_answers_as_datadog_does(
    receiver: DatadogReceiver, body: bytes, headers: dict[str, str], status: int
) -> None:
    sent = {"DD-API-KEY": API_KEY, "Content-Encoding": "gzip", **headers}
    sent = {name: value for name, value in sent.items() if value}
    answer = httpx.post(receiver.url + "/api/v2/logs", content=body, headers=sent)
    assert answer.status_code == status
    if status >= 400:
        assert answer.json()["errors"][0]["status"] == str(status)
        assert receiver.logs == []


# -- classification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "too_large", "retry_after"),
    [
        (400, OutcomeKind.PERMANENT, False, None),
        (401, OutcomeKind.AUTH, False, None),
        (403, OutcomeKind.AUTH, False, None),
        (404, OutcomeKind.PERMANENT, False, None),
        (408, OutcomeKind.RETRYABLE, False, None),
        (413, OutcomeKind.PERMANENT, True, None),
        (429, OutcomeKind.RETRYABLE, False, 7.0),
        (500, OutcomeKind.RETRYABLE, False, None),
        (501, OutcomeKind.PERMANENT, False, None),
        (503, OutcomeKind.RETRYABLE, False, 2.0),
    ],
)
def test_each_status_classifies_as_datadog_documents(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow], status: int,
    kind: OutcomeKind, too_large: bool, retry_after: float | None,
) -> None:
    headers = {"Retry-After": str(int(retry_after))} if retry_after else {}
    receiver.fail_next(1, status, b'{"errors":[{"status":"%d"}]}' % status, headers)
    outcome = driver.send(rows[:4])
    assert outcome.kind is kind
    assert outcome.status == status
    assert outcome.too_large is too_large
    assert outcome.retry_after_seconds == retry_after
    assert API_KEY not in outcome.reason
    assert receiver.logs == []
    assert driver.send(rows[:4]).ok  # the next attempt goes through


def test_a_wrong_key_is_auth_from_the_receiver_itself(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow]
) -> None:
    receiver.set_api_key("another-key")
    outcome = driver.send(rows[:2])
    assert outcome.kind is OutcomeKind.AUTH
    assert outcome.status == 403
    assert receiver.logs == []


def test_connection_refused_is_retryable_and_recovers(
    driver: Driver, receiver: DatadogReceiver, rows: list[ExportRow]
) -> None:
    receiver.stop()
    outcome = driver.send(rows[:3])
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.status is None
    receiver.start()
    assert driver.send(rows[:3]).ok
    assert receiver.received() == [row.body for row in rows[:3]]


def test_a_timeout_is_retryable(receiver: DatadogReceiver, key_file: Path,
                                rows: list[ExportRow]) -> None:
    slow = Driver(make_spec(receiver.url, key_file, timeout=0.2))
    receiver.delay_seconds = 1.0
    try:
        outcome = slow.send(rows[:3])
    finally:
        slow.close()
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert "0.2s" in outcome.reason


# -- credentials -----------------------------------------------------------------------------


def test_a_rotated_key_file_is_used_on_the_very_next_send(
    driver: Driver, receiver: DatadogReceiver, key_file: Path, rows: list[ExportRow]
) -> None:
    assert driver.send(rows[:2]).ok
    first_version = driver.backend.credential_version()

    replace_file(key_file, "dd-key-rotated-0000000000000000000\n")  # kubelet-style swap
    receiver.set_api_key("dd-key-rotated-0000000000000000000")
    outcome = driver.send(rows[2:4])
    assert outcome.ok, outcome
    assert receiver.requests[-1].header("dd-api-key") == "dd-key-rotated-0000000000000000000"
    assert driver.backend.credential_version() != first_version

    key_file.write_text("dd-key-rewritten-in-place\n", encoding="utf-8")  # plain rewrite too
    receiver.set_api_key("dd-key-rewritten-in-place")
    assert driver.send(rows[4:6]).ok
    assert receiver.received() == [row.body for row in rows[:6]]


def test_an_unreadable_key_is_auth_not_an_exception(
    driver: Driver, receiver: DatadogReceiver, key_file: Path, rows: list[ExportRow]
) -> None:
    key_file.unlink()
    outcome = driver.send(rows[:2])
    assert outcome.kind is OutcomeKind.AUTH
    assert str(key_file) in outcome.reason
    assert receiver.requests == []


# -- the conformance-suite case --------------------------------------------------------------


def test_datadog_case_meets_the_harness_contract(tmp_path: Path, rows: list[ExportRow]) -> None:
    case = DatadogCase()
    case.start()
    credential = tmp_path / "dd-key"
    credential.write_text("case-key-1\n", encoding="utf-8")
    spec = case.export_spec("dd", credential)
    assert spec.kind == "datadog"
    assert spec.retry.initial_backoff_ms == 10
    running = Driver(spec)
    try:
        assert running.send(rows[:3]).ok
        expected: dict[Failure, OutcomeKind] = {"retryable": OutcomeKind.RETRYABLE,
                                                "permanent": OutcomeKind.PERMANENT,
                                                "auth": OutcomeKind.AUTH}
        for failure, kind in expected.items():
            case.fail_next(failure, 1)
            assert running.send(rows[3:5]).kind is kind
        case.set_credential("case-key-2")
        assert running.send(rows[3:5]).kind is OutcomeKind.AUTH
        replace_file(credential, "case-key-2")
        assert running.send(rows[3:5]).ok
        case.stop()
        assert running.send(rows[5:6]).kind is OutcomeKind.RETRYABLE
        case.start()
        assert running.send(rows[5:6]).ok
    finally:
        running.close()
        case.close()
    assert case.received() == [row.body for row in rows[:6]]
