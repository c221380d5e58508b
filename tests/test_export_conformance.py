"""What every export must do, whatever the SIEM: one suite, run against all six receivers.

Covers, per backend: rows arrive in order and exactly as `sealtrail dump` prints them, and a
verifier holding only what the SIEM received re-checks every tenant's chain and its signed
checkpoints; a receiver outage under load, then recovery, loses nothing; SIGKILL of the real
exporter process mid-batch loses nothing and duplicates only rows with the same dedupe key;
retryable failures are retried, auth failures re-read the credential, five permanent failures
pause that export and no other; a token rotated in the credential file is used on the next
batch with no restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from sealtrail.api.export import ExportsConfig, ExportSpec
from sealtrail.chain.checkpoint import Checkpoint
from sealtrail.chain.keys import Signer
from sealtrail.chain.store import ChainStore, CheckpointPolicy
from sealtrail.export.engine import ExportEngine

from .conftest import ROOT, events
from .jcs_reference import jcs_bytes
from .receivers.harness import ReceiverCase
from .receivers.webhook import WebhookCase

KINDS = ["splunk", "elastic", "datadog", "webhook", "syslog", "cloudwatch"]


def make_case(kind: str, tmp_path: Path) -> ReceiverCase:
    module = importlib.import_module(f"tests.receivers.{kind}")
    cls = next(value for name, value in vars(module).items()
               if name.endswith("Case") and isinstance(value, type)
               and issubclass(value, ReceiverCase) and value is not ReceiverCase)
    try:
        return cls(tmp_path)  # type: ignore[call-arg]
    except TypeError:
        return cls()


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReceiverCase]:
    made = make_case(request.param, tmp_path / "receiver")
    made.start()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def credential(tmp_path: Path) -> Path:
    path = tmp_path / "credential"
    write_credential(path, "whsec_" + "c2VjcmV0LW9uZS1mb3ItdGVzdHMtb25seS0xMjM0")
    return path


def write_credential(path: Path, value: str) -> None:
    """Replace the file the way the kubelet does: a new file renamed over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(value + "\n", encoding="utf-8")
    fresh.replace(path)


def fill(db: Path, signer: Signer, count: int, seed: int = 1) -> list[bytes]:
    with ChainStore(db, checkpoints=CheckpointPolicy(signer, 40, None)) as store:
        batch = events(count, seed=seed, tenants=("acme", "globex", "initech"))
        for start in range(0, count, 50):
            store.append(batch[start : start + 50])
        store.checkpoint(signer)
        return list(store.rows())


def run_engine(db: Path, specs: list[ExportSpec],
               body: Callable[[ExportEngine, ChainStore], Any]) -> Any:
    async def main() -> Any:
        with ChainStore(db) as store:
            engine = ExportEngine(store, ExportsConfig(exports=specs), CollectorRegistry())
            try:
                return await body(engine, store)
            finally:
                await engine.stop()

    return asyncio.run(main())


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def first_occurrences(rows: list[bytes]) -> list[bytes]:
    seen: set[bytes] = set()
    kept = []
    for row in rows:
        if row not in seen:
            seen.add(row)
            kept.append(row)
    return kept


def check_chains_like_a_siem(received: list[bytes], signer: Signer) -> int:
    """Check chains as a SOC can, from the rows alone; return how many rows were checked.

    Per tenant, in tenant_seq order: every hash, every link, and every checkpoint row's
    signature and head.
    """
    by_tenant: dict[str, dict[int, dict[str, Any]]] = {}
    for body in received:
        row = orjson.loads(body)
        by_tenant.setdefault(row["tenant_id"], {})[row["tenant_seq"]] = row
    for tenant, rows in by_tenant.items():
        previous = "0" * 64
        for tenant_seq in range(1, len(rows) + 1):
            row = dict(rows[tenant_seq])  # KeyError here = a gap the SIEM can see
            claimed = row.pop("record_hash")
            assert hashlib.sha256(jcs_bytes(row)).hexdigest() == claimed, (tenant, tenant_seq)
            assert row["prev_hash"] == previous, (tenant, tenant_seq)
            if row["event_type"] == "sealtrail.checkpoint":
                checkpoint = Checkpoint.from_row({**row, "record_hash": claimed})
                assert checkpoint.signature_valid(signer.public)
                assert rows[checkpoint.tenant_seq]["record_hash"] == checkpoint.head_hash
            previous = claimed
    return sum(len(rows) for rows in by_tenant.values())


# -- the scenarios --------------------------------------------------------------------------


def test_rows_arrive_in_order_exactly_as_dumped(case: ReceiverCase, credential: Path,
                                                tmp_path: Path, signer: Signer) -> None:
    db = tmp_path / "audit.db"
    stored = fill(db, signer, 300)
    spec = case.export_spec("siem", credential)
    drained = run_engine(db, [spec], lambda engine, _: engine.drain(60))
    assert drained
    wait_for(lambda: len(case.received()) >= len(stored), 20, "the receiver to hold every row")
    received = case.received()
    assert received == stored  # every row, once, in order, byte for byte
    assert check_chains_like_a_siem(received, signer) == len(stored)


def test_outage_then_recovery_loses_nothing(case: ReceiverCase, credential: Path,
                                            tmp_path: Path, signer: Signer) -> None:
    db = tmp_path / "audit.db"
    before = fill(db, signer, 100)
    spec = case.export_spec("siem", credential)

    async def body(engine: ExportEngine, store: ChainStore) -> None:
        engine.start()
        await asyncio.to_thread(wait_for, lambda: len(case.received()) >= len(before), 30,
                                "the first rows")
        await asyncio.to_thread(case.stop)
        more = events(200, seed=5, tenants=("acme", "globex"))
        for start in range(0, 200, 25):  # load keeps coming during the outage
            store.append(more[start : start + 25])
            engine.notify()
            await asyncio.sleep(0.05)
        status = engine.status()[0]
        assert status.last_error is not None
        assert not status.paused, "an outage is retryable; it must never pause the export"
        await asyncio.to_thread(case.start)
        expected = list(store.rows())
        await asyncio.to_thread(
            wait_for, lambda: set(case.received()) >= set(expected), 60, "recovery")

    run_engine(db, [spec], body)
    with ChainStore(db) as store:
        stored = list(store.rows())
    received = case.received()
    assert first_occurrences(received) == stored or set(received) == set(stored)
    assert set(received) == set(stored)
    check_chains_like_a_siem(first_occurrences(received), signer)


def test_sigkill_mid_batch_loses_nothing(case: ReceiverCase, credential: Path, tmp_path: Path,
                                         signer: Signer) -> None:
    db = tmp_path / "audit.db"
    stored = fill(db, signer, 2000)
    spec = case.export_spec("siem", credential).model_copy(
        update={"batch": case.export_spec("siem", credential).batch.model_copy(
            update={"max_events": 50})})
    config = tmp_path / "exports.yaml"
    config.write_text(yaml.safe_dump(ExportsConfig(exports=[spec]).model_dump(
        mode="json", by_alias=True, exclude_none=True)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    command = [sys.executable, "-m", "sealtrail", "export", "--db", str(db), "--config",
               str(config), "--until-drained", "--timeout", "120"]
    pick = random.Random(7)
    for _ in range(3):
        with (tmp_path / "export.log").open("ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        wait_for(lambda p=process: len(case.received()) > 0 or p.poll() is not None, 30,
                 "the exporter to deliver something")
        time.sleep(pick.uniform(0.05, 0.4))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    result = subprocess.run(command, env=env, capture_output=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: set(case.received()) >= set(stored), 20, "every row")
    received = case.received()
    assert set(received) == set(stored)  # nothing lost, nothing foreign
    keys = [(row["tenant_id"], row["tenant_seq"]) for row in map(orjson.loads, received)]
    duplicates = len(keys) - len(set(keys))
    assert len(received) - len(set(received)) == duplicates  # a duplicate is the same row
    if case.deduplicates:
        assert duplicates == 0


def test_retryable_failures_are_retried_without_pausing(case: ReceiverCase, credential: Path,
                                                        tmp_path: Path, signer: Signer) -> None:
    if "retryable" not in case.failures:
        pytest.skip(f"{case.kind} has no retryable answer to inject")
    db = tmp_path / "audit.db"
    stored = fill(db, signer, 60)
    case.fail_next("retryable", 3)
    spec = case.export_spec("siem", credential)

    async def body(engine: ExportEngine, _: ChainStore) -> Any:
        drained = await engine.drain(60)
        return drained, engine.status()[0]

    drained, status = run_engine(db, [spec], body)
    assert drained
    assert not status.paused
    wait_for(lambda: set(case.received()) >= set(stored), 20, "every row")


def test_auth_failure_rereads_the_credential_once(case: ReceiverCase, credential: Path,
                                                  tmp_path: Path, signer: Signer) -> None:
    if "auth" not in case.failures:
        pytest.skip(f"{case.kind} has no credential to refuse")
    db = tmp_path / "audit.db"
    stored = fill(db, signer, 30)
    case.fail_next("auth", 1)
    spec = case.export_spec("siem", credential)

    async def body(engine: ExportEngine, _: ChainStore) -> Any:
        drained = await engine.drain(30)
        return drained, engine.status()[0]

    drained, status = run_engine(db, [spec], body)
    assert drained
    assert status.consecutive_failures == 0
    wait_for(lambda: set(case.received()) >= set(stored), 20, "every row")


def test_permanent_failures_pause_only_that_export(case: ReceiverCase, credential: Path,
                                                   tmp_path: Path, signer: Signer) -> None:
    if "permanent" not in case.failures:
        pytest.skip(f"{case.kind} has no permanent answer to inject")
    db = tmp_path / "audit.db"
    stored = fill(db, signer, 80)
    neighbour = make_case("webhook", tmp_path / "neighbour")
    assert isinstance(neighbour, WebhookCase)
    neighbour.start()
    try:
        case.fail_next("permanent", 1000)
        failing = case.export_spec("failing", credential)
        healthy = neighbour.export_spec("healthy", credential)

        async def body(engine: ExportEngine, _: ChainStore) -> Any:
            engine.start()
            await asyncio.to_thread(
                wait_for, lambda: engine.loops["failing"].paused, 30, "the failing export to pause")
            await asyncio.to_thread(
                wait_for, lambda: set(neighbour.received()) >= set(stored), 30, "the neighbour")
            return {item.name: item for item in engine.status()}

        status = run_engine(db, [failing, healthy], body)
        assert status["failing"].paused
        assert status["failing"].pause_reason is not None
        assert "5 consecutive permanent failures" in status["failing"].pause_reason
        assert status["failing"].cursor == 0  # nothing skipped
        assert not status["healthy"].paused
        assert status["healthy"].cursor == len(stored)
    finally:
        neighbour.close()


def test_rotated_credential_is_used_on_the_next_batch(case: ReceiverCase, credential: Path,
                                                      tmp_path: Path, signer: Signer) -> None:
    if "auth" not in case.failures:
        pytest.skip(f"{case.kind} has no credential to rotate")
    db = tmp_path / "audit.db"
    fill(db, signer, 20)
    spec = case.export_spec("siem", credential)

    async def body(engine: ExportEngine, store: ChainStore) -> Any:
        assert await engine.drain(30)
        before = engine.status()[0].credential_version
        rotated = "whsec_" + "cm90YXRlZC1zZWNyZXQtdHdvLWZvci10ZXN0cy01Njc4"
        case.set_credential(rotated)
        write_credential(credential, rotated)
        store.append(events(10, seed=9))
        assert await engine.drain(30)
        refused = engine.metrics.outcomes.labels("siem", "auth")._value.get()
        return before, engine.status()[0], refused

    before, status, refused = run_engine(db, [spec], body)
    assert status.credential_version != before
    assert refused == 0, "the new credential was read before the batch, not after a refusal"
    assert status.consecutive_failures == 0
    with ChainStore(db) as store:
        stored = list(store.rows())
    wait_for(lambda: set(case.received()) >= set(stored), 20, "rows sent with the new credential")
