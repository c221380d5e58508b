"""The Standard Webhooks backend against a verifying receiver on loopback.

Covers: rows from a real store arrive in order and byte for byte, the body is exactly the stored
rows in a JSON array (never re-serialized), and a receiver-side chain check passes on what
arrived; the `webhook-signature` verifies with an independent implementation written here,
a credential holding two secrets during a rotation signs with both and either alone verifies,
a secret without `whsec_` is used as raw bytes, and a malformed secret is AUTH, not a crash;
the same rows sent again keep the same `webhook-id` (with a fresh timestamp), so a
deduplicating receiver keeps them once; the receiver refuses bad and stale signatures as the
specification says; every status classifies as the specification suggests (2xx, 3xx not
followed, 401, 410 Gone, 413, 429 with Retry-After, 5xx), as do a timeout and a refused
connection; a rotated secret file is used on the very next send; and `WebhookCase` meets the
conformance-suite contract.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import orjson
import pytest

from sealtrail.api.event import Event
from sealtrail.api.export import CredentialRef, ExportSpec, RetrySpec, WebhookSpec
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import ExportRow
from sealtrail.export.backends.registry import backend_class
from sealtrail.export.backends.webhook import WebhookBackend
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind
from tests.conftest import events
from tests.receivers.harness import Failure
from tests.receivers.http_base import Request
from tests.receivers.webhook import WebhookCase, WebhookReceiver, new_secret

OLD_SECRET = new_secret(b"old")
NEW_SECRET = new_secret(b"new")
TRICKY = Event.model_validate({
    "event_type": "safety.decision", "severity": "HIGH", "tenant_id": "acme",
    "reason": 'egress to \u00e9vil.example "blocked" \\ tab\tnl\n\u0001 \u2028 \U0001f512',
    "extra": {"path": "C:\\tmp\\x", "quote": '"', "bracket": "],["},
})


# -- helpers ---------------------------------------------------------------------------------


def export_row(body: bytes) -> ExportRow:
    row = orjson.loads(body)
    return ExportRow(seq=row["seq"], tenant_id=row["tenant_id"], tenant_seq=row["tenant_seq"],
                     record_hash=row["record_hash"], event_type=row["event_type"],
                     severity=row["severity"], timestamp=row["timestamp"], body=body)


def chain_check(received: Sequence[bytes]) -> None:
    """What a receiver-side checker does (docs/chain-format.md), standard library only."""
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


def verify(request: Request, secret: str, *, now: float | None = None) -> bool:
    """An independent Standard Webhooks v1 verifier (the specification, read afresh)."""
    message_id = request.header("webhook-id")
    timestamp = request.header("webhook-timestamp")
    header = request.header("webhook-signature")
    assert message_id
    assert timestamp
    assert header
    assert "." not in message_id
    assert timestamp.isdigit()
    if abs((time.time() if now is None else now) - int(timestamp)) > 300:
        return False
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else (
        secret.encode())
    content = message_id.encode() + b"." + timestamp.encode() + b"." + request.body
    mine = hmac.new(key, content, hashlib.sha256).digest()
    for item in header.split(" "):
        version, signature = item.split(",", 1)
        if version == "v1" and hmac.compare_digest(base64.b64decode(signature), mine):
            return True
    return False


class Driver:
    """One backend on one event loop, driven from a sync test (rotation needs the same one)."""

    def __init__(self, spec: ExportSpec, clock: Callable[[], float] = time.time) -> None:
        self.runner = asyncio.Runner()
        self.clients = HttpClients()
        self.backend = WebhookBackend(spec, self.clients, clock=clock)

    def send(self, rows: Sequence[ExportRow]) -> Outcome:
        return self.runner.run(self.backend.send(rows))

    def close(self) -> None:
        self.runner.run(self.clients.aclose())
        self.runner.close()


def make_spec(url: str, secret_file: Path, timeout: float = 5.0) -> ExportSpec:
    return ExportSpec(
        name="to-webhook",
        webhook=WebhookSpec(url=url + "/hooks/audit", secret=CredentialRef(file=str(secret_file))),
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
    with ChainStore(path, synchronous="NORMAL") as store:
        batch = events(60, seed=5)
        batch[7] = TRICKY  # escapes and non-ASCII must reach the receiver byte for byte
        store.append(batch)
        return [export_row(body) for body in store.rows()]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver([OLD_SECRET])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook-secret"
    path.write_text(OLD_SECRET + "\n", encoding="utf-8")
    return path


@pytest.fixture
def driver(receiver: WebhookReceiver, secret_file: Path) -> Iterator[Driver]:
    running = Driver(make_spec(receiver.url, secret_file))
    yield running
    running.close()


# -- delivery --------------------------------------------------------------------------------


def test_rows_arrive_in_order_byte_identical_and_the_chain_checks(
    driver: Driver, receiver: WebhookReceiver, rows: list[ExportRow]
) -> None:
    for start in range(0, len(rows), 25):
        outcome = driver.send(rows[start:start + 25])
        assert outcome.kind is OutcomeKind.SUCCESS, outcome
        assert outcome.status == 200

    assert receiver.received() == [row.body for row in rows]
    chain_check(receiver.received())
    assert receiver.rejections == []


def test_the_body_is_the_stored_rows_in_an_array_never_reserialized(
    driver: Driver, receiver: WebhookReceiver, rows: list[ExportRow]
) -> None:
    assert driver.send(rows[:7]).ok
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks/audit"
    assert request.header("content-type") == "application/json"
    assert request.header("content-encoding") is None
    assert request.body == b"[" + b",".join(row.body for row in rows[:7]) + b"]"
    assert driver.backend.row_size(rows[0]) == len(rows[0].body)
    assert backend_class("webhook") is WebhookBackend
    assert WebhookBackend.destination_rule is None


# -- signatures ------------------------------------------------------------------------------


def test_the_signature_verifies_independently(
    driver: Driver, receiver: WebhookReceiver, rows: list[ExportRow]
) -> None:
    before = int(time.time())
    assert driver.send(rows[:3]).ok
    [request] = receiver.requests
    stamp = int(request.header("webhook-timestamp") or 0)
    assert before <= stamp <= int(time.time())  # the time of this attempt, in seconds
    assert (request.header("webhook-id") or "").startswith("msg_")
    signatures = (request.header("webhook-signature") or "").split(" ")
    assert len(signatures) == 1
    assert signatures[0].startswith("v1,")
    assert verify(request, OLD_SECRET)
    assert not verify(request, NEW_SECRET)
    tampered = Request(request.method, request.path, request.headers, request.body + b" ")
    assert not verify(tampered, OLD_SECRET)


def test_two_secrets_during_rotation_both_sign_and_either_verifies(
    driver: Driver, receiver: WebhookReceiver, secret_file: Path, rows: list[ExportRow]
) -> None:
    replace_file(secret_file, f"{OLD_SECRET}\n{NEW_SECRET}\n")
    assert driver.send(rows[:3]).ok  # the receiver still trusts only the old one
    receiver.set_secrets([NEW_SECRET])
    assert driver.send(rows[3:6]).ok  # and now only the new one

    for request in receiver.requests:
        signatures = (request.header("webhook-signature") or "").split(" ")
        assert len(signatures) == 2
        assert verify(request, OLD_SECRET)
        assert verify(request, NEW_SECRET)
        one_each = [Request(request.method, request.path,
                            {**request.headers, "webhook-signature": signature}, request.body)
                    for signature in signatures]
        assert [verify(alone, OLD_SECRET) for alone in one_each] == [True, False]
        assert [verify(alone, NEW_SECRET) for alone in one_each] == [False, True]
    assert receiver.received() == [row.body for row in rows[:6]]


def test_a_secret_without_the_prefix_is_raw_bytes(
    receiver: WebhookReceiver, secret_file: Path, rows: list[ExportRow]
) -> None:
    secret_file.write_text("plain-shared-secret-of-legacy-endpoint", encoding="utf-8")
    receiver.set_secrets(["plain-shared-secret-of-legacy-endpoint"])
    running = Driver(make_spec(receiver.url, secret_file))
    try:
        assert running.send(rows[:2]).ok
    finally:
        running.close()
    assert verify(receiver.requests[0], "plain-shared-secret-of-legacy-endpoint")


def test_a_malformed_secret_is_auth_and_not_echoed(
    receiver: WebhookReceiver, secret_file: Path, rows: list[ExportRow]
) -> None:
    secret_file.write_text(f"{OLD_SECRET} whsec_not*base64!", encoding="utf-8")
    running = Driver(make_spec(receiver.url, secret_file))
    try:
        outcome = running.send(rows[:2])
    finally:
        running.close()
    assert outcome.kind is OutcomeKind.AUTH
    assert "secret 2" in outcome.reason
    assert "not*base64" not in outcome.reason
    assert OLD_SECRET[6:] not in outcome.reason
    assert receiver.requests == []


def test_the_same_rows_resent_keep_their_webhook_id(
    receiver: WebhookReceiver, secret_file: Path, rows: list[ExportRow]
) -> None:
    now = time.time()
    clock = iter([now - 60, now, now])
    running = Driver(make_spec(receiver.url, secret_file), clock=lambda: next(clock))
    receiver.deduplicate = True
    try:
        assert running.send(rows[:5]).ok
        assert running.send(rows[:5]).ok  # a resend, a minute later
        assert running.send(rows[5:10]).ok
    finally:
        running.close()
    first, again, other = receiver.requests
    assert first.header("webhook-id") == again.header("webhook-id")
    assert first.header("webhook-timestamp") != again.header("webhook-timestamp")
    assert other.header("webhook-id") != first.header("webhook-id")
    assert first.body == again.body
    assert receiver.webhook_ids == [first.header("webhook-id")] * 2 + [other.header("webhook-id")]
    assert receiver.received() == [row.body for row in rows[:10]]  # the duplicate dropped


@pytest.mark.parametrize(
    ("change", "why"),
    [
        # seconds from now: past the 300 s tolerance by more than a loaded machine's second or
        # two between signing and checking (+301 from a truncated clock failed CI once)
        ({"webhook-timestamp": "-310"}, "timestamp outside tolerance"),
        ({"webhook-timestamp": "+310"}, "timestamp outside tolerance"),
        ({"webhook-timestamp": "soon"}, "invalid timestamp"),
        ({"webhook-signature": "v1,AAAA"}, "no matching signature"),
        ({"webhook-signature": "v1a,AAAA v2,AAAA"}, "no matching signature"),
        ({"webhook-signature": ""}, "missing required headers"),
        ({"webhook-id": ""}, "missing required headers"),
    ],
)
def test_the_receiver_refuses_what_the_specification_says_to_refuse(
    receiver: WebhookReceiver, change: dict[str, str], why: str
) -> None:
    body = b'[{"a":1}]'
    message_id, stamp = "msg_test", str(int(time.time()))
    if "webhook-timestamp" in change:  # a valid signature over the changed timestamp
        stamp = change["webhook-timestamp"]
        if stamp[0] in "+-":
            stamp = str(int(time.time()) + int(stamp))
        change = {**change, "webhook-timestamp": stamp}
    key = base64.b64decode(OLD_SECRET[6:])
    good = base64.b64encode(hmac.new(key, f"{message_id}.{stamp}.".encode() + body,
                                     hashlib.sha256).digest()).decode()
    headers = {"webhook-id": message_id, "webhook-timestamp": stamp,
               "webhook-signature": f"v1,{good}", **change}
    headers = {name: value for name, value in headers.items() if value}
    answer = httpx.post(receiver.url, content=body, headers=headers)
    assert answer.status_code == 401
    assert receiver.rejections == [why]
    assert receiver.received() == []
    headers.update({"webhook-timestamp": str(int(time.time())), "webhook-id": message_id})
    headers["webhook-signature"] = "v1," + base64.b64encode(hmac.new(
        key, f"{message_id}.{headers['webhook-timestamp']}.".encode() + body, hashlib.sha256
    ).digest()).decode()
    assert httpx.post(receiver.url, content=body, headers=headers).status_code == 200


# -- classification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "too_large", "retry_after"),
    [
        (200, OutcomeKind.SUCCESS, False, None),
        (202, OutcomeKind.SUCCESS, False, None),
        (204, OutcomeKind.SUCCESS, False, None),
        (301, OutcomeKind.PERMANENT, False, None),
        (302, OutcomeKind.PERMANENT, False, None),
        (307, OutcomeKind.PERMANENT, False, None),
        (308, OutcomeKind.PERMANENT, False, None),
        (400, OutcomeKind.PERMANENT, False, None),
        (401, OutcomeKind.AUTH, False, None),
        (403, OutcomeKind.AUTH, False, None),
        (404, OutcomeKind.PERMANENT, False, None),
        (408, OutcomeKind.RETRYABLE, False, None),
        (410, OutcomeKind.PERMANENT, False, None),
        (413, OutcomeKind.PERMANENT, True, None),
        (422, OutcomeKind.PERMANENT, False, None),
        (429, OutcomeKind.RETRYABLE, False, 30.0),
        (500, OutcomeKind.RETRYABLE, False, None),
        (501, OutcomeKind.PERMANENT, False, None),
        (502, OutcomeKind.RETRYABLE, False, None),
        (503, OutcomeKind.RETRYABLE, False, 5.0),
        (504, OutcomeKind.RETRYABLE, False, None),
    ],
)
def test_each_status_classifies_as_the_specification_suggests(
    driver: Driver, receiver: WebhookReceiver, rows: list[ExportRow], status: int,
    kind: OutcomeKind, too_large: bool, retry_after: float | None,
) -> None:
    headers = {"Retry-After": str(int(retry_after))} if retry_after else {}
    if 300 <= status < 400:  # a redirect to a place that would accept: still not followed
        headers["Location"] = receiver.url + "/hooks/audit"
    receiver.fail_next(1, status, b"{}", headers)
    outcome = driver.send(rows[:4])
    assert outcome.kind is kind
    assert outcome.status == status
    assert outcome.too_large is too_large
    assert outcome.retry_after_seconds == retry_after
    assert len(receiver.requests) == 1
    assert OLD_SECRET[6:] not in outcome.reason
    if 300 <= status < 400:
        assert "redirect" in outcome.reason


def test_410_gone_says_the_endpoint_asked_to_be_disabled(
    driver: Driver, receiver: WebhookReceiver, rows: list[ExportRow]
) -> None:
    receiver.gone = True
    outcome = driver.send(rows[:2])
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.status == 410
    assert "disabled" in outcome.reason
    assert receiver.received() == []


def test_a_wrong_secret_is_auth_from_the_receiver_itself(
    driver: Driver, receiver: WebhookReceiver, rows: list[ExportRow]
) -> None:
    receiver.set_secrets([NEW_SECRET])
    outcome = driver.send(rows[:2])
    assert outcome.kind is OutcomeKind.AUTH
    assert outcome.status == 401
    assert receiver.rejections == ["no matching signature"]


def test_a_timeout_is_retryable(receiver: WebhookReceiver, secret_file: Path,
                                rows: list[ExportRow]) -> None:
    slow = Driver(make_spec(receiver.url, secret_file, timeout=0.2))
    receiver.delay_seconds = 1.0
    try:
        outcome = slow.send(rows[:3])
    finally:
        slow.close()
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.status is None
    assert "0.2s" in outcome.reason


def test_connection_refused_is_retryable_and_recovers(
    driver: Driver, receiver: WebhookReceiver, rows: list[ExportRow]
) -> None:
    assert driver.send(rows[:2]).ok  # a kept-alive connection exists; the outage must end it
    receiver.stop()
    outcome = driver.send(rows[2:4])
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.status is None
    receiver.start()
    assert driver.send(rows[2:4]).ok
    assert receiver.received() == [row.body for row in rows[:4]]


# -- credentials -----------------------------------------------------------------------------


def test_a_rotated_secret_file_is_used_on_the_very_next_send(
    driver: Driver, receiver: WebhookReceiver, secret_file: Path, rows: list[ExportRow]
) -> None:
    assert driver.send(rows[:2]).ok
    first_version = driver.backend.credential_version()

    replace_file(secret_file, NEW_SECRET)  # kubelet-style swap, no refresh call
    receiver.set_secrets([NEW_SECRET])
    outcome = driver.send(rows[2:4])
    assert outcome.ok, outcome
    assert verify(receiver.requests[-1], NEW_SECRET)
    assert not verify(receiver.requests[-1], OLD_SECRET)
    assert driver.backend.credential_version() != first_version
    assert receiver.received() == [row.body for row in rows[:4]]


def test_an_unreadable_secret_is_auth_not_an_exception(
    driver: Driver, receiver: WebhookReceiver, secret_file: Path, rows: list[ExportRow]
) -> None:
    secret_file.unlink()
    outcome = driver.send(rows[:2])
    assert outcome.kind is OutcomeKind.AUTH
    assert str(secret_file) in outcome.reason
    assert receiver.requests == []


# -- the conformance-suite case --------------------------------------------------------------


def test_webhook_case_meets_the_harness_contract(tmp_path: Path, rows: list[ExportRow]) -> None:
    case = WebhookCase()
    case.start()
    credential = tmp_path / "secret"
    credential.write_text(OLD_SECRET + "\n", encoding="utf-8")
    spec = case.export_spec("hook", credential)
    assert spec.kind == "webhook"
    assert spec.retry.max_backoff_ms == 200
    running = Driver(spec)
    try:
        assert running.send(rows[:3]).ok
        expected: dict[Failure, OutcomeKind] = {"retryable": OutcomeKind.RETRYABLE,
                                                "permanent": OutcomeKind.PERMANENT,
                                                "auth": OutcomeKind.AUTH}
        for failure, kind in expected.items():
            case.fail_next(failure, 1)
            assert running.send(rows[3:5]).kind is kind
        case.set_credential(NEW_SECRET)
        assert running.send(rows[3:5]).kind is OutcomeKind.AUTH
        replace_file(credential, NEW_SECRET)
        assert running.send(rows[3:5]).ok
        case.stop()
        assert running.send(rows[5:6]).kind is OutcomeKind.RETRYABLE
        case.start()
        assert running.send(rows[5:6]).ok
    finally:
        running.close()
        case.close()
    assert case.received() == [row.body for row in rows[:6]]
