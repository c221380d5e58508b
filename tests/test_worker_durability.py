"""The real worker process under the things that happen to sidecars.

Covers: twenty SIGKILLs at random moments under load lose no acknowledged event, and the chain
verifies; a receiver outage under load engages back-pressure (429 with Retry-After once the lag
passes the high watermark), the worker's memory stays bounded, and everything accepted drains
after recovery; a rotated credential file and an edited config file are picked up with no
restart; SIGTERM drains and exits 0.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from sealtrail.chain.store import ChainStore
from sealtrail.chain.verify import Status, verify_store
from sealtrail.demo import sample_events

from .conftest import ROOT
from .receivers.http_base import free_port
from .receivers.webhook import WebhookReceiver, new_secret
from .test_export_conformance import wait_for, write_credential


class Worker:
    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.db = tmp_path / "audit.db"
        self.config_path = tmp_path / "worker.yaml"
        self.log_path = tmp_path / "worker.log"
        ingest = {"listen": f"127.0.0.1:{self.port}", **config.get("ingest", {})}
        config = {"store": {"path": str(self.db)}, **config, "ingest": ingest}
        self.write(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, config: dict[str, Any]) -> None:
        fresh = self.config_path.with_suffix(".new")
        fresh.write_text(yaml.safe_dump(config))
        fresh.replace(self.config_path)  # as the kubelet swaps a ConfigMap: a new file

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sealtrail", "worker", "--config", str(self.config_path)],
                env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "worker not ready in 30 s\n" + self.log()
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@contextmanager
def worker(tmp_path: Path, config: dict[str, Any]) -> Iterator[Worker]:
    running = Worker(tmp_path, config)
    try:
        yield running
    finally:
        running.close()


def stored_rows(db: Path) -> dict[int, str]:
    with ChainStore(db) as store:
        return {orjson.loads(row)["seq"]: orjson.loads(row)["record_hash"] for row in store.rows()}


@pytest.mark.slow
def test_sigkill_loop_loses_no_acknowledged_event(tmp_path: Path) -> None:
    acknowledged: dict[int, str] = {}
    events = [orjson.dumps(e) for e in sample_events(4000, seed=3)]
    pick = random.Random(20261122)
    with worker(tmp_path, {"exports": []}) as running:
        stop = threading.Event()

        def load() -> None:  # a sender that retries what was not acknowledged
            position = 0
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    size = pick.randint(1, 60)
                    body = b"\n".join(events[(position + i) % len(events)] for i in range(size))
                    try:
                        answer = client.post(running.url + "/v1/events", content=body,
                                             headers={"content-type": "application/x-ndjson"})
                    except httpx.HTTPError:
                        time.sleep(0.02)
                        continue
                    if answer.status_code == 200:
                        for item in answer.json()["events"]:
                            acknowledged[item["seq"]] = item["record_hash"]
                        position += size

        running.start()
        sender = threading.Thread(target=load, daemon=True)
        sender.start()
        kills = 0
        try:
            for _ in range(20):
                time.sleep(pick.uniform(0.05, 0.35))
                before = len(acknowledged)
                running.kill()
                kills += 1
                rows = stored_rows(running.db)
                for seq, digest in list(acknowledged.items()):
                    assert rows.get(seq) == digest, f"acknowledged seq {seq} lost or changed"
                running.start()
                wait_for(lambda b=before: len(acknowledged) > b, 20, "new acknowledgements")
        finally:
            stop.set()
            sender.join(timeout=10)
        assert kills == 20
        assert running.terminate() == 0
    rows = stored_rows(running.db)
    assert all(rows.get(seq) == digest for seq, digest in acknowledged.items())
    assert len(acknowledged) > 500
    assert verify_store(running.db).status is Status.INTACT


@pytest.mark.slow
def test_sigkill_loop_with_idempotency_keys_stores_every_batch_exactly_once(
        tmp_path: Path) -> None:
    """A client that retries an unanswered batch under its key never gets it stored twice.

    The key and its answer commit with the rows, so a kill can fall anywhere (before the
    commit, between the commit and the answer) and the retry finds either nothing or the answer.
    """
    base = list(sample_events(50, seed=5))
    pick = random.Random(20261205)
    answered: dict[str, list[int]] = {}  # batch key -> the seqs its 200 named
    with worker(tmp_path, {"exports": []}) as running:
        stop = threading.Event()

        def load() -> None:  # every batch sent until answered 200, always under its own key
            number = 0
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    key = f"batch-{number:05d}"
                    body = orjson.dumps([
                        {**base[i % len(base)], "extra": {"n": f"{number}.{i}"}}
                        for i in range(pick.randint(1, 40))])
                    while not stop.is_set():
                        try:
                            answer = client.post(running.url + "/v1/events", content=body,
                                                 headers={"content-type": "application/json",
                                                          "Idempotency-Key": key})
                        except httpx.HTTPError:
                            time.sleep(0.02)
                            continue
                        if answer.status_code == 200:
                            answered[key] = [item["seq"] for item in answer.json()["events"]]
                            number += 1
                            break
                        assert answer.status_code == 503, answer.text  # shutting down only
                        time.sleep(0.02)

        running.start()
        sender = threading.Thread(target=load, daemon=True)
        sender.start()
        try:
            for _ in range(12):
                time.sleep(pick.uniform(0.05, 0.3))
                before = len(answered)
                running.kill()
                running.start()
                wait_for(lambda b=before: len(answered) > b, 20, "new answers")
        finally:
            stop.set()
            sender.join(timeout=10)
        assert running.terminate() == 0
    with ChainStore(running.db) as store:
        markers = [orjson.loads(row)["extra"]["n"] for row in store.rows()]
    assert len(markers) == len(set(markers)), "a retried batch was stored twice"
    stored_batches = {int(marker.split(".")[0]) for marker in markers}
    assert set(range(len(answered))) <= stored_batches  # every answered batch is there
    assert len(answered) > 50
    assert verify_store(running.db).status is Status.INTACT


@pytest.mark.slow
def test_outage_engages_backpressure_and_everything_drains(tmp_path: Path) -> None:
    secret = new_secret(b"durability")
    write_credential(tmp_path / "secret", secret)
    receiver = WebhookReceiver([secret])
    receiver.start()
    config = {
        "ingest": {"backpressure": {"highWatermarkRows": 400, "lowWatermarkRows": 100,
                                    "mode": "reject", "retryAfterSeconds": 1}},
        "exports": [{"name": "hook",
                     "webhook": {"url": receiver.url + "/", "secret": {"file": str(tmp_path / "secret")}},
                     "retry": {"initialBackoffMs": 20, "maxBackoffMs": 200},
                     "batch": {"intervalMs": 20, "maxIntervalMs": 200}}],
    }
    events = [orjson.loads(orjson.dumps(e)) for e in sample_events(100, seed=4)]
    try:
        with worker(tmp_path, config) as running, httpx.Client(timeout=10) as client:
            running.start()
            answer = client.post(running.url + "/v1/events", json=events)
            assert answer.status_code == 200
            wait_for(lambda: sum(len(d.rows) for d in receiver.deliveries) >= 100, 20, "delivery")
            receiver.stop()  # the SIEM goes away; load goes on
            accepted = 100
            refused = None
            rss_before = running.rss_mib()
            for _ in range(40):
                answer = client.post(running.url + "/v1/events", json=events)
                if answer.status_code == 429:
                    refused = answer
                    break
                assert answer.status_code == 200, answer.text
                accepted += len(events)
            assert refused is not None, "back-pressure never engaged"
            assert refused.headers["Retry-After"] == "1"
            assert "behind" in refused.json()["error"]
            assert 400 <= accepted <= 600  # refused right after the lag passed the watermark
            for _ in range(20):  # it stays refused while the outage lasts: nothing is dropped
                assert client.post(running.url + "/v1/events", json=events).status_code == 429
            assert running.rss_mib() < rss_before + 30
            metrics = client.get(running.url + "/metrics").text
            assert "sealtrail_audit_backpressure_paused_total 2" in metrics
            status = client.get(running.url + "/v1/status").json()
            assert status["backpressure"]["state"] == "closed"
            assert status["exports"][0]["last_error"]
            assert not status["exports"][0]["paused"]
            receiver.start()  # recovery
            wait_for(lambda: sum(len(d.rows) for d in receiver.deliveries) >= accepted, 60,
                     "the backlog to drain")
            wait_for(lambda: client.post(running.url + "/v1/events", json=events).status_code
                     == 200, 20, "ingest to open again")
            assert running.terminate() == 0
        received = [row for d in receiver.deliveries for row in d.rows]
        with ChainStore(running.db) as store:
            stored = list(store.rows())
        assert set(stored) <= set(received)  # everything accepted reached the SIEM
    finally:
        receiver.stop()


def test_rotated_credential_and_edited_config_apply_without_restart(tmp_path: Path) -> None:
    first_secret, second_secret = new_secret(b"one"), new_secret(b"two")
    write_credential(tmp_path / "secret", first_secret)
    first, second = WebhookReceiver([first_secret]), WebhookReceiver([first_secret])
    first.start()
    second.start()
    hook = {"name": "first", "webhook": {"url": first.url + "/",
                                         "secret": {"file": str(tmp_path / "secret")}},
            "batch": {"intervalMs": 20, "maxIntervalMs": 100}}
    events = [orjson.loads(orjson.dumps(e)) for e in sample_events(30, seed=5)]
    try:
        with worker(tmp_path, {"exports": [hook]}) as running, httpx.Client(timeout=10) as client:
            running.start()
            pid = running.process.pid if running.process else None
            assert client.post(running.url + "/v1/events", json=events).status_code == 200
            wait_for(lambda: sum(len(d.rows) for d in first.deliveries) >= 30, 20, "delivery")
            before = client.get(running.url + "/v1/status").json()["exports"][0]

            first.set_secrets([second_secret])  # the SIEM rotates; the Secret follows
            write_credential(tmp_path / "secret", second_secret)
            assert client.post(running.url + "/v1/events", json=events).status_code == 200
            wait_for(lambda: sum(len(d.rows) for d in first.deliveries) >= 60, 20,
                     "delivery with the rotated secret")
            after = client.get(running.url + "/v1/status").json()["exports"][0]
            assert after["credential_version"] != before["credential_version"]
            assert not first.rejections, "the new secret was read before sending, not after a 401"

            second.set_secrets([second_secret])
            running.write({"store": {"path": str(running.db)},
                           "ingest": {"listen": f"127.0.0.1:{running.port}"},
                           "exports": [hook, {**hook, "name": "second",
                                              "webhook": {**hook["webhook"],
                                                          "url": second.url + "/"}}]})
            wait_for(lambda: sum(len(d.rows) for d in second.deliveries) >= 60, 20,
                     "the export the edited config added, from the start of the log")
            assert running.process is not None
            assert running.process.pid == pid  # no restart
            assert running.terminate() == 0
        assert "config reloaded: started second" in running.log_path.read_text()
        assert second_secret not in running.log_path.read_text()
    finally:
        first.stop()
        second.stop()
