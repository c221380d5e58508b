"""Several ingest processes on one port and one store (`ingest.processes > 1`).

Why processes: one Python process validates and appends on one core (the GIL holds HTTP,
validation and the chain together), so ingest stops at what one core does. The first process
(the one `sealtrail worker` starts) runs the exports, status, metrics and the UI, and starts
`ingest.processes` others, which take every ingest connection: the first takes none itself.
(It used to take its share too; with an export in the same process, it then ran out of core
long before the others did, and an export's work waited behind ingest requests.) Each binds
the listen address with `SO_REUSEPORT`, and the kernel spreads new connections over them by a
hash of the client's address and port. (A shared, inherited socket was tried first: asyncio
accepts every pending connection at once, so one process took them all.) Keep-alive clients
should open a few connections, as HTTP client pools do.

What keeps this simple and safe:

- Appends from any process go through the store's write lock, so the chain never forks, and
  the first process notices others' rows by polling `PRAGMA data_version` (`WorkerCore`).
- The others forward every request that is not ingest (status, metrics, queries, resume,
  readiness) to the first, over a Unix socket in a private directory, so every connection sees
  one worker.
- Every 100 ms each other process reports what it counted (for `/metrics`) and learns the lag
  its back-pressure gate needs.
- A process that dies is started again; one whose first process is gone exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import orjson
from aiohttp import web

from sealtrail.worker.core import WorkerCore
from sealtrail.worker.http import CORE, FORWARDED_TLS_HEADER, build_app

__all__ = ["REPORT_PATH", "IngestProcesses", "listen_socket"]

log = logging.getLogger("sealtrail.worker")

#: Where the other processes report to the first (only on its private socket).
REPORT_PATH: Final = "/internal/v1/ingest-report"

_RESTART_DELAY_SECONDS: Final = 1.0
#: How long the first process waits for an ingest process to listen before it says it is ready.
LISTENING_TIMEOUT_SECONDS: Final = 60.0
#: Set at the first report of any ingest process: one is listening (it reports once it does).
_HEARD: Final = web.AppKey("heard", asyncio.Event)

#: What binding `::` fails with where the kernel has no IPv6 (module absent, or disabled).
_NO_IPV6: Final = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


def listen_socket(listen: str, *, shared: bool) -> socket.socket:
    """Bind and listen on `host:port`; `shared`: alongside the other ingest processes.

    `[::]:port` is every address: IPv6 and, on a dual-stack kernel, IPv4 too (an IPv6-only or
    dual-stack pod's address, and 127.0.0.1, on one socket); on a kernel without IPv6 it falls
    back to `0.0.0.0`. Another `[address]:port` binds that IPv6 address; `0.0.0.0:port` and
    `127.0.0.1:port` stay IPv4.
    """
    host, port = listen.rsplit(":", 1)
    address = host.removeprefix("[").removesuffix("]")
    if address != "::":
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return socket.create_server((address, int(port)), family=family, backlog=1024,
                                    reuse_port=shared)
    try:
        return socket.create_server(("::", int(port)), family=socket.AF_INET6, backlog=1024,
                                    reuse_port=shared,
                                    dualstack_ipv6=socket.has_dualstack_ipv6())
    except OSError as error:
        if error.errno not in _NO_IPV6:
            raise
        log.warning("no IPv6 on this host (%s); listening on 0.0.0.0:%s", error, port)
        return socket.create_server(("0.0.0.0", int(port)), backlog=1024,  # noqa: S104
                                    reuse_port=shared)


async def _report(request: web.Request) -> web.Response:
    """Take another process's counts; answer with the lag its gate should see."""
    core = request.app[CORE]
    request.app[_HEARD].set()
    counts = orjson.loads(await request.read())
    core.ingested.inc(max(0, int(counts.get("ingested", 0))))
    core.backpressure.refused.inc(max(0, int(counts.get("backpressure_paused", 0))))
    lag = core.backpressure.update()
    return web.Response(body=orjson.dumps({"lag": lag, "ready": core.ready}),
                        content_type="application/json")


class IngestProcesses:
    """The first process's view of the others: start, restart, stop."""

    def __init__(self, config_path: Path, core: WorkerCore, count: int) -> None:
        """Prepare `count` further processes; nothing starts yet."""
        self._config_path = config_path
        self._core = core
        self._count = count
        self._children: list[subprocess.Popen[bytes] | None] = [None] * count
        self._started_at = [0.0] * count
        self._directory: Path | None = None
        self._runner: web.AppRunner | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._heard = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        """The process ids of the running others."""
        return [child.pid for child in self._children if child is not None
                and child.poll() is None]

    async def start(self) -> None:
        """Serve the private socket, then start the others and watch them."""
        self._directory = Path(tempfile.mkdtemp(prefix="sealtrail-worker-"))
        app = build_app(self._core)
        app[_HEARD] = self._heard
        app.middlewares.append(_forwarded_tls)
        app.router.add_post(REPORT_PATH, _report)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self._control_path)).start()
        for slot in range(self._count):
            self._spawn(slot)
        self._supervisor = asyncio.create_task(self._supervise(), name="ingest-processes")
        log.info("%d further ingest processes: %s", self._count,
                 ", ".join(str(pid) for pid in self.pids))

    async def listening(self) -> None:
        """Return once an ingest process listens (it has reported), or after a minute.

        The first process takes no ingest connections itself, so it must not say it is ready
        (`/readyz`, which gates the application's start in a pod) before one does.
        """
        try:
            async with asyncio.timeout(LISTENING_TIMEOUT_SECONDS):
                await self._heard.wait()
        except TimeoutError:
            log.error("no ingest process reported within %.0f s; see their log",  # noqa: TRY400 - a timeout, not a fault with a useful traceback
                      LISTENING_TIMEOUT_SECONDS)

    @property
    def _control_path(self) -> Path:
        assert self._directory is not None  # noqa: S101 - set by start()
        return self._directory / "control.sock"

    def _spawn(self, slot: int) -> None:
        self._children[slot] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "sealtrail", "worker", "--config", str(self._config_path),
             "--ingest-process", f"{os.getpid()}:{self._control_path}"],
            stdin=subprocess.DEVNULL)
        self._started_at[slot] = time.monotonic()

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for slot, child in enumerate(self._children):
                if child is None or child.poll() is None:
                    continue
                if time.monotonic() - self._started_at[slot] < _RESTART_DELAY_SECONDS:
                    continue
                log.error("ingest process %d exited with status %s; starting another",
                          child.pid, child.returncode)
                self._spawn(slot)

    async def stop(self, timeout_seconds: float) -> None:
        """SIGTERM the others (they finish what they took), SIGKILL what outlives `timeout`."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        running = [child for child in self._children if child is not None
                   and child.poll() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        for child in running:
            try:
                await asyncio.to_thread(child.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("ingest process %d did not stop in time; killing it", child.pid)  # noqa: TRY400 - a timeout, not a fault with a useful traceback
                child.kill()
                await asyncio.to_thread(child.wait)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _forwarded_tls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request the other processes forward came over HTTPS if they say so.

    Believed only here: this app listens on the private socket of the first process, which
    only its own ingest processes reach (the header from anywhere else is ignored).
    """
    if request.headers.get(FORWARDED_TLS_HEADER) == "1":
        request = request.clone(scheme="https")
    return await handler(request)

