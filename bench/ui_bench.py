"""Audit UI benchmark: how long the server takes to answer its pages on a large store.

    .venv/bin/python bench/ui_bench.py [--rows 1000000] [--requests 20] [--dir DIR] [--out FILE]

Builds a store as a worker writes one (`--rows` events of ~500 bytes, four tenants, batches of
500, a checkpoint every 1,000 rows of a tenant, timestamps spread over 30 days), adds the UI's
search indexes (timed), then serves it with `sealtrail ui --db` and asks each page
`--requests` times over loopback HTTP: the time from request to the last byte of the answer,
which is the server's time plus a loopback round trip. Medians, p95 and max are printed and
written as JSON.

It also appends `--append-rows` events to an empty store without and with the search indexes,
for what the indexes cost ingest.

Pages: the first page (newest 50 rows of every tenant), a filtered page (one tenant, one
severity, one decision), a page 10,000 rows deep by keyset, a free-text search and an actor
filter (both read inside the stored JSON), an event's detail, the timeline over all time, and
an NDJSON export of one tenant (rows per second).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from sealtrail.api.event import Event, format_timestamp
from sealtrail.chain.keys import generate_keypair
from sealtrail.chain.query import ensure_search_indexes
from sealtrail.chain.store import ChainStore, CheckpointPolicy
from sealtrail.demo import sample_events

sys.path.insert(0, str(Path(__file__).parent))
from chain_bench import machine

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
SPAN = timedelta(days=30)


def events(count: int) -> Iterator[list[Event]]:
    """`count` sample events in batches, stamped evenly over the 30 days before now."""
    start = datetime.now(UTC) - SPAN
    step = SPAN / count
    source = sample_events(count, seed=42, tenants=("acme", "globex", "initech", "umbrella"))
    number = 0
    while batch := list(itertools.islice(source, BATCH)):
        for raw in batch:
            raw["timestamp"] = format_timestamp(start + step * number)
            number += 1
        yield [Event.model_validate(raw) for raw in batch]


def build(path: Path, rows: int) -> dict[str, float]:
    signer = generate_keypair(path.parent / "bench.key")
    started = time.perf_counter()
    with ChainStore(path, synchronous="NORMAL",
                    checkpoints=CheckpointPolicy(signer, every_rows=1000,
                                                 every_seconds=None)) as store:
        for batch in events(rows):
            store.append(batch)
    built = time.perf_counter() - started
    started = time.perf_counter()
    ensure_search_indexes(path)
    return {"build_seconds": round(built, 1),
            "index_seconds": round(time.perf_counter() - started, 1),
            "store_mib": round(path.stat().st_size / 2**20, 1)}


def append_cost(directory: Path, rows: int) -> dict[str, float]:
    """Append rate (rows/s, FULL, batches of 500) of a store without and with the indexes."""
    batches = list(events(rows))
    rates = {}
    for label, indexed in (("without_indexes", False), ("with_indexes", True)):
        path = directory / f"append-{label}.db"
        ChainStore(path).close()
        if indexed:
            ensure_search_indexes(path)
        with ChainStore(path, synchronous="FULL") as store:
            started = time.perf_counter()
            for batch in batches:
                store.append(batch)
            rates[label] = round(rows / (time.perf_counter() - started))
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rates


def serve(path: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "sealtrail", "ui", "--db", str(path), "--listen",
         f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"PYTHONPATH": str(ROOT / "operator")})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/ui/signin", timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return process
    process.kill()
    raise SystemExit("sealtrail ui did not start")


def timed(client: httpx.Client, path: str, requests: int) -> dict[str, Any]:
    times = []
    size = 0
    for _ in range(requests):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"{path}: {answer.status_code}")
        size = len(answer.content)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[max(0, round(len(times) * 0.95) - 1)], 1),
            "max_ms": round(times[-1], 1), "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--append-rows", type=int, default=200_000,
                        help="rows appended to measure what the indexes cost ingest")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ui.json")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="ui-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "audit.db"
    store: dict[str, float] = {}
    if not path.exists():
        store = build(path, args.rows)
        print(f"built {args.rows:,} rows in {store['build_seconds']} s, search indexes in "
              f"{store['index_seconds']} s, {store['store_mib']} MiB")
    ensure_search_indexes(path)
    store.setdefault("store_mib", round(path.stat().st_size / 2**20, 1))
    port = 18480
    process = serve(path, port)
    results: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            deep = client.get("/ui/events?tenant=globex")
            seqs = [int(part.split('"')[0]) for part in deep.text.split('data-seq="')[1:]]
            before = max(seqs[0] - 40_000, 1) if seqs else 1
            pages = {
                "first page (all tenants, newest 50)": "/ui/events",
                "filtered page (tenant + severity + decision)":
                    "/ui/events?tenant=globex&severity=HIGH&decision=deny",
                "page 10,000 rows deep (keyset, one tenant)":
                    f"/ui/events?tenant=globex&before={before}",
                "event type + 24 h range": "/ui/events?type=safety.policy_change&range=24h",
                "actor filter (inside the row)": "/ui/events?actor=agent-07",
                "free-text search, rare (inside the row)": "/ui/events?q=job-00000042",
                "event detail": "/ui/t/globex/e/1000",
                "timeline, all time (48 bars)": "/ui/histogram",
                "timeline, one tenant, 7 days": "/ui/histogram?tenant=acme&range=7d",
            }
            for name, page in pages.items():
                results[name] = timed(client, page, args.requests)
                print(f"{name:<48} {results[name]['median_ms']:>9} ms median "
                      f"{results[name]['p95_ms']:>9} p95 {results[name]['max_ms']:>9} max")
            started = time.perf_counter()
            exported = client.get("/ui/export.ndjson?tenant=acme")
            seconds = time.perf_counter() - started
            lines = exported.content.count(b"\n")
            results["export ndjson, one tenant"] = {
                "rows": lines, "seconds": round(seconds, 2),
                "rows_per_second": round(lines / seconds)}
            print(f"export of {lines:,} rows (NDJSON): {seconds:.2f} s, "
                  f"{lines / seconds:,.0f} rows/s")
    finally:
        process.terminate()
        process.wait(timeout=10)
    appends = append_cost(directory, args.append_rows)
    print(f"append, FULL, batches of {BATCH}: {appends['without_indexes']:,} rows/s without "
          f"the search indexes, {appends['with_indexes']:,} with them")
    document = {"rows": args.rows, "requests": args.requests, "store": store,
                "append_rows_per_second": appends,
                "machine": machine(), "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
                "pages": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.dir is None:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
