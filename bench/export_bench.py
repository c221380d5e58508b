"""Export benchmark: the real `sealtrail export` process draining a backlog to a loopback HEC.

    .venv/bin/python bench/export_bench.py [--rows 1000000] [--out bench/results/export.json]

Builds a store of ~500-byte events, starts `bench/hec_sink.py` as its own process, then runs
`sealtrail export --until-drained` and samples that process's resident memory (VmRSS) every
100 ms while the backlog drains. Prints the rate (events/s), peak and final RSS, and writes
JSON. The floors: ≥ 50,000 events/s, RSS ≤ 100 MiB throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sealtrail.api.event import Event
from sealtrail.chain.store import ChainStore

sys.path.insert(0, str(Path(__file__).parent))
from chain_bench import BATCH, event_lines, machine

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def build_store(path: Path, rows: int) -> None:
    lines = event_lines(min(rows, 100_000))
    events = [Event.model_validate_json(line) for line in lines]
    with ChainStore(path, synchronous="NORMAL") as store:
        written = 0
        while written < rows:
            for start in range(0, len(events), BATCH):
                chunk = events[start : start + min(BATCH, rows - written)]
                store.append(chunk)
                written += len(chunk)
                if written >= rows:
                    break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-events", type=int, default=2000, help="batch.maxEvents")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export.json")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(dir=args.dir, prefix="sealtrail-export-bench-"))
    sink = None
    try:
        db = directory / "audit.db"
        started = time.perf_counter()
        build_store(db, args.rows)
        print(f"built a store of {args.rows:,} rows in {time.perf_counter() - started:.0f}s")
        token_file = directory / "hec-token"
        token_file.write_text("bench-token-0001\n")
        port = free_port()
        counts = directory / "counts.json"
        sink = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hec_sink.py"), str(port),
                                 "bench-token-0001", str(counts)])
        time.sleep(0.5)
        config = directory / "exports.yaml"
        config.write_text(yaml.safe_dump({"exports": [{
            "name": "hec",
            "splunk": {"hecUrl": f"http://127.0.0.1:{port}", "token": {"file": str(token_file)},
                       "index": "audit"},
            "batch": {"maxEvents": args.max_events, "maxBytes": 1_000_000},
        }]}))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        command = [sys.executable, "-m", "sealtrail", "export", "--db", str(db), "--config",
                   str(config), "--until-drained", "--timeout", "3600"]
        started = time.perf_counter()
        exporter = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        samples: list[tuple[float, int]] = []
        while exporter.poll() is None:
            rss = rss_kib(exporter.pid)
            if rss is not None:
                samples.append((time.perf_counter() - started, rss))
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        output = exporter.stdout.read() if exporter.stdout else b""
        delivered = json.loads(counts.read_text())["events"] if counts.exists() else 0
        if exporter.returncode != 0 or delivered < args.rows:
            print(f"exporter exit {exporter.returncode}, delivered {delivered}: {output!r}",
                  file=sys.stderr)
            return 1
    finally:
        if sink is not None:
            sink.send_signal(signal.SIGTERM)
            sink.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)

    rate = delivered / elapsed
    peak = max(rss for _, rss in samples)
    late = [rss for moment, rss in samples if moment > elapsed / 2]
    result = {
        "benchmark": "export",
        "command": "python bench/export_bench.py " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "batch_max_events": args.max_events,
        "seconds": round(elapsed, 2),
        "events_per_second": round(rate),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_first_half_peak_mib": round(
            max((rss for moment, rss in samples if moment <= elapsed / 2), default=0) / 1024, 1),
        "rss_second_half_peak_mib": round(max(late, default=0) / 1024, 1),
        "rss_samples": len(samples),
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{'measure':<40} {'value':>14}")
    print(f"{'rows drained':<40} {args.rows:>14,}")
    print(f"{'time (s, process start to exit)':<40} {elapsed:>14.1f}")
    print(f"{'export rate (events/s)':<40} {rate:>14,.0f}")
    print(f"{'peak RSS (MiB)':<40} {peak / 1024:>14.1f}")
    for half in ("first", "second"):
        label = f"peak RSS, {half} half of the drain (MiB)"
        print(f"{label:<40} {result[f'rss_{half}_half_peak_mib']:>14}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
