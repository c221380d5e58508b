"""Export benchmark: the real `sealtrail export` process draining a backlog, per backend.

    .venv/bin/python bench/export_bench.py [--backend all] [--rows N] [--store PATH]

For each backend (`--backend splunk|elastic|datadog|webhook|syslog|cloudwatch|all`, default
all) it starts a loopback sink as its own process that checks what arrives the way the real
service's documented protocol does, then runs `sealtrail export --until-drained` over a store of
~500-byte events and samples that process's resident memory (VmRSS) every 100 ms while the
backlog drains. CPU time comes from the exporter's own rusage (`wait4`) and peak RSS from its
VmHWM, so both include Python's start-up and imports, as the time does (process start to exit;
for syslog, to the last byte's arrival at the sink, since a syslog sender does not wait for its
peer).

The sinks: `hec_sink.py` (Splunk HEC: token, every envelope parsed), `elastic_sink.py`
(`_bulk`: every action line parsed, `"errors":false` with one item per action),
`datadog_sink.py` (Logs v2 intake: API key, gzip, 5 MB / 1,000-entry limits, every entry parsed,
202), `webhook_sink.py` (Standard Webhooks: every signature verified, body parsed),
`syslog_sink.py` (RFC 6587 octet counting over TCP, each RFC 5424 header checked) and
`cloudwatch_sink.py` (PutLogEvents / CreateLogStream / CreateLogGroup in AWS JSON 1.1 with the
call limits; moto is far too slow for a throughput benchmark, see that file).

One store serves every backend: each export has its own name and so its own cursor, set so that
`--rows` rows (default: each backend's row count below) remain after it. `--store` keeps the
store between runs; `--source` runs the exporter from another checkout's `operator/` directory
(a `git worktree` of an older commit: before/after figures from one store and one sink);
`--profile DIR` runs it under cProfile. Prints a table and writes JSON (the Splunk figures also
at the top level, where earlier versions of this file wrote them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sealtrail.api.event import Event
from sealtrail.chain.store import ChainStore

sys.path.insert(0, str(Path(__file__).parent))
from chain_bench import BATCH, event_lines, machine

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BACKENDS = ("splunk", "elastic", "datadog", "webhook", "syslog", "cloudwatch")
#: Rows each backend drains by default (all are fast enough for a million; `--rows` for less).
DEFAULT_ROWS = dict.fromkeys(BACKENDS, 1_000_000)
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "AKIDBENCHBENCHBENCH0", "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is `pid`, from /proc (a worker's further processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM this one process, then SIGKILL it if it has not exited in `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def rss_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of `pid` from /proc (VmRSS: resident now; VmHWM: its peak so far)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def build_store(path: Path, rows: int) -> None:
    lines = event_lines(min(rows, 100_000))
    events = [Event.model_validate_json(line) for line in lines]
    with ChainStore(path, synchronous="NORMAL") as store:
        written = store.last_seq()
        while written < rows:
            for start in range(0, len(events), BATCH):
                chunk = events[start : start + min(BATCH, rows - written)]
                store.append(chunk)
                written += len(chunk)
                if written >= rows:
                    break


def read_counts(path: Path) -> dict[str, int]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@dataclass
class Sink:
    """One running sink: its process, the export block that points at it, how to count."""

    process: subprocess.Popen[bytes]
    block: dict[str, Any]
    counts: Callable[[], dict[str, int]]
    environment: dict[str, str]


def start_sink(backend: str, directory: Path) -> Sink:  # noqa: C901 - one case per backend
    """Start `backend`'s sink on a free port; wait until it listens."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    count_file = directory / f"{backend}-counts.json"
    secret_file = directory / f"{backend}-secret"

    def run(script: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(BENCH / script), str(port), *args],
                                stdin=subprocess.DEVNULL)

    def from_file() -> dict[str, int]:
        return read_counts(count_file)

    if backend == "splunk":
        secret_file.write_text("bench-token-0001\n")
        process = run("hec_sink.py", "bench-token-0001", str(count_file))
        block = {"hecUrl": url, "token": {"file": str(secret_file)}, "index": "audit"}
        sink = Sink(process, block, from_file, {})
    elif backend == "elastic":
        process = run("elastic_sink.py")

        def stats() -> dict[str, int]:
            try:
                with urllib.request.urlopen(f"{url}/stats", timeout=5) as answer:  # noqa: S310
                    found = json.loads(answer.read())
            except OSError:
                return {}
            return {"events": found["documents"], "requests": found["requests"],
                    "bytes": found["bytes"]}

        sink = Sink(process, {"url": url}, stats, {})
    elif backend == "datadog":
        secret_file.write_text("bench-dd-api-key\n")
        process = run("datadog_sink.py", "bench-dd-api-key", str(count_file))
        sink = Sink(process, {"apiKey": {"file": str(secret_file)}, "url": url}, from_file, {})
    elif backend == "webhook":
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        secret_file.write_text(secret + "\n")
        process = run("webhook_sink.py", secret, str(count_file))
        sink = Sink(process, {"url": url + "/audit", "secret": {"file": str(secret_file)}},
                    from_file, {})
    elif backend == "syslog":
        process = run("syslog_sink.py", str(count_file))
        sink = Sink(process, {"host": "127.0.0.1", "port": port, "transport": "tcp"},
                    from_file, {})
    elif backend == "cloudwatch":
        process = run("cloudwatch_sink.py", str(count_file))
        sink = Sink(process, {"logGroup": "/sealtrail/bench", "region": "us-east-1",
                              "endpointUrl": url}, from_file, AWS_ENVIRONMENT)
    else:
        raise ValueError(backend)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.05)
        else:
            return sink
    stop_process(sink.process, 10)
    raise RuntimeError(f"the {backend} sink did not start")


def drain(backend: str, db: Path, rows: int, directory: Path,
          args: argparse.Namespace) -> dict[str, Any]:
    """Drain `rows` rows to `backend`'s sink with the real exporter; its figures."""
    name = f"bench-{backend}-{secrets.token_hex(3)}"
    with ChainStore(db) as store:
        last = store.last_seq()
        start = max(0, last - rows)
        if start:
            store.set_cursor(name, start)
    expected = last - start
    sink = start_sink(backend, directory)
    try:
        config = directory / f"{backend}.yaml"
        config.write_text(yaml.safe_dump({"exports": [{
            "name": name, backend: sink.block,
            "batch": {"maxEvents": args.max_events, "maxBytes": args.max_bytes},
        }]}))
        source = args.source or ROOT / "operator"
        env = {**os.environ, "PYTHONPATH": str(source), **sink.environment}
        command = [sys.executable, "-m", "sealtrail", "export", "--db", str(db), "--config",
                   str(config), "--until-drained", "--timeout", "3600"]
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            command[1:1] = ["-m", "cProfile", "-o", str(args.profile / f"{backend}.prof")]
        started = time.perf_counter()
        exporter = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        samples: list[tuple[float, int]] = []
        peak = 0  # VmHWM: rusage's ru_maxrss would carry this (big) process's from before exec
        while True:
            pid, status, usage = os.wait4(exporter.pid, os.WNOHANG)
            if pid:
                break
            rss = rss_kib(exporter.pid)
            if rss is not None:
                samples.append((time.perf_counter() - started, rss))
                peak = max(peak, rss_kib(exporter.pid, "VmHWM") or 0)
            time.sleep(0.1)
        exited = time.perf_counter() - started
        exporter.returncode = os.waitstatus_to_exitcode(status)
        output = exporter.stdout.read() if exporter.stdout else b""
        # Every HTTP sink counts before it answers; a syslog sink may still be reading.
        deadline = time.monotonic() + 30
        while (counts := sink.counts()).get("events", 0) < expected \
                and time.monotonic() < deadline and exporter.returncode == 0:
            time.sleep(0.02)
        elapsed = max(exited, time.perf_counter() - started if backend == "syslog" else 0)
    finally:
        stop_process(sink.process, 10)
    delivered = counts.get("events", 0)
    if exporter.returncode != 0 or delivered < expected or counts.get("refused"):
        raise RuntimeError(f"{backend}: exporter exit {exporter.returncode}, delivered "
                           f"{delivered} of {expected}, sink counts {counts}: {output[-2000:]!r}")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "rows": expected,
        "seconds": round(elapsed, 2),
        "events_per_second": round(expected / elapsed),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_first_half_peak_mib": round(
            max((rss for moment, rss in samples if moment <= elapsed / 2), default=0) / 1024, 1),
        "rss_second_half_peak_mib": round(
            max((rss for moment, rss in samples if moment > elapsed / 2), default=0) / 1024, 1),
        "rss_samples": len(samples),
        "cpu_seconds": round(cpu, 2),
        "cpu_us_per_row": round(cpu / expected * 1e6, 2),
        "requests": counts.get("requests", 0),
        "request_bytes": counts.get("bytes", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument("--rows", type=int, help="rows per backend (default 1,000,000)")
    parser.add_argument("--max-events", type=int, default=2000, help="batch.maxEvents")
    parser.add_argument("--max-bytes", type=int, default=10_000_000,
                        help="batch.maxBytes (each backend's own limit applies below it)")
    parser.add_argument("--store", type=Path, help="keep the store here (built if missing)")
    parser.add_argument("--source", type=Path, help="the `operator` directory to run")
    parser.add_argument("--profile", type=Path, help="write cProfile output here")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "export.json")
    args = parser.parse_args()
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    wanted = {backend: args.rows or DEFAULT_ROWS[backend] for backend in backends}
    directory = Path(tempfile.mkdtemp(dir=args.dir, prefix="sealtrail-export-bench-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        db = args.store or directory / "audit.db"
        started = time.perf_counter()
        build_store(db, max(wanted.values()))
        print(f"store of {max(wanted.values()):,}+ rows ready in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        for backend in backends:
            results[backend] = drain(backend, db, wanted[backend], directory, args)
            figures = results[backend]
            print(f"{backend}: {figures['events_per_second']:,} events/s, "
                  f"{figures['cpu_us_per_row']} µs CPU/row", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"\n{'backend':<11} {'rows':>10} {'seconds':>8} {'events/s':>10} "
          f"{'peak RSS MiB':>13} {'CPU µs/row':>11}")
    for backend, figures in results.items():
        print(f"{backend:<11} {figures['rows']:>10,} {figures['seconds']:>8.2f} "
              f"{figures['events_per_second']:>10,} {figures['rss_peak_mib']:>13.1f} "
              f"{figures['cpu_us_per_row']:>11.2f}")
    result: dict[str, Any] = {
        "benchmark": "export",
        "command": "python bench/export_bench.py " + " ".join(sys.argv[1:]),
        "batch_max_events": args.max_events,
        "batch_max_bytes": args.max_bytes,
    }
    if "splunk" in results:  # where earlier versions wrote the (HEC-only) figures
        result.update({key: results["splunk"][key] for key in (
            "rows", "seconds", "events_per_second", "rss_peak_mib", "rss_first_half_peak_mib",
            "rss_second_half_peak_mib", "rss_samples")})
    result["backends"] = results
    result["machine"] = machine()
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
