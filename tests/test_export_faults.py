"""Storage faults, peers that echo secrets, and the signals status gives (issue 12).

Covers: a full disk (SQLITE_FULL, with SQLite's own rollback) ends a store write with a
`StoreError` that says so, not "cannot rollback"; an export whose cursor write fails keeps
running, says why in status and a metric, and moves on once the store writes again; a loop
that fails unexpectedly is restarted and shown, never left dead; a worker's background task
that fails is logged, shown and restarted; every HTTP backend keeps credential values (raw,
base64, `ApiKey`/`Basic`) out of status, logs and metrics when a receiver echoes them; export
URLs with `user:password@` are refused naming the field, and httpx's request log shows no query
string; back-pressure and the lag gauge follow the export cursor without any ingest; a tenant
that went quiet before a restart gets its time-based checkpoint after it; `lag_seconds` counts
from when a row was stored, not from the event's own timestamp.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from sealtrail.api.event import Event
from sealtrail.api.export import ExportsConfig, ExportSpec
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.chain.keys import generate_keypair
from sealtrail.chain.store import ChainStore, CheckpointPolicy, StoreError
from sealtrail.export.engine import ExportEngine
from sealtrail.export.loop import ExportLoop
from sealtrail.worker.core import WorkerCore
from sealtrail.worker.http import build_app

from .conftest import events

FULL = "database or disk is full"


# -- a receiver on loopback -----------------------------------------------------------------


class Receiver:
    """Answers every request with `status` and a body that echoes the request's headers."""

    def __init__(self) -> None:
        self.status = 200
        self.echo = False
        self.requests = 0
        self.rows = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        if not self.echo:
            if self.status < 300:
                self.rows += max(1, body.count(b"\n"))
            return web.json_response({"errors": False, "items": []}, status=self.status)
        auth = request.headers.get("Authorization", "")
        dd_key = request.headers.get("DD-API-KEY", "")
        raw = auth.partition(" ")[2]
        try:
            decoded = base64.b64decode(raw, validate=True).decode()
        except ValueError:
            decoded = ""
        said = f"Authorization: {auth} | {raw} | {decoded} | {dd_key}"
        answer = {"error": {"type": "security_exception", "reason": said,
                            "caused_by": {"type": "echo", "reason": said}},
                  "text": said, "message": said, "code": 6, "errors": [said]}
        return web.json_response(answer, status=400, headers={"X-Echo": said[:200]})


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def elastic_export(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "es", "elastic": {"url": url}, **extra,
            "retry": {"initialBackoffMs": 10, "maxBackoffMs": 50, "pauseAfterFailures": 2},
            "batch": {"intervalMs": 10, "maxIntervalMs": 50}}


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- 5: a full disk ---------------------------------------------------------------------------


def test_a_full_disk_fails_the_write_cleanly_and_the_store_goes_on(tmp_path: Path) -> None:
    with ChainStore(tmp_path / "audit.db") as store:
        store.append(events(5))
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(StoreError, match="disk is full"):
            store.append(events(500))
        assert store.last_seq() == 5  # nothing of the batch
        store._db.execute("PRAGMA max_page_count=1073741823")
        store.append(events(500))
        assert store.last_seq() == 505


def test_a_full_disk_answers_ingest_with_the_documented_json_500(tmp_path: Path) -> None:
    async def main() -> None:
        core = WorkerCore(WorkerConfig.model_validate(
            {"store": {"path": str(tmp_path / "audit.db")}}), CollectorRegistry())
        core.start()
        core.store.append(events(5))
        pages = core.store._db.execute("PRAGMA page_count").fetchone()[0]
        core.store._db.execute(f"PRAGMA max_page_count={pages}")
        body = [event.model_dump(mode="json", exclude_none=True) for event in events(300)]
        try:
            async with TestClient(TestServer(build_app(core))) as client:
                answer = await client.post("/v1/events", json=body)
                assert answer.status == 500
                assert answer.content_type == "application/json"
                assert "nothing of this batch was stored" in (await answer.json())["error"]
        finally:
            await core.drain_and_stop(0.1)

    asyncio.run(main())


class _FullOnCursor:
    """The store's cursor connection, but a cursor write fails as SQLite fails on a full disk.

    SQLITE_FULL makes SQLite roll the whole transaction back by itself; the statement then
    raises. That is what made our own ROLLBACK raise "cannot rollback - no transaction is
    active" and end the export loop.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.full = True
        self.failures = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.full and sql.startswith("INSERT INTO audit_export_cursor"):
            self.failures += 1
            self._db.execute("ROLLBACK")
            raise sqlite3.OperationalError(FULL)
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_an_export_survives_a_failed_cursor_write_and_says_so(tmp_path: Path) -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        async with receiver() as siem:
            with ChainStore(tmp_path / "audit.db") as store:
                store.append(events(20))
                full = _FullOnCursor(store._cursor_db)
                store._cursor_db = full  # type: ignore[assignment]
                config = ExportsConfig.model_validate({"exports": [elastic_export(siem.url)]})
                engine = ExportEngine(store, config, registry)
                engine.start()
                loop = engine.loops["es"]
                try:
                    await until(lambda: full.failures >= 3, 10, "cursor writes to fail")
                    status = loop.status()
                    assert status.last_error is not None
                    assert "cannot record delivery" in status.last_error
                    assert FULL in status.last_error
                    assert metric(registry, "sealtrail_audit_export_cursor_write_failures_total",
                                  export="es") >= 3
                    assert not engine._tasks["es"].done()
                    full.full = False  # space again
                    await until(lambda: loop.cursor == 20, 10, "the cursor to move")
                    assert loop.status().last_error is None
                    assert store.cursor("es") == 20
                finally:
                    await engine.stop()

    asyncio.run(main())


def test_an_export_loop_that_fails_unexpectedly_is_restarted_and_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    failed: list[int] = []
    real_read = ExportLoop._read

    async def read_once_broken(self: ExportLoop, after_seq: int, limit: int) -> Any:
        if not failed:
            failed.append(after_seq)
            raise RuntimeError("unforeseen")
        return await real_read(self, after_seq, limit)

    monkeypatch.setattr(ExportLoop, "_read", read_once_broken)

    async def main() -> None:
        registry = CollectorRegistry()
        async with receiver() as siem:
            with ChainStore(tmp_path / "audit.db") as store:
                store.append(events(10))
                config = ExportsConfig.model_validate({"exports": [elastic_export(siem.url)]})
                engine = ExportEngine(store, config, registry)
                engine.start()
                loop = engine.loops["es"]
                try:
                    await until(lambda: bool(failed), 5, "the failure")
                    await until(lambda: loop.last_error is not None, 5, "status to say so")
                    assert "RuntimeError: unforeseen" in (loop.last_error or "")
                    await until(lambda: loop.cursor == 10, 10, "the restarted loop to deliver")
                    assert metric(registry, "sealtrail_audit_export_loop_restarts_total",
                                  export="es") == 1
                finally:
                    await engine.stop()

    with caplog.at_level(logging.ERROR, logger="sealtrail.export"):
        asyncio.run(main())
    assert "RuntimeError: unforeseen" in caplog.text


def worker_config(tmp_path: Path, url: str, **extra: Any) -> WorkerConfig:
    raw: dict[str, Any] = {"store": {"path": str(tmp_path / "audit.db")},
                           "exports": [elastic_export(url)], **extra}
    return WorkerConfig.model_validate(raw)


def test_a_failing_background_task_is_logged_shown_and_restarted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    generate_keypair(tmp_path / "signing.key")

    async def main() -> None:
        async with receiver() as siem:
            config = worker_config(tmp_path, siem.url, checkpoints={
                "signingKey": {"file": str(tmp_path / "signing.key")}, "everySeconds": 0.1})
            core = WorkerCore(config, CollectorRegistry())
            calls: list[int] = []
            real = core.store.emit_due_checkpoints

            def broken_once() -> Any:
                calls.append(1)
                if len(calls) == 1:
                    raise StoreError("write failed; nothing of it was stored: " + FULL)
                return real()

            core.store.emit_due_checkpoints = broken_once  # type: ignore[method-assign]
            core.start()
            try:
                await until(lambda: bool(core.status()["background_errors"]), 5, "status")
                assert FULL in core.status()["background_errors"]["checkpoint-timer"]
                await until(lambda: len(calls) >= 2, 5, "the timer to run again")
            finally:
                await core.drain_and_stop(1)

    with caplog.at_level(logging.ERROR, logger="sealtrail.worker"):
        asyncio.run(main())
    assert "checkpoint-timer failed" in caplog.text


# -- 12: peers that echo credentials ----------------------------------------------------------

API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
PASSWORD = "s3cret-Pa55word"  # noqa: S105 - a test value
TOKEN = "11111111-2222-3333-4444-555555555555"  # noqa: S105 - a test value


def _spellings(*secrets: str) -> list[str]:
    found = []
    for secret in secrets:
        found += [secret, base64.b64encode(secret.encode()).decode()]
    return found


def _backends(tmp_path: Path, url: str) -> list[tuple[dict[str, Any], list[str]]]:
    def credential(name: str, value: str) -> dict[str, str]:
        path = tmp_path / name
        path.write_text(value + "\n", encoding="utf-8")
        return {"file": str(path)}

    retry = {"initialBackoffMs": 10, "maxBackoffMs": 20, "pauseAfterFailures": 2}
    webhook_secret = "whsec_" + base64.b64encode(b"webhook-secret-0123456789abcdef").decode()
    return [
        ({"name": "es-key", "retry": retry,
          "elastic": {"url": url, "auth": {"apiKey": credential("key", API_KEY)}}},
         _spellings(API_KEY)),
        ({"name": "es-basic", "retry": retry,
          "elastic": {"url": url, "auth": {"basic": {
              "username": "elastic", "password": credential("password", PASSWORD)}}}},
         _spellings(PASSWORD, f"elastic:{PASSWORD}")),
        ({"name": "es-bearer", "retry": retry,
          "elastic": {"url": url, "auth": {"bearer": credential("bearer", TOKEN)}}},
         _spellings(TOKEN)),
        ({"name": "splunk", "retry": retry,
          "splunk": {"hecUrl": url, "token": credential("hec", TOKEN)}},
         _spellings(TOKEN)),
        ({"name": "datadog", "retry": retry,
          "datadog": {"url": url + "/api/v2/logs", "apiKey": credential("dd", API_KEY)}},
         _spellings(API_KEY)),
        ({"name": "webhook", "retry": retry,
          "webhook": {"url": url + "/hook", "secret": credential("whsec", webhook_secret)}},
         _spellings(webhook_secret, webhook_secret.removeprefix("whsec_"))),
    ]


def test_no_backend_lets_an_echoed_credential_reach_status_logs_or_metrics(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    seen: dict[str, tuple[str, list[str]]] = {}

    async def main() -> None:
        async with receiver() as siem:
            siem.echo = True
            backends = _backends(tmp_path, siem.url)
            config = ExportsConfig.model_validate({"exports": [raw for raw, _ in backends]})
            with ChainStore(tmp_path / "audit.db") as store:
                store.append(events(3))
                engine = ExportEngine(store, config, registry)
                try:
                    await engine.drain(5)
                    for raw, secrets in backends:
                        loop = engine.loops[raw["name"]]
                        assert loop.paused, raw["name"]  # the echo is a 400: permanent
                        seen[raw["name"]] = (repr(loop.status()), secrets)
                finally:
                    await engine.stop()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    exposition = generate_latest(registry).decode()
    assert "[REDACTED]" in seen["es-key"][0]  # the echo did reach status, redacted
    for name, (status, secrets) in seen.items():
        for secret in secrets:
            assert secret not in status, (name, secret)
            assert secret not in caplog.text, (name, secret)
            assert secret not in exposition, (name, secret)


# -- 13: credentials in export URLs -----------------------------------------------------------


@pytest.mark.parametrize(("block", "field"), [
    ({"elastic": {"url": "https://elastic:pw@es.example:9200"}}, "url"),
    ({"webhook": {"url": "https://user:pass@hooks.example/x", "secret": {"env": "S"}}}, "url"),
    ({"splunk": {"hecUrl": "https://x:tok@splunk.example:8088", "token": {"env": "T"}}},
     "hecUrl"),
    ({"datadog": {"url": "https://k@intake.example/api/v2/logs", "apiKey": {"env": "K"}}}, "url"),
    ({"webhook": {"url": "https://hooks.example/x", "secret": {"env": "S"}},
      "proxyUrl": "http://user:pw@proxy.example:3128"}, "proxyUrl"),
])
def test_a_url_with_credentials_in_it_is_refused_naming_the_field(
        block: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ExportSpec.model_validate({"name": "x", **block})
    (error,) = caught.value.errors()
    assert field in [str(part) for part in error["loc"]]
    assert "must not hold a user or password" in error["msg"]


def test_httpx_request_logs_show_no_query_string(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with receiver() as siem:
            config = ExportsConfig.model_validate({"exports": [
                elastic_export(siem.url + "/?token=query-secret-42")]})
            with ChainStore(tmp_path / "audit.db") as store:
                store.append(events(2))
                engine = ExportEngine(store, config, CollectorRegistry())
                try:
                    assert await engine.drain(5)
                finally:
                    await engine.stop()

    with caplog.at_level(logging.INFO, logger="httpx"):
        asyncio.run(main())
    assert "HTTP Request: POST" in caplog.text
    assert "query-secret-42" not in caplog.text
    assert "?[REDACTED]" in caplog.text


# -- 16, 17, 18: signals ----------------------------------------------------------------------


def _lag_gauge(core: WorkerCore) -> float:
    return metric(core.registry, "sealtrail_audit_export_lag_rows")


def test_backpressure_and_the_lag_gauge_follow_the_cursor_without_ingest(tmp_path: Path) -> None:
    async def main() -> None:
        async with receiver() as siem:
            siem.status = 503
            config = worker_config(tmp_path, siem.url, ingest={"backpressure": {
                "highWatermarkRows": 20, "lowWatermarkRows": 5}})
            core = WorkerCore(config, CollectorRegistry())
            core.start()
            try:
                await core.append(events(30))
                await until(lambda: siem.requests >= 1, 5, "a first attempt")
                core.backpressure.update()  # as the next POST would
                assert not core.backpressure.accepting
                assert _lag_gauge(core) == 30
                siem.status = 200  # the SIEM recovers; nobody posts
                await until(lambda: core.engine.loops["es"].cursor == 30, 10, "catching up")
                await asyncio.sleep(0)
                assert core.backpressure.accepting
                assert _lag_gauge(core) == 0
            finally:
                await core.drain_and_stop(1)

    asyncio.run(main())


def test_a_quiet_tenant_gets_its_time_checkpoint_after_a_restart(tmp_path: Path) -> None:
    signer = generate_keypair(tmp_path / "signing.key")
    policy = CheckpointPolicy(signer, every_rows=1000, every_seconds=0.3)
    db = tmp_path / "audit.db"
    with ChainStore(db, checkpoints=policy) as store:
        store.append([Event.model_validate({"event_type": "job.run", "severity": "INFO",
                                            "tenant_id": "quiet"})])
    # restarted before the time was up; nothing is written after
    config = WorkerConfig.model_validate({
        "store": {"path": str(db)},
        "checkpoints": {"signingKey": {"file": str(tmp_path / "signing.key")},
                        "everySeconds": 0.3}})

    async def main() -> None:
        core = WorkerCore(config, CollectorRegistry())
        core.start()
        try:
            await until(lambda: bool(core.store.latest_checkpoints("quiet")), 5,
                        "a checkpoint covering the quiet tenant's row")
        finally:
            await core.drain_and_stop(1)

    asyncio.run(main())
    with ChainStore(db) as store:
        (checkpoint,) = store.latest_checkpoints("quiet")
        assert checkpoint.tenant_seq == 1


@pytest.mark.parametrize("stamp", ["2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z"])
def test_lag_seconds_counts_from_when_the_row_was_stored(tmp_path: Path, stamp: str) -> None:
    async def main() -> None:
        async with receiver() as siem:
            siem.status = 503  # nothing is delivered
            core = WorkerCore(worker_config(tmp_path, siem.url), CollectorRegistry())
            core.start()
            try:
                await core.append([Event.model_validate(
                    {"event_type": "job.run", "severity": "INFO", "timestamp": stamp})])
                await asyncio.sleep(0.3)
                (export,) = core.status()["exports"]
                assert export["lag_rows"] == 1
                assert 0.25 <= export["lag_seconds"] < 5
            finally:
                await core.drain_and_stop(0.1)

    asyncio.run(main())


def test_status_is_json_clean(tmp_path: Path) -> None:
    """What status holds stays serialisable with the new fields."""

    async def main() -> dict[str, Any]:
        async with receiver() as siem:
            core = WorkerCore(worker_config(tmp_path, siem.url), CollectorRegistry())
            core.start()
            try:
                return core.status()
            finally:
                await core.drain_and_stop(1)

    status = asyncio.run(main())
    assert orjson.loads(orjson.dumps(status))["background_errors"] == {}



def test_cloudwatch_gives_its_aws_secrets_to_the_redaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-key-0123456789")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "aws-session-token-0123456789")

    async def main() -> tuple[list[str], str]:
        async with receiver() as siem:
            siem.echo = True
            config = ExportsConfig.model_validate({"exports": [{
                "name": "cw", "cloudwatch": {"logGroup": "audit", "region": "eu-west-1",
                                             "endpointUrl": siem.url},
                "retry": {"initialBackoffMs": 10, "maxBackoffMs": 20, "pauseAfterFailures": 1,
                          "requestTimeoutSeconds": 5}}]})
            with ChainStore(tmp_path / "audit.db") as store:
                store.append(events(1))
                engine = ExportEngine(store, config, CollectorRegistry())
                try:
                    await engine.drain(3)
                    loop = engine.loops["cw"]
                    return loop.backend.secrets(), loop.redact(
                        "echo: aws-secret-key-0123456789 aws-session-token-0123456789")
                finally:
                    await engine.stop()

    secrets, redacted = asyncio.run(main())
    assert {"aws-secret-key-0123456789", "aws-session-token-0123456789"} <= set(secrets)
    assert "aws-secret" not in redacted
    assert "aws-session" not in redacted
