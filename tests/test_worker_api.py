"""The worker's HTTP API as clients hit it, on the real `sealtrail worker` process.

Every test talks HTTP (httpx, sync) to a worker started by `tests.worker_process` on
127.0.0.1, and checks what was committed by reading the store file read-only, never through
the code under test alone. Covered:

* bad input on `POST /v1/events` (malformed JSON / NDJSON, wrong types, unknown severity or
  field, oversize event / body, too many events, empty body, one bad event in a batch,
  non-object elements): the right 4xx, a JSON body naming index (or line) and field, no stack
  trace, and nothing stored;
* success for one object, an array and NDJSON: seq / tenant_seq / record_hash per event, and
  those very rows are in the store when the answer arrives (the chain verifies);
* bearer tokens bound to tenant globs: 401 (with WWW-Authenticate), 403 naming the index,
  200; a token file replaced atomically is honoured on the next request, without a restart;
* `POST /v1/k8s-audit` with a realistic `audit.k8s.io/v1` EventList, and bodies that are not;
* `GET /v1/events` filters, `GET /v1/status`, `/metrics`, `/healthz`, `/readyz`, export
  resume, unknown paths;
* the admin token (`admin.token`): status, metrics and resume refuse no token and a wrong one
  (401 with a challenge) on both listeners and answer the right one, a rotated token file is
  used without a restart, the probes stay open, the token opens no audit data, an unreadable
  one is a 503; `credential_version` is `credential_digest(value, admin token)`, never the
  plain SHA-256; `WorkerStatus` parses the real document and gives it back unchanged; without
  a token the worker says once that its admin API is open;
* secrets never appear in a response body or in the worker's log.

Six real bugs these tests found were fixed (a pretty-printed object read as NDJSON, a non-object
part of a k8s audit item, `forbid` decisions lost, `since`/`until` compared as raw text, a
non-UTF-8 Authorization header, a spec-paused export resuming itself); their tests stay.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from sealtrail.api.worker_api import (
    DIGEST_HEX_CHARS,
    HEALTH_PATH,
    METRICS_PATH,
    READY_PATH,
    STATUS_PATH,
    WorkerStatus,
    credential_digest,
    resume_path,
)
from sealtrail.chain.keys import generate_keypair
from tests.worker_process import Worker, free_port, running_worker

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 1024 * 1024
MAX_EVENTS = 50
TOKEN_ACME = "st-acme-Zq7v1pXk2rT9bW3m"  # noqa: S105 - a test token
TOKEN_GLOBEX = "st-globex-Hn4s8LdQ0cYe6uJa"  # noqa: S105 - a test token
TOKEN_ADMIN = "st-admin-Rk2pW9xVb4Tn7cQe"  # noqa: S105 - a test token, bound to no tenant
WEBHOOK_SECRET = "whsec_c2VhbHRyYWlsLXdlYmhvb2stc2VjcmV0LXZhbHVl"  # noqa: S105 - a test secret
NDJSON = {"Content-Type": "application/x-ndjson"}


def _event(**fields: Any) -> dict[str, Any]:
    return {"event_type": "safety.decision", "severity": "INFO", **fields}


def _webhook_export(secret_file: Path) -> dict[str, Any]:
    # Paused, to a port nothing listens on: it exists for /v1/status and resume, delivers nothing.
    return {"name": "siem", "paused": True,
            "webhook": {"url": "http://127.0.0.1:9/hook", "secret": {"file": str(secret_file)}},
            "retry": {"initialBackoffMs": 50, "maxBackoffMs": 1000}}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker with no tokens, small limits and one paused export."""
    directory = tmp_path_factory.mktemp("open-worker")
    secret = directory / "webhook-secret"
    secret.write_text(WEBHOOK_SECRET + "\n", encoding="utf-8")
    with running_worker(directory,
                        ingest={"maxBodyBytes": MAX_BODY, "maxEventsPerRequest": MAX_EVENTS},
                        exports=[_webhook_export(secret)]) as running:
        yield running


@pytest.fixture(scope="module")
def client(worker: Worker) -> Iterator[httpx.Client]:
    with worker.client() as opened:
        yield opened


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert a client-mistake answer: `status`, JSON with `error`, no trace; return the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    body = orjson.loads(response.content)
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str)
    assert body["error"]
    return body


def stored_nothing(worker: Worker, client: httpx.Client, before: int) -> None:
    """Neither the store file nor `GET /v1/events` shows a row after seq `before`."""
    assert worker.last_seq() == before
    assert worker.rows(after_seq=before) == []
    answer = client.get("/v1/events", params={"after_seq": before})
    assert answer.status_code == 200
    assert answer.content == b""


def ndjson(documents: list[Any]) -> bytes:
    return b"".join(orjson.dumps(document) + b"\n" for document in documents)


def _big_extra() -> dict[str, str]:
    # 40 values of 8 KiB each: every field within its own bound, the event ~320 KiB serialized.
    return {f"k{number}": "x" * 8192 for number in range(40)}


# -- bad input -------------------------------------------------------------------------------

# (id, body, headers, status, [(index-or-line key, value, field), ...] the problems must name)
BAD_INPUT: list[tuple[str, bytes, dict[str, str], int, list[tuple[str, int, str]]]] = [
    ("malformed-json", b'{"event_type": "safety.decision", "severity":', {}, 400, []),
    ("malformed-json-array", b'[{"event_type": "a.b", "severity": "INFO"},]', {}, 400, []),
    ("malformed-ndjson-line-2",
     ndjson([_event()]) + b'{"event_type": "a.b", "severity": \n' + ndjson([_event()]),
     NDJSON, 400, [("line", 2, "")]),
    ("severity-wrong-type", orjson.dumps(_event(severity=3)), {}, 400, [("index", 0, "severity")]),
    ("tenant-wrong-type", orjson.dumps([_event(), _event(tenant_id=5)]), {}, 400,
     [("index", 1, "tenant_id")]),
    ("risk-tags-not-a-list", orjson.dumps(_event(risk_tags="pii")), {}, 400,
     [("index", 0, "risk_tags")]),
    ("extra-value-not-a-string", orjson.dumps(_event(extra={"region": 1})), {}, 400,
     [("index", 0, "extra.region")]),
    ("timestamp-a-number", orjson.dumps(_event(timestamp=1_700_000_000)), {}, 400,
     [("index", 0, "timestamp")]),
    ("timestamp-without-zone", orjson.dumps(_event(timestamp="2026-01-01T10:00:00")), {}, 400,
     [("index", 0, "timestamp")]),
    ("unknown-severity", orjson.dumps(_event(severity="SEVERE")), {}, 400,
     [("index", 0, "severity")]),
    ("lowercase-severity", orjson.dumps(_event(severity="high")), {}, 400,
     [("index", 0, "severity")]),
    ("unknown-field", orjson.dumps(_event(decison="allow")), {}, 400, [("index", 0, "decison")]),
    ("missing-event-type", orjson.dumps({"severity": "INFO"}), {}, 400,
     [("index", 0, "event_type")]),
    ("reserved-event-type", orjson.dumps(_event(event_type="sealtrail.checkpoint")), {}, 400,
     [("index", 0, "event_type")]),
    ("bad-tenant-name", orjson.dumps(_event(tenant_id="-no")), {}, 400,
     [("index", 0, "tenant_id")]),
    ("action-too-long", orjson.dumps(_event(action="a" * 257)), {}, 400, [("index", 0, "action")]),
    ("ndjson-bad-event-index", ndjson([_event(), _event(), _event(severity="NOPE")]), NDJSON, 400,
     [("index", 2, "severity")]),
    ("empty-body", b"", {}, 400, []),
    ("blank-body", b"  \n\t \n", {}, 400, []),
    ("empty-ndjson", b"\n\n", NDJSON, 400, []),
    ("one-bad-among-good",
     orjson.dumps([_event(tenant_id="batch", action=f"a{n}") for n in range(7)]
                  + [_event(tenant_id="batch", severity="URGENT")]
                  + [_event(tenant_id="batch") for _ in range(3)]),
     {}, 400, [("index", 7, "severity")]),
    ("non-object-elements", orjson.dumps([_event(), 42, "event", None, [_event()]]), {}, 400,
     [("index", 1, ""), ("index", 2, ""), ("index", 3, ""), ("index", 4, "")]),
    ("a-bare-string", b'"hello"', {}, 400, [("index", 0, "")]),
    ("a-bare-null", b"null", {}, 400, [("index", 0, "")]),
    ("oversize-event-at-index-1", orjson.dumps([_event(), _event(extra=_big_extra())]), {}, 413,
     [("index", 1, "")]),
    ("too-many-events", orjson.dumps([_event() for _ in range(MAX_EVENTS + 1)]), {}, 413, []),
    ("oversize-body", orjson.dumps([_event(reason="r" * 16_000) for _ in range(70)]), {}, 413, []),
]


@pytest.mark.parametrize(("body", "headers", "status", "named"),
                         [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_gets_its_4xx_names_the_problem_and_stores_nothing(
    worker: Worker, client: httpx.Client, body: bytes, headers: dict[str, str], status: int,
    named: list[tuple[str, int, str]],
) -> None:
    before = worker.last_seq()
    answer = problem(client.post("/v1/events", content=body, headers=headers), status)
    found = {(key, item.get(key), item.get("field"))
             for item in answer.get("problems", []) for key in ("index", "line") if key in item}
    for key, value, field in named:
        assert (key, value, field) in found, answer
    if named:
        assert all(item["message"] for item in answer["problems"])
    stored_nothing(worker, client, before)


def test_the_bad_input_cases_are_really_bad_in_the_way_claimed() -> None:
    # Guard the table itself: the oversize cases are over their limits, the too-many case
    # is under the body limit, and the oversize event's every field is within its own bound.
    cases = {case[0]: case for case in BAD_INPUT}
    assert len(cases["oversize-body"][1]) > MAX_BODY
    assert len(cases["too-many-events"][1]) < MAX_BODY
    assert len(cases["oversize-event-at-index-1"][1]) < MAX_BODY
    assert len(orjson.dumps(_big_extra())) > 256 * 1024


def test_an_oversize_body_sent_chunked_is_refused_too(worker: Worker, client: httpx.Client) -> None:
    # No Content-Length: the limit must hold while reading, not only from the header.
    before = worker.last_seq()
    chunk = b" " * 65536

    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(MAX_BODY // len(chunk) + 2):
            yield chunk
        yield orjson.dumps(_event()) + b"]"

    answer = problem(client.post("/v1/events", content=chunks()), 413)
    assert str(MAX_BODY) in answer["error"]
    stored_nothing(worker, client, before)


def test_exactly_the_limits_are_accepted(worker: Worker, client: httpx.Client) -> None:
    before = worker.last_seq()
    answer = client.post("/v1/events", json=[_event(tenant_id="limits") for _ in range(MAX_EVENTS)])
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == MAX_EVENTS
    assert worker.last_seq() == before + MAX_EVENTS


def test_a_wrong_method_and_an_unknown_path_answer_json(client: httpx.Client) -> None:
    assert problem(client.get("/v1/nothing-here"), 404)["error"]
    assert problem(client.post("/v2/events", json=_event()), 404)["error"]
    assert problem(client.delete("/v1/events"), 405)["error"]


# -- success ---------------------------------------------------------------------------------


def _assert_committed(worker: Worker, answer: httpx.Response, sent: list[dict[str, Any]],
                      before: int) -> list[dict[str, Any]]:
    """The answer lists one entry per event, and the store already holds exactly those rows."""
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["stored"] == len(sent) == len(body["events"])
    rows = worker.rows(after_seq=before)  # read right after the answer: committed by then
    assert len(rows) == len(sent)
    for reported, row, event in zip(body["events"], rows, sent, strict=True):
        assert set(reported) == {"seq", "tenant_id", "tenant_seq", "record_hash"}
        assert re.fullmatch(r"[0-9a-f]{64}", reported["record_hash"])
        assert (row["seq"], row["tenant_id"], row["tenant_seq"], row["record_hash"]) == (
            reported["seq"], reported["tenant_id"], reported["tenant_seq"], reported["record_hash"])
        for key, value in event.items():
            assert row[key] == value
    seqs = [item["seq"] for item in body["events"]]
    assert seqs == list(range(before + 1, before + 1 + len(sent)))
    return body["events"]


def test_one_object_is_stored_and_answered_with_its_place(worker: Worker, client: httpx.Client,
                                                          cli: Any) -> None:
    before = worker.last_seq()
    sent = [_event(tenant_id="single", action="deploy", decision="allow", risk_tags=["prod"])]
    [reported] = _assert_committed(worker, client.post("/v1/events", json=sent[0]), sent, before)
    assert reported["tenant_id"] == "single"
    # The same row through the API, byte for byte as the store holds it.
    listed = client.get("/v1/events", params={"tenant": "single"}).content.splitlines()
    assert [orjson.loads(line)["record_hash"] for line in listed][-1] == reported["record_hash"]
    # The chain the worker wrote verifies with the CLI.
    result = cli("verify", "--db", worker.db)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_array_is_stored_in_order_with_per_tenant_sequences(
    worker: Worker, client: httpx.Client,
) -> None:
    before = worker.last_seq()
    sent = [_event(tenant_id="arr-a", action="one"), _event(tenant_id="arr-b", action="two"),
            _event(tenant_id="arr-a", action="three", severity="HIGH"),
            _event(tenant_id="arr-a", timestamp="2026-03-01T10:00:00.250000Z")]
    reported = _assert_committed(worker, client.post("/v1/events", json=sent), sent, before)
    assert [(item["tenant_id"], item["tenant_seq"]) for item in reported] == [
        ("arr-a", 1), ("arr-b", 1), ("arr-a", 2), ("arr-a", 3)]
    rows = worker.rows(after_seq=before)
    assert rows[2]["prev_hash"] == rows[0]["record_hash"]
    assert rows[3]["prev_hash"] == rows[2]["record_hash"]


def test_ndjson_is_stored_line_by_line(worker: Worker, client: httpx.Client) -> None:
    before = worker.last_seq()
    sent = [_event(tenant_id="nd", action=f"line{n}") for n in range(3)]
    body = orjson.dumps(sent[0]) + b"\n\n" + orjson.dumps(sent[1]) + b"\r\n" + orjson.dumps(
        sent[2])  # a blank line, a CRLF, and no final newline
    _assert_committed(worker, client.post("/v1/events", content=body, headers=NDJSON), sent,
                      before)


def test_ndjson_without_its_content_type_is_recognised(worker: Worker,
                                                       client: httpx.Client) -> None:
    before = worker.last_seq()
    sent = [_event(tenant_id="nd2", action="a"), _event(tenant_id="nd2", action="b")]
    _assert_committed(worker, client.post("/v1/events", content=ndjson(sent)), sent, before)


def test_a_timestamp_is_normalised_and_a_default_tenant_applied(
    worker: Worker, client: httpx.Client,
) -> None:
    before = worker.last_seq()
    answer = client.post("/v1/events", json=_event(timestamp="2026-03-01T12:00:00.123456789+02:00"))
    assert answer.status_code == 200, answer.text
    [row] = worker.rows(after_seq=before)
    assert row["timestamp"] == "2026-03-01T10:00:00.123456Z"
    assert row["tenant_id"] == "default"


def test_a_pretty_printed_object_is_one_event(worker: Worker, client: httpx.Client) -> None:
    before = worker.last_seq()
    sent = [_event(tenant_id="pretty", action="indent")]
    body = orjson.dumps(sent[0], option=orjson.OPT_INDENT_2)
    _assert_committed(worker, client.post("/v1/events", content=body,
                                          headers={"Content-Type": "application/json"}),
                      sent, before)


# -- k8s audit -------------------------------------------------------------------------------


def _audit_item(**fields: Any) -> dict[str, Any]:
    return {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "stage": "ResponseComplete", "sourceIPs": ["10.0.3.17"],
            "userAgent": "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46",
            "requestReceivedTimestamp": "2026-11-20T09:14:03.118201Z",
            "stageTimestamp": "2026-11-20T09:14:03.131517Z", **fields}


EVENT_LIST = {
    "kind": "EventList",
    "apiVersion": "audit.k8s.io/v1",
    "metadata": {},
    "items": [
        _audit_item(
            auditID="5f0b3d4e-7a51-4f5e-a1b8-3c1b1a0e9d01", verb="create",
            requestURI="/api/v1/namespaces/payments/secrets?fieldManager=kubectl-client-side-apply",
            user={"username": "system:serviceaccount:ci:deployer",
                  "groups": ["system:serviceaccounts", "system:authenticated"]},
            objectRef={"resource": "secrets", "namespace": "payments", "name": "db-password",
                       "apiVersion": "v1"},
            responseStatus={"metadata": {}, "code": 201},
            annotations={"authorization.k8s.io/decision": "allow",
                         "authorization.k8s.io/reason": 'RBAC: allowed by RoleBinding "deployer/payments"'}),
        _audit_item(
            auditID="0c2d5b1e-9f3a-4b7c-8e2d-6a4f1b0c3d02", verb="get", requestURI="/api/v1/nodes/node-a",
            user={"username": "system:node:node-a", "groups": ["system:nodes"]},
            objectRef={"resource": "nodes", "name": "node-a", "apiVersion": "v1"},
            responseStatus={"metadata": {}, "code": 200},
            annotations={"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}),
        _audit_item(
            auditID="9a7e3c1d-2b4f-4e6a-9c8d-1f2e3d4c5b03", verb="list", requestURI="/api/v1/namespaces/payments/pods",
            user={"username": "alice@example.com", "groups": ["system:authenticated"]},
            objectRef={"resource": "pods", "namespace": "payments", "apiVersion": "v1"},
            responseStatus={"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
            annotations={"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}),
    ],
}


def test_a_k8s_event_list_is_mapped_into_the_right_tenants(worker: Worker,
                                                           client: httpx.Client) -> None:
    before = worker.last_seq()
    answer = client.post("/v1/k8s-audit", json=EVENT_LIST)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 3
    rows = worker.rows(after_seq=before)
    assert [(row["tenant_id"], row["severity"], row["action"]) for row in rows] == [
        ("payments", "HIGH", "create secrets"),
        ("_system", "INFO", "get nodes"),
        ("payments", "HIGH", "list pods"),
    ]
    assert {row["event_type"] for row in rows} == {"k8s.audit"}
    secret, node, forbidden = rows
    assert secret["identity"] == "system:serviceaccount:ci:deployer"
    assert secret["decision"] == "allow"
    assert secret["timestamp"] == "2026-11-20T09:14:03.131517Z"
    assert secret["extra"]["audit_id"] == "5f0b3d4e-7a51-4f5e-a1b8-3c1b1a0e9d01"
    assert secret["extra"]["name"] == "db-password"
    assert secret["extra"]["response_code"] == "201"
    assert node["extra"]["source_ips"] == "10.0.3.17"
    assert forbidden["extra"]["response_code"] == "403"
    assert forbidden["identity"] == "alice@example.com"
    reported = answer.json()["events"]
    assert [item["record_hash"] for item in reported] == [row["record_hash"] for row in rows]
    listed = client.get("/v1/events", params={"tenant": "_system", "type": "k8s.audit",
                                              "after_seq": before})
    assert [orjson.loads(line)["action"] for line in listed.content.splitlines()] == ["get nodes"]


def test_a_forbidden_k8s_request_keeps_its_deny_decision(worker: Worker,
                                                         client: httpx.Client) -> None:
    before = worker.last_seq()
    body = {**EVENT_LIST, "items": [EVENT_LIST["items"][2]]}
    assert client.post("/v1/k8s-audit", json=body).status_code == 200
    [row] = worker.rows(after_seq=before)
    assert row.get("decision") == "deny"


K8S_BAD = [
    ("not-an-event-list", orjson.dumps({"kind": "Pod", "apiVersion": "v1"})),
    ("wrong-api-version", orjson.dumps({**EVENT_LIST, "apiVersion": "audit.k8s.io/v1beta1"})),
    ("a-json-array", orjson.dumps(EVENT_LIST["items"])),
    ("items-not-a-list", orjson.dumps({**EVENT_LIST, "items": {"a": 1}})),
    ("an-item-not-an-object", orjson.dumps({**EVENT_LIST, "items": [EVENT_LIST["items"][0], 7]})),
    ("a-bad-namespace", orjson.dumps({**EVENT_LIST, "items": [
        _audit_item(verb="get", objectRef={"resource": "pods", "namespace": 5})]})),
    ("a-bad-timestamp", orjson.dumps({**EVENT_LIST, "items": [
        _audit_item(verb="get", stageTimestamp="yesterday")]})),
    ("malformed-json", b'{"kind": "EventList", '),
    ("empty", b""),
]


@pytest.mark.parametrize("body", [case[1] for case in K8S_BAD], ids=[case[0] for case in K8S_BAD])
def test_a_body_that_is_not_an_event_list_is_400(worker: Worker, client: httpx.Client,
                                                 body: bytes) -> None:
    before = worker.last_seq()
    problem(client.post("/v1/k8s-audit", content=body), 400)
    stored_nothing(worker, client, before)


def test_a_bad_k8s_item_is_named_by_index(client: httpx.Client) -> None:
    body = {**EVENT_LIST, "items": [EVENT_LIST["items"][0], 7]}
    assert "items[1]" in problem(client.post("/v1/k8s-audit", json=body), 400)["error"]


@pytest.mark.parametrize("field", ["objectRef", "user", "responseStatus", "annotations"])
def test_a_k8s_item_with_a_non_object_part_is_400(worker: Worker, client: httpx.Client,
                                                  field: str) -> None:
    before = worker.last_seq()
    body = {**EVENT_LIST, "items": [{**EVENT_LIST["items"][0], field: "not an object"}]}
    problem(client.post("/v1/k8s-audit", json=body), 400)
    stored_nothing(worker, client, before)


# -- query -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def query_rows(worker: Worker) -> list[dict[str, Any]]:
    """Six events in tenant `q`, one in `q-other`, at known times, types and severities."""
    sent = [
        _event(tenant_id="q", severity="INFO", timestamp="2026-05-01T10:00:00.000000Z"),
        _event(tenant_id="q", severity="HIGH", event_type="system.auth",
               timestamp="2026-05-01T10:00:01.500000Z"),
        _event(tenant_id="q-other", severity="HIGH", timestamp="2026-05-01T10:00:02.000000Z"),
        _event(tenant_id="q", severity="CRITICAL", timestamp="2026-05-01T10:00:03.000000Z"),
        _event(tenant_id="q", severity="LOW", event_type="system.auth",
               timestamp="2026-05-01T10:00:04.000000Z"),
        _event(tenant_id="q", severity="HIGH", timestamp="2026-05-01T10:00:05.000000Z"),
        _event(tenant_id="q", severity="MEDIUM", timestamp="2026-05-01T10:00:06.000000Z"),
    ]
    before = worker.last_seq()
    answer = httpx.post(f"{worker.url}/v1/events", json=sent, timeout=30)
    assert answer.status_code == 200, answer.text
    return worker.rows(after_seq=before)


def _query(client: httpx.Client, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    answer = client.get("/v1/events", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in answer.content.splitlines()]


def _seqs(rows: list[dict[str, Any]]) -> list[int]:
    return [row["seq"] for row in rows]


def test_query_filters_by_tenant_type_and_severity(client: httpx.Client,
                                                   query_rows: list[dict[str, Any]]) -> None:
    q = [row for row in query_rows if row["tenant_id"] == "q"]
    assert _query(client, [("tenant", "q")]) == q
    assert _seqs(_query(client, [("tenant", "q-other")])) == [query_rows[2]["seq"]]
    assert _seqs(_query(client, [("tenant", "q"), ("type", "system.auth")])) == [
        row["seq"] for row in q if row["event_type"] == "system.auth"]
    assert _seqs(_query(client, [("tenant", "q"), ("severity", "HIGH")])) == [
        row["seq"] for row in q if row["severity"] == "HIGH"]
    assert _seqs(_query(client, [("tenant", "q"), ("severity", "HIGH"),
                                 ("severity", "CRITICAL")])) == [
        row["seq"] for row in q if row["severity"] in {"HIGH", "CRITICAL"}]
    assert _query(client, [("tenant", "q"), ("type", "no.such")]) == []
    assert _query(client, [("tenant", "nobody")]) == []


def test_query_filters_by_time_window(client: httpx.Client,
                                      query_rows: list[dict[str, Any]]) -> None:
    q = [row for row in query_rows if row["tenant_id"] == "q"]
    window = _query(client, [("tenant", "q"), ("since", "2026-05-01T10:00:01.500000Z"),
                             ("until", "2026-05-01T10:00:05.000000Z")])  # since <= t < until
    assert _seqs(window) == [row["seq"] for row in q
                             if "2026-05-01T10:00:01.5" <= row["timestamp"] < "2026-05-01T10:00:05"]
    assert len(window) == 3


def test_query_pages_with_after_seq_and_limit(client: httpx.Client,
                                              query_rows: list[dict[str, Any]]) -> None:
    q = [row for row in query_rows if row["tenant_id"] == "q"]
    seen: list[int] = []
    after = 0
    for _ in range(10):
        page = _query(client, [("tenant", "q"), ("after_seq", str(after)), ("limit", "2")])
        if not page:
            break
        assert len(page) <= 2
        seen.extend(_seqs(page))
        after = page[-1]["seq"]
    assert seen == _seqs(q)


@pytest.mark.parametrize("params", [
    [("severity", "SEVERE")], [("severity", "HIGH"), ("severity", "high")],
    [("after_seq", "x")], [("limit", "ten")],
], ids=["unknown-severity", "lowercase-severity", "after-seq-not-int", "limit-not-int"])
def test_query_refuses_bad_parameters_with_400(client: httpx.Client,
                                               params: list[tuple[str, str]]) -> None:
    problem(client.get("/v1/events", params=params), 400)


def test_query_time_window_accepts_any_rfc3339_spelling(client: httpx.Client,
                                                        query_rows: list[dict[str, Any]]) -> None:
    expected = _seqs(_query(client, [("tenant", "q"), ("since", "2026-05-01T10:00:01.000000Z"),
                                     ("until", "2026-05-01T10:00:04.000000Z")]))
    assert len(expected) == 2
    assert _seqs(_query(client, [("tenant", "q"), ("since", "2026-05-01T10:00:01Z"),
                                 ("until", "2026-05-01T10:00:04Z")])) == expected
    assert _seqs(_query(client, [("tenant", "q"), ("since", "2026-05-01T12:00:01+02:00"),
                                 ("until", "2026-05-01T12:00:04+02:00")])) == expected


@pytest.mark.parametrize("param", ["since", "until"])
def test_query_refuses_a_time_that_is_not_rfc3339(client: httpx.Client, param: str) -> None:
    problem(client.get("/v1/events", params={param: "yesterday"}), 400)


# -- status, metrics, health, resume ---------------------------------------------------------


def test_status_lists_every_tenant_with_its_head(worker: Worker, client: httpx.Client) -> None:
    client.post("/v1/events", json=[_event(tenant_id="status-a"), _event(tenant_id="status-b"),
                                    _event(tenant_id="status-a")]).raise_for_status()
    status = client.get("/v1/status")
    assert status.status_code == 200
    body = status.json()
    rows = worker.rows()
    heads: dict[str, dict[str, Any]] = {}
    for row in rows:
        heads[row["tenant_id"]] = row
    assert body["last_seq"] == rows[-1]["seq"]
    assert body["store_id"] == rows[-1]["store_id"]  # the id a SIEM groups this pod's rows by
    assert body["ready"] is True
    listed = {item["tenant_id"]: item for item in body["tenants"]}
    assert set(listed) == set(heads)
    for tenant, row in heads.items():
        assert listed[tenant]["head_tenant_seq"] == row["tenant_seq"]
        assert listed[tenant]["head_hash"] == row["record_hash"]
    assert listed["status-a"]["head_tenant_seq"] == 2
    [export] = body["exports"]
    assert export["name"] == "siem"
    assert export["kind"] == "webhook"
    assert export["last_stored_seq"] == body["last_seq"]


def test_metrics_count_every_stored_event(worker: Worker, client: httpx.Client) -> None:
    client.post("/v1/events", json=_event(tenant_id="metrics")).raise_for_status()
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found = re.search(r"^sealtrail_audit_ingested_events_total (\S+)$", answer.text, re.MULTILINE)
    assert found is not None, answer.text
    # Every row in this worker's store came in through this process's API.
    assert float(found.group(1)) == worker.row_count()


def test_health_and_readiness(client: httpx.Client) -> None:
    healthz = client.get("/healthz")
    assert (healthz.status_code, healthz.json()) == (200, {"ok": True})
    readyz = client.get("/readyz")
    assert (readyz.status_code, readyz.json()) == (200, {"ready": True})


def test_resuming_an_unknown_export_is_404(client: httpx.Client) -> None:
    assert "nope" in problem(client.post("/v1/exports/nope/resume"), 404)["error"]


def test_resuming_a_known_export_is_200(client: httpx.Client) -> None:
    assert client.post("/v1/exports/siem/resume").json() == {"resumed": "siem"}
    [export] = client.get("/v1/status").json()["exports"]
    assert export["paused"] is False


def test_an_export_paused_in_its_spec_stays_paused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(WEBHOOK_SECRET, encoding="utf-8")
    with running_worker(tmp_path / "w", exports=[_webhook_export(tmp_path / "secret")]) as worker:
        time.sleep(2.5)  # more than two paused polls of 1 s
        [export] = httpx.get(f"{worker.url}/v1/status", timeout=30).json()["exports"]
        log = worker.log()
    assert "resumed" not in log
    assert export["paused"] is True


# -- bearer tokens ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker whose tokens are bound to tenants: a file token for acme, an env one for globex."""
    directory = tmp_path_factory.mktemp("secured-worker")
    (directory / "acme-token").write_text(TOKEN_ACME + "\n", encoding="utf-8")
    (directory / "webhook-secret").write_text(WEBHOOK_SECRET, encoding="utf-8")
    tokens = [
        {"token": {"file": str(directory / "acme-token")}, "tenants": ["acme", "acme-*"]},
        {"token": {"env": "SEALTRAIL_TEST_GLOBEX_TOKEN"}, "tenants": ["globex"]},
        {"token": {"env": "SEALTRAIL_TEST_ADMIN_TOKEN"}},
    ]
    with running_worker(directory, env={"SEALTRAIL_TEST_GLOBEX_TOKEN": TOKEN_GLOBEX,
                                        "SEALTRAIL_TEST_ADMIN_TOKEN": TOKEN_ADMIN},
                        ingest={"tokens": tokens},
                        exports=[_webhook_export(directory / "webhook-secret")]) as running:
        yield running


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_is_401_with_a_challenge(secured: Worker) -> None:
    before = secured.last_seq()
    for headers in ({}, {"Authorization": "Bearer"},
                    {"Authorization": f"Basic {TOKEN_ACME}"}, {"Authorization": TOKEN_ACME}):
        answer = httpx.post(f"{secured.url}/v1/events", json=_event(tenant_id="acme"),
                            headers=headers, timeout=30)
        problem(answer, 401)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert secured.last_seq() == before


def test_a_wrong_token_is_401(secured: Worker) -> None:
    before = secured.last_seq()
    for token in ("wrong-token-value", TOKEN_ACME[:-1], TOKEN_ACME + "x", TOKEN_ACME.upper()):
        answer = httpx.post(f"{secured.url}/v1/events", json=_event(tenant_id="acme"),
                            headers=_bearer(token), timeout=30)
        problem(answer, 401)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert secured.last_seq() == before


def test_a_token_for_another_tenant_is_403_naming_the_index(secured: Worker) -> None:
    before = secured.last_seq()
    batch = [_event(tenant_id="acme"), _event(tenant_id="acme-eu"), _event(tenant_id="globex")]
    answer = httpx.post(f"{secured.url}/v1/events", json=batch, headers=_bearer(TOKEN_ACME),
                        timeout=30)
    body = problem(answer, 403)
    assert body["problems"][0]["index"] == 2
    assert body["problems"][0]["field"] == "tenant_id"
    # An event naming no tenant is for the default tenant, which acme's token is not bound to.
    answer = httpx.post(f"{secured.url}/v1/events", json=[_event()],
                        headers=_bearer(TOKEN_ACME), timeout=30)
    assert problem(answer, 403)["problems"][0]["index"] == 0
    # k8s audit events are held to the same binding.
    answer = httpx.post(f"{secured.url}/v1/k8s-audit", json=EVENT_LIST,
                        headers=_bearer(TOKEN_GLOBEX), timeout=30)
    assert problem(answer, 403)["problems"][0]["index"] == 0
    assert secured.last_seq() == before


def test_the_right_token_is_200(secured: Worker) -> None:
    before = secured.last_seq()
    acme = [_event(tenant_id="acme"), _event(tenant_id="acme-eu")]
    answer = httpx.post(f"{secured.url}/v1/events", json=acme, headers=_bearer(TOKEN_ACME),
                        timeout=30)
    _assert_committed(secured, answer, acme, before)
    before = secured.last_seq()
    globex = [_event(tenant_id="globex")]
    answer = httpx.post(f"{secured.url}/v1/events", json=globex, headers=_bearer(TOKEN_GLOBEX),
                        timeout=30)
    _assert_committed(secured, answer, globex, before)


def test_reading_needs_a_token_for_the_tenant_read(secured: Worker) -> None:
    url = f"{secured.url}/v1/events"
    problem(httpx.get(url, params={"tenant": "acme"}, timeout=30), 401)
    problem(httpx.get(url, params={"tenant": "acme"}, headers=_bearer("nope"), timeout=30), 401)
    problem(httpx.get(url, headers=_bearer(TOKEN_ACME), timeout=30), 403)
    problem(httpx.get(url, params={"tenant": "globex"}, headers=_bearer(TOKEN_ACME), timeout=30),
            403)
    answer = httpx.get(url, params={"tenant": "acme"}, headers=_bearer(TOKEN_ACME), timeout=30)
    assert answer.status_code == 200
    assert {orjson.loads(line)["tenant_id"] for line in answer.content.splitlines()} <= {"acme"}
    problem(httpx.post(f"{secured.url}/v1/exports/siem/resume", timeout=30), 401)


def test_a_token_that_is_not_utf8_is_401(tmp_path: Path) -> None:
    # A worker of its own: the 500 leaves a traceback in the log, which the secrets test reads.
    (tmp_path / "token").write_text(TOKEN_ACME, encoding="utf-8")
    tokens = [{"token": {"file": str(tmp_path / "token")}}]
    with running_worker(tmp_path / "w", ingest={"tokens": tokens}) as worker:
        answer = httpx.post(f"{worker.url}/v1/events", json=_event(tenant_id="acme"),
                            headers={"Authorization": b"Bearer \xff\xfe-token"}, timeout=30)
        assert worker.last_seq() == 0
    problem(answer, 401)


def test_a_rotated_token_file_is_used_without_a_restart(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("st-old-token-1111\n", encoding="utf-8")
    tokens = [{"token": {"file": str(token_file)}, "tenants": ["acme"]}]
    with running_worker(tmp_path / "w", ingest={"tokens": tokens}) as worker, \
            worker.client() as client:
        pid = worker.pid
        assert client.post("/v1/events", json=_event(tenant_id="acme"),
                           headers=_bearer("st-old-token-1111")).status_code == 200
        staged = tmp_path / "token.new"
        staged.write_text("st-new-token-2222\n", encoding="utf-8")
        staged.replace(token_file)  # atomic rename, as a Secret update lands
        before = worker.last_seq()
        answer = client.post("/v1/events", json=_event(tenant_id="acme"),
                             headers=_bearer("st-new-token-2222"))
        assert answer.status_code == 200, answer.text
        assert worker.last_seq() == before + 1
        problem(client.post("/v1/events", json=_event(tenant_id="acme"),
                            headers=_bearer("st-old-token-1111")), 401)
        assert worker.pid == pid
        assert worker.alive()
        assert worker.last_seq() == before + 1


# -- secrets ---------------------------------------------------------------------------------


def test_secrets_never_appear_in_responses_or_the_log(secured: Worker) -> None:
    secrets = [TOKEN_ACME, TOKEN_GLOBEX, TOKEN_ADMIN, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")]
    bodies: list[bytes] = []
    with secured.client() as client:
        for token in (TOKEN_ACME, TOKEN_GLOBEX, TOKEN_ACME + "-wrong", ""):
            headers = _bearer(token) if token else {}
            for method, path, options in (
                ("POST", "/v1/events", {"json": _event(tenant_id="acme")}),
                ("POST", "/v1/events", {"json": _event(tenant_id="globex")}),
                ("POST", "/v1/events", {"content": b"{not json"}),
                ("POST", "/v1/k8s-audit", {"json": EVENT_LIST}),
                ("GET", "/v1/events", {"params": {"tenant": "acme"}}),
                ("GET", "/v1/status", {}),
                ("GET", "/metrics", {}),
                ("POST", "/v1/exports/nope/resume", {}),
                ("GET", "/nope", {}),
            ):
                answer = client.request(method, path, headers=headers, **options)
                assert answer.status_code < 500, (path, answer.text)
                bodies.append(answer.content + str(answer.headers).encode())
        # Resume the export: it tries its dead URL (and signs with the secret) and fails.
        assert client.post("/v1/exports/siem/resume",
                           headers=_bearer(TOKEN_ADMIN)).json() == {"resumed": "siem"}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = client.get("/v1/status", headers=_bearer(TOKEN_ADMIN))
            bodies.append(status.content)
            if status.json()["exports"][0]["last_error"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the resumed export never tried to deliver")
    log = secured.log()
    assert "worker listening" in log  # the log is really captured
    for secret in secrets:
        assert all(secret.encode() not in body for body in bodies), secret
        assert secret not in log, secret
    assert "Traceback" not in log


def test_admin_listener_serves_status_and_metrics_but_never_audit_data(tmp_path: Path) -> None:
    admin_port = free_port()
    with running_worker(tmp_path, admin={"listen": f"127.0.0.1:{admin_port}"}) as worker:
        with worker.client() as client:
            assert client.post("/v1/events", json=_event()).status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin:
            assert admin.get("/healthz").status_code == 200
            assert admin.get("/readyz").status_code == 200
            status = admin.get("/v1/status")
            assert status.status_code == 200
            assert status.json()["last_seq"] == 1
            assert "sealtrail_audit_ingested_events_total 1.0" in admin.get("/metrics").text
            # No way in or out for audit data on the admin port.
            refused_in = admin.post("/v1/events", json=_event())
            refused_out = admin.get("/v1/events", params={"tenant": "default"})
            assert refused_in.status_code in (404, 405)
            assert refused_out.status_code in (404, 405)
            assert refused_in.headers["Content-Type"].startswith("application/json")
        assert worker.row_count() == 1
        assert f"admin on 127.0.0.1:{admin_port}" in worker.log()


# -- the admin token -------------------------------------------------------------------------

ADMIN_TOKEN = "st-adm-Vq3nX8pL2kR7wT5y"  # noqa: S105 - a test token
ADMIN_TOKEN_NEW = "st-adm-Jd6hB1sM9fQ4zC0u"  # noqa: S105 - a test token
METRICS_TOKEN = "st-met-Yw2eR5tU8iO1pA4s"  # noqa: S105 - a test token
#: What only the admin token opens on the admin listener (method, path).
ADMIN_ROUTES = (("GET", STATUS_PATH), ("GET", METRICS_PATH), ("POST", resume_path("siem")))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, str, Path]]:
    """A worker with an admin listener and an admin token file (no ingest tokens).

    Its export is live, to a port nothing listens on, so that it reads its secret (and shows a
    credential version) as soon as a row is stored. Checkpoints are signed for every row, so
    the status document has every part filled in.
    """
    directory = tmp_path_factory.mktemp("guarded-worker")
    (directory / "admin-token").write_text(ADMIN_TOKEN + "\n", encoding="utf-8")
    (directory / "metrics-token").write_text(METRICS_TOKEN + "\n", encoding="utf-8")
    (directory / "webhook-secret").write_text(WEBHOOK_SECRET + "\n", encoding="utf-8")
    generate_keypair(directory / "signing.key")
    export = {**_webhook_export(directory / "webhook-secret"), "paused": False}
    admin_port = free_port()
    with running_worker(directory, exports=[export],
                        checkpoints={"signingKey": {"file": str(directory / "signing.key")},
                                     "everyRows": 1},
                        admin={"listen": f"127.0.0.1:{admin_port}",
                               "token": {"file": str(directory / "admin-token")},
                               "metricsToken": {"file": str(directory / "metrics-token")}},
                        ) as running:
        with running.client() as client:
            client.post("/v1/events", json=_event(tenant_id="acme")).raise_for_status()
        yield running, f"http://127.0.0.1:{admin_port}", directory / "admin-token"


def _status_with_version(url: str, token: str) -> httpx.Response:
    """`/v1/status` once the export has read its secret (it has a row to send)."""
    deadline = time.monotonic() + 15
    while True:
        answer = httpx.get(f"{url}{STATUS_PATH}", headers=_bearer(token), timeout=30)
        assert answer.status_code == 200, answer.text
        if answer.json()["exports"][0]["credential_version"] or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def _refused(answer: httpx.Response, error: str) -> None:
    assert problem(answer, 401)["error"].startswith(error), answer.text
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="sealtrail"')


def test_admin_routes_refuse_no_token_and_a_wrong_one(guarded: tuple[Worker, str, Path]) -> None:
    worker, admin_url, _ = guarded
    for base in (admin_url, worker.url):  # the ingest listener serves them too
        for method, path in ADMIN_ROUTES:
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": ADMIN_TOKEN},
                            {"Authorization": f"Basic {ADMIN_TOKEN}"}):
                _refused(httpx.request(method, base + path, headers=headers, timeout=30),
                         "a bearer token is required")
            for token in ("wrong", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.lower()):
                answer = httpx.request(method, base + path, headers=_bearer(token), timeout=30)
                _refused(answer, "the bearer token is not valid")
                assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert ADMIN_TOKEN not in worker.log()


def test_admin_routes_answer_the_admin_token(guarded: tuple[Worker, str, Path]) -> None:
    worker, admin_url, _ = guarded
    for base in (admin_url, worker.url):
        with httpx.Client(base_url=base, headers=_bearer(ADMIN_TOKEN), timeout=30) as client:
            assert client.get(STATUS_PATH).json()["last_seq"] >= 1
            assert "sealtrail_audit_ingested_events_total" in client.get(METRICS_PATH).text
            assert client.post(resume_path("siem")).json() == {"resumed": "siem"}
            problem(client.post(resume_path("nope")), 404)


def test_the_metrics_token_opens_metrics_and_nothing_else(
        guarded: tuple[Worker, str, Path]) -> None:
    """What Prometheus holds lets it scrape, never read status or resume an export."""
    worker, admin_url, _ = guarded
    with httpx.Client(base_url=admin_url, headers=_bearer(METRICS_TOKEN), timeout=30) as client:
        assert "sealtrail_audit_ingested_events_total" in client.get(METRICS_PATH).text
        _refused(client.get(STATUS_PATH), "the bearer token is not valid")
        _refused(client.post(resume_path("siem")), "the bearer token is not valid")
    assert METRICS_TOKEN not in worker.log()


def test_probes_stay_open_and_the_admin_token_opens_no_audit_data(
        guarded: tuple[Worker, str, Path]) -> None:
    worker, admin_url, _ = guarded
    for base in (admin_url, worker.url):
        assert httpx.get(base + HEALTH_PATH, timeout=30).json() == {"ok": True}
        assert httpx.get(base + READY_PATH, timeout=30).json() == {"ready": True}
    refused = httpx.get(f"{admin_url}/v1/events", headers=_bearer(ADMIN_TOKEN), timeout=30)
    assert refused.status_code in (404, 405)


def test_the_admin_token_is_no_ingest_token(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN, encoding="utf-8")
    (tmp_path / "acme-token").write_text(TOKEN_ACME, encoding="utf-8")
    with running_worker(tmp_path / "w", ingest={"tokens": [
            {"token": {"file": str(tmp_path / "acme-token")}, "tenants": ["acme"]}]},
            admin={"token": {"file": str(tmp_path / "admin-token")}}) as worker, \
            worker.client() as client:
        admin = _bearer(ADMIN_TOKEN)
        problem(client.post("/v1/events", json=_event(tenant_id="acme"), headers=admin), 401)
        problem(client.get("/v1/events", params={"tenant": "acme"}, headers=admin), 401)
        assert worker.last_seq() == 0
        assert client.get(STATUS_PATH, headers=admin).status_code == 200
        # An ingest token still reads status on the ingest listener, as before.
        assert client.get(STATUS_PATH, headers=_bearer(TOKEN_ACME)).status_code == 200
        problem(client.post(resume_path("nope"), headers=_bearer(TOKEN_ACME)), 403)
        assert "no admin.token" not in worker.log()


def test_the_credential_version_is_keyed_with_the_admin_token(
        guarded: tuple[Worker, str, Path]) -> None:
    _, admin_url, _ = guarded
    [export] = _status_with_version(admin_url, ADMIN_TOKEN).json()["exports"]
    assert export["credential_version"] == credential_digest(WEBHOOK_SECRET, ADMIN_TOKEN.encode())
    plain = hashlib.sha256(WEBHOOK_SECRET.encode()).hexdigest()
    assert plain[:12] not in export["credential_version"]
    assert len(export["credential_version"]) == DIGEST_HEX_CHARS
    # Without the key the digest is not the value's under any other key either.
    assert export["credential_version"] != credential_digest(WEBHOOK_SECRET, b"guess")
    assert export["last_error"]  # it tried (and failed) to deliver: the secret was read


def test_worker_status_parses_the_real_document_and_gives_it_back(
        guarded: tuple[Worker, str, Path]) -> None:
    _, admin_url, _ = guarded
    answer = _status_with_version(admin_url, ADMIN_TOKEN)
    parsed = WorkerStatus.model_validate_json(answer.content)
    assert parsed.model_dump(mode="json") == answer.json()
    export = parsed.export("siem")
    assert export is not None
    assert export.lag_rows == parsed.last_seq - export.cursor
    assert parsed.export("nope") is None
    [tenant] = [item for item in parsed.tenants if item.tenant_id == "acme"]
    assert tenant.last_checkpoint is not None  # every row is checkpointed here
    # Strict about types, tolerant of keys it does not know (a newer worker's).
    document = answer.json()
    document["from_a_newer_worker"] = {"anything": 1}
    document["exports"][0]["also_new"] = True
    assert WorkerStatus.model_validate(document) == parsed
    document["exports"][0]["lag_rows"] = "12"
    with pytest.raises(ValidationError):
        WorkerStatus.model_validate(document)


def test_a_rotated_admin_token_file_is_used_without_a_restart(
        guarded: tuple[Worker, str, Path]) -> None:
    worker, admin_url, token_file = guarded
    pid = worker.pid
    staged = token_file.with_name("admin-token.new")
    staged.write_text(ADMIN_TOKEN_NEW + "\n", encoding="utf-8")
    staged.replace(token_file)  # atomic rename, as a Secret update lands
    try:
        for base in (admin_url, worker.url):
            _refused(httpx.get(base + STATUS_PATH, headers=_bearer(ADMIN_TOKEN), timeout=30),
                     "the bearer token is not valid")
            assert httpx.get(base + STATUS_PATH, headers=_bearer(ADMIN_TOKEN_NEW),
                             timeout=30).status_code == 200
        [export] = _status_with_version(admin_url, ADMIN_TOKEN_NEW).json()["exports"]
        assert export["credential_version"] == credential_digest(WEBHOOK_SECRET,
                                                                 ADMIN_TOKEN_NEW.encode())
        assert worker.pid == pid
        assert worker.alive()
    finally:
        token_file.write_text(ADMIN_TOKEN + "\n", encoding="utf-8")
    log = worker.log()
    assert ADMIN_TOKEN not in log
    assert ADMIN_TOKEN_NEW not in log


def test_without_an_admin_token_the_api_is_open_says_so_and_keys_its_own_digests(
        tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(WEBHOOK_SECRET, encoding="utf-8")
    export = {**_webhook_export(tmp_path / "secret"), "paused": False}
    admin_port = free_port()
    with running_worker(tmp_path / "w", exports=[export],
                        admin={"listen": f"127.0.0.1:{admin_port}"}) as worker:
        with worker.client() as client:
            client.post("/v1/events", json=_event()).raise_for_status()
        admin_url = f"http://127.0.0.1:{admin_port}"
        answer = _status_with_version(admin_url, "ignored")  # a token is not asked for
        version = answer.json()["exports"][0]["credential_version"]
        log = worker.log()
    assert version is not None
    assert version != hashlib.sha256(WEBHOOK_SECRET.encode()).hexdigest()[:12]
    assert len(version) == DIGEST_HEX_CHARS
    warnings = [line for line in log.splitlines() if "no admin.token" in line]
    assert len(warnings) == 1, log
    assert f"admin listener (127.0.0.1:{admin_port})" in warnings[0]


def test_an_unreadable_admin_token_is_503_not_401(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN, encoding="utf-8")
    with running_worker(tmp_path / "w", admin={"token": {"file": str(token_file)}}) as worker:
        token_file.unlink()
        answer = httpx.get(worker.url + STATUS_PATH, headers=_bearer(ADMIN_TOKEN), timeout=30)
        assert problem(answer, 503)["error"].startswith("the worker cannot read a token")
        assert httpx.get(worker.url + READY_PATH, timeout=30).status_code == 200
        log = worker.log()
    assert f"cannot read credential file {token_file}" in log
