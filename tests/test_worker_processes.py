"""`ingest.processes: 2`: several ingest processes on one port and one store, as users see it.

With `ingest.processes: 2` the worker runs three processes: two that take every ingest
connection, and the first, which runs the exports, status and metrics and answers what the
others forward to it.

Every test runs the real worker (`tests.worker_process`) and talks to it over many fresh
connections, so the kernel spreads them over both processes (`SO_REUSEPORT`). What a user
relies on, and is checked here:

* every acknowledged event is stored exactly once, global and per-tenant order have no gaps,
  and the chain verifies, while both processes take requests;
* the export sees rows appended by the other process and delivers them all, in order;
* `/metrics` and `/v1/status` tell the same truth on every connection (counts include the
  other process's events; status and metrics are forwarded to the first process);
* back-pressure refuses on every connection once exports fall behind;
* status, metrics and resume want the admin token (or an ingest token) on every connection,
  and an ingest token a config change removed is refused on every connection at once;
* a killed ingest process is replaced, SIGTERM stops them all with exit 0, and one whose first
  process died exits by itself.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from sealtrail.api.worker_api import STATUS_PATH, WorkerStatus, resume_path
from sealtrail.chain.verify import Status, verify_store
from sealtrail.demo import sample_events

from .receivers.splunk import SplunkReceiver
from .test_export_conformance import wait_for, write_credential
from .worker_process import Worker, running_worker

pytestmark = pytest.mark.timeout(120)

HEC_TOKEN = "5d1f0c4e-7b2a-4c8e-9f3d-2a6b8c0e1f47"  # noqa: S105 - the test receiver's


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def events(count: int, seed: int) -> list[dict[str, Any]]:
    return [orjson.loads(orjson.dumps(event)) for event in sample_events(
        count, seed=seed, tenants=("acme", "globex"))]


def post_on_fresh_connections(worker: Worker, batches: list[list[dict[str, Any]]],
                              check: Callable[[httpx.Response], None] | None = None,
                              ) -> list[dict[str, Any]]:
    """Post each batch on its own new connection; return the acknowledged entries."""
    acknowledged = []
    for batch in batches:
        with worker.client() as client:
            answer = client.post("/v1/events", json=batch)
        if check is not None:
            check(answer)
            continue
        assert answer.status_code == 200, answer.text
        acknowledged += answer.json()["events"]
    return acknowledged


def two_processes(tmp_path: Path, **overrides: Any) -> Any:
    ingest = {"processes": 2, **overrides.pop("ingest", {})}
    return running_worker(tmp_path, ingest=ingest, **overrides)


def test_both_processes_ingest_into_one_chain_without_loss_or_gaps(tmp_path: Path) -> None:
    with two_processes(tmp_path) as worker:
        wait_for(lambda: len(children(worker.pid)) == 2, 10, "the two ingest processes")
        ingesting = children(worker.pid)
        ticks = {pid: cpu_ticks(pid) for pid in ingesting}
        batches = [events(50, seed) for seed in range(40)]
        acknowledged = post_on_fresh_connections(worker, batches)
        busy = {pid: cpu_ticks(pid) - ticks[pid] for pid in ticks}
        rows = worker.rows()
    assert all(busy[pid] > 0 for pid in ingesting), f"an ingest process took no requests: {busy}"
    assert len(acknowledged) == 2000
    assert sorted(entry["seq"] for entry in acknowledged) == list(range(1, 2001))
    by_seq = {row["seq"]: row for row in rows}
    for entry in acknowledged:
        row = by_seq[entry["seq"]]
        assert (row["tenant_id"], row["tenant_seq"], row["record_hash"]) == (
            entry["tenant_id"], entry["tenant_seq"], entry["record_hash"])
    for tenant in ("acme", "globex"):
        seqs = [row["tenant_seq"] for row in rows if row["tenant_id"] == tenant]
        assert seqs == list(range(1, len(seqs) + 1))
    assert verify_store(worker.db).status is Status.INTACT


def test_export_delivers_what_either_process_stored_in_order(tmp_path: Path) -> None:
    receiver = SplunkReceiver(HEC_TOKEN)
    receiver.start()
    write_credential(tmp_path / "hec-token", HEC_TOKEN)
    try:
        with two_processes(tmp_path, exports=[{
            "name": "hec", "splunk": {"hecUrl": receiver.url,
                                      "token": {"file": str(tmp_path / "hec-token")}},
            "batch": {"intervalMs": 20}}]) as worker:
            acknowledged = post_on_fresh_connections(worker, [events(25, s) for s in range(24)])
            wait_for(lambda: len(receiver.event_bytes()) >= len(acknowledged), 20,
                     "delivery of every acknowledged event")
            delivered = [orjson.loads(body)["seq"] for body in receiver.event_bytes()]
    finally:
        receiver.stop()
    assert delivered == list(range(1, len(acknowledged) + 1))


def test_metrics_and_status_are_one_truth_on_every_connection(tmp_path: Path) -> None:
    with two_processes(tmp_path) as worker:
        post_on_fresh_connections(worker, [events(10, seed) for seed in range(20)])

        def counted_everywhere() -> bool:
            for _ in range(8):
                with worker.client() as client:
                    text = client.get("/metrics").text
                if "sealtrail_audit_ingested_events_total 200.0" not in text:
                    return False
            return True

        wait_for(counted_everywhere, 10, "every connection's /metrics to count 200 events")
        for _ in range(8):
            with worker.client() as client:
                status = client.get("/v1/status")
                ready = client.get("/readyz")
                missing = client.get("/v1/nothing-here")
            assert status.status_code == 200
            assert status.json()["last_seq"] == 200
            assert ready.status_code == 200
            assert missing.status_code == 404
            assert missing.headers["Content-Type"].startswith("application/json")


def test_admin_routes_ask_for_a_token_and_follow_token_changes_on_every_connection(
        tmp_path: Path) -> None:
    admin, acme = "st-adm-4pQ9vW2xL7", "st-acme-8Rt3nY6kM1"
    write_credential(tmp_path / "admin-token", admin)
    write_credential(tmp_path / "acme-token", acme)
    with two_processes(tmp_path, ingest={"tokens": [
            {"token": {"file": str(tmp_path / "acme-token")}, "tenants": ["acme"]}]},
            admin={"token": {"file": str(tmp_path / "admin-token")}}) as worker:
        wait_for(lambda: len(children(worker.pid)) == 2, 10, "the two ingest processes")
        for _ in range(8):  # fresh connections: some land on the second process, forwarded
            with worker.client() as client:
                refused = client.get(STATUS_PATH)
                assert refused.status_code == 401, refused.text
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
                answer = client.get(STATUS_PATH, headers={"Authorization": f"Bearer {admin}"})
                assert answer.status_code == 200, answer.text
                assert WorkerStatus.model_validate_json(answer.content).ready
                assert client.get(STATUS_PATH, headers={
                    "Authorization": f"Bearer {acme}"}).status_code == 200
                assert client.post(resume_path("none"), headers={
                    "Authorization": f"Bearer {admin}"}).status_code == 404
        # The acme token is taken out of the config: refused everywhere, forwarded or not.
        config = dict(worker.config)
        config["ingest"] = {**config["ingest"], "tokens": []}
        worker.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        # Status is answered by the first process, for connections the second one took too.
        wait_for(lambda: worker.log().count("config reloaded") >= 3, 10,
                 "the config reload in all three processes")
        for _ in range(8):
            with worker.client() as client:
                assert client.get(STATUS_PATH, headers={
                    "Authorization": f"Bearer {acme}"}).status_code == 401
                assert client.get(STATUS_PATH, headers={
                    "Authorization": f"Bearer {admin}"}).status_code == 200
        log = worker.log()
    assert admin not in log
    assert acme not in log


def test_backpressure_refuses_on_every_connection(tmp_path: Path) -> None:
    write_credential(tmp_path / "hec-token", HEC_TOKEN)
    with two_processes(tmp_path, ingest={
            "backpressure": {"highWatermarkRows": 300, "lowWatermarkRows": 100,
                             "retryAfterSeconds": 1}},
            exports=[{"name": "down", "splunk": {
                "hecUrl": "http://127.0.0.1:9", "token": {"file": str(tmp_path / "hec-token")}},
                "retry": {"initialBackoffMs": 50, "maxBackoffMs": 500}}]) as worker:
        post_on_fresh_connections(worker, [events(100, seed) for seed in range(3)])

        def paused_total() -> float:
            with worker.client() as client:
                text = client.get("/metrics").text
            found = re.search(r"^sealtrail_audit_backpressure_paused_total ([0-9.e+]+)$", text,
                              re.MULTILINE)
            return float(found.group(1)) if found else 0.0

        refusing_rounds = [0]

        def every_connection_refuses() -> bool:
            # Each process learns the other's lag at its next report round (every 100 ms);
            # on a loaded machine that can take longer. The kernel spreads new connections
            # over the two processes unevenly, so ask until three rounds of ten new
            # connections in a row were all refused.
            codes = set()
            for seed in range(10):
                with worker.client() as client:
                    codes.add(client.post("/v1/events", json=events(1, 100 + seed))
                              .status_code)
            refusing_rounds[0] = refusing_rounds[0] + 1 if codes == {429} else 0
            return refusing_rounds[0] >= 3

        wait_for(every_connection_refuses, 20, "both processes to refuse")
        # The second process hands its counts over every 100 ms: let the probes' refusals
        # settle before counting from here.
        settled = [paused_total()]

        def counter_settled() -> bool:
            time.sleep(0.3)
            settled.append(paused_total())
            return settled[-1] == settled[-2]

        wait_for(counter_settled, 10, "the refusal counter to settle")
        stored, refusals = worker.row_count(), settled[-1]

        def refused(answer: httpx.Response) -> None:
            assert answer.status_code == 429, answer.text
            assert answer.headers["Retry-After"] == "1"

        post_on_fresh_connections(worker, [events(10, seed) for seed in range(12)], refused)
        assert worker.row_count() == stored  # refused means not stored, on both processes
        wait_for(lambda: paused_total() == refusals + 12, 5,
                 "both processes' refusals to be counted")


def test_a_killed_ingest_process_is_replaced_and_nothing_acknowledged_is_lost(
        tmp_path: Path) -> None:
    with two_processes(tmp_path) as worker:
        wait_for(lambda: len(children(worker.pid)) == 2, 10, "the two ingest processes")
        first_child, other = children(worker.pid)
        before = post_on_fresh_connections(worker, [events(20, s) for s in range(5)])
        os.kill(first_child, signal.SIGKILL)
        wait_for(lambda: len(set(children(worker.pid)) - {first_child, other}) == 1, 10,
                 "a replacement ingest process")
        after = post_on_fresh_connections(worker, [events(20, s) for s in range(5, 15)])
        rows = worker.rows()
        assert "exited with status -9; starting another" in worker.log()
    assert {row["seq"] for row in rows} >= {entry["seq"] for entry in before + after}
    assert verify_store(worker.db).status is Status.INTACT


def test_sigterm_stops_every_process_with_exit_0(tmp_path: Path) -> None:
    with two_processes(tmp_path) as worker:
        wait_for(lambda: len(children(worker.pid)) == 2, 10, "the two ingest processes")
        ingesting = children(worker.pid)
        post_on_fresh_connections(worker, [events(10, s) for s in range(4)])
        assert worker.stop() == 0
    assert not any(alive(child) for child in ingesting)


def test_an_orphaned_ingest_process_exits_by_itself(tmp_path: Path) -> None:
    with two_processes(tmp_path) as worker:
        wait_for(lambda: len(children(worker.pid)) == 2, 10, "the two ingest processes")
        ingesting = children(worker.pid)
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)
        wait_for(lambda: not any(alive(child) for child in ingesting), 10,
                 "the orphaned ingest processes to exit")
