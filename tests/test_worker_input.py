"""Hostile and edge-case input on the worker's HTTP API (issue 12, items 6-11, 14, 19).

Every test talks HTTP to a real `sealtrail worker` process and checks the store file read-only.
Covered: timestamps that overflow when converted to UTC (events, NDJSON, k8s audit, query
bounds); years before 1000 and lowercase `t`/`z`; k8s audit bodies nested a thousand deep;
`after_seq`/`limit` out of range or not plain digits; identifiers with a trailing newline;
status, metrics and resume behind tokens; slow and half-closing clients and how bad requests are
logged; the `Idempotency-Key` retry contract, across a restart too. Each answer is a 4xx naming
the field (never a 5xx, which clients retry forever) and nothing is stored.
"""

from __future__ import annotations

import concurrent.futures
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from sealtrail.api.event import Event, Severity
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.chain.ingest_keys import IngestKey, KeyConflict, KeyLimits, KeyReplay
from sealtrail.chain.store import ChainStore, EventTooLargeError
from tests.worker_process import Worker, running_worker

pytestmark = pytest.mark.timeout(120)

OVERFLOWING = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")
TOKEN_TENANT = "st-tenant-Xy7q2Lm9Vb3nK8sD"  # noqa: S105 - a test token
TOKEN_ADMIN = "st-admin-Pq4w8Zr1Nc6vH2jT"  # noqa: S105 - a test token


def _event(**fields: Any) -> dict[str, Any]:
    return {"event_type": "safety.decision", "severity": "INFO", **fields}


def _audit_list(*items: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": list(items)}


def _audit_item(**fields: Any) -> dict[str, Any]:
    return {"verb": "get", "objectRef": {"resource": "pods", "namespace": "k8s"},
            "stageTimestamp": "2026-11-20T09:14:03.131517Z", **fields}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with running_worker(tmp_path_factory.mktemp("input-worker")) as running:
        yield running


@pytest.fixture(scope="module")
def client(worker: Worker) -> Iterator[httpx.Client]:
    with worker.client() as opened:
        yield opened


def refused(response: httpx.Response, field: str, status: int = 400) -> dict[str, Any]:
    """A JSON client-mistake answer that names `field` (in a problem or the error)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = orjson.loads(response.content)
    named = [problem.get("field", "") for problem in body.get("problems", [])]
    assert field in named or body["error"].startswith(f"{field}:") or (
        f".{field}:" in body["error"]), body
    return body


# -- 6: timestamps that overflow in UTC ------------------------------------------------------


@pytest.mark.parametrize("stamp", OVERFLOWING)
def test_an_overflowing_event_timestamp_is_400_naming_it(worker: Worker, client: httpx.Client,
                                                         stamp: str) -> None:
    before = worker.last_seq()
    body = refused(client.post("/v1/events", json=[_event(), _event(timestamp=stamp)]),
                   "timestamp")
    assert body["problems"][0]["index"] == 1
    ndjson = b"\n".join(orjson.dumps(item) for item in [_event(), _event(timestamp=stamp)])
    body = refused(client.post("/v1/events", content=ndjson,
                               headers={"Content-Type": "application/x-ndjson"}), "timestamp")
    audit = _audit_list(_audit_item(), _audit_item(stageTimestamp=stamp))
    body = refused(client.post("/v1/k8s-audit", json=audit), "stageTimestamp")
    assert body["problems"][0]["index"] == 1
    assert worker.last_seq() == before


@pytest.mark.parametrize("stamp", OVERFLOWING)
@pytest.mark.parametrize("name", ["since", "until"])
def test_an_overflowing_query_bound_is_400_naming_it(client: httpx.Client, stamp: str,
                                                     name: str) -> None:
    refused(client.get("/v1/events", params={name: stamp}), name)


# -- 7: deep nesting -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["auditID", "annotations", "objectRef", "user", "extraneous"])
def test_a_k8s_value_nested_a_thousand_deep_is_400(worker: Worker, client: httpx.Client,
                                                   field: str) -> None:
    before = worker.last_seq()
    deep = "[" * 1000 + "]" * 1000
    body = (b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"verb":"get","'
            + field.encode() + b'":' + deep.encode() + b"}]}")
    answer = client.post("/v1/k8s-audit", content=body)
    assert answer.status_code == 400, answer.text
    assert "64 levels" in answer.json()["error"]
    assert worker.last_seq() == before


def test_k8s_values_that_must_be_scalars_are_named(client: httpx.Client) -> None:
    refused(client.post("/v1/k8s-audit", json=_audit_list(_audit_item(auditID=[1]))), "auditID")
    refused(client.post("/v1/k8s-audit", json=_audit_list(
        _audit_item(responseStatus={"code": 10**6}))), "responseStatus.code")


# -- 8: after_seq and limit ------------------------------------------------------------------


@pytest.mark.parametrize("value", [str(2**63), str(10**30), "-1", "+1", " 1", "1_0", "\u0661"])
@pytest.mark.parametrize("name", ["after_seq", "limit"])
def test_a_query_number_out_of_range_or_not_digits_is_400(client: httpx.Client, name: str,
                                                          value: str) -> None:
    refused(client.get("/v1/events", params={name: value}), name)


def test_the_largest_after_seq_is_accepted(client: httpx.Client) -> None:
    answer = client.get("/v1/events", params={"after_seq": str(2**63 - 1)})
    assert answer.status_code == 200
    assert answer.content == b""


# -- 9: identifiers with a trailing newline --------------------------------------------------


@pytest.mark.parametrize(("fields", "field"), [
    ({"tenant_id": "acme\n"}, "tenant_id"),
    ({"event_type": "safety.decision\n"}, "event_type"),
    ({"extra": {"region\n": "eu"}}, "extra.region\n.[key]"),
])
def test_an_identifier_with_a_trailing_newline_is_400(worker: Worker, client: httpx.Client,
                                                      fields: dict[str, Any], field: str) -> None:
    before = worker.last_seq()
    refused(client.post("/v1/events", json=_event(**fields)), field)
    assert worker.last_seq() == before


def test_a_k8s_namespace_with_a_trailing_newline_is_400(client: httpx.Client) -> None:
    item = _audit_item(objectRef={"resource": "pods", "namespace": "k8s\n"})
    refused(client.post("/v1/k8s-audit", json=_audit_list(item)), "objectRef.namespace")


# -- 10: the fixed timestamp format ----------------------------------------------------------


@pytest.mark.parametrize(("given", "stored"), [
    ("0099-03-01T00:00:00Z", "0099-03-01T00:00:00.000000Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
    ("0001-01-01T01:00:00+01:00", "0001-01-01T00:00:00.000000Z"),
    ("2026-11-22t10:00:00z", "2026-11-22T10:00:00.000000Z"),
    ("2026-11-22t12:00:00.5+02:00", "2026-11-22T10:00:00.500000Z"),
])
def test_timestamps_are_stored_in_the_fixed_format(worker: Worker, client: httpx.Client,
                                                   given: str, stored: str) -> None:
    answer = client.post("/v1/events", json=_event(tenant_id="stamps", timestamp=given))
    assert answer.status_code == 200, answer.text
    seq = answer.json()["events"][0]["seq"]
    assert worker.rows(after_seq=seq - 1)[0]["timestamp"] == stored


def test_a_lowercase_query_bound_is_accepted(client: httpx.Client) -> None:
    assert client.get("/v1/events", params={"since": "2026-01-01t00:00:00z"}).status_code == 200


# -- 14: status, metrics and resume behind tokens --------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    directory = tmp_path_factory.mktemp("secured-input-worker")
    tokens = [{"token": {"env": "ST_TEST_TENANT_TOKEN"}, "tenants": ["acme"]},
              {"token": {"env": "ST_TEST_ADMIN_TOKEN"}}]
    export = {"name": "siem", "paused": True,
              "webhook": {"url": "http://127.0.0.1:9/hook",
                          "secret": {"env": "ST_TEST_WEBHOOK_SECRET"}}}
    env = {"ST_TEST_TENANT_TOKEN": TOKEN_TENANT, "ST_TEST_ADMIN_TOKEN": TOKEN_ADMIN,
           "ST_TEST_WEBHOOK_SECRET": "whsec_c2VhbHRyYWlsLXRlc3Qtc2VjcmV0"}
    with running_worker(directory, env=env, ingest={"tokens": tokens},
                        exports=[export]) as running:
        yield running


def test_status_metrics_and_resume_need_a_token_on_the_ingest_port(secured: Worker) -> None:
    with secured.client() as client:
        for method, path in (("GET", "/v1/status"), ("GET", "/metrics"),
                             ("POST", "/v1/exports/siem/resume")):
            answer = client.request(method, path)
            assert answer.status_code == 401, (path, answer.text)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            answer = client.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert answer.status_code == 401, (path, answer.text)
        tenant = {"Authorization": f"Bearer {TOKEN_TENANT}"}
        assert client.get("/v1/status", headers=tenant).status_code == 200
        assert client.get("/metrics", headers=tenant).status_code == 200


def test_only_a_token_bound_to_no_tenant_may_resume_an_export(secured: Worker) -> None:
    with secured.client() as client:
        answer = client.post("/v1/exports/siem/resume",
                             headers={"Authorization": f"Bearer {TOKEN_TENANT}"})
        assert answer.status_code == 403, answer.text
        answer = client.post("/v1/exports/siem/resume",
                             headers={"Authorization": f"Bearer {TOKEN_ADMIN}"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"resumed": "siem"}


# -- 11: slow, half-closing and malformed clients --------------------------------------------


def _connect(worker: Worker) -> socket.socket:
    host, port = worker.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _read_all(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_client_that_half_closes_after_sending_gets_its_answer(worker: Worker) -> None:
    body = orjson.dumps(_event(tenant_id="halfclose"))
    request = (b"POST /v1/events HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    before = worker.last_seq()
    with _connect(worker) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        answer = _read_all(connection)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert worker.last_seq() == before + 1
    assert b'"stored":1' in answer


def test_a_client_that_sends_its_headers_slowly_is_timed_out(tmp_path: Path) -> None:
    with running_worker(tmp_path, ingest={"readTimeoutSeconds": 1}) as worker:
        with _connect(worker) as connection:
            connection.sendall(b"POST /v1/events HTTP/1.1\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 10:
                try:
                    connection.sendall(b"X")
                except OSError:
                    closed = True
                    break
                connection.settimeout(0.5)
                try:
                    if connection.recv(65536) == b"":
                        closed = True
                        break
                except ConnectionResetError:  # closed while our next byte was in flight
                    closed = True
                    break
                except TimeoutError:
                    pass
            assert closed, "the worker kept a slow client's connection open"
            assert time.monotonic() - started < 5
        with _connect(worker) as connection:  # a body that never completes: 408
            connection.sendall(b"POST /v1/events HTTP/1.1\r\nHost: w\r\nContent-Length: 100\r\n"
                               b"Content-Type: application/json\r\n\r\n{")
            answer = _read_all(connection)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"application/json" in answer
        assert worker.last_seq() == 0


def test_a_malformed_request_is_logged_on_one_line_without_a_traceback(worker: Worker) -> None:
    with _connect(worker) as connection:
        connection.sendall(b"POST /v1/events HTTP/1.1\r\nHost: w\r\nContent-Length: x\r\n\r\n")
        answer = _read_all(connection)
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer
    time.sleep(0.2)
    log = worker.log()
    assert "bad HTTP request" in log
    assert "Traceback" not in log
    assert " ERROR " not in log


# -- 19: Idempotency-Key ---------------------------------------------------------------------


def test_a_retry_with_the_same_key_returns_the_first_answer(worker: Worker,
                                                            client: httpx.Client) -> None:
    sent = [_event(tenant_id="idem", action="once"), _event(tenant_id="idem", action="twice")]
    key = {"Idempotency-Key": "3f1c6a52-9d1e-4c59-8d2b-0d8f5c1e7a11"}
    first = client.post("/v1/events", json=sent, headers=key)
    assert first.status_code == 200, first.text
    before = worker.last_seq()
    again = client.post("/v1/events", json=sent, headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert worker.last_seq() == before
    other = client.post("/v1/events", json=[sent[0]], headers=key)
    refused(other, "Idempotency-Key", 422)
    assert worker.last_seq() == before
    fresh = client.post("/v1/events", json=sent,
                        headers={"Idempotency-Key": "another-key-0001"})
    assert fresh.status_code == 200
    assert worker.last_seq() == before + 2


@pytest.mark.parametrize("key", ["", "a" * 256, "key with space", "key\tx", "ключ"])
def test_a_malformed_idempotency_key_is_400(worker: Worker, client: httpx.Client,
                                            key: str) -> None:
    before = worker.last_seq()
    answer = client.post("/v1/events", json=_event(),
                         headers={"Idempotency-Key": key.encode()})
    refused(answer, "Idempotency-Key")
    assert worker.last_seq() == before


def test_a_refused_request_does_not_use_up_its_key(worker: Worker, client: httpx.Client) -> None:
    key = {"Idempotency-Key": "refused-first-0001"}
    refused(client.post("/v1/events", json=_event(severity="LOUD"), headers=key), "severity")
    answer = client.post("/v1/events", json=_event(tenant_id="idem"), headers=key)
    assert answer.status_code == 200
    assert "Idempotent-Replayed" not in answer.headers


def test_idempotency_keys_survive_a_restart(tmp_path: Path) -> None:
    sent = _event(tenant_id="idem")
    key = {"Idempotency-Key": "restart-key-0001"}
    with running_worker(tmp_path) as worker, worker.client() as client:
        first = client.post("/v1/events", json=sent, headers=key)
        assert first.status_code == 200
    with running_worker(tmp_path) as worker, worker.client() as client:
        again = client.post("/v1/events", json=sent, headers=key)
        assert again.status_code == 200
        assert again.json() == first.json()
        assert worker.last_seq() == 1


# -- siblings: numeric ranges in the config --------------------------------------------------


@pytest.mark.parametrize("section", ["ingest", "admin"])
def test_a_listen_port_over_65535_is_a_config_error_not_a_crash(section: str) -> None:
    with pytest.raises(ValidationError, match="the port must be 0-65535"):
        WorkerConfig.model_validate({section: {"listen": "127.0.0.1:99999"}})
    assert WorkerConfig.model_validate({section: {"listen": "127.0.0.1:65535"}})


# -- the keys in the store ---------------------------------------------------------------------


def _rows(*actions: str) -> list[dict[str, Any]]:
    return [Event(event_type="safety.decision", severity=Severity.INFO, tenant_id="idem",
                  action=action).row_fields() for action in actions]


def _key(key: str, digest: str = "d1") -> IngestKey:
    return IngestKey(key, digest, lambda stored: orjson.dumps([s.seq for s in stored]))


def test_a_key_commits_with_its_rows_and_answers_every_retry(tmp_path: Path) -> None:
    first, other = ChainStore(tmp_path / "audit.db"), ChainStore(tmp_path / "audit.db")
    stored = first.append_keyed(_rows("a", "b"), _key("k"))
    assert isinstance(stored, list)
    assert [s.seq for s in stored] == [1, 2]
    assert other.find_key("k", "d1") == KeyReplay(b"[1,2]")  # another process sees it
    assert other.append_keyed(_rows("a", "b"), _key("k")) == KeyReplay(b"[1,2]")
    assert isinstance(other.append_keyed(_rows("a"), _key("k", "d2")), KeyConflict)
    assert isinstance(other.find_key("k", "d2"), KeyConflict)
    assert other.find_key("unknown", "d1") is None
    assert other.last_seq() == 2  # nothing stored by a replay or a conflict
    for store in (first, other):
        store.close()


def test_a_key_is_kept_only_if_its_rows_are_and_the_other_way_round(tmp_path: Path) -> None:
    store = ChainStore(tmp_path / "audit.db")

    def broken(_: list[Any]) -> bytes:  # fails after the rows were inserted, before the commit
        raise RuntimeError("the answer could not be built")

    with pytest.raises(RuntimeError):
        store.append_keyed(_rows("a"), IngestKey("k", "d1", broken))
    assert store.last_seq() == 0
    assert store.find_key("k", "d1") is None  # neither the rows nor the key
    too_large = _rows("a")
    too_large[0]["reason"] = "x" * 300_000
    with pytest.raises(EventTooLargeError):
        store.append_keyed(too_large, _key("k"))
    assert store.find_key("k", "d1") is None
    assert isinstance(store.append_keyed(_rows("a"), _key("k")), list)  # the key is free
    store.close()


def test_two_requests_with_one_key_at_once_store_once(tmp_path: Path) -> None:
    stores = [ChainStore(tmp_path / "audit.db") for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: s.append_keyed(_rows("a", "b", "c"), _key("same")),
                                stores))
    assert sum(isinstance(result, list) for result in results) == 1
    assert sum(isinstance(result, KeyReplay) for result in results) == 3
    assert stores[0].last_seq() == 3
    for store in stores:
        store.close()


def test_keys_are_bounded_in_number_and_time(tmp_path: Path) -> None:
    store = ChainStore(tmp_path / "audit.db")
    store.key_limits = KeyLimits(keep_seconds=3600, max_keys=3)
    for number in range(5):
        assert isinstance(store.append_keyed(_rows("a"), _key(f"k{number}")), list)
        store._key_sweeper.swept = 0.0  # sweep on every append, not once a second
    with sqlite3.connect(tmp_path / "audit.db") as db:
        remaining = {key for (key,) in db.execute("SELECT key FROM ingest_keys")}
    assert len(remaining) <= 3
    assert "k4" in remaining
    assert "k0" not in remaining
    store.key_limits = KeyLimits(keep_seconds=0, max_keys=3)
    store._key_sweeper.swept = 0.0
    assert isinstance(store.append_keyed(_rows("b"), _key("k4", "other digest")), list)
    store.close()
