"""Retention benchmark: how fast a store prunes, what an appender waits meanwhile, the file size.

    .venv/bin/python bench/prune_bench.py [--rows 1000000] [--runs 3] [--dir DIR] [--out FILE]

Each run builds a store as a worker writes one: `--rows` events of ~500 bytes of JSON, four
tenants, batches of 500, a checkpoint every 1,000 rows of a tenant, `synchronous=FULL`. Every
row is then taken as delivered and old enough, and `ChainStore.prune` cuts each chain at its
newest checkpoint: nearly every row goes, the worst case (retention turned on for a store that
has grown for weeks, or a backlog delivered after a long SIEM outage). Measured:

1. The prune rate: rows deleted per second of the whole `prune` call, which deletes in
   transactions of 2,500 rows, each handing the pages it freed back to the filesystem, then
   truncates the WAL.
2. What an appender waits meanwhile: a second thread appends a batch of 100 events every 20 ms
   through the same store (as a worker's ingest does) while the prune runs, and for 3 s before
   it; latency per append, median / p99 / max, without and with the prune.
3. The store on disk before and after (database + WAL + shared memory, and the database file
   alone), once the WAL is checkpointed. The appender's rows, stored during the prune, are
   pruned by a second (untimed) prune first, so "after" is what a fully pruned store keeps:
   each chain's last checkpoint row and what followed it.

Medians of `--runs` runs (min and max beside them) are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sealtrail.api.event import Event
from sealtrail.chain.keys import generate_keypair
from sealtrail.chain.store import PRUNE_CHUNK_ROWS, ChainStore, CheckpointPolicy

sys.path.insert(0, str(Path(__file__).parent))
from chain_bench import BATCH, event_lines, machine

#: Distinct events; the store gets them over and over (each row is still its own chain row).
DISTINCT = 10_000
APPENDER_BATCH = 100
APPENDER_EVERY_SECONDS = 0.02
BASELINE_SECONDS = 3.0
CHECKPOINT_EVERY = 1000


class Appender(threading.Thread):
    """Appends a small batch every 20 ms and notes how long each append took."""

    def __init__(self, store: ChainStore, events: list[Event]) -> None:
        """Append `events` to `store` until stopped."""
        super().__init__(daemon=True)
        self.store = store
        self.events = events
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        """The thread's loop."""
        while not self.stop.is_set():
            start = time.perf_counter()
            self.store.append(self.events)
            self.latencies.append(time.perf_counter() - start)
            self.stop.wait(APPENDER_EVERY_SECONDS)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def latency_ms(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values) * 1000, "p99": percentile(values, 0.99) * 1000,
            "max": max(values) * 1000, "appends": len(values)}


def settle(store: ChainStore) -> None:
    """Checkpoint the WAL into the database, so sizes compare like with like."""
    with store._lock:  # noqa: SLF001 - the benchmark's own measuring point
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # noqa: SLF001


def one_run(directory: Path, rows: int, events: list[Event], appended: list[Event],
            policy: CheckpointPolicy) -> dict[str, Any]:
    path = directory / "store.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with ChainStore(path, checkpoints=policy) as store:
        written = 0
        while written < rows:
            take = min(BATCH, rows - written)
            start = written % DISTINCT
            store.append(events[start:start + take])
            written += take
        settle(store)
        before, before_file = store.disk_bytes(), path.stat().st_size

        appender = Appender(store, appended)
        appender.start()
        time.sleep(BASELINE_SECONDS)
        baseline = list(appender.latencies)
        started = time.perf_counter()
        result = store.prune(delivered_through_seq=store.last_seq(),
                             older_than=datetime.now(UTC) + timedelta(seconds=1))
        seconds = time.perf_counter() - started
        during = appender.latencies[len(baseline):]
        appender.stop.set()
        appender.join()
        store.prune(delivered_through_seq=store.last_seq(),
                    older_than=datetime.now(UTC) + timedelta(seconds=1))
        settle(store)
        after, after_file = store.disk_bytes(), path.stat().st_size
        kept = len(store.export_rows(0, rows))
    return {
        "rows_pruned": result.rows,
        "rows_kept_after": kept,
        "transactions": result.transactions,
        "prune_seconds": seconds,
        "prune_rows_per_second": result.rows / seconds,
        "pages_freed": result.pages_freed,
        "wal_truncated": result.wal_truncated,
        "store_bytes_before": before,
        "store_bytes_after": after,
        "db_file_bytes_before": before_file,
        "db_file_bytes_after": after_file,
        "append_latency_ms_without_prune": latency_ms(baseline),
        "append_latency_ms_during_prune": latency_ms(during or [0.0]),
    }


def summary(runs: list[dict[str, Any]], name: str) -> dict[str, float]:
    values = [run[name] for run in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where the stores go (default: a temp dir)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("results") / "prune.json")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(dir=args.dir, prefix="sealtrail-prune-bench-"))
    try:
        events = [Event.model_validate_json(line) for line in event_lines(DISTINCT)]
        appended = events[:APPENDER_BATCH]
        policy = CheckpointPolicy(generate_keypair(directory / "bench.key"), CHECKPOINT_EVERY,
                                  None)
        runs = [one_run(directory, args.rows, events, appended, policy)
                for _ in range(args.runs)]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(args, runs)
    return 0


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    mib = 2**20
    table = {name: summary(runs, name) for name in (
        "prune_rows_per_second", "prune_seconds", "rows_pruned", "rows_kept_after", "transactions",
        "store_bytes_before", "store_bytes_after", "db_file_bytes_before", "db_file_bytes_after")}
    latency = {
        phase: {stat: statistics.median(run[phase][stat] for run in runs)
                for stat in ("median", "p99", "max")}
        for phase in ("append_latency_ms_without_prune", "append_latency_ms_during_prune")}
    print(f"{args.rows:,} rows, ~500-byte events, 4 tenants, a checkpoint every "
          f"{CHECKPOINT_EVERY:,} rows of a tenant, synchronous=FULL, transactions of "
          f"{PRUNE_CHUNK_ROWS:,} rows, {args.runs} runs")
    print(f"{'measure':<40} {'median':>14} {'min':>14} {'max':>14}")
    for name, unit, scale in (("prune_rows_per_second", "rows/s", 1),
                              ("prune_seconds", "s", 1), ("rows_pruned", "rows", 1),
                              ("rows_kept_after", "rows", 1),
                              ("transactions", "", 1),
                              ("store_bytes_before", "MiB", mib), ("store_bytes_after", "MiB", mib),
                              ("db_file_bytes_before", "MiB", mib),
                              ("db_file_bytes_after", "MiB", mib)):
        figures = table[name]
        label = f"{name.replace('_', ' ')} ({unit})" if unit else name
        print(f"{label:<40} {figures['median'] / scale:>14,.1f} {figures['min'] / scale:>14,.1f} "
              f"{figures['max'] / scale:>14,.1f}")
    print(f"{'append latency (ms), batch of 100':<40} {'median':>14} {'p99':>14} {'max':>14}")
    for phase, label in (("append_latency_ms_without_prune", "  without a prune"),
                         ("append_latency_ms_during_prune", "  during the prune")):
        print(f"{label:<40} {latency[phase]['median']:>14,.1f} {latency[phase]['p99']:>14,.1f} "
              f"{latency[phase]['max']:>14,.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "prune",
        "command": "python bench/prune_bench.py " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "runs": args.runs,
        "batch": BATCH,
        "checkpoint_every_rows": CHECKPOINT_EVERY,
        "prune_chunk_rows": PRUNE_CHUNK_ROWS,
        "synchronous": "FULL",
        "summary": table,
        "append_latency_ms": latency,
        "each_run": runs,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
