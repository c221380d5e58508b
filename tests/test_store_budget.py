"""The byte budget: ingest slows and then refuses before the store's volume is full, never past it.

A pod's store is an `emptyDir` with a `sizeLimit`; past it the kubelet evicts the whole pod.
These tests hold the worker to its side of that: the measured bytes (allocated blocks, as the
kubelet counts them), the gate's states and messages, and a real worker process with its SIEM
down filling a small budget under steady load: answers turn to 429 naming the store, the
directory never passes the budget, and everything accepted arrives after recovery. (The
eviction itself, by the fake kubelet, is in tests/test_pod_lifecycle.py.)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from sealtrail.api.worker_config import BackpressureSpec
from sealtrail.chain.store import ChainStore
from sealtrail.demo import sample_events
from sealtrail.worker.backpressure import Backpressure, RefusedError, State
from sealtrail.worker.store_budget import StoreBudget, StoreUsage, directory_bytes

from .receivers.webhook import WebhookReceiver, new_secret
from .test_export_conformance import wait_for, write_credential
from .test_worker_durability import worker

MIB = 1024 * 1024


def test_directory_bytes_counts_allocated_blocks_of_the_files_in_it(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10_000)
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as handle:  # 100 MiB apparent, nothing allocated
        handle.truncate(100 * MIB)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 50_000)  # not the store's directory
    counted = directory_bytes(tmp_path)
    assert 10_000 <= counted < 100 * 1024  # the file's blocks; not the sparse file's size
    assert directory_bytes(tmp_path / "missing") == 0


def test_the_limit_is_the_budget_or_what_the_disk_can_still_give(tmp_path: Path) -> None:
    (tmp_path / "audit.db").write_bytes(b"x" * MIB)
    budgeted = StoreBudget(tmp_path, 8 * MIB, reserve_free_bytes=0).usage()
    assert budgeted.limit == 8 * MIB
    assert MIB <= budgeted.used < 2 * MIB
    assert 0.12 < budgeted.fraction < 0.25
    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    # A reserve larger than what is free leaves only what the store already holds.
    unbounded = StoreBudget(tmp_path, None, reserve_free_bytes=free + 10 * MIB).usage()
    assert unbounded.limit < budgeted.used
    assert unbounded.fraction >= 1


class _Budget(StoreBudget):
    """A budget whose usage a test sets."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"), 100 * MIB, 0)
        self._usage = StoreUsage(0, 100 * MIB, 100 * MIB)

    @property
    def used(self) -> int:
        return self._usage.used

    @used.setter
    def used(self, value: int) -> None:  # a new measurement
        self._usage = StoreUsage(value, 100 * MIB, 100 * MIB)

    def usage(self, *, fresh: bool = False) -> StoreUsage:  # noqa: ARG002 - set by the test
        return self._usage


def test_the_gate_follows_the_worse_of_lag_and_bytes_with_hysteresis() -> None:
    async def run() -> None:
        budget = _Budget()
        lag = [0]
        spec = BackpressureSpec(high_watermark_rows=1000, low_watermark_rows=10, slowdown_ms=0,
                                store_high_fraction=0.8, store_low_fraction=0.5)
        gate = Backpressure(spec, lambda: lag[0], CollectorRegistry(), budget)
        budget.used = 60 * MIB
        gate.update()
        assert gate.state is State.OPEN
        budget.used = 70 * MIB  # past 80 % of the 80 % watermark: slowing
        gate.update()
        assert gate.state is State.SLOWING
        await gate.admit()
        budget.used = 81 * MIB
        with pytest.raises(RefusedError) as refused:
            await gate.admit()
        assert "the store holds 81.0 MiB of the 100.0 MiB it may use (81%)" in str(refused.value)
        budget.used = 60 * MIB  # below the high watermark, not yet below the low one
        gate.update()
        assert gate.state is State.CLOSED
        budget.used = 49 * MIB
        gate.update()
        assert gate.state is State.OPEN
        lag[0] = 1000  # the rows can close it while the bytes are fine, and say so
        with pytest.raises(RefusedError) as refused:
            await gate.admit()
        assert str(refused.value).startswith("exports are 1000 rows behind")

    asyncio.run(run())


def test_a_request_that_would_pass_the_limit_is_refused_even_while_open() -> None:
    async def run() -> None:
        budget = _Budget()
        gate = Backpressure(BackpressureSpec(), lambda: 0, CollectorRegistry(), budget)
        budget.used = 10 * MIB
        await gate.admit(size_hint=10 * MIB)  # 10 + 3 x 10 < 100
        # The bytes just admitted count until a new measurement sees them on disk.
        await gate.admit(size_hint=10 * MIB)
        # 10 measured + 2 x 30 admitted = 70 MiB: slowing, not closed; but 30 more would reach
        # the limit, so this request is refused on its own.
        with pytest.raises(RefusedError, match=r"the store holds 70\.0 MiB"):
            await gate.admit(size_hint=10 * MIB)
        assert gate.state is State.SLOWING
        await gate.admit(size_hint=MIB)  # a small one still fits

    asyncio.run(run())


@pytest.mark.slow
def test_a_siem_outage_fills_the_budget_and_ingest_refuses_before_the_limit(
        tmp_path: Path) -> None:
    secret = new_secret(b"budget")
    write_credential(tmp_path / "secret", secret)
    receiver = WebhookReceiver([secret])
    receiver.start()
    budget = 4 * MIB
    config = {
        "store": {"path": str(tmp_path / "store" / "audit.db"), "budgetBytes": budget,
                  "reserveFreeBytes": 0},
        "ingest": {"backpressure": {"highWatermarkRows": 1_000_000, "lowWatermarkRows": 10,
                                    "retryAfterSeconds": 1}},
        "exports": [{"name": "hook",
                     "webhook": {"url": receiver.url + "/",
                                 "secret": {"file": str(tmp_path / "secret")}},
                     "retry": {"initialBackoffMs": 20, "maxBackoffMs": 200},
                     "batch": {"intervalMs": 20, "maxIntervalMs": 200}}],
    }
    events = [orjson.loads(orjson.dumps(e)) for e in sample_events(200, seed=9)]
    store_dir = tmp_path / "store"
    try:
        with worker(tmp_path, config) as running, httpx.Client(timeout=10) as client:
            running.db = store_dir / "audit.db"
            running.start()
            receiver.stop()  # the SIEM is down from the start; the app writes steadily
            accepted = 0
            refused = None
            largest = 0
            for _ in range(200):
                answer = client.post(running.url + "/v1/events", json=events)
                largest = max(largest, directory_bytes(store_dir))
                if answer.status_code == 429:
                    refused = answer
                    break
                assert answer.status_code == 200, answer.text
                accepted += len(events)
            assert refused is not None, "the byte budget never closed ingest"
            assert "the store holds" in refused.json()["error"]
            assert refused.headers["Retry-After"] == "1"
            for _ in range(10):  # it stays closed while the SIEM is down
                assert client.post(running.url + "/v1/events", json=events).status_code == 429
                largest = max(largest, directory_bytes(store_dir))
            assert accepted >= 1000  # most of the budget was usable
            assert largest < budget, f"the store reached {largest} bytes of a {budget} budget"
            status = client.get(running.url + "/v1/status").json()["backpressure"]
            assert status["state"] == "closed"
            assert status["store_limit_bytes"] == budget
            assert 0.8 * budget <= status["store_used_bytes"] < budget
            metrics = client.get(running.url + "/metrics").text
            assert "sealtrail_audit_store_full 1.0" in metrics
            receiver.start()  # recovery: everything accepted arrives
            wait_for(lambda: sum(len(d.rows) for d in receiver.deliveries) >= accepted, 60,
                     "the backlog to drain")
            assert running.terminate() == 0
        with ChainStore(store_dir / "audit.db") as store:
            stored = list(store.rows())
        received = {row for d in receiver.deliveries for row in d.rows}
        assert len(stored) == accepted
        assert set(stored) <= received
    finally:
        receiver.stop()
