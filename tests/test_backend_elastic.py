"""The Elasticsearch `_bulk` backend against a protocol-faithful receiver on loopback.

Covers: rows from a real store arrive in order with `_source` byte-identical to
`ChainStore.rows()`, under `create` actions with `_id = tenant_id:tenant_seq`; a receiver-side
chain check (docs/chain-format.md) passes on what Elasticsearch holds and fails on a tampered
copy; a resent batch stores nothing twice and counts as delivered (item 409); a 200 with mixed
items yields the exact `delivered` set and class (item 429 retryable, item 400/403 permanent
with `rejected_index`, a reason without row content); whole-request 401/403/429/503/413/400, an
unreadable answer, a refused connection and a timeout classify as the outcome table says; each
auth mode sends its header and a rotated key file is used on the next send; index templates are
refused when illegal and fitted (lowercased) per tenant; the receiver's own protocol checks
(final newline, content type, data streams); the `ElasticCase` contract.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest

from sealtrail.api.destinations import ELASTIC_INDEX, TemplateError, render_template
from sealtrail.api.export import (
    CredentialRef,
    ElasticAuth,
    ElasticBasicAuth,
    ElasticSpec,
    ExportSpec,
    RetrySpec,
)
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import ExportRow, check_backend_templates
from sealtrail.export.backends.elastic import ElasticBackend
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind

from .conftest import events
from .receivers.elastic import ElasticCase, ElasticReceiver, es_error

KEY = "a2V5LWlkOmtleS1zZWNyZXQ="  # what an encoded Elastic API key looks like


# -- helpers ---------------------------------------------------------------------------------


class Sender:
    """One backend on one event loop, so that the shared httpx client lives across sends."""

    def __init__(self, spec: ExportSpec) -> None:
        self.runner = asyncio.Runner()
        self.clients = HttpClients()
        self.backend = ElasticBackend(spec, self.clients)

    def send(self, rows: Sequence[ExportRow]) -> Outcome:
        return self.runner.run(self.backend.send(rows))

    def close(self) -> None:
        self.runner.run(self.clients.aclose())
        self.runner.close()


def export_rows(store: ChainStore, template: str = "sealtrail-audit") -> list[ExportRow]:
    """`ExportRow`s from the store's rows, with the index rendered as the export loop does."""
    found = []
    for body in store.rows():
        row = orjson.loads(body)
        index = render_template(template, row["tenant_id"], row["event_type"], ELASTIC_INDEX)
        found.append(ExportRow(row["seq"], row["tenant_id"], row["tenant_seq"],
                               row["record_hash"], row["event_type"], row["severity"],
                               row["timestamp"], body, index))
    return found


def spec_for(url: str, auth: ElasticAuth | None, *, index: str = "sealtrail-audit",
             timeout: float = 5.0) -> ExportSpec:
    return ExportSpec(name="es", elastic=ElasticSpec(url=url, index=index, auth=auth),
                      retry=RetrySpec(request_timeout_seconds=timeout))


def chain_problems(sources: Sequence[bytes]) -> list[str]:
    """A SIEM-side check, written from docs/chain-format.md alone: hashes, links, no gaps."""
    problems = []
    chains: dict[str, list[dict[str, object]]] = defaultdict(list)
    for source in sources:
        row = json.loads(source)
        claimed = row.pop("record_hash")
        canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if hashlib.sha256(canonical.encode()).hexdigest() != claimed:
            problems.append(f"{row['tenant_id']}:{row['tenant_seq']} hash")
        row["record_hash"] = claimed
        chains[str(row["tenant_id"])].append(row)
    for tenant, rows in chains.items():
        rows.sort(key=lambda row: int(str(row["tenant_seq"])))
        previous = "0" * 64
        for number, row in enumerate(rows, start=1):
            if row["tenant_seq"] != number:
                problems.append(f"{tenant}: gap before {row['tenant_seq']}")
                break
            if row["prev_hash"] != previous:
                problems.append(f"{tenant}:{number} link")
            previous = str(row["record_hash"])
    return problems


def expected_body(rows: Sequence[ExportRow], index: str) -> bytes:
    """The `_bulk` body the brief specifies, built independently of the backend."""
    return b"".join(
        b'{"create":{"_index":"' + index.encode() + b'","_id":"'
        + row.record_hash.encode() + b'"}}\n' + row.body + b"\n"
        for row in rows
    )


@pytest.fixture
def store(db_path: Path) -> Iterator[ChainStore]:
    with ChainStore(db_path) as opened:
        opened.append(events(40))
        yield opened


@pytest.fixture
def receiver() -> Iterator[ElasticReceiver]:
    started = ElasticReceiver(scheme="ApiKey", credential=KEY)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-key"
    path.write_text(KEY + "\n")
    return path


@pytest.fixture
def sender(receiver: ElasticReceiver, key_file: Path) -> Iterator[Sender]:
    opened = Sender(spec_for(receiver.url, ElasticAuth(api_key=CredentialRef(file=str(key_file)))))
    yield opened
    opened.close()


# -- delivery, exactness, chain --------------------------------------------------------------


def test_rows_arrive_in_order_and_byte_identical(store: ChainStore, receiver: ElasticReceiver,
                                                 sender: Sender) -> None:
    rows = export_rows(store)
    outcome = sender.send(rows)
    assert outcome.kind is OutcomeKind.SUCCESS
    assert outcome.delivered == frozenset(range(len(rows)))
    assert receiver.sources() == list(store.rows())  # same bytes, same order
    assert receiver.ids() == [("sealtrail-audit", r.record_hash) for r in rows]
    request = receiver.requests[-1]
    assert (request.method, request.path) == ("POST", "/_bulk")
    assert request.header("content-type") == "application/x-ndjson"
    assert request.body == expected_body(rows, "sealtrail-audit")
    assert sum(sender.backend.row_size(row) for row in rows) == len(request.body)


def test_a_receiver_side_chain_check_passes_on_what_elastic_holds(
        store: ChainStore, receiver: ElasticReceiver, sender: Sender) -> None:
    rows = export_rows(store)
    assert sender.send(rows[:15]).ok
    assert sender.send(rows[15:]).ok
    held = receiver.sources()
    assert len(held) == 40
    assert chain_problems(held) == []
    # The check is not vacuous: one changed byte, or one dropped row, is found.
    tampered = list(held)
    tampered[7] = tampered[7].replace(b'"severity":"', b'"severity":"X', 1)
    assert chain_problems(tampered)
    assert chain_problems(held[:5] + held[6:])


def test_a_resent_batch_is_delivered_and_stored_once(store: ChainStore, receiver: ElasticReceiver,
                                                     sender: Sender) -> None:
    rows = export_rows(store)
    assert sender.send(rows[:10]).ok
    again = sender.send(rows[:25])  # the first ten are already there (a retry after a timeout)
    assert again.kind is OutcomeKind.SUCCESS
    assert again.delivered == frozenset(range(25))
    answer = receiver.responses[-1]
    assert answer["errors"] is True  # Elasticsearch counts a 409 as an error...
    statuses = [item["create"]["status"] for item in answer["items"]]
    assert statuses == [409] * 10 + [201] * 15  # ...which the backend reads as "already there"
    assert receiver.sources() == list(store.rows())[:25]
    assert sender.send(rows[:25]).ok
    assert len(receiver.sources()) == 25


# -- per-item classification -----------------------------------------------------------------


def positions(rows: Sequence[ExportRow], *keys: str) -> set[int]:
    return {index for index, row in enumerate(rows) if row.record_hash in keys}


def test_item_429_and_5xx_are_retryable_with_the_others_delivered(
        store: ChainStore, receiver: ElasticReceiver, sender: Sender) -> None:
    rows = export_rows(store)
    busy = positions(rows, rows[3].record_hash, rows[17].record_hash, rows[30].record_hash)
    receiver.reject_ids(f"^({rows[3].record_hash}|{rows[17].record_hash})$", 429,
                        "es_rejected_execution_exception", "rejected execution of primary op")
    receiver.reject_ids(f"^{rows[30].record_hash}$", 503, "unavailable_shards_exception",
                        "primary shard is not active")
    outcome = sender.send(rows)
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.status == 200
    assert outcome.delivered == frozenset(range(len(rows))) - busy
    assert outcome.rejected_index is None
    assert "es_rejected_execution_exception" in outcome.reason
    receiver.clear_item_failures()
    rest = [row for index, row in enumerate(rows) if index not in outcome.delivered]
    assert sender.send(rest).ok
    held = receiver.sources()
    assert len(held) == len(rows)  # nothing twice
    assert sorted(held, key=lambda body: orjson.loads(body)["seq"]) == list(store.rows())


def test_item_400_is_permanent_with_the_rejected_index(
        store: ChainStore, receiver: ElasticReceiver, sender: Sender) -> None:
    rows = export_rows(store)
    bad, busy = rows[5], rows[2]
    receiver.reject_ids(f"^{bad.record_hash}$", 400, "mapper_parsing_exception",
                        "failed to parse field [reason] of type [long] in document with id "
                        f"'{bad.record_hash}'. Preview of field's value: 'egress to an "
                        "unapproved host'")
    receiver.reject_ids(f"^{busy.record_hash}$", 429, "es_rejected_execution_exception", "busy")
    outcome = sender.send(rows)
    assert outcome.kind is OutcomeKind.PERMANENT  # permanent outranks retryable
    assert outcome.rejected_index == 5
    assert outcome.delivered == frozenset(range(len(rows))) - {2, 5}
    assert "mapper_parsing_exception" in outcome.reason
    assert "failed to parse field [reason]" in outcome.reason
    assert "unapproved" not in outcome.reason  # Elastic quotes the row; the reason must not
    assert len(receiver.sources()) == len(rows) - 2


def test_a_blocked_index_and_an_illegal_index_are_permanent(
        store: ChainStore, receiver: ElasticReceiver, sender: Sender) -> None:
    rows = export_rows(store)[:4]
    receiver.blocked_indices.add("frozen-audit")
    blocked = [rows[0], replace(rows[1], destination="frozen-audit"), rows[2]]
    outcome = sender.send(blocked)
    assert (outcome.kind, outcome.rejected_index) == (OutcomeKind.PERMANENT, 1)
    assert outcome.delivered == frozenset({0, 2})
    assert "403 cluster_block_exception" in outcome.reason
    illegal = [replace(rows[3], destination="Audit")]
    outcome = sender.send(illegal)
    assert (outcome.kind, outcome.rejected_index) == (OutcomeKind.PERMANENT, 0)
    assert "invalid_index_name_exception" in outcome.reason


# -- whole-request answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "headers", "kind", "retry_after", "too_large"),
    [
        (401, "security_exception", {}, OutcomeKind.AUTH, None, False),
        (403, "security_exception", {}, OutcomeKind.AUTH, None, False),
        (429, "es_rejected_execution_exception", {"retry-after": "7"}, OutcomeKind.RETRYABLE,
         7.0, False),
        (503, "cluster_block_exception", {}, OutcomeKind.RETRYABLE, None, False),
        (413, "", {}, OutcomeKind.PERMANENT, None, True),
        (400, "illegal_argument_exception", {}, OutcomeKind.PERMANENT, None, False),
    ],
)
def test_whole_request_statuses_classify(
        store: ChainStore, receiver: ElasticReceiver, sender: Sender, status: int,
        error_type: str, headers: dict[str, str], kind: OutcomeKind, retry_after: float | None,
        too_large: bool) -> None:
    body = es_error(status, error_type, "refused").body if error_type else b""
    receiver.fail_next(1, status, body, headers)
    outcome = sender.send(export_rows(store)[:3])
    assert outcome.kind is kind
    assert outcome.status == status
    assert outcome.retry_after_seconds == retry_after
    assert outcome.too_large is too_large
    assert outcome.delivered == frozenset()
    if error_type:
        assert error_type in outcome.reason
    assert receiver.sources() == []


def test_the_receivers_own_refusals_classify(store: ChainStore, receiver: ElasticReceiver,
                                             sender: Sender) -> None:
    rows = export_rows(store)[:3]
    receiver.max_content_length = 100
    outcome = sender.send(rows)
    assert (outcome.kind, outcome.status, outcome.too_large) == (OutcomeKind.PERMANENT, 413, True)
    receiver.max_content_length = 10**8
    receiver.deny_bulk = True
    outcome = sender.send(rows)
    assert (outcome.kind, outcome.status) == (OutcomeKind.AUTH, 403)
    receiver.deny_bulk = False
    receiver.accept("ApiKey", "another-key")
    outcome = sender.send(rows)
    assert (outcome.kind, outcome.status) == (OutcomeKind.AUTH, 401)
    assert "security_exception" in outcome.reason
    assert KEY not in outcome.reason
    assert receiver.sources() == []


def test_unreadable_or_short_answers_are_retryable(store: ChainStore, receiver: ElasticReceiver,
                                                   sender: Sender) -> None:
    rows = export_rows(store)[:3]
    receiver.fail_next(1, 200, b"<html>gateway</html>")
    assert sender.send(rows).kind is OutcomeKind.RETRYABLE
    receiver.fail_next(1, 200, b'{"took":1,"errors":true,"items":[]}')
    outcome = sender.send(rows)
    assert (outcome.kind, outcome.delivered) == (OutcomeKind.RETRYABLE, frozenset())


def test_connection_refused_and_timeout_are_retryable(store: ChainStore, key_file: Path) -> None:
    rows = export_rows(store)[:3]
    down = ElasticReceiver(scheme=None)  # never started: nothing listens on its port
    refused = Sender(spec_for(down.url, None))
    try:
        outcome = refused.send(rows)
    finally:
        refused.close()
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert "ConnectError" in outcome.reason
    slow = ElasticReceiver(scheme=None)
    slow.delay_seconds = 1.0
    slow.start()
    late = Sender(spec_for(slow.url, None, timeout=0.2))
    try:
        outcome = late.send(rows)
    finally:
        late.close()
        slow.stop()
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert "no answer from Elasticsearch within" in outcome.reason


# -- auth and rotation -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["api_key", "basic", "bearer", "none"])
def test_each_auth_mode_sends_its_header(store: ChainStore, tmp_path: Path, mode: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-value\n")
    ref = CredentialRef(file=str(secret_file))
    auth, scheme, credential, header = {
        "api_key": (ElasticAuth(api_key=ref), "ApiKey", "s3cret-value", "ApiKey s3cret-value"),
        "basic": (ElasticAuth(basic=ElasticBasicAuth(username="shipper", password=ref)),
                  "Basic", "shipper:s3cret-value",
                  "Basic " + base64.b64encode(b"shipper:s3cret-value").decode()),
        "bearer": (ElasticAuth(bearer=ref), "Bearer", "s3cret-value", "Bearer s3cret-value"),
        "none": (None, None, "", None),
    }[mode]
    receiver = ElasticReceiver(scheme=scheme, credential=credential)  # type: ignore[arg-type]
    receiver.start()
    sender = Sender(spec_for(receiver.url, auth))
    try:
        outcome = sender.send(export_rows(store)[:2])
        credentials = sender.backend.credentials()
    finally:
        sender.close()
        receiver.stop()
    assert outcome.kind is OutcomeKind.SUCCESS
    assert receiver.requests[-1].header("authorization") == header
    assert len(credentials) == (0 if mode == "none" else 1)


def test_a_rotated_key_file_is_used_on_the_next_send(store: ChainStore, receiver: ElasticReceiver,
                                                    sender: Sender, key_file: Path) -> None:
    rows = export_rows(store)
    assert sender.send(rows[:5]).ok
    before = sender.backend.credential_version()
    # As the kubelet does: the new file is swapped in, not written over the old one.
    replacement = key_file.with_name("api-key.new")
    replacement.write_text("cm90YXRlZDprZXk=\n")
    replacement.replace(key_file)
    receiver.accept("ApiKey", "cm90YXRlZDprZXk=")
    outcome = sender.send(rows[5:10])
    assert outcome.kind is OutcomeKind.SUCCESS
    assert receiver.requests[-1].header("authorization") == "ApiKey cm90YXRlZDprZXk="
    assert sender.backend.credential_version() not in (None, before)
    # A key the cluster no longer accepts is an AUTH answer, never a crash; a missing file too.
    receiver.accept("ApiKey", "yet-another")
    assert sender.send(rows[10:12]).kind is OutcomeKind.AUTH
    key_file.unlink()
    missing = sender.send(rows[10:12])
    assert (missing.kind, missing.status) == (OutcomeKind.AUTH, None)
    assert str(key_file) in missing.reason
    assert len(receiver.sources()) == 10


# -- destinations ----------------------------------------------------------------------------


@pytest.mark.parametrize("template", [
    "Audit", "_audit", "-audit", "+audit", "audit-*", "audit logs", "audit:x", "audit,x",
    "audit#x", ".", "..", "a" * 256, "${tenant:id}", "audit-${nope}",
])
def test_illegal_index_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        check_backend_templates(ElasticBackend, [template])


@pytest.mark.parametrize("template", [
    "sealtrail-audit", ".sealtrail-audit", "audit-${tenant:id}", "audit-${tenant:id}-${event:type}",
    "logs-sealtrail.audit-default", "a" * 255,
])
def test_legal_index_templates_pass(template: str) -> None:
    check_backend_templates(ElasticBackend, [template])


def test_tenant_ids_are_fitted_to_index_names(db_path: Path, tmp_path: Path,
                                              receiver: ElasticReceiver, key_file: Path) -> None:
    rule = ElasticBackend.destination_rule
    assert rule is not None
    assert render_template("audit-${tenant:id}", "Acme.Corp-1", "x.y", rule) == "audit-acme.corp-1"
    with ChainStore(db_path) as store:
        store.append(events(6, tenants=("Acme.Corp", "GLOBEX")))
        rows = export_rows(store, "audit-${tenant:id}")  # rendered as the loop does
    spec = spec_for(receiver.url, ElasticAuth(api_key=CredentialRef(file=str(key_file))),
                    index="audit-${tenant:id}")
    sender = Sender(spec)
    try:
        assert sender.backend.default_destination() == "audit-${tenant:id}"
        assert sender.send(rows).ok  # the receiver checks index names on its own
    finally:
        sender.close()
    indices = {index for index, _ in receiver.ids()}
    assert indices <= {"audit-acme.corp", "audit-globex"}
    assert len(receiver.sources()) == 6


def test_limits() -> None:
    limits = ElasticBackend(spec_for("http://127.0.0.1:9", None), HttpClients()).limits
    assert limits.max_events == 10_000
    assert limits.max_bytes == 10 * 1024 * 1024
    assert limits.max_bytes - 4096 <= limits.max_row_bytes < limits.max_bytes


# -- the receiver itself ---------------------------------------------------------------------


def test_the_receiver_speaks_bulk_faithfully(receiver: ElasticReceiver) -> None:
    auth = {"authorization": f"ApiKey {KEY}"}
    ndjson = {**auth, "content-type": "application/x-ndjson"}
    action = b'{"create":{"_index":"a","_id":"1"}}\n{"x":"y"}'
    with httpx.Client(base_url=receiver.url) as client:
        unterminated = client.post("/_bulk", content=action, headers=ndjson)
        assert unterminated.status_code == 400
        assert unterminated.json()["error"]["type"] == "illegal_argument_exception"
        assert "terminated by a newline [\\n]" in unterminated.json()["error"]["reason"]
        wrong_type = client.post("/_bulk", content=action + b"\n",
                                 headers={**auth, "content-type": "text/plain"})
        assert wrong_type.status_code == 406
        anonymous = client.post("/_bulk", content=action + b"\n",
                                headers={"content-type": "application/x-ndjson"})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "security_exception"
        assert "www-authenticate" in anonymous.headers
        created = client.post("/_bulk", content=action + b"\n", headers=ndjson)
        assert created.status_code == 200
        assert created.json()["errors"] is False
        assert created.json()["items"][0]["create"]["status"] == 201
        again = client.post("/_bulk", content=action + b"\n", headers=ndjson)
        item = again.json()["items"][0]["create"]
        assert (again.json()["errors"], item["status"]) == (True, 409)
        assert item["error"]["type"] == "version_conflict_engine_exception"
    assert receiver.sources() == [b'{"x":"y"}']


def test_the_receiver_in_data_stream_mode() -> None:
    stream = ElasticReceiver(scheme=None, data_stream=True)
    stream.start()
    try:
        with httpx.Client(base_url=stream.url,
                          headers={"content-type": "application/x-ndjson"}) as client:
            body = (b'{"index":{"_index":"logs-a-b","_id":"1"}}\n{"@timestamp":"t"}\n'
                    b'{"create":{"_index":"logs-a-b","_id":"2"}}\n{"no":"timestamp"}\n'
                    b'{"create":{"_index":"logs-a-b","_id":"3"}}\n{"@timestamp":"t"}\n')
            items = [next(iter(item.values())) for item in client.post(
                "/_bulk", content=body).json()["items"]]
    finally:
        stream.stop()
    assert [item["status"] for item in items] == [400, 400, 201]
    assert "op_type of create" in items[0]["error"]["reason"]
    assert "[@timestamp] is missing" in items[1]["error"]["caused_by"]["reason"]
    assert items[2]["_index"].startswith(".ds-logs-a-b-")


def test_rows_into_a_data_stream(store: ChainStore) -> None:
    """`create` is what data streams take; but rows carry `timestamp`, not `@timestamp`."""
    rows = export_rows(store, "logs-sealtrail-default")[:3]
    strict = ElasticReceiver(scheme=None, data_stream=True)
    piped = ElasticReceiver(scheme=None, data_stream=True, require_timestamp=False)
    outcomes = []
    for stream in (strict, piped):
        stream.start()
        sender = Sender(spec_for(stream.url, None, index="logs-sealtrail-default"))
        try:
            outcomes.append(sender.send(rows))
        finally:
            sender.close()
            stream.stop()
    refused, accepted = outcomes
    assert (refused.kind, refused.rejected_index) == (OutcomeKind.PERMANENT, 0)
    assert "[@timestamp] is missing" in refused.reason
    assert accepted.ok
    assert piped.sources() == [row.body for row in rows]


# -- the conformance contract ----------------------------------------------------------------


def test_elastic_case_contract(store: ChainStore, tmp_path: Path) -> None:
    case = ElasticCase()
    credential_file = tmp_path / "key"
    credential_file.write_text("case-key\n")
    case.start()
    sender = Sender(case.export_spec("es-case", credential_file))
    rows = export_rows(store)
    try:
        assert sender.send(rows[:10]).ok
        case.fail_next("retryable", 1)
        retry = sender.send(rows[10:20])
        assert (retry.kind, retry.delivered) == (OutcomeKind.RETRYABLE, frozenset())
        case.fail_next("permanent", 1)
        assert sender.send(rows[10:20]).kind is OutcomeKind.PERMANENT
        case.fail_next("auth", 1)
        assert sender.send(rows[10:20]).kind is OutcomeKind.AUTH
        assert sender.send(rows[:20]).ok  # the first ten answer 409: delivered, not duplicated
        case.set_credential("other")
        assert sender.send(rows[20:]).kind is OutcomeKind.AUTH
        case.stop()
        assert sender.send(rows[20:]).kind is OutcomeKind.RETRYABLE
        case.start()
        case.set_credential("case-key")
        assert sender.send(rows[20:]).ok
    finally:
        sender.close()
        case.close()
    assert case.received() == list(store.rows())
    assert ElasticCase.deduplicates
    http503 = ElasticCase(retryable="http503")
    http503.start()
    sender = Sender(http503.export_spec("es-case", credential_file))
    try:
        http503.fail_next("retryable", 1)
        outcome = sender.send(rows[:2])
    finally:
        sender.close()
        http503.close()
    assert (outcome.kind, outcome.status) == (OutcomeKind.RETRYABLE, 503)


ITEM_201 = {"create": {"_index": "sealtrail-audit", "status": 201}}


@pytest.mark.parametrize(("answer", "kind", "reason"), [
    # `errors` first among plain members, as Elasticsearch writes it: items never parsed
    ({"took": 3, "errors": False, "items": []}, OutcomeKind.SUCCESS, "3 created"),
    ({"errors": False, "took": 3, "items": [ITEM_201] * 3}, OutcomeKind.SUCCESS, "3 created"),
    # `errors` after the items: parsed whole, same answer
    ({"items": [ITEM_201] * 3, "errors": False}, OutcomeKind.SUCCESS, "3 created"),
    # an `errors: false` nested before the real flag does not pass for a clean answer
    ({"took": 1, "meta": {"errors": False}, "errors": True,
      "items": [ITEM_201, {"create": {"status": 400, "error": {"type": "mapper_parsing_exception",
                                                               "reason": "bad"}}}, ITEM_201]},
     OutcomeKind.PERMANENT, ("item 1 refused: 400 mapper_parsing_exception: bad (1 refused, "
                             "0 to retry, 2 delivered)")),
])
def test_a_clean_answer_is_known_from_its_first_bytes(
        store: ChainStore, receiver: ElasticReceiver, sender: Sender, answer: dict[str, object],
        kind: OutcomeKind, reason: str) -> None:
    rows = export_rows(store)[:3]
    receiver.fail_next(1, 200, orjson.dumps(answer))
    outcome = sender.send(rows)
    assert (outcome.kind, outcome.reason) == (kind, reason)
    if kind is OutcomeKind.SUCCESS:
        assert outcome.delivered == frozenset(range(3))


def test_a_clean_looking_but_cut_answer_is_retryable(store: ChainStore, receiver: ElasticReceiver,
                                                     sender: Sender) -> None:
    rows = export_rows(store)[:3]
    receiver.fail_next(1, 200, b'{"took":1,"errors":false,"items":[{"create":')
    outcome = sender.send(rows)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.RETRYABLE, "unreadable bulk response")
