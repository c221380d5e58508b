"""Chain store benchmark: append and verify rates against the raw SQLite batched-insert rate.

    .venv/bin/python bench/chain_bench.py [--rows 200000] [--runs 3] [--dir DIR] [--out FILE]

Every figure is rows per second, the median of `--runs` runs (min and max beside it), on
~500-byte events in batches of 500 with `synchronous=FULL`, as the issue asks. The raw SQLite
rate inserts the very rows the store wrote (same table, same pragmas, same batch size) with
no validation, canonicalization or hashing: the ceiling the store's own work is measured against.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealtrail.api.event import Event
from sealtrail.api.event_fast import rows_from_ndjson
from sealtrail.chain.keys import generate_keypair
from sealtrail.chain.store import ChainStore, CheckpointPolicy
from sealtrail.chain.verify import Status, verify_store
from sealtrail.demo import padded_event_lines

BATCH = 500
#: The longest line `event_lines` makes (a bound for `append_fields`' `source_bytes`).
MAX_LINE_BYTES = 600


def event_lines(count: int) -> list[bytes]:
    """Sample events padded to about 500 bytes of JSON each (the other benchmarks' too)."""
    return padded_event_lines(count)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def fresh(directory: Path, name: str) -> Path:
    path = directory / name
    for suffix in ("", "-wal", "-shm", ".cursors", ".cursors-wal", ".cursors-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def append_rows(path: Path, rows: list[dict[str, Any]], policy: CheckpointPolicy | None) -> None:
    """Validated events, as ingest hands them to the store (row fields, body size known)."""
    with ChainStore(path, checkpoints=policy) as store:
        for start in range(0, len(rows), BATCH):
            store.append_fields(rows[start : start + BATCH], source_bytes=MAX_LINE_BYTES * BATCH)


def append_lines(path: Path, bodies: list[bytes]) -> None:
    """NDJSON bodies of `BATCH` events, validated and appended as `POST /v1/events` does."""
    with ChainStore(path) as store:
        for body in bodies:
            rows = rows_from_ndjson(body)
            assert rows is not None  # noqa: S101 - the benchmark's events are all valid
            store.append_fields(rows, source_bytes=len(body))


def raw_insert(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """The reference: the same rows into the same table, no sealtrail code on the path."""
    with ChainStore(path):
        pass  # create the schema and WAL exactly as the store does
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for start in range(0, len(rows), BATCH):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO audit_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       rows[start : start + BATCH])
        db.execute("COMMIT")
    db.close()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


Results = dict[str, list[float]]


def measure_append(directory: Path, lines: list[bytes], runs: int, results: Results) -> Path:
    """Time the three ways of appending; return a store holding the rows, for what follows.

    Each run appends fresh copies of the rows (the store completes them in place); copying
    is outside the timed part.
    """
    signer = generate_keypair(directory / "bench.key")
    policy = CheckpointPolicy(signer, every_rows=1000, every_seconds=None)
    assert max(map(len, lines)) <= MAX_LINE_BYTES  # noqa: S101 - append_rows' bound holds
    fields = [Event.model_validate_json(line).row_fields() for line in lines]
    bodies = [b"\n".join(lines[start : start + BATCH]) for start in range(0, len(lines), BATCH)]
    count = len(lines)
    for _ in range(runs):
        plain, parsed, signed = (fresh(directory, name)
                                 for name in ("store.db", "lines.db", "signed.db"))
        rows = [dict(row) for row in fields]
        results.setdefault("append (validated events)", []).append(
            count / timed(lambda: append_rows(plain, rows, None)))  # noqa: B023
        results.setdefault("append from NDJSON (validate + append)", []).append(
            count / timed(lambda: append_lines(parsed, bodies)))  # noqa: B023
        rows = [dict(row) for row in fields]
        results.setdefault("append with a checkpoint every 1000 rows", []).append(
            count / timed(lambda: append_rows(signed, rows, policy)))  # noqa: B023
    return directory / "store.db"


def measure_raw(directory: Path, rows: list[tuple[Any, ...]], runs: int, results: Results) -> None:
    for _ in range(runs):
        path = fresh(directory, "raw.db")
        results.setdefault("raw SQLite batched insert (reference)", []).append(
            len(rows) / timed(lambda: raw_insert(path, rows)))  # noqa: B023


def measure_verify(path: Path, count: int, label: str, runs: int, results: Results) -> bool:
    for _ in range(runs):
        for name, processes in (("verify (1 process)", 1), ("verify (2 processes)", 2)):
            start = time.perf_counter()
            report = verify_store(path, processes=processes)
            elapsed = time.perf_counter() - start
            if report.status is not Status.INTACT or report.rows != count:
                print(f"verify found {report.status.name}, {report.rows} rows", file=sys.stderr)
                return False
            results.setdefault(name + label, []).append(count / elapsed)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--verify-rows", type=int, default=1_000_000,
                        help="size of a second store verify is timed on (a multiple of --rows)")
    parser.add_argument("--dir", type=Path, help="where the stores go (default: a temp dir)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("results") / "chain.json")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(dir=args.dir, prefix="sealtrail-bench-"))
    results: Results = {}
    try:
        lines = event_lines(args.rows)
        store_path = measure_append(directory, lines, args.runs, results)
        with sqlite3.connect(store_path) as db:
            rows = db.execute("SELECT * FROM audit_rows ORDER BY seq").fetchall()
        measure_raw(directory, rows, args.runs, results)
        row_bytes = statistics.mean(len(row[-1]) for row in rows)
        event_bytes = statistics.mean(len(line) for line in lines)
        big = fresh(directory, "big.db")
        fields = [Event.model_validate_json(line).row_fields() for line in lines]
        with ChainStore(big) as store:
            for _ in range(args.verify_rows // args.rows):
                for start in range(0, len(fields), BATCH):
                    store.append_fields([dict(row) for row in fields[start : start + BATCH]])
        # Verify from a process that no longer holds the benchmark's own data, as
        # `sealtrail verify` does: a forked worker copies its parent's page tables.
        del fields, lines, rows
        gc.collect()
        verify_rows = (args.verify_rows // args.rows) * args.rows
        if not (measure_verify(store_path, args.rows, "", args.runs, results) and measure_verify(
                big, verify_rows, f" on {verify_rows:,} rows", args.runs, results)):
            return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(args, results, event_bytes, row_bytes)
    return 0


def report(args: argparse.Namespace, results: Results, event_bytes: float,
           row_bytes: float) -> None:
    table = {
        name: {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
        for name, rates in results.items()
    }
    reference = table["raw SQLite batched insert (reference)"]["median"]
    print(f"{args.rows:,} rows, event ~{event_bytes:.0f} B, stored row ~{row_bytes:.0f} B, "
          f"batches of {BATCH}, synchronous=FULL, {args.runs} runs")
    print(f"{'measure':<48} {'median rows/s':>14} {'min':>10} {'max':>10} {'vs raw':>7}")
    for name, figures in table.items():
        print(f"{name:<48} {figures['median']:>14,.0f} {figures['min']:>10,.0f} "
              f"{figures['max']:>10,.0f} {figures['median'] / reference:>6.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "chain",
        "command": "python bench/chain_bench.py " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "verify_rows": args.verify_rows,
        "runs": args.runs,
        "batch": BATCH,
        "synchronous": "FULL",
        "event_bytes_mean": round(event_bytes),
        "row_bytes_mean": round(row_bytes),
        "rows_per_second": table,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
