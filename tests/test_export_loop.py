"""The export loop's own behaviour, seen through its metrics and status, on loopback.

Covers: metrics count what was delivered and how (events, bytes, cursor, outcomes, failures by
retryability) on the injected registry; the interval widens while the receiver pushes back and
collapses once the queue drains; a row too large for the backend is refused without being
sent, counted, and pauses the export instead of being skipped; a paused export resumes by
itself when its credential changes, and on an explicit resume; routing sends each row only to
its exports while every cursor still moves past rows that are not its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from sealtrail.api.event import Event
from sealtrail.api.export import ExportsConfig, RouteRule
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import BatchLimits
from sealtrail.export.backends.datadog import DatadogBackend
from sealtrail.export.engine import ExportEngine

from .conftest import events
from .receivers.datadog import DatadogCase
from .receivers.splunk import SplunkCase
from .receivers.webhook import WebhookCase
from .test_export_conformance import wait_for, write_credential

SECRET = "whsec_" + "bG9vcC10ZXN0cy1zZWNyZXQtb25lLTEyMzQ1Njc4"
Body = Callable[[ExportEngine, ChainStore], Awaitable[Any]]


@pytest.fixture
def webhook() -> Iterator[WebhookCase]:
    case = WebhookCase()
    case.start()
    try:
        yield case
    finally:
        case.close()


@pytest.fixture
def credential(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    write_credential(path, SECRET)
    return path


def engine_run(db: Path, config: ExportsConfig, body: Body) -> tuple[Any, CollectorRegistry]:
    registry = CollectorRegistry()

    async def main() -> Any:
        with ChainStore(db) as store:
            engine = ExportEngine(store, config, registry)
            try:
                return await body(engine, store)
            finally:
                await engine.stop()

    return asyncio.run(main()), registry


def test_metrics_count_what_was_delivered(tmp_path: Path, webhook: WebhookCase,
                                          credential: Path) -> None:
    db = tmp_path / "audit.db"
    with ChainStore(db) as store:
        store.append(events(120))
        stored = list(store.rows())
    webhook.fail_next("retryable", 2)
    spec = webhook.export_spec("hook", credential)

    async def body(engine: ExportEngine, _: ChainStore) -> bool:
        return await engine.drain(30)

    drained, registry = engine_run(db, ExportsConfig(exports=[spec]), body)
    assert drained
    value = registry.get_sample_value
    assert value("sealtrail_audit_export_events_total", {"export": "hook"}) == 120
    assert value("sealtrail_audit_export_bytes_total", {"export": "hook"}) == sum(map(len, stored))
    assert value("sealtrail_audit_export_last_seq", {"export": "hook"}) == 120
    assert value("sealtrail_audit_export_failures_total",
                 {"export": "hook", "retryable": "true"}) == 2
    assert value("sealtrail_audit_export_failures_total",
                 {"export": "hook", "retryable": "false"}) is None
    assert value("sealtrail_audit_export_outcomes_total",
                 {"export": "hook", "outcome": "retryable"}) == 2
    assert value("sealtrail_audit_export_paused", {"export": "hook"}) == 0
    assert value("sealtrail_audit_export_request_seconds_count", {"export": "hook"}) >= 3
    allowed = {"hook", "true", "false", "success", "retryable", "permanent", "auth"}
    for family in registry.collect():  # labels hold names and classes: no content, no secret
        for item in family.samples:
            for name, label in item.labels.items():
                assert name == "le" or label in allowed, (family.name, name, label)


def test_interval_widens_under_pushback_and_collapses_when_drained(
    tmp_path: Path, webhook: WebhookCase, credential: Path
) -> None:
    db = tmp_path / "audit.db"
    with ChainStore(db) as store:
        store.append(events(20))
    spec = webhook.export_spec("hook", credential)
    spec = spec.model_copy(update={"batch": spec.batch.model_copy(
        update={"interval_ms": 20, "max_interval_ms": 160})})
    webhook.fail_next("retryable", 6)

    async def body(engine: ExportEngine, _: ChainStore) -> tuple[int, int]:
        engine.start()
        loop = engine.loops["hook"]
        await asyncio.to_thread(wait_for, lambda: loop.interval.at_max, 20, "the interval to widen")
        widest = loop.interval.current_ms
        await asyncio.to_thread(wait_for, lambda: loop.cursor == 20, 20, "delivery")
        await asyncio.to_thread(wait_for, lambda: loop.interval.current_ms == 20, 20, "collapse")
        return widest, loop.interval.current_ms

    (widest, settled), registry = engine_run(db, ExportsConfig(exports=[spec]), body)
    assert widest == 160
    assert settled == 20
    assert registry.get_sample_value("sealtrail_audit_batch_interval_ms", {"export": "hook"}) == 20
    assert registry.get_sample_value("sealtrail_audit_batch_interval_max_ms",
                                     {"export": "hook"}) == 160


def test_a_row_too_big_for_the_backend_pauses_rather_than_being_skipped(
    tmp_path: Path, credential: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Datadog's real per-log limit is 1 MB, more than the store lets an event be; lower it so
    # that a stored row can be over it, as a syslog row over 64 KiB is for real.
    monkeypatch.setattr(DatadogBackend, "limits",
                        property(lambda _: BatchLimits(1000, 4_998_999, 100_000)))
    datadog = DatadogCase()
    datadog.start()
    try:
        db = tmp_path / "audit.db"
        big = Event.model_validate({
            "event_type": "a.b", "severity": "INFO", "tenant_id": "acme",
            "extra": {f"k{n}": "x" * 8000 for n in range(31)},
        })
        with ChainStore(db) as store:
            store.append(events(3, tenants=("acme",)))
            store.append([big])  # ~250 KB: within the store's limit, over the backend's
            store.append(events(3, seed=2, tenants=("acme",)))
        spec = datadog.export_spec("dd", credential)

        async def body(engine: ExportEngine, _: ChainStore) -> Any:
            engine.start()
            loop = engine.loops["dd"]
            await asyncio.to_thread(wait_for, lambda: loop.paused, 30, "the export to pause")
            return loop.status()

        status, registry = engine_run(db, ExportsConfig(exports=[spec]), body)
        assert status.cursor == 3  # the rows before it, not the row itself, not those after
        with ChainStore(db) as store:
            assert status.rejected_row == f"{store.store_id}:acme:4"
        assert status.pause_reason is not None
        assert "5 consecutive permanent failures" in status.pause_reason
        assert registry.get_sample_value("sealtrail_audit_export_rejected_rows_total",
                                         {"export": "dd"}) == 5
        assert len(datadog.received()) == 3
    finally:
        datadog.close()


def test_paused_export_resumes_when_its_credential_changes(
    tmp_path: Path, webhook: WebhookCase, credential: Path
) -> None:
    db = tmp_path / "audit.db"
    with ChainStore(db) as store:
        store.append(events(10))
    spec = webhook.export_spec("hook", credential)
    webhook.fail_next("permanent", 5)

    async def body(engine: ExportEngine, _: ChainStore) -> tuple[str | None, int]:
        engine.start()
        loop = engine.loops["hook"]
        await asyncio.to_thread(wait_for, lambda: loop.paused, 20, "the pause")
        reason = loop.pause_reason
        rotated = "whsec_" + "cmVzdW1lLWJ5LXJvdGF0aW9uLTk4NzY1NDMyMTA="
        webhook.set_credential(rotated)
        write_credential(credential, rotated)
        await asyncio.to_thread(wait_for, lambda: loop.cursor == 10, 20, "resumed delivery")
        return reason, loop.failures

    (reason, failures), _ = engine_run(db, ExportsConfig(exports=[spec]), body)
    assert reason is not None
    assert failures == 0
    assert len(webhook.received()) == 10


def test_explicit_pause_and_resume(tmp_path: Path, webhook: WebhookCase,
                                   credential: Path) -> None:
    db = tmp_path / "audit.db"
    with ChainStore(db) as store:
        store.append(events(10))
    spec = webhook.export_spec("hook", credential).model_copy(update={"paused": True})

    async def body(engine: ExportEngine, _: ChainStore) -> tuple[int, int]:
        engine.start()
        await asyncio.sleep(0.5)
        before = len(webhook.received())
        engine.resume("hook")
        await asyncio.to_thread(wait_for, lambda: engine.loops["hook"].cursor == 10, 20, "resume")
        return before, len(webhook.received())

    (before, after), registry = engine_run(db, ExportsConfig(exports=[spec]), body)
    assert before == 0
    assert after == 10
    assert registry.get_sample_value("sealtrail_audit_export_paused", {"export": "hook"}) == 0


def test_routing_sends_each_row_only_where_it_belongs(tmp_path: Path, credential: Path) -> None:
    first, second = WebhookCase(), WebhookCase()
    first.start()
    second.start()
    try:
        db = tmp_path / "audit.db"
        with ChainStore(db) as store:
            store.append(events(90, tenants=("acme", "globex", "initech")))
            stored = [orjson.loads(row) for row in store.rows()]
        config = ExportsConfig(
            exports=[first.export_spec("acme-only", credential),
                     second.export_spec("the-rest", credential)],
            routes=[RouteRule(tenants=["acme"], exports=["acme-only"]),
                    RouteRule(tenants=["glob*"], exports=["the-rest"])],
        )

        async def body(engine: ExportEngine, _: ChainStore) -> dict[str, int]:
            assert await engine.drain(30)
            return {name: loop.cursor for name, loop in engine.loops.items()}

        cursors, _ = engine_run(db, config, body)
        assert cursors == {"acme-only": 90, "the-rest": 90}  # past rows that go elsewhere
        assert [orjson.loads(r)["seq"] for r in first.received()] == [
            row["seq"] for row in stored if row["tenant_id"] == "acme"]
        assert [orjson.loads(r)["seq"] for r in second.received()] == [
            row["seq"] for row in stored if row["tenant_id"] == "globex"]
    finally:
        first.close()
        second.close()


def test_a_routes_index_and_sourcetype_reach_splunk(tmp_path: Path, credential: Path) -> None:
    splunk = SplunkCase()
    splunk.start()
    try:
        db = tmp_path / "audit.db"
        with ChainStore(db) as store:
            store.append(events(60, tenants=("Acme.EU", "globex")))
            stored = [orjson.loads(row) for row in store.rows()]
        config = ExportsConfig(
            exports=[splunk.export_spec("hec", credential)],
            routes=[
                RouteRule(tenants=["Acme.*"], event_types=["safety.*"], exports=["hec"],
                          index="audit_${tenant:id}", sourcetype="sealtrail:safety"),
                RouteRule(exports=["hec"]),
            ],
        )

        async def body(engine: ExportEngine, _: ChainStore) -> bool:
            return await engine.drain(30)

        drained, _ = engine_run(db, config, body)
        assert drained
        received = splunk.receiver.events
        assert [orjson.loads(e.event)["seq"] for e in received] == [r["seq"] for r in stored]
        for event, row in zip(received, stored, strict=True):
            special = row["tenant_id"] == "Acme.EU" and row["event_type"].startswith("safety.")
            assert event.index == ("audit_acme_eu" if special else None)
            assert event.sourcetype == ("sealtrail:safety" if special else "sealtrail:audit")
        assert any(e.sourcetype == "sealtrail:safety" for e in received)
    finally:
        splunk.close()


def test_new_rows_never_cut_a_retry_after_short(tmp_path: Path, webhook: WebhookCase,
                                                credential: Path) -> None:
    db = tmp_path / "audit.db"
    with ChainStore(db) as store:
        store.append(events(5))
    webhook.receiver.fail_next(1, 503, b'{"error":"unavailable"}', {"Retry-After": "2"})

    async def body(engine: ExportEngine, store: ChainStore) -> tuple[int, int]:
        engine.start()
        loop = engine.loops["hook"]
        await asyncio.to_thread(wait_for, lambda: len(webhook.receiver.requests) >= 1, 10,
                                "the first (refused) request")
        for _ in range(10):  # steady ingest while the receiver asked for two seconds
            stored = store.append(events(3))
            engine.notify(stored[-1].seq)
            await asyncio.sleep(0.1)
        during = len(webhook.receiver.requests)
        await asyncio.to_thread(wait_for, lambda: loop.cursor == 35, 20, "delivery")
        return during, loop.cursor

    (during, cursor), _ = engine_run(db, ExportsConfig(exports=[
        webhook.export_spec("hook", credential)]), body)
    assert during == 1  # one second of new rows, and no request before Retry-After ran out
    assert cursor == 35


def test_steady_load_fills_requests_instead_of_sending_each_write(
        tmp_path: Path, webhook: WebhookCase, credential: Path) -> None:
    db = tmp_path / "audit.db"
    ChainStore(db).close()
    spec = webhook.export_spec("hook", credential)
    spec = spec.model_copy(update={"batch": spec.batch.model_copy(
        update={"interval_ms": 50, "max_interval_ms": 400, "max_events": 100})})

    async def body(engine: ExportEngine, store: ChainStore) -> int:
        engine.start()
        loop = engine.loops["hook"]
        for _ in range(60):  # 60 writes of 2 rows, every 20 ms
            stored = store.append(events(2))
            engine.notify(stored[-1].seq)
            await asyncio.sleep(0.02)
        await asyncio.to_thread(wait_for, lambda: loop.cursor == 120, 20, "delivery")
        return len(webhook.receiver.requests)

    requests, _ = engine_run(db, ExportsConfig(exports=[spec]), body)
    assert requests <= 20, f"{requests} requests for 60 writes: the interval did not batch"


def test_a_new_router_is_followed_at_once(tmp_path: Path, webhook: WebhookCase,
                                          credential: Path) -> None:
    """The loop keeps where rows go per (tenant, type, severity); new routes replace all of it."""
    db = tmp_path / "audit.db"
    spec = webhook.export_spec("hook", credential)
    only = {tenant: ExportsConfig(exports=[spec], routes=[RouteRule(tenants=[tenant],
                                                                    exports=["hook"])])
            for tenant in ("acme", "globex")}
    with ChainStore(db) as store:
        store.append(events(40, tenants=("acme", "globex")))

    async def body(engine: ExportEngine, store: ChainStore) -> None:
        assert await engine.drain(30)
        assert await engine.apply_config(only["globex"]) == []  # same export: same loop
        store.append(events(40, tenants=("acme", "globex")))
        assert await engine.drain(30)

    engine_run(db, only["acme"], body)
    with ChainStore(db) as store:
        stored = [orjson.loads(row) for row in store.rows()]
    expected = [row["seq"] for row in stored if (row["tenant_id"], row["seq"] > 40) in {
        ("acme", False), ("globex", True)}]
    assert [orjson.loads(row)["seq"] for row in webhook.received()] == expected
    assert {row["tenant_id"] for row in stored if row["seq"] > 40} == {"acme", "globex"}
