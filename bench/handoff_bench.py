"""Handoff benchmark: real sidecar workers handing their rows to a real collector, durably.

    .venv/bin/python bench/handoff_bench.py [--rows 100000] [--sidecars 3] [--sidecar-rows 50000]
                                            [--out bench/results/handoff.json]

Every process is `python -m sealtrail worker` on loopback, every store `synchronous: FULL` (the
collector's store of handed-off rows is FULL whatever the config says). A sidecar's store is
filled beforehand (~780-byte rows of sample events, two tenants); its one export is paused, so
its drain goes straight to the handoff (an unpaused export to a dead SIEM would first use the
drain's time up to the reserve). The collector has no exports: what is measured is the handoff,
not the delivery after it. Measures, in order:

1. One sidecar, `--rows` rows, for `batchRows` 500, 2,000 (the default) and 5,000: the rate the
   sidecar reports (`handed off N rows in S s`: from its first request to the last
   acknowledgement, each batch committed by the collector before it is acknowledged), the time
   from SIGTERM to exit, and the collector's CPU per row.
2. `--sidecars` sidecars stopped at once (a rollout), `--sidecar-rows` each: the rate at the
   collector, from the first sidecar's first request to the last one's last acknowledgement.
3. The collector alone, rows posted from this process (prebuilt bodies of 2,000): new rows, then
   the same rows again (duplicates, as a retry after a lost answer sends them).

Every run checks that the collector holds exactly the rows each sidecar's store holds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from sealtrail.api.event import Event
from sealtrail.chain.store import ChainStore
from sealtrail.demo import sample_events

sys.path.insert(0, str(Path(__file__).parent))
from chain_bench import machine
from export_bench import free_port, stop_process
from worker_bench import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-handoff-token-0001"  # noqa: S105 - the loopback collector's, not a secret
BATCH_ROWS = (500, 2_000, 5_000)
POST_BATCH = 2_000
_HANDED = re.compile(r"^(\S+ \S+) .*handed off (\d+) rows in ([0-9.]+)s")
_HANDING = re.compile(r"^(\S+ \S+) .*handing off (\d+) undelivered rows")


class Process:
    """One `sealtrail worker` with its config, store and log in `directory`."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        """Write the config on a free port; start nothing yet."""
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.db = directory / "audit.db"
        config = {"store": {"path": str(self.db), "synchronous": "FULL"},
                  "ingest": {"listen": f"127.0.0.1:{self.port}"}, **config}
        self.config = directory / "worker.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = directory / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its ingest listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Its process id, once started."""
        assert self.process is not None  # noqa: S101 - only asked once started
        return self.process.pid

    def start(self) -> None:
        """Start it and wait until `/readyz` answers 200."""
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sealtrail", "worker", "--config", str(self.config)],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready: {self.log.read_text()[-2000:]}")

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends it."""
        assert self.process is not None  # noqa: S101 - only asked once started
        self.process.terminate()

    def wait(self) -> int:
        """Wait for it to exit; its status."""
        assert self.process is not None  # noqa: S101 - only asked once started
        return self.process.wait(timeout=600)


def fill(db: Path, rows: int, seed: int) -> None:
    """A sidecar's store with `rows` rows of sample events (FULL, batches of 500)."""
    events = [Event.model_validate(raw)
              for raw in sample_events(rows, seed=seed, tenants=("acme", "globex"))]
    db.parent.mkdir(parents=True, exist_ok=True)
    with ChainStore(db) as store:
        for start in range(0, rows, 500):
            store.append(events[start:start + 500])


def store_rows(db: Path) -> list[bytes]:
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [bytes(body) for (body,) in reader.execute(
            "SELECT body FROM audit_rows ORDER BY seq")]
    finally:
        reader.close()


def held(handoff_db: Path, store_id: str) -> int:
    reader = sqlite3.connect(f"file:{handoff_db}?mode=ro", uri=True)
    try:
        return int(reader.execute("SELECT COUNT(*) FROM handed_rows WHERE store_id = ?",
                                  (store_id,)).fetchone()[0])
    finally:
        reader.close()


def store_id_of(db: Path) -> str:
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(reader.execute(
            "SELECT value FROM audit_meta WHERE key = 'store_id'").fetchone()[0])
    finally:
        reader.close()


def sidecar(directory: Path, collector: Process, batch_rows: int) -> Process:
    token = directory / "handoff.token"
    directory.mkdir(parents=True, exist_ok=True)
    token.write_text(TOKEN)
    return Process(directory, {
        "exports": [{"name": "siem", "paused": True, "webhook": {
            "url": f"http://127.0.0.1:{free_port()}/", "secret": {"file": str(token)}}}],
        "handoff": {"url": collector.url, "token": {"file": str(token)},
                    "batchRows": batch_rows, "timeoutSeconds": 30},
        "drainTimeoutSeconds": 300,
    })


def log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: DTZ007 - both ends local


def handed_off(log: Path) -> tuple[int, float, float, float]:
    """Rows, seconds (as the sidecar reports them), and when the handoff began and ended."""
    text = log.read_text()
    done = next((match for line in text.splitlines() if (match := _HANDED.match(line))), None)
    begun = next((match for line in text.splitlines() if (match := _HANDING.match(line))), None)
    if done is None or begun is None:
        raise RuntimeError(f"no handoff in the sidecar's log: {text[-2000:]}")
    return int(done.group(2)), float(done.group(3)), log_time(begun.group(1)), log_time(
        done.group(1))


def one_sidecar(work: Path, collector: Process, rows: int, batch_rows: int,
                seed: int) -> dict[str, Any]:
    worker = sidecar(work / f"sidecar-{batch_rows}", collector, batch_rows)
    fill(worker.db, rows, seed)
    worker.start()
    before = cpu_seconds(collector.pid)[0]
    started = time.monotonic()
    worker.terminate()
    status = worker.wait()
    exit_seconds = time.monotonic() - started
    collector_cpu = cpu_seconds(collector.pid)[0] - before
    handed, seconds, _, _ = handed_off(worker.log)
    kept = held(collector.db.with_name("audit.db.handoff"), store_id_of(worker.db))
    if status != 0 or handed != rows or kept != rows:
        raise RuntimeError(f"batchRows {batch_rows}: exit {status}, handed {handed}, the "
                           f"collector holds {kept} of {rows}")
    return {"batch_rows": batch_rows, "rows": rows, "handoff_seconds": seconds,
            "rows_per_second": round(rows / seconds), "sigterm_to_exit_seconds": round(
                exit_seconds, 2), "collector_cpu_us_per_row": round(collector_cpu / rows * 1e6, 1)}


def concurrent(work: Path, collector: Process, sidecars: int, rows: int) -> dict[str, Any]:
    workers = [sidecar(work / f"rollout-{number}", collector, 2_000) for number in range(sidecars)]
    for number, worker in enumerate(workers):
        fill(worker.db, rows, 100 + number)
        worker.start()
    before = cpu_seconds(collector.pid)[0]
    started = time.monotonic()
    for worker in workers:
        worker.terminate()
    statuses = [worker.wait() for worker in workers]
    exit_seconds = time.monotonic() - started
    collector_cpu = cpu_seconds(collector.pid)[0] - before
    spans = [handed_off(worker.log) for worker in workers]
    if any(statuses) or any(span[0] != rows for span in spans):
        raise RuntimeError(f"rollout: exits {statuses}, handed {[span[0] for span in spans]}")
    handoff_db = collector.db.with_name("audit.db.handoff")
    for worker in workers:
        if held(handoff_db, store_id_of(worker.db)) != rows:
            raise RuntimeError("rollout: the collector does not hold every row")
    wall = max(span[3] for span in spans) - min(span[2] for span in spans)
    total = rows * sidecars
    return {"sidecars": sidecars, "rows_each": rows, "rows": total,
            "handoff_wall_seconds": round(wall, 2),
            "rows_per_second_at_the_collector": round(total / wall),
            "slowest_sidecar_seconds": max(span[1] for span in spans),
            "sigterm_to_last_exit_seconds": round(exit_seconds, 2),
            "collector_cpu_us_per_row": round(collector_cpu / total * 1e6, 1)}


def direct(work: Path, collector: Process, rows: int) -> dict[str, Any]:
    """Post a store's rows straight to the collector, then again (duplicates)."""
    db = work / "direct" / "audit.db"
    fill(db, rows, 7)
    lines = store_rows(db)
    bodies = [b"".join(line + b"\n" for line in lines[start:start + POST_BATCH])
              for start in range(0, len(lines), POST_BATCH)]
    results: dict[str, Any] = {"rows": rows, "rows_per_request": POST_BATCH}
    for label in ("new", "duplicates"):
        connection = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=60)
        started = time.perf_counter()
        for body in bodies:
            connection.request("POST", "/v1/handoff", body=body, headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
            answer = connection.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{answer.status} {data[:300]!r}")
        elapsed = time.perf_counter() - started
        connection.close()
        results[f"{label}_rows_per_second"] = round(rows / elapsed)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sidecars", type=int, default=3)
    parser.add_argument("--sidecar-rows", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "handoff.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealtrail-handoff-bench-"))
    collector: Process | None = None
    try:
        (work / "collector").mkdir()
        (work / "collector" / "token").write_text(TOKEN)
        collector = Process(work / "collector", {"handoff": {"accept": {
            "tokens": [{"file": str(work / "collector" / "token")}]}}})
        collector.start()
        one = [one_sidecar(work, collector, args.rows, batch, seed)
               for seed, batch in enumerate(BATCH_ROWS)]
        rollout = concurrent(work, collector, args.sidecars, args.sidecar_rows)
        posted = direct(work, collector, args.rows)
    finally:
        if collector is not None:
            stop_process(collector.process)
        shutil.rmtree(work, ignore_errors=True)
    report = {"machine": machine(), "measured": time.strftime("%Y-%m-%d"),
              "one_sidecar": one, "rollout": rollout, "direct": posted}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
          f"every store synchronous=FULL; rows ~{row_bytes(args.rows)} bytes")
    print(f"{'measure':<58} {'rows/s':>9} {'seconds':>8} {'µs CPU/row':>11}")
    for item in one:
        label = f"one sidecar, {item['rows']} rows, batchRows {item['batch_rows']}"
        print(f"{label:<58} {item['rows_per_second']:>9,} {item['handoff_seconds']:>8} "
              f"{item['collector_cpu_us_per_row']:>11}")
        print(f"{'  SIGTERM to exit':<58} {'':>9} {item['sigterm_to_exit_seconds']:>8}")
    label = f"{rollout['sidecars']} sidecars at once, {rollout['rows_each']} rows each"
    print(f"{label:<58} {rollout['rows_per_second_at_the_collector']:>9,} "
          f"{rollout['handoff_wall_seconds']:>8} {rollout['collector_cpu_us_per_row']:>11}")
    print(f"{'  SIGTERM to the last exit':<58} {'':>9} "
          f"{rollout['sigterm_to_last_exit_seconds']:>8}")
    print(f"{'collector alone, posted, new rows':<58} {posted['new_rows_per_second']:>9,}")
    print(f"{'collector alone, posted again, duplicates':<58} "
          f"{posted['duplicates_rows_per_second']:>9,}")
    print(f"wrote {args.out}")
    return 0


def row_bytes(rows: int) -> int:
    """Mean stored row size of the sample events (measured on a small store)."""
    del rows
    work = Path(tempfile.mkdtemp(prefix="sealtrail-handoff-rows-"))
    try:
        fill(work / "sizes.db", 1000, 1)
        lines = store_rows(work / "sizes.db")
        return round(sum(map(len, lines)) / len(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
