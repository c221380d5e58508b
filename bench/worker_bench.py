"""Worker benchmark: the real `sealtrail worker` process, ingest over HTTP and export to HEC.

    .venv/bin/python bench/worker_bench.py [--seconds 20] [--out bench/results/worker.json]

Starts `python -m sealtrail worker --config FILE` on a free loopback port with a store in a
temp dir (`synchronous: FULL`, no checkpoint key) and drives it from this process over HTTP
keep-alive connections (`http.client`, one connection per thread), ~500-byte events as JSON
arrays. Measures, in order:

1. Durable ingest rate: closed loop, batches of 500. With the default one ingest process, 1, 2
   and 4 connections for a few seconds each; with `ingest.processes: 2`, 2, 4 and 8 connections,
   then `--seconds` with the best of them (the headline figure). Only events the worker answered
   200 for count, and it answers after the commit. No exports, watermarks out of reach.
2. Ingest latency at a steady 5,000 events/s (one process), open loop (requests leave on a
   fixed schedule, whatever the answers do; latency runs from the scheduled send to the end of
   the 200), both as 100 requests/s of 50 events and as 10 requests/s of 500.
3. End to end through a second worker with one Splunk export (default batching and
   back-pressure) to `bench/hec_sink_latency.py`, a loopback HEC in its own process that notes
   when each event arrives: 5,000 events/s open loop, latency from ingest request start to
   receipt at the sink; then a closed loop on 2 connections as fast as the worker accepts (a 429
   is retried after 50 ms): the rate the sink receives once warmed up is the sustained
   end-to-end rate, and the export lag at the end says whether the export kept up.
4. Worker RSS (VmRSS from /proc every 100 ms): at rest after start, peak under each load.

Before any of that it times, in this process, the steps the ingest handler takes for one
batch (parse, validate, append with fsync, answer), to tell where an ingest request's time goes.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from sealtrail.api.event_fast import rows_from_json
from sealtrail.chain.store import ChainStore
from sealtrail.demo import sample_events

sys.path.insert(0, str(Path(__file__).parent))
from chain_bench import BATCH, event_lines, machine
from export_bench import child_pids, free_port, rss_kib, stop_process

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0001"  # noqa: S105 - the loopback sink's, not a secret
STEADY_RATE = 5_000  # events/s for the latency measurements
SWEEP = (1, 2, 4)  # connections tried for the ingest rate, one process
INGEST_PROCESSES = 2  # ingest.processes for the durable-ingest figure
SWEEP_SHARED = (2, 4, 8)  # connections tried with INGEST_PROCESSES (spread by SO_REUSEPORT)
SWEEP_SECONDS = 6.0
WARMUP_SECONDS = 5.0  # of the end-to-end closed loop, before the sink's rate counts
E2E_CONNECTIONS = 2  # concurrent senders for the end-to-end closed loop
#: How long to wait for an export to deliver what is left after a load. Past the default
#: `batch.maxIntervalMs` (30 s): under steady load the adaptive interval widens to it, and the
#: last partial batch of the load waits it out (docs/exporting.md); the wait is in the figures.
DRAIN_SECONDS = 40.0
OPEN_LOOP_CONNECTIONS = 8  # enough that a slow answer never holds the next send back

# A body factory: request number -> (body, events in it, request id or "").
Factory = Callable[[int], tuple[bytes, int, str]]


# -- processes -------------------------------------------------------------------------------


class Worker:
    """One `sealtrail worker` process, its config, store and log in `directory`."""

    def __init__(self, directory: Path, name: str, *, exports: list[dict[str, Any]] | None = None,
                 backpressure: dict[str, Any] | None = None, processes: int = 1) -> None:
        """Write the config (a free port, `synchronous: FULL`); start nothing yet."""
        self.port = free_port()
        self.db = directory / f"{name}.db"
        ingest: dict[str, Any] = {"listen": f"127.0.0.1:{self.port}", "processes": processes}
        if backpressure is not None:
            ingest["backpressure"] = backpressure
        config: dict[str, Any] = {
            "store": {"path": str(self.db), "synchronous": "FULL"},
            "ingest": ingest,
            "drainTimeoutSeconds": 5,
        }
        if exports:
            config["exports"] = exports
        self.config = directory / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id, once started."""
        assert self.process is not None  # noqa: S101 - only asked once started
        return self.process.pid

    def start(self) -> None:
        """Start the process and wait until `/readyz` says ready."""
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sealtrail", "worker", "--config", str(self.config)],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited {self.process.returncode}: {self.tail()}")
            try:
                if get_json(self.port, "/readyz").get("ready"):
                    return
            except (OSError, http.client.HTTPException, RuntimeError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after 30 s: {self.tail()}")

    def pids(self) -> list[int]:
        """The first process and the further ingest processes it started."""
        return [self.pid, *child_pids(self.pid)]

    def tail(self) -> str:
        """The end of the worker's log, for an error message."""
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the process by its pid (SIGTERM, then SIGKILL)."""
        stop_process(self.process)


class RssSampler(threading.Thread):
    """VmRSS of one pid every 100 ms, filed under the phase running at the time."""

    def __init__(self) -> None:
        """Sample nothing until `pid` is set."""
        super().__init__(daemon=True)
        self.pid: int | None = None
        self.phase = "idle"
        self.samples: dict[str, list[int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        """Sample until `done` is set."""
        while not self.done.wait(0.1):
            pid, phase = self.pid, self.phase
            rss = rss_kib(pid) if pid is not None else None
            if rss is not None:
                self.samples.setdefault(phase, []).append(rss)

    def peak_mib(self, *phases: str) -> float:
        """The highest sample of these phases, in MiB."""
        values = [rss for phase in phases for rss in self.samples.get(phase, [])]
        return round(max(values, default=0) / 1024, 1)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of a process so far: all of it, and its main thread."""
    tick = os.sysconf("SC_CLK_TCK")

    def spent(stat: Path) -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    return spent(Path(f"/proc/{pid}/stat")), spent(Path(f"/proc/{pid}/task/{pid}/stat"))


def with_cpu(pids: list[int], load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `load`; add the CPU the worker's processes and this one (the load) spent on it."""
    before = [cpu_seconds(pid) for pid in pids]
    client_before = time.process_time()
    result = load()
    after = [cpu_seconds(pid) for pid in pids]
    elapsed, events = result["seconds"], max(1, result["events"])
    total = sum(end[0] - start[0] for start, end in zip(before, after, strict=True))
    main = sum(end[1] - start[1] for start, end in zip(before, after, strict=True))
    result["cpu"] = {
        "worker_processes": len(pids),
        "worker_cores": round(total / elapsed, 2),
        "worker_event_loop_thread_cores": round(main / elapsed, 2),
        "worker_other_threads_cores": round((total - main) / elapsed, 2),
        "worker_cpu_us_per_event": round(total / events * 1e6, 1),
        "load_generator_cores": round((time.process_time() - client_before) / elapsed, 2),
    }
    return result


# -- HTTP ------------------------------------------------------------------------------------


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # sets TCP_NODELAY


def post(conn: http.client.HTTPConnection, body: bytes, path: str = "/v1/events") -> tuple[
        int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def get_json(port: int, path: str) -> Any:
    conn = connect(port)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status not in (200, 503):
        raise RuntimeError(f"GET {path}: {response.status} {data[:200]!r}")
    return orjson.loads(data)


class Tally:
    """What the worker answered, across the threads of one load."""

    def __init__(self) -> None:
        """Nothing answered yet."""
        self.lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.refused = 0
        self.failed: list[str] = []
        self.accepted: dict[str, int] = {}  # request id -> events stored
        self.latencies: list[float] = []  # seconds, open loop only

    def answer(self, status: int, data: bytes, events: int, request_id: str,
               latency: float | None = None) -> None:
        """Count one answer; only a 200 counts its events (as the worker reports them)."""
        with self.lock:
            self.requests += 1
            if status == 200:
                stored = orjson.loads(data)["stored"]
                if stored != events:
                    self.failed.append(f"stored {stored} of {events}")
                self.events += stored
                if request_id:
                    self.accepted[request_id] = stored
                if latency is not None:
                    self.latencies.append(latency)
            elif status == 429:
                self.refused += 1
            else:
                self.failed.append(f"{status} {data[:200]!r}")

    def error(self, error: BaseException) -> None:
        """Count a request that got no answer."""
        with self.lock:
            self.requests += 1
            self.failed.append(repr(error))


def send(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes] | BaseException:
    try:
        return post(conn, body)
    except (OSError, http.client.HTTPException) as error:
        conn.close()  # the next request opens a fresh connection
        return error


def closed_loop(port: int, factory: Factory, connections: int, seconds: float) -> dict[str, Any]:
    """Each connection sends its next request as soon as the last is answered."""
    tally = Tally()
    numbers = itertools.count()
    deadline = time.perf_counter() + seconds

    def run() -> None:
        conn = connect(port)
        try:
            while time.perf_counter() < deadline:
                body, events, request_id = factory(next(numbers))
                outcome = send(conn, body)
                if isinstance(outcome, BaseException):
                    tally.error(outcome)
                    time.sleep(0.05)
                    continue
                tally.answer(*outcome, events, request_id)
                if outcome[0] == 429:
                    time.sleep(0.05)
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 90)
    elapsed = time.perf_counter() - started
    return {"connections": connections, "seconds": round(elapsed, 2),
            "events_per_second": round(tally.events / elapsed), "events": tally.events,
            "requests": tally.requests, "refused_429": tally.refused,
            "failed": len(tally.failed), "failures": tally.failed[:5], "tally": tally}


def open_loop(port: int, factory: Factory, requests_per_second: float,
              seconds: float) -> dict[str, Any]:
    """Requests leave on a fixed schedule; latency counts from the scheduled moment."""
    tally = Tally()
    jobs: queue.Queue[tuple[float, bytes, int, str] | None] = queue.Queue()
    total = int(requests_per_second * seconds)

    def run() -> None:
        conn = connect(port)
        try:
            while (job := jobs.get()) is not None:
                scheduled, body, events, request_id = job
                outcome = send(conn, body)
                if isinstance(outcome, BaseException):
                    tally.error(outcome)
                    continue
                tally.answer(*outcome, events, request_id, time.perf_counter() - scheduled)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(OPEN_LOOP_CONNECTIONS)]
    for thread in threads:
        thread.start()
    start = time.perf_counter() + 0.05
    worst_lateness = 0.0
    for number in range(total):
        scheduled = start + number / requests_per_second
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            worst_lateness = max(worst_lateness, -delay)
        body, events, request_id = factory(number)
        jobs.put((scheduled, body, events, request_id))
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join(timeout=90)
    elapsed = time.perf_counter() - start
    result = latency_summary([value * 1000 for value in tally.latencies])
    result.update(requests_per_second=requests_per_second,
                  events_per_request=tally.events // max(1, len(tally.latencies)),
                  seconds=round(elapsed, 2), events=tally.events,
                  events_per_second=round(tally.events / elapsed), requests=tally.requests,
                  refused_429=tally.refused, failed=len(tally.failed),
                  failures=tally.failed[:5], scheduler_worst_lateness_ms=round(
                      worst_lateness * 1000, 2), tally=tally)
    return result


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def latency_summary(values_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"samples": 0}
    return {"samples": len(ordered), "p50_ms": round(percentile(ordered, 0.50), 2),
            "p99_ms": round(percentile(ordered, 0.99), 2), "max_ms": round(ordered[-1], 2)}


# -- bodies ----------------------------------------------------------------------------------


def plain_factory(lines: list[bytes], per_request: int) -> Factory:
    """Prebuilt JSON arrays of `per_request` events, sent round-robin."""
    bodies = [b"[" + b",".join(lines[start : start + per_request]) + b"]"
              for start in range(0, len(lines) - per_request + 1, per_request)]
    return lambda number: (bodies[number % len(bodies)], per_request, "")


TAG_BYTES = len(b',"bench_id":"x0000000.000","sent_ns":"0000000000000000000"')


def tagged_prefixes(count: int) -> list[bytes]:
    """Events of exactly 500 bytes once tagged, cut open inside `extra` for the tag."""
    prefixes = []
    for raw in sample_events(count, seed=42, tenants=("acme", "globex", "initech", "umbrella")):
        base = len(orjson.dumps(raw))
        raw["extra"]["trace_id"] = "t" * max(1, 500 - base - len(b',"trace_id":""') - TAG_BYTES)
        prefixes.append(orjson.dumps(raw)[:-2])
    return prefixes


def tagged_factory(prefixes: list[bytes], per_request: int, phase: str) -> Factory:
    """Bodies built at send time: `extra.bench_id` = request.index, `extra.sent_ns` = now."""
    assert len(phase) == 1  # noqa: S101 - request ids have a fixed width
    assert len(prefixes) % per_request == 0  # noqa: S101 - bodies never wrap around

    def build(number: int) -> tuple[bytes, int, str]:
        request_id = f"{phase}{number:07d}"
        start = (number * per_request) % len(prefixes)
        head = b',"bench_id":"' + request_id.encode() + b"."
        tail = b'","sent_ns":"' + str(time.time_ns()).encode() + b'"}}'
        events = [prefix + head + b"%03d" % index + tail
                  for index, prefix in enumerate(prefixes[start : start + per_request])]
        return b"[" + b",".join(events) + b"]", per_request, request_id

    return build


# -- end to end ------------------------------------------------------------------------------


def delivery_summary(stats: dict[str, Any], accepted: dict[str, int],
                     window_ns: tuple[int, int] | None = None) -> dict[str, Any]:
    """Latency (weighted by events) and completeness from the sink's record."""
    delivered: dict[str, int] = {}
    latencies: list[tuple[float, int]] = []
    in_window = 0
    for received_ns, request_id, sent_ns, count in stats["deliveries"]:
        delivered[request_id] = delivered.get(request_id, 0) + count
        latencies.append(((received_ns - sent_ns) / 1e6, count))
        if window_ns is not None and window_ns[0] <= received_ns <= window_ns[1]:
            in_window += count
    latencies.sort()
    total = sum(count for _, count in latencies)
    result: dict[str, Any] = {"delivered": total}
    if total:
        marks: dict[str, float] = {}
        seen = 0
        for value, count in latencies:
            seen += count
            for name, fraction in (("p50_ms", 0.50), ("p99_ms", 0.99)):
                if name not in marks and seen >= fraction * total:
                    marks[name] = round(value, 1)
        result.update(marks, max_ms=round(latencies[-1][0], 1))
        first_sent = min(sent for _, _, sent, _ in stats["deliveries"])
        last_received = max(received for received, _, _, _ in stats["deliveries"])
        result["delivered_per_second"] = round(total / ((last_received - first_sent) / 1e9))
    result["missing"] = sum(max(0, events - delivered.get(request_id, 0))
                            for request_id, events in accepted.items())
    result["duplicates"] = sum(max(0, count - accepted.get(request_id, 0))
                               for request_id, count in delivered.items())
    result["untagged"] = stats["untagged"]
    if window_ns is not None:
        seconds = (window_ns[1] - window_ns[0]) / 1e9
        result["window_seconds"] = round(seconds, 2)
        result["delivered_per_second_in_window"] = round(in_window / seconds)
    return result


def wait_drained(worker: Worker, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = get_json(worker.port, "/v1/status")
        if all(item["lag_rows"] == 0 for item in status["exports"]) or (
                time.monotonic() >= deadline):
            return status
        time.sleep(0.1)


def sink_stats(port: int, reset: bool) -> dict[str, Any]:
    conn = connect(port)
    try:
        conn.request("GET", "/stats?reset=1" if reset else "/stats")
        response = conn.getresponse()
        return orjson.loads(response.read())
    finally:
        conn.close()


# -- where an ingest request's time goes -----------------------------------------------------


def breakdown(directory: Path, lines: list[bytes], batches: int = 40) -> dict[str, float]:
    """Microseconds per event of each step of `POST /v1/events`, timed in this process."""
    bodies = [b"[" + b",".join(lines[i * BATCH : (i + 1) * BATCH]) + b"]" for i in range(batches)]
    steps = dict.fromkeys(("validate (msgspec, from the request bytes to row fields)",
                           "append (canonical JSON, hash, insert, fsync)",
                           "answer (per-event JSON)"), 0.0)
    names = list(steps)
    with ChainStore(directory / "breakdown.db", synchronous="FULL") as store:
        for body in bodies:
            t0 = time.perf_counter()
            rows = rows_from_json(body)
            if rows is None:
                raise RuntimeError("the benchmark's events did not take the fast path")
            t1 = time.perf_counter()
            stored = store.append_fields(rows, source_bytes=len(body))
            t2 = time.perf_counter()
            orjson.dumps({"stored": len(stored), "events": [
                {"seq": s.seq, "tenant_id": s.tenant_id, "tenant_seq": s.tenant_seq,
                 "record_hash": s.record_hash} for s in stored]})
            t3 = time.perf_counter()
            for name, spent in zip(names, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                steps[name] += spent
    count = batches * BATCH
    return {name: round(spent / count * 1e6, 2) for name, spent in steps.items()}


# -- the run ---------------------------------------------------------------------------------


def sweep_connections(worker: Worker, factory: Factory, tried: tuple[int, ...]
                      ) -> tuple[dict[int, int], int]:
    """Closed loop with each number of connections for a few seconds; rates and events sent."""
    sweep, sent = {}, 0
    for connections in tried:
        result = closed_loop(worker.port, factory, connections, SWEEP_SECONDS)
        check(result)
        sweep[connections] = result["events_per_second"]
        sent += result["events"]
        print(f"  ingest, {connections} connection(s), {SWEEP_SECONDS:.0f} s: "
              f"{result['events_per_second']:,} events/s", flush=True)
    return sweep, sent


def check_stored(worker: Worker, sent: int) -> int:
    """The store's row count (read from the file), which must be every event answered 200."""
    reader = sqlite3.connect(f"file:{worker.db}?mode=ro", uri=True)
    try:
        last_seq = int(reader.execute("SELECT COUNT(*) FROM audit_rows").fetchone()[0])
    finally:
        reader.close()
    if last_seq != sent:
        raise RuntimeError(f"the store holds {last_seq} rows; the worker answered 200 "
                           f"for {sent} events")
    return last_seq


def measure_ingest(directory: Path, args: argparse.Namespace, lines: list[bytes],
                   rss: RssSampler, figures: dict[str, Any]) -> None:
    """Ingest with the default one process (rate and latency), then with two (rate)."""
    unreachable = {"highWatermarkRows": 1_000_000_000, "lowWatermarkRows": 500_000_000}
    big = plain_factory(lines, BATCH)
    worker = Worker(directory, "ingest", backpressure=unreachable)
    try:
        worker.start()
        rss.pid = worker.pid
        time.sleep(1.0)
        figures["rss_mib"]["ingest worker at rest"] = round((rss_kib(worker.pid) or 0) / 1024, 1)
        rss.phase = "ingest"
        print("  one ingest process (the default)", flush=True)
        sweep, sent = sweep_connections(worker, big, SWEEP)
        rss.phase = "latency"
        latency = {}
        for per_request in (50, BATCH):
            result = open_loop(worker.port, plain_factory(lines, per_request),
                               STEADY_RATE / per_request, args.latency_seconds)
            check(result)
            latency[f"{STEADY_RATE // per_request} req/s x {per_request}"] = result
            sent += result["events"]
            print(f"  latency at {STEADY_RATE:,} events/s, {per_request} per request: "
                  f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                  f"max {result['max_ms']} ms", flush=True)
        rss.phase = "after ingest"
        last_seq = check_stored(worker, sent)
    finally:
        worker.stop()
    figures["ingest_one_process"] = {"sweep_events_per_second": sweep,
                                     "sweep_seconds": SWEEP_SECONDS,
                                     "events_stored": last_seq}
    figures["ingest_latency"] = {name: strip(result) for name, result in latency.items()}
    figures["rss_mib"]["ingest worker peak, ingest only"] = rss.peak_mib("ingest")
    figures["rss_mib"]["ingest worker peak, 5,000 events/s"] = rss.peak_mib("latency")

    worker = Worker(directory, "ingest2", backpressure=unreachable, processes=INGEST_PROCESSES)
    try:
        worker.start()
        time.sleep(1.0)
        pids = worker.pids()
        if len(pids) != INGEST_PROCESSES + 1:  # the first, which exports, and the ingesting
            raise RuntimeError(f"expected {INGEST_PROCESSES + 1} worker processes, found {pids}")
        figures["rss_mib"][f"{INGEST_PROCESSES}-process worker at rest, each"] = [
            round((rss_kib(pid) or 0) / 1024, 1) for pid in pids]
        print(f"  {INGEST_PROCESSES} ingest processes (ingest.processes: {INGEST_PROCESSES})",
              flush=True)
        # The headline run first, on an empty store; then the sweep, on the store it left.
        # Not the best connection count of a sweep: with few connections, where the kernel's
        # hash puts them decides the figure (two on one process leave the other idle).
        best = max(SWEEP_SHARED)
        main = with_cpu(pids, lambda: closed_loop(worker.port, big, best, args.seconds))
        check(main)
        sent = main["events"]
        print(f"  durable ingest, {INGEST_PROCESSES} processes, {best} connections, "
              f"{args.seconds:.0f} s, empty store at start: {main['events_per_second']:,} "
              "events/s", flush=True)
        print(f"  then, on the {sent:,} rows stored:", flush=True)
        sweep2, swept = sweep_connections(worker, big, SWEEP_SHARED)
        sent += swept
        figures["rss_mib"][f"{INGEST_PROCESSES}-process worker after load, each"] = [
            round((rss_kib(pid) or 0) / 1024, 1) for pid in pids]
        last_seq = check_stored(worker, sent)
    finally:
        worker.stop()
    figures["ingest"] = {"processes": INGEST_PROCESSES, "sweep_events_per_second": sweep2,
                         "sweep_seconds": SWEEP_SECONDS, "connections": best,
                         "events_stored": last_seq, **strip(main)}


def measure_end_to_end(directory: Path, args: argparse.Namespace, rss: RssSampler,
                       figures: dict[str, Any]) -> None:
    sink_port = free_port()
    token_file = directory / "hec-token"
    token_file.write_text(TOKEN + "\n")
    worker = Worker(directory, "e2e", exports=[{
        "name": "hec",
        "splunk": {"hecUrl": f"http://127.0.0.1:{sink_port}", "token": {"file": str(token_file)},
                   "index": "audit"},
    }])
    prefixes = tagged_prefixes(2000)
    sink = None
    try:
        sink = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hec_sink_latency.py"),
                                 str(sink_port), TOKEN])
        worker.start()
        rss.pid = worker.pid
        time.sleep(1.0)
        figures["rss_mib"]["e2e worker at rest"] = round((rss_kib(worker.pid) or 0) / 1024, 1)
        sink_stats(sink_port, reset=True)

        rss.phase = "e2e steady"
        steady = open_loop(worker.port, tagged_factory(prefixes, 50, "s"), STEADY_RATE / 50,
                           args.seconds)
        check(steady)
        wait_drained(worker, DRAIN_SECONDS)
        time.sleep(0.3)
        delivered = delivery_summary(sink_stats(sink_port, reset=True), steady["tally"].accepted)
        figures["e2e_steady"] = {"ingest": strip(steady), "delivery": delivered}
        print(f"  end to end at {STEADY_RATE:,} events/s: delivered "
              f"{delivered.get('delivered_per_second', 0):,} events/s, p50 "
              f"{delivered.get('p50_ms')} ms, p99 {delivered.get('p99_ms')} ms", flush=True)

        rss.phase = "e2e max"
        connections = E2E_CONNECTIONS
        started_ns = time.time_ns()
        flat_out = with_cpu(worker.pids(), lambda: closed_loop(
            worker.port, tagged_factory(prefixes, BATCH, "m"), connections,
            args.seconds + WARMUP_SECONDS))
        ended_ns = time.time_ns()
        if flat_out["failed"]:
            raise RuntimeError(f"end-to-end load failed: {flat_out['failures']}")
        status = get_json(worker.port, "/v1/status")
        lag_at_end = status["exports"][0]["lag_rows"]
        state_at_end = status["backpressure"]["state"]
        drained = wait_drained(worker, DRAIN_SECONDS)
        time.sleep(0.3)
        window = (started_ns + int(WARMUP_SECONDS * 1e9), ended_ns)
        delivered = delivery_summary(sink_stats(sink_port, reset=True),
                                     flat_out["tally"].accepted, window)
        figures["e2e_max"] = {"ingest": strip(flat_out), "delivery": delivered,
                              "lag_rows_at_end": lag_at_end, "backpressure_at_end": state_at_end,
                              "lag_rows_after_drain": drained["exports"][0]["lag_rows"]}
        print(f"  end to end flat out, {connections} connection(s): ingest accepted "
              f"{flat_out['events_per_second']:,} events/s ({flat_out['refused_429']} x 429), "
              f"sink received {delivered.get('delivered_per_second_in_window', 0):,} events/s "
              f"after {WARMUP_SECONDS:.0f} s", flush=True)
        rss.phase = "after e2e"
    finally:
        worker.stop()
        stop_process(sink)
    figures["rss_mib"]["e2e worker peak, 5,000 events/s"] = rss.peak_mib("e2e steady")
    figures["rss_mib"]["e2e worker peak, flat out"] = rss.peak_mib("e2e max")


def check(result: dict[str, Any]) -> None:
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} requests failed: {result['failures']}")


def strip(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key != "tally"}


def cpu_rows(phase: str, cpu: dict[str, float]) -> list[tuple[str, str]]:
    return [
        ((f"{phase}: worker CPU, cores, {cpu['worker_processes']} process(es) "
         "(event-loop threads + other threads)"),
         (f"{cpu['worker_cores']} ({cpu['worker_event_loop_thread_cores']} + "
          f"{cpu['worker_other_threads_cores']})")),
        (f"{phase}: worker CPU per event (µs)", f"{cpu['worker_cpu_us_per_event']}"),
        (f"{phase}: load generator CPU (cores)", f"{cpu['load_generator_cores']}"),
    ]


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    one, ingest = figures["ingest_one_process"], figures["ingest"]
    rows: list[tuple[str, str]] = [
        (f"ingest, 1 process, {n} connection(s), {SWEEP_SECONDS:.0f} s (events/s)", f"{rate:,}")
        for n, rate in one["sweep_events_per_second"].items()
    ]
    label = (f"durable ingest, {ingest['processes']} processes, {ingest['connections']} "
             f"connections, {ingest['seconds']:.0f} s, empty store at start (events/s)")
    rows.append((label, f"{ingest['events_per_second']:,}"))
    rows += cpu_rows("durable ingest", ingest["cpu"])
    rows += [
        ((f"then {ingest['processes']} processes, {n} connections, {SWEEP_SECONDS:.0f} s "
          "(events/s)"), f"{rate:,}")
        for n, rate in ingest["sweep_events_per_second"].items()
    ]
    for name, result in figures["ingest_latency"].items():
        rows.append((f"ingest latency at 5,000 events/s, {name}, p50/p99/max (ms)",
                     f"{result['p50_ms']} / {result['p99_ms']} / {result['max_ms']}"))
    steady = figures["e2e_steady"]["delivery"]
    rows += [
        ("end to end at 5,000 events/s: delivered (events/s)",
         f"{steady.get('delivered_per_second', 0):,}"),
        ("end to end at 5,000 events/s, p50/p99/max (ms)",
         f"{steady.get('p50_ms')} / {steady.get('p99_ms')} / {steady.get('max_ms')}"),
    ]
    flat = figures["e2e_max"]
    rows += [
        (f"end to end flat out: ingest accepted (events/s, {flat['ingest']['refused_429']} x 429)",
         f"{flat['ingest']['events_per_second']:,}"),
        ("end to end flat out: sustained delivery (events/s)",
         f"{flat['delivery'].get('delivered_per_second_in_window', 0):,}"),
        ("end to end flat out, p50/p99 (ms)",
         f"{flat['delivery'].get('p50_ms')} / {flat['delivery'].get('p99_ms')}"),
        ("end to end flat out: export lag at end (rows)", f"{flat['lag_rows_at_end']:,}"),
        *cpu_rows("end to end flat out", flat["ingest"]["cpu"]),
    ]
    rows += [(f"RSS, {name} (MiB)", f"{value}") for name, value in figures["rss_mib"].items()]
    spent = figures["breakdown_us_per_event"]
    rows += [(f"in-process, {name} (µs/event)", f"{value}") for name, value in spent.items()]
    rows.append(("in-process, those steps in series (events/s)",
                 f"{1e6 / sum(spent.values()):,.0f}"))
    width = max(len(label) for label, _ in rows)
    print(f"\n{'measure':<{width}} {'value':>22}")
    for label, value in rows:
        print(f"{label:<{width}} {value:>22}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "worker",
        "command": "python bench/worker_bench.py " + " ".join(sys.argv[1:]),
        "batch": BATCH,
        "event_bytes": 500,
        "synchronous": "FULL",
        "client": "http.client keep-alive, one connection per thread, in the benchmark process",
        **figures,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of the main ingest and end-to-end loads")
    parser.add_argument("--latency-seconds", type=float, default=15.0,
                        help="length of each open-loop ingest latency load")
    parser.add_argument("--dir", type=Path, help="where stores go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "worker.json")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(dir=args.dir, prefix="sealtrail-worker-bench-"))
    rss = RssSampler()
    rss.start()
    figures: dict[str, Any] = {"rss_mib": {}}
    started = time.perf_counter()
    try:
        lines = event_lines(20_000)
        figures["breakdown_us_per_event"] = breakdown(directory, lines)
        print("measuring the ingest worker", flush=True)
        measure_ingest(directory, args, lines, rss, figures)
        print("measuring end to end", flush=True)
        measure_end_to_end(directory, args, rss, figures)
    except RuntimeError as error:
        print(f"worker benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        rss.done.set()
        shutil.rmtree(directory, ignore_errors=True)
    figures["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
