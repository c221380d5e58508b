"""Fuzzing the ingest API of the real worker process with hypothesis.

Runs against the real `sealtrail worker` process (one per module, started by
`tests.worker_process`, on 127.0.0.1), over HTTP with a sync httpx client: slower per example
than an in-process aiohttp TestServer, but it exercises exactly what clients meet (the CLI
entry point, the real socket, aiohttp's parser and the store in its own process). Bodies are:

* arbitrary JSON values (any nesting, huge integers, lone-surrogate escapes, ...);
* arbitrary bytes, under several content types;
* near-valid events: valid events with one field replaced by an arbitrary JSON value (or an
  unknown field added), alone, as arrays and as NDJSON batches;
* near-valid `audit.k8s.io/v1` EventLists for `POST /v1/k8s-audit`.

For every answer: the status is 200 or 4xx (never 5xx, never a dropped connection); a 4xx body
is JSON with a non-empty `error`; the store's row count (read from the file, read-only) grows
only on 200 and by exactly the number the answer reports. For near-valid events a 400 must name
the replaced field of a replaced event and no other. Bounded: a few hundred examples in total,
a few seconds of wall time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.worker_process import Worker, running_worker

pytestmark = pytest.mark.timeout(180)

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FIELDS = ("event_type", "severity", "tenant_id", "timestamp", "agent_id", "job_id", "action",
          "decision", "matched_rule", "reason", "risk_tags", "capabilities", "policy_version",
          "identity", "extra")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with running_worker(tmp_path_factory.mktemp("fuzz-worker"),
                        ingest={"maxEventsPerRequest": 20}) as running:
        yield running


@pytest.fixture(scope="module")
def client(worker: Worker) -> Iterator[httpx.Client]:
    with worker.client() as opened:
        yield opened


# -- strategies ------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


@st.composite
def encoded_json(draw: st.DrawFn, value: st.SearchStrategy[Any] = json_values) -> bytes:
    """A JSON text as a client library might write it (ASCII-escaped or raw UTF-8)."""
    document = draw(value)
    if draw(st.booleans()):
        return json.dumps(document, ensure_ascii=True).encode()
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _lower(max_size: int) -> st.SearchStrategy[str]:
    return st.text("abcdefghijklmnopqrstuvwxyz0123456789_", max_size=max_size)


event_types = st.builds(
    lambda head, rest, tails: ".".join([head + rest, *tails]),
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"), _lower(8),
    st.lists(st.builds(lambda a, b: a + b, st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
                       _lower(8)), min_size=1, max_size=2),
).filter(lambda value: not value.startswith("sealtrail."))
tenants = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z") | st.just("_system")
short_text = st.text(min_size=1, max_size=40)
timestamps = st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat())
extra_keys = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,20}\Z")

valid_events = st.fixed_dictionaries(
    {"event_type": event_types,
     "severity": st.sampled_from(["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO"])},
    optional={
        "tenant_id": tenants, "timestamp": timestamps, "agent_id": short_text,
        "job_id": short_text, "action": short_text,
        "decision": st.sampled_from(["allow", "deny", "require_approval", "throttle"]),
        "matched_rule": short_text, "reason": st.text(min_size=1, max_size=200),
        "risk_tags": st.lists(short_text, max_size=4),
        "capabilities": st.lists(short_text, max_size=4), "policy_version": short_text,
        "identity": short_text, "extra": st.dictionaries(extra_keys, st.text(max_size=40),
                                                         max_size=4),
    },
)


@st.composite
def near_valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid event with one field replaced by (or one unknown field set to) any JSON value."""
    event = draw(valid_events)
    key = draw(st.sampled_from(FIELDS) | st.text(max_size=12))
    event[key] = draw(json_values)
    return event, key


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[dict[str, Any], str | None]]:
    """1-6 events, some valid (key None), some near-valid (the key replaced)."""
    items = draw(st.lists(
        st.one_of(valid_events.map(lambda event: (event, None)), near_valid_events()),
        min_size=1, max_size=6))
    return [(event, key) for event, key in items]


# -- the invariants --------------------------------------------------------------------------


def check(worker: Worker, client: httpx.Client, method: str, path: str, body: bytes,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Send; assert 200-or-4xx, JSON errors, and that rows grew exactly as reported."""
    before = worker.row_count()
    answer = client.request(method, path, content=body, headers=headers or {})
    after = worker.row_count()
    assert answer.status_code == 200 or 400 <= answer.status_code < 500, (
        answer.status_code, answer.text[:500])
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    document = orjson.loads(answer.content)
    assert isinstance(document, dict)
    if answer.status_code == 200:
        assert document["stored"] == len(document["events"])
        assert after - before == document["stored"]
        assert [item["seq"] for item in document["events"]] == list(
            range(before + 1, before + 1 + document["stored"]))
    else:
        assert isinstance(document.get("error"), str)
        assert document["error"]
        assert "Traceback" not in answer.text
        assert after == before
    return answer.status_code, document


def _names(problem: dict[str, Any], key: str) -> bool:
    field = problem["field"]
    return field == key or field.startswith((f"{key}.", f"{key}["))


# -- the tests -------------------------------------------------------------------------------


@FUZZ
@given(body=encoded_json(), ndjson=st.booleans())
def test_any_json_value_is_answered_200_or_4xx(worker: Worker, client: httpx.Client, body: bytes,
                                               ndjson: bool) -> None:
    headers = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
    check(worker, client, "POST", "/v1/events", body, headers)


@FUZZ
@given(body=st.binary(max_size=3000) | encoded_json().map(lambda text: text[:-1]),
       content_type=st.sampled_from(["application/json", "application/x-ndjson",
                                     "text/plain", "application/octet-stream"]))
def test_any_bytes_are_answered_200_or_4xx(worker: Worker, client: httpx.Client, body: bytes,
                                           content_type: str) -> None:
    check(worker, client, "POST", "/v1/events", body, {"Content-Type": content_type})


@FUZZ
@given(item=near_valid_events())
def test_a_near_valid_event_is_refused_for_its_replaced_field_only(
    worker: Worker, client: httpx.Client, item: tuple[dict[str, Any], str],
) -> None:
    event, key = item
    status, document = check(worker, client, "POST", "/v1/events", json.dumps(event).encode())
    if status == 200:
        assert document["stored"] == 1
    else:
        assert status == 400, document
        assert document["problems"]
        for problem in document["problems"]:
            assert problem["index"] == 0
            assert _names(problem, key), (key, problem)


@FUZZ
@given(batch=batches(), ndjson=st.booleans())
def test_a_batch_is_all_stored_or_refused_naming_only_bad_events(
    worker: Worker, client: httpx.Client, batch: list[tuple[dict[str, Any], str | None]],
    ndjson: bool,
) -> None:
    events = [event for event, _ in batch]
    if ndjson:
        body = b"".join(json.dumps(event).encode() + b"\n" for event in events)
        headers = {"Content-Type": "application/x-ndjson"}
    else:
        body, headers = json.dumps(events).encode(), {"Content-Type": "application/json"}
    status, document = check(worker, client, "POST", "/v1/events", body, headers)
    if status == 200:
        assert document["stored"] == len(events)
        return
    assert status == 400, document
    for problem in document["problems"]:
        replaced = batch[problem["index"]][1]
        assert replaced is not None, (problem, "a valid event was blamed")
        assert _names(problem, replaced), (replaced, problem)


_AUDIT_ITEM = {
    "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
    "auditID": "5f0b3d4e-7a51-4f5e-a1b8-3c1b1a0e9d01", "stage": "ResponseComplete",
    "requestURI": "/api/v1/namespaces/payments/secrets", "verb": "create",
    "user": {"username": "system:serviceaccount:ci:deployer"}, "sourceIPs": ["10.0.3.17"],
    "userAgent": "kubectl/v1.31.2", "objectRef": {"resource": "secrets", "namespace": "payments"},
    "responseStatus": {"metadata": {}, "code": 201},
    "requestReceivedTimestamp": "2026-11-20T09:14:03.118201Z",
    "stageTimestamp": "2026-11-20T09:14:03.131517Z",
    "annotations": {"authorization.k8s.io/decision": "allow"},
}
@st.composite
def near_valid_event_lists(draw: st.DrawFn) -> bytes:
    items = []
    for _ in range(draw(st.integers(1, 4))):
        item = dict(_AUDIT_ITEM)
        if draw(st.booleans()):
            key = draw(st.sampled_from(sorted(_AUDIT_ITEM)) | st.text(max_size=10))
            item[key] = draw(json_values)
        items.append(item)
    body: dict[str, Any] = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(["kind", "apiVersion", "items"]))] = draw(json_values)
    return json.dumps(body).encode()


@FUZZ
@given(body=near_valid_event_lists() | encoded_json())
def test_k8s_audit_answers_200_or_4xx(worker: Worker, client: httpx.Client, body: bytes) -> None:
    check(worker, client, "POST", "/v1/k8s-audit", body)


def test_the_worker_survived_the_fuzzing(worker: Worker, client: httpx.Client) -> None:
    assert worker.alive()
    assert client.get("/readyz").status_code == 200
    assert "Traceback" not in worker.log()
