"""Run the real `sealtrail worker` process for tests, as a deployment would run it.

`running_worker(directory, **config_overrides)` writes a YAML config into `directory`, starts
`python -m sealtrail worker --config FILE` (with `PYTHONPATH=<repo>/operator`) listening on a
free 127.0.0.1 port, waits until `GET /readyz` answers 200, yields a `Worker`, and on exit
stops it with SIGTERM to its own pid (SIGKILL if it has not exited after `stop_timeout`).

Overrides are merged into the default config key by key (camelCase, as in the file)::

    with running_worker(tmp_path, ingest={"maxEventsPerRequest": 5}) as worker:
        httpx.post(f"{worker.url}/v1/events", json={...})
        worker.rows()     # the store's rows, read-only, in seq order
        worker.log()      # everything the process wrote to stdout and stderr so far

The store is read with a read-only SQLite connection, so tests can check what was committed
while the worker runs, without going through the API under test.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

__all__ = ["ROOT", "Worker", "WorkerStartError", "free_port", "running_worker", "start_worker"]

ROOT = Path(__file__).resolve().parent.parent

_BIND_FAILURES = ("address already in use", "errno 98", "error while attempting to bind")


class WorkerStartError(RuntimeError):
    """The worker exited or never became ready; the message carries its log."""


def free_port() -> int:
    """A port nothing listens on right now (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class Worker:
    """A running worker process and where to find its pieces."""

    url: str
    db: Path
    config_path: Path
    log_path: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def log(self) -> str:
        """Everything the worker has written to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, **options: Any) -> httpx.Client:
        """A sync httpx client for this worker (close it, or use it as a context manager)."""
        options.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, **options)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        reader = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return reader.execute(sql, params).fetchall()
        finally:
            reader.close()

    def row_count(self) -> int:
        """How many rows the store holds (read-only)."""
        return int(self._read("SELECT COUNT(*) FROM audit_rows")[0][0]) if self.db.exists() else 0

    def rows(self, after_seq: int = 0) -> list[dict[str, Any]]:
        """The store's rows after `after_seq`, parsed, in seq order (read-only)."""
        found = self._read("SELECT body FROM audit_rows WHERE seq > ? ORDER BY seq", (after_seq,))
        return [orjson.loads(body) for (body,) in found]

    def last_seq(self) -> int:
        """The seq of the newest row, 0 if none."""
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM audit_rows")[0][0] or 0)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM to the worker's own pid, SIGKILL after `timeout`; return its exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return int(self.process.returncode)


def _default_config(directory: Path, port: int) -> dict[str, Any]:
    return {
        "store": {"path": str(directory / "audit.db"), "synchronous": "NORMAL"},
        "ingest": {"listen": f"127.0.0.1:{port}"},
        "drainTimeoutSeconds": 2,
    }


def _wait_ready(worker: Worker, deadline: float) -> str | None:
    """None once /readyz says 200; otherwise the reason it never will."""
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                return f"exited with status {worker.process.returncode}"
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{worker.url}/readyz").status_code == 200:
                    return None
            time.sleep(0.05)
    return "not ready in time"


def start_worker(directory: Path, *, env: dict[str, str] | None = None,
                 ready_timeout: float = 30.0, **config_overrides: Any) -> Worker:
    """Start a worker and wait until it is ready. Stop it with `Worker.stop()`.

    `directory` gets `worker.yaml`, `worker.log` and (unless overridden) `audit.db`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "worker.yaml"
    log_path = directory / "worker.log"
    process_env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"),
                   "PYTHONUNBUFFERED": "1", **(env or {})}
    problem = ""
    for _attempt in range(5):
        port = free_port()
        config = _merge(_default_config(directory, port), config_overrides)
        host = "127.0.0.1"
        if "listen" in config_overrides.get("ingest", {}):
            host, _, given = config["ingest"]["listen"].rpartition(":")
            port = int(given)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sealtrail", "worker", "--config", str(config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=directory, env=process_env,
            )
        worker = Worker(url=f"http://{host}:{port}", db=Path(config["store"]["path"]),
                        config_path=config_path, log_path=log_path, config=config,
                        process=process)
        reason = _wait_ready(worker, time.monotonic() + ready_timeout)
        if reason is None:
            return worker
        worker.stop(timeout=5)
        problem = f"the worker {reason}; its log:\n{worker.log()}"
        if not any(text in problem.lower() for text in _BIND_FAILURES):
            break  # a real failure, not a port someone took between our probe and its bind
    raise WorkerStartError(problem)


@contextlib.contextmanager
def running_worker(directory: Path, *, env: dict[str, str] | None = None,
                   ready_timeout: float = 30.0, stop_timeout: float = 20.0,
                   **config_overrides: Any) -> Iterator[Worker]:
    """A ready worker for the `with` block; stopped (SIGTERM, then SIGKILL) afterwards."""
    worker = start_worker(directory, env=env, ready_timeout=ready_timeout, **config_overrides)
    try:
        yield worker
    finally:
        worker.stop(timeout=stop_timeout)
