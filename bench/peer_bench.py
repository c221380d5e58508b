"""Peer benchmark: sealtrail against syslog-ng and rsyslog, same events, same `_bulk` sink.

    .venv/bin/python bench/peer_bench.py [--events 100000] [--rounds 2] [--only sealtrail,...]

Why: issue #16 asks whether sealtrail's durability costs more than the shippers people run
today. Every shipper here takes the same `--events` events (about 570 bytes of JSON each, four
tenants, each carrying a unique `extra.bench_seq`) on loopback and delivers them to the same
Elasticsearch `_bulk` sink, `bench/elastic_sink.py` (its own process: parses every action line,
answers one item per action, counts documents and which `bench_seq` arrived). Runs are
interleaved: each round runs every shipper's throughput run, then every shipper's SIGKILL run.

The shippers and exactly how each is configured:

* **sealtrail, 1 ingest process + export**: `sealtrail worker` from this tree, store
  `synchronous: FULL` (answers 200 only after the commit), one `elastic` export to the sink with
  the default batching (500 rows); fed by 8 keep-alive connections posting JSON arrays of 500 to
  `/v1/events`, each with an `Idempotency-Key` as a retrying client sends (a 429 is retried after
  50 ms; a request without an answer after 200 ms, same key).
* **sealtrail, 2 ingest processes + export**: the same with `ingest.processes: 2`: two processes
  take the connections, and the worker's first process runs the export (three in all).
* **syslog-ng 3.38 (Debian's), reliable disk buffer**: `network(transport(tcp)
  flags(no-parse) log-iw-size(100000))` source, the SCL's `elasticsearch-http()` destination
  (`http()` posting `{"index":{"_index":"bench"}}` + `$MSG` lines to `/_bulk`) with
  `batch-lines(500) workers(4)` and `disk-buffer(reliable(yes) mem-buf-size(10MB)
  disk-buf-size(2GB))`, `flags(flow-control)` on the log path so nothing is dropped when the
  queue fills (the source stops reading instead). syslog-ng 3.38 has no fsync option: the buffer
  is written, not synced.
* **syslog-ng, memory queue**: the same without the disk buffer, `log-fifo-size(200000)`.
* **rsyslog 8.2302 (Debian's), memory queue**: `imtcp` input, `omelasticsearch` action
  (`bulkmode="on"`, template `%rawmsg%`, index `bench`) with a `LinkedList` action queue of
  1,000,000, `dequeueBatchSize` 500, retrying forever; main queue in memory (1,000,000).
* **rsyslog, disk queue with fsync**: the same action with `queue.type="Disk"`,
  `queue.syncQueueFiles="on"` (each write to the queue file synced) and
  `queue.checkpointInterval="1000"` (the queue's index file written every 1,000 messages); the
  main queue before it stays in memory, as in rsyslog's own reliable-forwarding recipe. With
  `checkpointInterval="1"` (an index write per message) it ran at ~800 events/s in trials, too
  slow to finish a default run in time.

The peers come from Debian's packages, fetched by this script (`apt-get download` of the
packages and of the library packages they need that the machine does not have, `dpkg-deb -x`
into `~/.cache/sealtrail/peers`; `apt-get update` first if the download fails), and run from
there with `LD_LIBRARY_PATH` and their module directories pointing into the unpacked tree;
nothing is installed. Each peer gets its own temp dir for config, queues and state.

The load comes from this process: for sealtrail, batches of 500 as JSON arrays; for the peers,
one TCP connection carrying newline-framed events, written 500 at a time.

Measured per shipper:

* **end-to-end events/s**: `--events` sent as fast as the shipper takes them, from the first
  send to the sink receiving the last one (every event must arrive; a run that does not finish
  within `--run-timeout` is reported as such, with the rate so far).
* **CPU µs/event**: utime + stime of the shipper's processes (all threads; both sealtrail
  processes) from `/proc/PID/stat` over that run, divided by the events.
* **lost when SIGKILLed mid-stream**: send `--events` again, SIGKILL the shipper (every process
  of it) once half of them are accepted, restart it on the same state, send the rest, let it
  drain, then count accepted events the sink never received. *Accepted* means: for sealtrail, in
  a request answered 200 (after the commit); for the peers, which acknowledge nothing above TCP,
  written to the socket and acknowledged by the peer's kernel (the bytes sent minus the socket's
  unacknowledged `SIOCOUTQ`, read with the sender paused just before the kill): what a TCP
  sender knows was received. The sender resumes after the last accepted event, as a client
  retrying unacknowledged data would.

Everything runs on loopback; every process started is stopped by its pid at the end. The figures
move with the machine: on a shared or busy machine they are indicative only (the load average
is printed and saved).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import faulthandler
import fcntl
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from sealtrail.demo import sample_events

sys.path.insert(0, str(Path(__file__).parent))
from chain_bench import machine
from export_bench import child_pids, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "sealtrail" / "peers"
BATCH = 500  # events per request, per TCP chunk, per bulk request of every shipper
EVENT_BYTES = 573  # about 570 once the event number is in
SEALTRAIL_CONNECTIONS = 8  # the kernel spreads connections over ingest processes by hash
PEER_PACKAGES = ("syslog-ng-core", "syslog-ng-mod-http", "syslog-ng-scl", "rsyslog",
                 "rsyslog-elasticsearch")
BASELINE = "sealtrail, 1 ingest process + export"
SIOCOUTQ = termios.TIOCOUTQ  # the same ioctl on a TCP socket: bytes not yet acknowledged


# -- events ----------------------------------------------------------------------------------


def event_lines(count: int) -> list[bytes]:
    """`count` events of about EVENT_BYTES of JSON, `extra.bench_seq` = 0 .. count-1."""
    templates = []
    for raw in sample_events(2000, seed=42, tenants=("acme", "globex", "initech", "umbrella")):
        raw["extra"]["bench_seq"] = 0
        base = len(orjson.dumps(raw)) + len(',"trace_id":""') + 8  # room for a 7-digit seq
        raw["extra"]["trace_id"] = "t" * max(1, EVENT_BYTES - base)
        del raw["extra"]["bench_seq"]
        templates.append(orjson.dumps(raw)[:-2] + b',"bench_seq":')
    return [templates[seq % len(templates)] + b'"%d"}}' % seq for seq in range(count)]


# -- the peers' packages ---------------------------------------------------------------------


def tool(name: str) -> str:
    """The full path of a Debian tool the fetch uses."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: the peers come from Debian's packages")
    return path


def installed(package: str) -> bool:
    status = subprocess.run([tool("dpkg-query"), "-W", "-f=${Status}", package],
                            capture_output=True, text=True, check=False)
    return status.stdout.strip().endswith("installed")


def depends(package: str) -> list[str]:
    """Direct `Depends` of a package: library packages only (the rest the peers never run)."""
    listed = subprocess.run([tool("apt-cache"), "depends", "--no-recommends", "--no-suggests",
                             "--no-enhances", "--no-breaks", "--no-conflicts", "--no-replaces",
                             "--no-pre-depends", package],
                            capture_output=True, text=True, check=False).stdout
    found = []
    for line in listed.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind.lstrip("|") == "Depends" and name.startswith("lib") and "<" not in name:
            found.append(name.split(":")[0])
    return found


def fetch_peers() -> Path:
    """Debian's syslog-ng and rsyslog unpacked under CACHE (once); the tree's root."""
    root, stamp = CACHE / "root", CACHE / "unpacked"
    wanted = " ".join(PEER_PACKAGES)
    if stamp.exists() and stamp.read_text() == wanted:
        return root
    debs = CACHE / "debs"
    shutil.rmtree(CACHE, ignore_errors=True)
    debs.mkdir(parents=True)
    for attempt in range(2):
        try:
            closure, todo = list(PEER_PACKAGES), list(PEER_PACKAGES)
            while todo:
                for name in depends(todo.pop()):
                    if name not in closure and name != "libc6" and not installed(name):
                        closure.append(name)
                        todo.append(name)
            print(f"fetching Debian packages: {' '.join(closure)}", flush=True)
            subprocess.run([tool("apt-get"), "download", "-q", *closure], cwd=debs, check=True,
                           stdout=subprocess.DEVNULL)
            break
        except subprocess.CalledProcessError:
            if attempt:
                raise
            subprocess.run([tool("apt-get"), "update", "-qq"], check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run([tool("dpkg-deb"), "-x", str(deb), str(root)], check=True)
    stamp.write_text(wanted)
    return root


def peer_env(root: Path) -> dict[str, str]:
    libs = [root / "usr/lib/x86_64-linux-gnu", root / "lib/x86_64-linux-gnu",
            root / "usr/lib/syslog-ng"]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(str(path) for path in libs)}


# -- shippers --------------------------------------------------------------------------------


class Shipper:
    """One shipper under test: its processes, its input port, its state in `directory`."""

    name = ""
    http = False  # sealtrail takes HTTP; the peers a TCP line stream

    def __init__(self, directory: Path, sink_port: int) -> None:
        """Choose a port and write the config; start nothing."""
        self.directory = directory
        self.sink_port = sink_port
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "shipper.log"
        directory.mkdir(parents=True, exist_ok=True)

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that start the shipper."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the process and wait until its input port answers."""
        argv, env = self.command()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.directory)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}: {self.tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after 30 s: {self.tail()}")

    def ready(self) -> bool:
        """Whether the input port takes connections."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def pids(self) -> list[int]:
        """The shipper's processes: the one started, and its children."""
        if self.process is None or self.process.poll() is not None:
            return []
        return [self.process.pid, *child_pids(self.process.pid)]

    def kill(self) -> None:
        """SIGKILL every process of the shipper, by pid, and reap the one started."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; children too."""
        if self.process is None or self.process.poll() is not None:
            return
        children = self.pids()[1:]
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self) -> str:
        """The end of the shipper's log, for an error message."""
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class Sealtrail(Shipper):
    """`sealtrail worker` from this tree: HTTP ingest, FULL store, one Elastic export."""

    http = True

    def __init__(self, directory: Path, sink_port: int, processes: int) -> None:
        """A worker config: FULL store, one Elastic export to the sink."""
        super().__init__(directory, sink_port)
        self.processes = processes
        self.name = (f"sealtrail, {processes} ingest process{'es' if processes > 1 else ''} "
                     "+ export")
        self.config = directory / "worker.yaml"
        self.config.write_text(yaml.safe_dump({
            "store": {"path": str(directory / "audit.db"), "synchronous": "FULL"},
            "ingest": {"listen": f"127.0.0.1:{self.port}", "processes": processes},
            "exports": [{"name": "es", "elastic": {"url": f"http://127.0.0.1:{sink_port}",
                                                   "index": "bench"}}],
            "drainTimeoutSeconds": 5,
        }))

    def command(self) -> tuple[list[str], dict[str, str]]:
        """`python -m sealtrail worker --config FILE` with this tree on the path."""
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        return [sys.executable, "-m", "sealtrail", "worker", "--config", str(self.config)], env

    def ready(self) -> bool:
        """Whether `/readyz` says ready."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return bool(orjson.loads(conn.getresponse().read()).get("ready"))
        except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
            return False
        finally:
            conn.close()


class SyslogNg(Shipper):
    """Debian's syslog-ng from the unpacked tree."""

    def __init__(self, directory: Path, sink_port: int, root: Path, *, disk: bool) -> None:
        """syslog-ng.conf: TCP source, the SCL's elasticsearch-http(), flow control."""
        super().__init__(directory, sink_port)
        self.root = root
        self.name = ("syslog-ng 3.38, reliable disk buffer (no fsync)" if disk
                     else "syslog-ng 3.38, memory queue")
        scl = root / "usr/share/syslog-ng/include/scl/elasticsearch/elastic-http.conf"
        queue_options = (f'disk-buffer(reliable(yes) dir("{directory}") mem-buf-size(10485760) '
                         "disk-buf-size(2147483648))" if disk else "log-fifo-size(200000)")
        self.config = directory / "syslog-ng.conf"
        self.config.write_text(f"""@version: 3.38
@include "{scl}"
options {{ threaded(yes); use-dns(no); use-fqdn(no); stats_freq(0); }};
source s_in {{ network(ip("127.0.0.1") port({self.port}) transport("tcp") flags(no-parse)
  log-iw-size(100000) max-connections(10) log-msg-size(65536)); }};
destination d_es {{ elasticsearch-http(url("http://127.0.0.1:{sink_port}/_bulk") index("bench")
  type("") template("$MSG") batch-lines({BATCH}) workers(4) {queue_options}); }};
log {{ source(s_in); destination(d_es); flags(flow-control); }};
""")

    def command(self) -> tuple[list[str], dict[str, str]]:
        """In the foreground, every path in its own directory or the unpacked tree."""
        d = self.directory
        return [str(self.root / "usr/sbin/syslog-ng"), "-F", "--no-caps", "-f", str(self.config),
                "-R", str(d / "persist"), "-p", str(d / "pid"), "-c", str(d / "ctl"),
                f"--module-path={self.root / 'usr/lib/syslog-ng/3.38'}"], peer_env(self.root)


class Rsyslog(Shipper):
    """Debian's rsyslog from the unpacked tree."""

    def __init__(self, directory: Path, sink_port: int, root: Path, *, disk: bool) -> None:
        """rsyslog.conf: imtcp, omelasticsearch in bulk mode, a memory or a synced disk queue."""
        super().__init__(directory, sink_port)
        self.root = root
        self.name = ("rsyslog 8.2302, disk queue with fsync" if disk
                     else "rsyslog 8.2302, memory queue")
        queue_options = ('queue.type="Disk" queue.filename="esq" queue.syncQueueFiles="on" '
                         'queue.checkpointInterval="1000" queue.maxDiskSpace="4g"' if disk
                         else 'queue.type="LinkedList"')
        self.config = directory / "rsyslog.conf"
        self.config.write_text(f"""global(workDirectory="{directory}")
main_queue(queue.size="1000000" queue.dequeueBatchSize="{BATCH}" queue.timeoutEnqueue="600000")
module(load="imtcp" maxSessions="10")
module(load="omelasticsearch")
template(name="doc" type="string" string="%rawmsg%")
ruleset(name="es") {{
  action(type="omelasticsearch" server="127.0.0.1" serverport="{sink_port}" searchIndex="bench"
         template="doc" bulkmode="on" {queue_options} queue.size="1000000"
         queue.dequeueBatchSize="{BATCH}" queue.timeoutEnqueue="600000"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}}
input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="es")
""")

    def command(self) -> tuple[list[str], dict[str, str]]:
        """In the foreground (`-n`), modules from the unpacked tree (`-M`)."""
        d = self.directory
        return [str(self.root / "usr/sbin/rsyslogd"), "-n", "-f", str(self.config),
                "-i", str(d / "pid"), "-M", str(self.root / "usr/lib/x86_64-linux-gnu/rsyslog")
                ], peer_env(self.root)


# -- the sink --------------------------------------------------------------------------------


class Sink:
    """`bench/elastic_sink.py` in its own process."""

    def __init__(self) -> None:
        """Start it and wait for it to answer."""
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "elastic_sink.py"),
                                         str(self.port)])
        deadline = time.monotonic() + 20
        while True:
            try:
                self.stats()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            else:
                return

    def call(self, method: str, path: str) -> bytes:
        """One request on a fresh connection; the answer's body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path)
            return conn.getresponse().read()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        """Counts since the last reset."""
        result: dict[str, Any] = orjson.loads(self.call("GET", "/stats"))
        return result

    def seen(self) -> bytes:
        """One byte per event number: 1 if it arrived."""
        return self.call("GET", "/seen")

    def reset(self) -> None:
        """Forget everything received."""
        self.call("POST", "/reset")

    def stop(self) -> None:
        """SIGTERM the sink by its pid (SIGKILL after 10 s)."""
        stop_process(self.process, 10)


# -- senders ---------------------------------------------------------------------------------


class Feed:
    """Sends `lines` to a shipper in chunks of BATCH; tracks what the shipper accepted.

    `accepted` holds the numbers of accepted events. `kill_at`, when set, is a callback run
    once half the events are accepted, with the sender paused (TCP) so that what is
    acknowledged cannot change under it.
    """

    def __init__(self, shipper: Shipper, lines: list[bytes]) -> None:
        """Nothing sent yet."""
        self.shipper = shipper
        self.lines = lines
        self.accepted = bytearray(len(lines))
        self.accepted_count = 0
        self.lock = threading.RLock()
        self.errors: list[str] = []
        self.retries = 0
        self.remaining = 0  # HTTP batches not yet answered 200 or refused for good
        self.on_half: Callable[[], None] | None = None

    def run_http(self, on_half: Callable[[], None] | None) -> None:
        """Batches from a queue over SEALTRAIL_CONNECTIONS; a batch not answered 200 goes back."""
        batches: queue.Queue[int] = queue.Queue()
        count = (len(self.lines) + BATCH - 1) // BATCH
        for number in range(count):
            batches.put(number)
        self.remaining = count
        self.on_half = on_half
        threads = [threading.Thread(target=self.post_batches, args=(batches,), daemon=True)
                   for _ in range(SEALTRAIL_CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def post_batches(self, batches: queue.Queue[int]) -> None:
        """One connection's loop: take a batch, post it, file the answer, until none remain."""
        conn = http.client.HTTPConnection("127.0.0.1", self.shipper.port, timeout=60)
        while self.remaining:
            try:
                number = batches.get(timeout=0.2)
            except queue.Empty:
                continue
            start = number * BATCH
            chunk = self.lines[start : start + BATCH]
            status, answer = post_events(conn, b"[" + b",".join(chunk) + b"]",
                                         f"bench-{number}")
            if status == 200:
                self.mark(start, len(chunk))
            elif 400 <= status < 500 and status not in (409, 429):  # refused for good: broken
                self.errors.append(f"{status}: {answer[:300]!r}")
            else:  # 409 (key in flight), 429, 5xx or no answer: send it again, same key
                with self.lock:
                    self.retries += 1
                batches.put(number)
                time.sleep(0.05 if status == 429 else 0.2)
                continue
            with self.lock:
                self.remaining -= 1
                fire = self.on_half if self.accepted_count >= len(self.lines) // 2 else None
                self.on_half = None if fire is not None else self.on_half
            if fire is not None:
                threading.Thread(target=fire, daemon=True).start()
        conn.close()

    def run_tcp(self, on_half: Callable[[], None] | None) -> None:
        """One connection at a time, newline-framed; after a kill, resume after the last acked."""
        position = 0  # next event to send
        while position < len(self.lines):
            try:
                sock = socket.create_connection(("127.0.0.1", self.shipper.port), timeout=60)
            except OSError:
                time.sleep(0.2)  # the shipper is restarting
                continue
            try:
                position = self.stream(sock, position, on_half)
                on_half = None
            except OSError as error:
                self.errors.append(repr(error))  # nothing known: send it all again
            finally:
                sock.close()

    def stream(self, sock: socket.socket, first: int, on_half: Callable[[], None] | None) -> int:
        """Send from event `first` on; return where the next connection starts."""
        total = len(self.lines)
        ends: list[int] = []  # byte offset on this connection after each event sent
        written, position = 0, first
        while position < total:
            chunk = self.lines[position : position + BATCH]
            with self.lock:
                sock.sendall(b"\n".join(chunk) + b"\n")
                for line in chunk:
                    written += len(line) + 1
                    ends.append(written)
                position += len(chunk)
            if on_half is not None and position >= total // 2:
                # Half written: hold the next write until the shipper's kernel has acknowledged
                # half the events, then kill it with that count fixed.
                with self.lock:
                    while (count := bisect.bisect_right(ends, written - unacknowledged(sock))
                           ) + first < total // 2:
                        time.sleep(0.001)
                    self.mark(first, count)
                    on_half()
                return first + count  # the shipper is dead: reconnect once it is back
        deadline = time.monotonic() + 600  # all written: wait until all is acknowledged
        while unacknowledged(sock) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.mark(first, bisect.bisect_right(ends, written - unacknowledged(sock)))
        return position

    def mark(self, first: int, count: int) -> None:
        """Events `first` .. `first + count - 1` are accepted."""
        with self.lock:
            for seq in range(first, first + count):
                if not self.accepted[seq]:
                    self.accepted[seq] = 1
                    self.accepted_count += 1


# -- runs ------------------------------------------------------------------------------------


def post_events(conn: http.client.HTTPConnection, body: bytes, key: str) -> tuple[int, bytes]:
    """POST a batch; (status, answer), or (0, b"") when no answer came (the shipper died)."""
    try:
        conn.request("POST", "/v1/events", body=body, headers={
            "Content-Type": "application/json", "Idempotency-Key": key})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        conn.close()  # the next request opens a new connection
        return 0, b""


def unacknowledged(sock: socket.socket) -> int:
    """Bytes written to this TCP socket that the other side's kernel has not acknowledged."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0])


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wait_delivered(sink: Sink, want: int, timeout: float, quiet: float | None) -> dict[str, Any]:
    """Until the sink has `want` distinct events, the timeout, or (`quiet`) no progress."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        stats = sink.stats()
        if stats["distinct"] >= want or time.monotonic() > deadline:
            return stats
        if stats["documents"] != last:
            last, since = stats["documents"], time.monotonic()
        elif quiet is not None and time.monotonic() - since > quiet:
            return stats
        time.sleep(0.05)


def throughput_run(shipper: Shipper, sink: Sink, lines: list[bytes],
                   timeout: float) -> dict[str, Any]:
    """Every event through the shipper as fast as it goes; the rate at which the sink got them."""
    sink.reset()
    shipper.start()
    try:
        time.sleep(1.0)
        pids = shipper.pids()
        cpu_before = cpu_seconds(pids)
        feed = Feed(shipper, lines)
        started = time.time()
        sender = threading.Thread(target=feed.run_http if shipper.http else feed.run_tcp,
                                  args=(None,), daemon=True)
        sender.start()
        stats = wait_delivered(sink, len(lines), timeout, None)
        ended = stats["last"] or time.time()
        cpu = cpu_seconds(pids) - cpu_before
        sender.join(timeout=1)
        if feed.errors:
            raise RuntimeError(f"{shipper.name}: {len(feed.errors)} failures: {feed.errors[:3]}")
    finally:
        shipper.stop()
    delivered = stats["distinct"]
    seconds = max(ended - started, 1e-6)
    return {
        "events": len(lines), "delivered": delivered, "complete": delivered >= len(lines),
        "seconds": round(seconds, 2), "events_per_second": round(delivered / seconds),
        "cpu_seconds": round(cpu, 2), "cpu_us_per_event": round(cpu / max(1, delivered) * 1e6, 1),
        "documents": stats["documents"], "requests": stats["requests"], "bytes": stats["bytes"],
        "processes": len(pids), "sender_retries": feed.retries,
    }


def kill_run(shipper: Shipper, sink: Sink, lines: list[bytes], timeout: float) -> dict[str, Any]:
    """SIGKILL once half the events are accepted, restart, finish, count what never arrived."""
    sink.reset()
    shipper.start()
    killed = threading.Event()
    restarted = threading.Event()
    at_kill: dict[str, int] = {}
    feed = Feed(shipper, lines)

    def kill() -> None:
        at_kill["accepted"] = feed.accepted_count
        at_kill["sink_distinct"] = sink.stats()["distinct"]
        shipper.kill()
        killed.set()

    try:
        sender = threading.Thread(target=feed.run_http if shipper.http else feed.run_tcp,
                                  args=(kill,), daemon=True)
        sender.start()
        while not killed.wait(0.1):
            if not sender.is_alive():
                raise RuntimeError(f"{shipper.name}: all sent before the kill")
        time.sleep(0.5)
        shipper.start()
        restarted.set()
        sender.join(timeout=timeout)
        stats = wait_delivered(sink, len(lines), timeout, quiet=15.0)
        seen = sink.seen()
    finally:
        shipper.stop()
    lost = sum(1 for seq in range(len(lines))
               if feed.accepted[seq] and (seq >= len(seen) or not seen[seq]))
    return {
        "events": len(lines), "accepted_before_kill": at_kill.get("accepted", 0),
        "at_sink_at_kill": at_kill.get("sink_distinct", 0), "accepted": feed.accepted_count,
        "delivered_distinct": stats["distinct"], "documents": stats["documents"],
        "duplicates": stats["documents"] - stats["distinct"], "lost": lost,
    }


# -- the whole --------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    rows = figures["shippers"]
    base = rows.get(BASELINE, {"events_per_second": 0, "cpu_us_per_event": 0})
    header = ("| shipper | end-to-end events/s | vs sealtrail 1 | lost when SIGKILLed "
              "(of accepted at kill) | CPU µs/event | vs sealtrail 1 |")
    print()
    print(header)
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        rate = row["events_per_second"]
        note = "" if row["complete"] else " (incomplete)"
        lost = ", ".join(f"{run['lost']:,} ({run['accepted_before_kill']:,})"
                         for run in row["kill_runs"]) or "not run"
        print(f"| {name} | {rate:,}{note} | {ratio(rate, base['events_per_second'])} | {lost} "
              f"| {row['cpu_us_per_event']} | "
              f"{ratio(row['cpu_us_per_event'], base['cpu_us_per_event'])} |")
    print(f"\nload average before / after: {figures['loadavg_before']} / "
          f"{figures['loadavg_after']} (after includes this benchmark's own load). On a machine "
          "shared with other work these figures are indicative only: re-measure on a quiet one.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "peers",
        "command": "python bench/peer_bench.py " + " ".join(sys.argv[1:]),
        "events": args.events, "rounds": args.rounds, "event_bytes": EVENT_BYTES,
        "batch": BATCH, **figures, "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


def summarize(runs: list[dict[str, Any]], kills: list[dict[str, Any]]) -> dict[str, Any]:
    """Median rate and CPU over the rounds, every round kept."""
    return {
        "events_per_second": round(statistics.median(run["events_per_second"] for run in runs)),
        "cpu_us_per_event": round(statistics.median(run["cpu_us_per_event"] for run in runs), 1),
        "complete": all(run["complete"] for run in runs),
        "runs": runs, "kill_runs": kills,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--run-timeout", type=float, default=120.0,
                        help="seconds a run may take to deliver everything")
    parser.add_argument("--only", default="", help="comma-separated name fragments to run")
    parser.add_argument("--no-kill", action="store_true",
                        help="throughput runs only (for tuning; the table then has no loss column)")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    args = parser.parse_args()
    # A SIGTERM (or `timeout`) unwinds through the `finally` blocks that stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    faulthandler.register(signal.SIGUSR1)
    root = fetch_peers()
    lines = event_lines(args.events)
    directory = Path(tempfile.mkdtemp(dir=args.dir, prefix="sealtrail-peer-bench-"))
    figures: dict[str, Any] = {"loadavg_before": loadavg()}
    print(f"{args.events:,} events of ~{sum(map(len, lines)) // len(lines)} bytes, "
          f"load average {figures['loadavg_before']}", flush=True)
    sink = Sink()
    makers: list[tuple[str, Callable[[Path], Shipper]]] = [
        ("sealtrail-1", lambda d: Sealtrail(d, sink.port, 1)),
        ("sealtrail-2", lambda d: Sealtrail(d, sink.port, 2)),
        ("syslog-ng-disk", lambda d: SyslogNg(d, sink.port, root, disk=True)),
        ("syslog-ng-memory", lambda d: SyslogNg(d, sink.port, root, disk=False)),
        ("rsyslog-memory", lambda d: Rsyslog(d, sink.port, root, disk=False)),
        ("rsyslog-disk", lambda d: Rsyslog(d, sink.port, root, disk=True)),
    ]
    if args.only:
        makers = [m for m in makers if any(part in m[0] for part in args.only.split(","))]
    runs: dict[str, list[dict[str, Any]]] = {}
    kills: dict[str, list[dict[str, Any]]] = {}
    names: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for number in range(args.rounds):
            for kind in ("throughput",) if args.no_kill else ("throughput", "kill"):
                for key, make in makers:
                    shipper = make(directory / f"{key}-{kind}-{number}")
                    names[key] = shipper.name
                    if kind == "throughput":
                        result = throughput_run(shipper, sink, lines, args.run_timeout)
                        runs.setdefault(key, []).append(result)
                        print(f"  round {number + 1}, {shipper.name}: "
                              f"{result['events_per_second']:,} events/s"
                              f"{'' if result['complete'] else ' (INCOMPLETE)'}, "
                              f"{result['cpu_us_per_event']} µs CPU/event", flush=True)
                    else:
                        result = kill_run(shipper, sink, lines, args.run_timeout)
                        kills.setdefault(key, []).append(result)
                        print(f"  round {number + 1}, {shipper.name}, SIGKILL: lost "
                              f"{result['lost']:,} of {result['accepted_before_kill']:,} "
                              f"accepted at the kill ({result['duplicates']:,} duplicates)",
                              flush=True)
                    shutil.rmtree(shipper.directory, ignore_errors=True)
    except RuntimeError as error:
        print(f"peer benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        sink.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures["loadavg_after"] = loadavg()
    figures["wall_seconds"] = round(time.perf_counter() - started, 1)
    figures["shippers"] = {names[key]: summarize(runs[key], kills.get(key, []))
                           for key, _ in makers}
    report(args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
