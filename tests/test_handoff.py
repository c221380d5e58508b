"""Handoff at shutdown with the real worker processes, a collector and an Elastic `_bulk` SIEM.

Covers, on loopback only:

- the receiving end (`POST /v1/handoff` on a collector): only a `handoff.accept` token opens it
  (not an ingest or admin token), rows are checked on receipt (duplicates acknowledged and
  kept once; a fork, a bad hash or too many rows refused with a 4xx naming the chain and
  position, keeping nothing), a worker without `handoff.accept` says so with a 404, and what
  was kept is delivered by the collector's exports, labelled `handoff:<export>`;
- end to end: with the SIEM down, three sidecars holding thousands of undelivered rows each get
  SIGTERM with a short drain and hand their rows to the collector; once the SIEM is back every
  acknowledged row is there once per dedupe key, every (store, tenant) chain verifies from the
  SIEM's copy with the public keys, and nothing was abandoned; each chain ends with the
  checkpoint the drain signed (item 5: the last rows are vouched for);
- the counters, in process: `sealtrail_audit_handoff_rows_total` counts what the collector
  acknowledged and `sealtrail_audit_rows_abandoned_total` stays 0; only tenants that moved get a
  final checkpoint;
- TLS: the sender checks the collector's certificate against `caFile`, and hands nothing to a
  collector it cannot trust;
- the collector down too: the worker still exits by its deadline, the rows stay in its store,
  and the log and `sealtrail_audit_rows_abandoned_total` say how many each export lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from sealtrail.api.event import Event
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.chain.canonical import seal
from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE
from sealtrail.chain.keys import PublicKey, generate_keypair, load_public_key
from sealtrail.chain.verify import Status, verify_rows
from sealtrail.demo import sample_events
from sealtrail.worker.core import WorkerCore
from sealtrail.worker.handoff import HANDOFF_CURSOR

from .receivers.elastic import ElasticReceiver
from .receivers.http_base import free_port
from .receivers.pki import make_tls_files
from .test_export_conformance import wait_for, write_credential
from .worker_process import ROOT, Worker, running_worker, start_worker

HANDOFF_TOKEN = "handoff-token-0123456789"  # noqa: S105 - a test's own
INGEST_TOKEN = "ingest-token-0123456789"  # noqa: S105 - a test's own
WRONG_TOKEN = "wrong-token-0123456789"  # noqa: S105 - a test's own
SIEM_KEY = "siem-api-key-0123456789"


@pytest.fixture
def siem() -> Iterator[ElasticReceiver]:
    receiver = ElasticReceiver(credential=SIEM_KEY)
    yield receiver
    receiver.stop()


def export(tmp_path: Path, siem: ElasticReceiver) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = tmp_path / "siem.key"
    write_credential(key, SIEM_KEY)
    return {"name": "siem",
            "elastic": {"url": siem.url, "auth": {"apiKey": {"file": str(key)}}},
            "retry": {"initialBackoffMs": 20, "maxBackoffMs": 200},
            "batch": {"intervalMs": 20, "maxIntervalMs": 200}}


def token_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "handoff.token"
    write_credential(path, HANDOFF_TOKEN)
    return path


def collector_config(directory: Path, siem: ElasticReceiver, **accept: Any) -> dict[str, Any]:
    return {"exports": [export(directory, siem)],
            "handoff": {"accept": {"tokens": [{"file": str(token_file(directory))}], **accept}}}


def sidecar_config(directory: Path, siem: ElasticReceiver, collector_url: str,
                   drain_seconds: float) -> dict[str, Any]:
    key = directory / "checkpoint.key"
    if not key.exists():
        directory.mkdir(parents=True, exist_ok=True)
        generate_keypair(key)
    return {
        "exports": [export(directory, siem)],
        # Only the drain signs: the timer's thresholds are out of reach.
        "checkpoints": {"signingKey": {"file": str(key)}, "everyRows": 10_000_000,
                        "everySeconds": 86_400},
        "handoff": {"url": collector_url, "token": {"file": str(token_file(directory))},
                    "timeoutSeconds": 5},
        "drainTimeoutSeconds": drain_seconds,
    }


def ingest(worker: Worker, count: int, *, seed: int, tenants: tuple[str, ...]) -> set[str]:
    """Store `count` events through the API; the record hashes the worker acknowledged."""
    acknowledged: set[str] = set()
    lines = [orjson.dumps(event) for event in sample_events(count, seed=seed, tenants=tenants)]
    with worker.client() as client:
        for start in range(0, count, 500):
            answer = client.post("/v1/events", content=b"\n".join(lines[start:start + 500]),
                                 headers={"Content-Type": "application/x-ndjson"})
            assert answer.status_code == 200, answer.text
            acknowledged |= {item["record_hash"] for item in answer.json()["events"]}
    return acknowledged


def store_rows(db: Path) -> list[bytes]:
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [bytes(body) for (body,) in reader.execute(
            "SELECT body FROM audit_rows ORDER BY seq")]
    finally:
        reader.close()


def cursor(db: Path, name: str) -> int | None:
    reader = sqlite3.connect(f"file:{db}.cursors?mode=ro", uri=True)
    try:
        found = reader.execute("SELECT last_seq FROM audit_export_cursor WHERE export_name = ?",
                               (name,)).fetchone()
    finally:
        reader.close()
    return None if found is None else int(found[0])


def handed(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [bytes(body) for (body,) in reader.execute(
            "SELECT body FROM handed_rows ORDER BY hseq")]
    finally:
        reader.close()


def post_handoff(worker: Worker, rows: list[bytes], token: str | None = HANDOFF_TOKEN,
                 ) -> httpx.Response:
    headers = {"Content-Type": "application/x-ndjson"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    with worker.client() as client:
        return client.post("/v1/handoff", content=b"".join(row + b"\n" for row in rows),
                           headers=headers)


def metric(text: str, line_start: str) -> float:
    """The value of the first sample line of `/metrics` starting with `line_start`."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the receiving end -------------------------------------------------------------------------


def test_only_a_handoff_token_opens_the_route(tmp_path: Path, siem: ElasticReceiver) -> None:
    sidecar_rows = store_rows_of_a_sidecar(tmp_path / "sidecar", 5)
    ingest_token = tmp_path / "ingest.token"
    write_credential(ingest_token, INGEST_TOKEN)
    config = collector_config(tmp_path / "collector", siem)
    config["ingest"] = {"tokens": [{"token": {"file": str(ingest_token)}}]}
    with running_worker(tmp_path / "collector", **config) as collector:
        missing = post_handoff(collector, sidecar_rows, token=None)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "handoff.accept.tokens" in missing.json()["error"]
        assert post_handoff(collector, sidecar_rows, token=WRONG_TOKEN).status_code == 401
        assert post_handoff(collector, sidecar_rows, token=INGEST_TOKEN).status_code == 401
        assert handed(collector.db.with_name("audit.db.handoff")) == []
        answer = post_handoff(collector, sidecar_rows)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"rows": 5, "stored": 5, "duplicates": 0}
        assert HANDOFF_TOKEN not in collector.log()


def store_rows_of_a_sidecar(directory: Path, count: int, *, seed: int = 1) -> list[bytes]:
    """Rows as a sidecar's store holds them (its own store id), made by a real worker."""
    with running_worker(directory) as sidecar:
        ingest(sidecar, count, seed=seed, tenants=("acme",))
        return store_rows(sidecar.db)


def test_rows_are_checked_on_receipt_and_a_refusal_keeps_nothing(
        tmp_path: Path, siem: ElasticReceiver) -> None:
    rows = store_rows_of_a_sidecar(tmp_path / "sidecar", 40)
    store_id = orjson.loads(rows[0])["store_id"]
    with running_worker(tmp_path / "collector",
                        **collector_config(tmp_path / "collector", siem,
                                           maxRowsPerRequest=25)) as collector:
        path = collector.db.with_name("audit.db.handoff")
        first = post_handoff(collector, rows[:20])
        assert first.json() == {"rows": 20, "stored": 20, "duplicates": 0}
        again = post_handoff(collector, rows[10:25])
        assert again.json() == {"rows": 15, "stored": 5, "duplicates": 10}
        assert handed(path) == rows[:25]

        fields = orjson.loads(rows[7])
        fields.pop("record_hash")
        fields["message"] = "rewritten"
        fork = seal(fields)[1]
        refused = post_handoff(collector, [*rows[25:30], fork])
        assert refused.status_code == 409, refused.text
        problem = refused.json()["problems"][0]
        assert (problem["store_id"], problem["tenant_id"], problem["tenant_seq"]) == (
            store_id, "acme", 8)
        assert "fork" in refused.json()["error"]
        assert "nothing of this request was stored" in refused.json()["error"]

        tampered = orjson.loads(rows[30])
        tampered["message"] = "changed"
        bad_hash = post_handoff(collector, [rows[25], orjson.dumps(
            tampered, option=orjson.OPT_SORT_KEYS)])
        assert bad_hash.status_code == 422
        assert bad_hash.json()["problems"][0]["tenant_seq"] == 31
        assert "does not match its record_hash" in bad_hash.json()["error"]

        too_many = post_handoff(collector, rows[:26])
        assert too_many.status_code == 413
        assert "limit is 25" in too_many.json()["error"]
        assert post_handoff(collector, [b"not json"]).status_code == 400
        assert handed(path) == rows[:25]  # none of the refused requests kept anything
        assert "Traceback" not in collector.log()


def test_a_worker_without_handoff_accept_says_so(tmp_path: Path) -> None:
    with running_worker(tmp_path) as worker:
        answer = post_handoff(worker, [b"{}"])
        assert answer.status_code == 404
        assert "no handoff.accept" in answer.json()["error"]


def test_handed_off_rows_are_delivered_by_the_collectors_exports(
        tmp_path: Path, siem: ElasticReceiver) -> None:
    rows = store_rows_of_a_sidecar(tmp_path / "sidecar", 300)
    siem.start()
    with running_worker(tmp_path / "collector",
                        **collector_config(tmp_path / "collector", siem)) as collector:
        assert post_handoff(collector, rows[100:]).status_code == 200
        wait_for(lambda: len(siem.sources()) >= 200, 20, "the handed-off rows in the SIEM")
        assert sorted(siem.sources()) == sorted(rows[100:])  # byte for byte, once each
        assert {doc_id for _, doc_id in siem.ids()} == {
            orjson.loads(row)["record_hash"] for row in rows[100:]}
        delivered = 'sealtrail_audit_export_events_total{export="handoff:siem"}'
        with collector.client() as client:
            # The SIEM holds the rows a moment before the worker has read its answer and
            # counted them.
            wait_for(lambda: metric(client.get("/metrics").text, delivered) == 200, 10,
                     "the delivery to be counted")
            text = client.get("/metrics").text
        assert metric(text, delivered) == 200
        assert metric(text, 'sealtrail_audit_export_events_total{export="siem"}') == 0
        assert metric(text, 'sealtrail_audit_handoff_received_rows_total{outcome="stored"}') \
            == 200
        assert metric(text, "sealtrail_audit_handoff_last_seq") == 200


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_sidecars_hand_off_during_a_siem_outage_and_every_row_arrives(
        tmp_path: Path, siem: ElasticReceiver) -> None:
    siem.start()
    collector = start_worker(tmp_path / "collector",
                             **collector_config(tmp_path / "collector", siem))
    sidecars: list[Worker] = []
    try:
        acknowledged: set[str] = set()
        for number in range(3):
            directory = tmp_path / f"sidecar-{number}"
            sidecars.append(start_worker(directory, **sidecar_config(
                directory, siem, collector.url, drain_seconds=6)))
        for number, sidecar in enumerate(sidecars):  # some rows go to the SIEM directly
            acknowledged |= ingest(sidecar, 200, seed=number, tenants=("acme", "globex"))
        wait_for(lambda: len(siem.sources()) >= 600, 20, "the first rows in the SIEM")
        siem.stop()  # the SIEM goes down; the load goes on
        for number, sidecar in enumerate(sidecars):
            acknowledged |= ingest(sidecar, 3000, seed=10 + number,
                                   tenants=("acme", "globex", "initech"))
        started = time.monotonic()
        for sidecar in sidecars:  # a rollout: every pod stops at once
            os.kill(sidecar.pid, signal.SIGTERM)
        for sidecar in sidecars:
            assert sidecar.process.wait(timeout=30) == 0, sidecar.log()
        assert time.monotonic() - started < 6 + 5  # the drain, and the stop's own grace
        for sidecar in sidecars:
            log = sidecar.log()
            assert "handed off" in log, log
            assert "abandoned" not in log, log
            assert cursor(sidecar.db, HANDOFF_CURSOR) == len(store_rows(sidecar.db))
        siem.start()  # the SIEM comes back
        everything = [row for sidecar in sidecars for row in store_rows(sidecar.db)]
        wait_for(lambda: len(siem.sources()) >= len(everything), 60,
                 "every row in the SIEM after the outage")
        received = siem.sources()
        dedupe_keys = [(row["store_id"], row["tenant_id"], row["tenant_seq"])
                       for row in map(orjson.loads, received)]
        assert len(dedupe_keys) == len(set(dedupe_keys)) == len(everything)  # once per key
        assert sorted(received) == sorted(everything)  # byte for byte as stored
        hashes = {orjson.loads(row)["record_hash"] for row in received}
        assert acknowledged <= hashes
        keys = [public_key(tmp_path / f"sidecar-{number}") for number in range(3)]
        check_the_siems_copy(received, keys, chains=9)  # three stores, three tenants each
        with collector.client() as client:
            text = client.get("/metrics").text
        # At least what the SIEM did not have when it went down (a batch whose answer the
        # outage cut off is handed off too, and lands once all the same).
        stored = metric(text, 'sealtrail_audit_handoff_received_rows_total{outcome="stored"}')
        assert len(everything) - 600 <= stored <= len(everything)
    finally:
        for sidecar in sidecars:
            sidecar.stop()
        collector.stop()
    assert "abandoned" not in collector.log()


def check_the_siems_copy(received: list[bytes], keys: list[PublicKey], chains: int) -> None:
    """Every chain verifies from the SIEM's copy, and ends with the drain's checkpoint."""
    report = verify_rows(received, public_keys=keys)
    assert report.status is Status.INTACT, report.to_json()
    assert len(report.tenants) == chains
    assert all(chain.checkpoints_checked >= 1 for chain in report.tenants)
    # Item 5: each chain's last row is the checkpoint the drain signed over all the rest.
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for row in map(orjson.loads, received):
        chain = (row["store_id"], row["tenant_id"])
        if chain not in last or row["tenant_seq"] > last[chain]["tenant_seq"]:
            last[chain] = row
    for row in last.values():
        assert row["event_type"] == CHECKPOINT_EVENT_TYPE, row
        assert row["extra"]["checkpoint_tenant_seq"] == str(row["tenant_seq"] - 1)


def public_key(directory: Path) -> PublicKey:
    return load_public_key(directory / "checkpoint.key.pub")


# -- the counters, in process ------------------------------------------------------------------


def core_config(tmp_path: Path, siem_url: str, **extra: Any) -> WorkerConfig:
    key = tmp_path / "siem.key"
    write_credential(key, SIEM_KEY)
    return WorkerConfig.model_validate({
        "store": {"path": str(tmp_path / "audit.db"), "synchronous": "NORMAL"},
        "exports": [{"name": "siem", "elastic": {"url": siem_url,
                                                 "auth": {"apiKey": {"file": str(key)}}},
                     "retry": {"initialBackoffMs": 20, "maxBackoffMs": 200}},
                    {"name": "audit-archive", "paused": True,
                     "elastic": {"url": siem_url, "auth": {"apiKey": {"file": str(key)}}}}],
        **extra})


def sample(count: int, seed: int = 5) -> list[Event]:
    return [Event.model_validate(raw) for raw in sample_events(count, seed=seed)]


def test_the_drain_hands_off_what_the_exports_could_not_deliver_and_counts_it(
        tmp_path: Path, siem: ElasticReceiver) -> None:
    registry = CollectorRegistry()
    with running_worker(tmp_path / "collector",
                        **collector_config(tmp_path / "collector", siem)) as collector:
        config = core_config(tmp_path, siem.url, handoff={
            "url": collector.url, "token": {"file": str(token_file(tmp_path))},
            "batchRows": 700})

        async def main() -> bool:
            core = WorkerCore(config, registry)
            core.start()
            await core.append(sample(2500))
            return await core.drain_and_stop(4)

        started = time.monotonic()
        assert asyncio.run(main()) is True
        assert time.monotonic() - started < 4 + 1
        rows = store_rows(tmp_path / "audit.db")
        assert registry.get_sample_value("sealtrail_audit_handoff_rows_total") == len(rows)
        for name in ("siem", "audit-archive"):  # the paused export's rows went too
            assert not registry.get_sample_value("sealtrail_audit_rows_abandoned_total",
                                                 {"export": name})
        assert handed(collector.db.with_name("audit.db.handoff")) == rows
        assert cursor(tmp_path / "audit.db", HANDOFF_CURSOR) == len(rows)


def test_the_drain_signs_a_checkpoint_only_for_tenants_that_moved(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "signing.key")
    config = WorkerConfig.model_validate({
        "store": {"path": str(tmp_path / "audit.db"), "synchronous": "NORMAL"},
        "checkpoints": {"signingKey": {"file": str(tmp_path / "signing.key")},
                        "everyRows": 10_000_000, "everySeconds": 86_400}})

    async def run(events: list[Event]) -> None:
        core = WorkerCore(config, CollectorRegistry())
        core.start()
        if events:
            await core.append(events)
        await core.drain_and_stop(1)

    def checkpoints() -> list[dict[str, Any]]:
        return [row for row in map(orjson.loads, store_rows(tmp_path / "audit.db"))
                if row["event_type"] == CHECKPOINT_EVENT_TYPE]

    asyncio.run(run(sample(30)))
    first = checkpoints()
    tenants = {row["tenant_id"] for row in map(orjson.loads, store_rows(tmp_path / "audit.db"))}
    assert len(tenants) > 1
    assert {row["tenant_id"] for row in first} == tenants
    for row in first:  # each covers its tenant's rows up to the checkpoint row itself
        assert row["extra"]["checkpoint_tenant_seq"] == str(row["tenant_seq"] - 1)
    asyncio.run(run([]))
    assert checkpoints() == first  # nothing moved: nothing new to vouch for
    one = sample(1)[0].model_copy(update={"tenant_id": first[0]["tenant_id"]})
    asyncio.run(run([one]))
    assert [row["tenant_id"] for row in checkpoints()[len(first):]] == [first[0]["tenant_id"]]


@contextlib.contextmanager
def tls_collector(directory: Path) -> Iterator[tuple[str, Path]]:
    """A collector serving ingest (and so `/v1/handoff`) over HTTPS: its URL and CA file."""
    files = make_tls_files(directory / "tls")
    port, admin = free_port(), free_port()
    config = {"store": {"path": str(directory / "audit.db"), "synchronous": "NORMAL"},
              "ingest": {"listen": f"127.0.0.1:{port}",
                         "tls": {"certFile": str(files.server_cert),
                                 "keyFile": str(files.server_key)}},
              "admin": {"listen": f"127.0.0.1:{admin}"},
              "handoff": {"accept": {"tokens": [{"file": str(token_file(directory))}]}},
              "drainTimeoutSeconds": 2}
    (directory / "worker.yaml").write_text(yaml.safe_dump(config))
    with (directory / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sealtrail", "worker", "--config",
             str(directory / "worker.yaml")], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    try:
        def ready() -> bool:
            assert process.poll() is None, (directory / "worker.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200
            return False

        wait_for(ready, 30, "the TLS collector")
        yield f"https://127.0.0.1:{port}", files.ca
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_handoff_checks_the_collectors_certificate_against_ca_file(
        tmp_path: Path, siem: ElasticReceiver, caplog: pytest.LogCaptureFixture) -> None:
    with tls_collector(tmp_path / "collector") as (url, ca_file):
        outcomes = {}
        for name, trusted in (("trusted", ca_file), ("other", tmp_path / "collector" / "tls"
                                                     / "other-ca.pem")):
            directory = tmp_path / name
            registry = CollectorRegistry()
            config = core_config(directory, siem.url, handoff={
                "url": url, "token": {"file": str(token_file(directory))},
                "caFile": str(trusted)})

            async def main(config: WorkerConfig = config,
                           registry: CollectorRegistry = registry) -> bool:
                core = WorkerCore(config, registry)
                core.start()
                await core.append(sample(300))
                return await core.drain_and_stop(3)

            with caplog.at_level(logging.INFO, logger="sealtrail.worker"):
                outcomes[name] = (asyncio.run(main()), registry.get_sample_value(
                    "sealtrail_audit_handoff_rows_total"))
        held_rows = handed(tmp_path / "collector" / "audit.db.handoff")
    assert outcomes["trusted"] == (True, 300)
    assert held_rows == store_rows(tmp_path / "trusted" / "audit.db")
    assert outcomes["other"] == (False, 0)  # a collector it cannot trust gets nothing
    assert "cannot reach the handoff collector" in caplog.text
    assert HANDOFF_TOKEN not in caplog.text


# -- the collector down too --------------------------------------------------------------------


def test_with_the_collector_down_the_rows_stay_and_are_counted_abandoned(
        tmp_path: Path, siem: ElasticReceiver, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    nowhere = f"http://127.0.0.1:{free_port()}"
    config = core_config(tmp_path, siem.url, handoff={
        "url": nowhere, "token": {"file": str(token_file(tmp_path))}})

    async def main() -> bool:
        core = WorkerCore(config, registry)
        core.start()
        await core.append(sample(1200))
        return await core.drain_and_stop(3)

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="sealtrail.worker"):
        assert asyncio.run(main()) is False
    assert time.monotonic() - started < 3 + 1
    rows = store_rows(tmp_path / "audit.db")
    assert len(rows) == 1200
    for name in ("siem", "audit-archive"):
        assert registry.get_sample_value("sealtrail_audit_rows_abandoned_total",
                                         {"export": name}) == 1200
        assert any(f"export {name}: 1200 rows neither delivered nor handed off" in record.message
                   for record in caplog.records), caplog.text
    assert not registry.get_sample_value("sealtrail_audit_handoff_rows_total")
    assert cursor(tmp_path / "audit.db", HANDOFF_CURSOR) is None


@pytest.mark.slow
def test_a_sidecar_with_the_collector_down_exits_by_its_deadline_and_says_what_it_left(
        tmp_path: Path, siem: ElasticReceiver) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with running_worker(tmp_path, **sidecar_config(tmp_path, siem, nowhere,
                                                   drain_seconds=3)) as sidecar:
        ingest(sidecar, 2000, seed=3, tenants=("acme",))
        started = time.monotonic()
        assert sidecar.stop(timeout=20) == 0
        assert time.monotonic() - started < 3 + 5
    log = sidecar.log()
    assert "export siem: 2001 rows neither delivered nor handed off at exit (abandoned)" in log
    assert "ERROR" in log
    assert HANDOFF_TOKEN not in log
    assert len(store_rows(sidecar.db)) == 2001  # the rows and the drain's checkpoint stay


def test_a_collector_near_its_byte_limit_refuses_a_handoff_it_could_not_hold(
        tmp_path: Path, siem: ElasticReceiver) -> None:
    rows = store_rows_of_a_sidecar(tmp_path / "sidecar", 3000)
    body_bytes = sum(len(row) + 1 for row in rows)
    budget = 4 * 1024 * 1024
    assert 3 * body_bytes > budget  # what the gate counts a request may grow the store by
    config = collector_config(tmp_path / "collector", siem)
    config["store"] = {"path": str(tmp_path / "collector" / "audit.db"), "budgetBytes": budget,
                       "reserveFreeBytes": 0}
    with running_worker(tmp_path / "collector", **config) as collector:
        refused = post_handoff(collector, rows)
        assert refused.status_code == 429, refused.text
        assert "the store holds" in refused.json()["error"]
        assert "nothing of this request was stored" in refused.json()["error"]
        assert refused.headers["Retry-After"]
        assert handed(tmp_path / "collector" / "audit.db.handoff") == []
        accepted = post_handoff(collector, rows[:100])  # what fits is taken
        assert accepted.status_code == 200, accepted.text
        assert handed(tmp_path / "collector" / "audit.db.handoff") == rows[:100]
