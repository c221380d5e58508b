"""A further ingest process (`ingest.processes > 1`), started by the worker's first process.

It takes ingest requests on its own socket bound to the listen address (`SO_REUSEPORT`),
appends to the shared store, and forwards everything else to the first process (see
`processes.py`). It reports its counts every 100 ms and learns the lag for its back-pressure
gate in return; it follows config changes (tokens, back-pressure settings) like the first,
and exits when the first is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from sealtrail.api.configfile import load_config
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.memory import settle_after_start
from sealtrail.worker.config_watch import watch_config
from sealtrail.worker.core import IngestCore
from sealtrail.worker.http import TOKENS, build_ingest_app, make_runner, tokens_of
from sealtrail.worker.ingest_tls import listening_context
from sealtrail.worker.processes import REPORT_PATH, listen_socket

__all__ = ["run_ingest_process"]

log = logging.getLogger("sealtrail.worker")

REPORT_SECONDS: Final = 0.1

_COUNTED: Final = {
    "ingested": "sealtrail_audit_ingested_events_total",
    "backpressure_paused": "sealtrail_audit_backpressure_paused_total",
}


def run_ingest_process(config_path: Path, handover: str) -> int:
    """Serve ingest until SIGTERM; `handover` is `PID:SOCKET` of the first process.

    The first process's pid comes from it, not from `os.getppid()` at start-up: if the first
    died while this one was still importing, the parent seen then would already be another.
    """
    logging.basicConfig(level=os.environ.get("SEALTRAIL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    pid, _, control = handover.partition(":")
    config = load_config(config_path, WorkerConfig)
    return asyncio.run(_serve(config_path, config, int(pid), control))


class _Reporter:
    """Counts go up to the first process; the lag comes back."""

    def __init__(self, core: IngestCore, primary: aiohttp.ClientSession, parent: int) -> None:
        self.core = core
        self.primary = primary
        self.lag = 0
        self._sent = dict.fromkeys(_COUNTED, 0.0)
        self._parent = parent

    async def report(self) -> None:
        counts = {}
        for key, metric in _COUNTED.items():
            value = self.core.registry.get_sample_value(metric) or 0.0
            counts[key] = int(value - self._sent[key])
            self._sent[key] += counts[key]
        try:
            async with self.primary.post(f"http://worker{REPORT_PATH}",
                                         data=orjson.dumps(counts)) as answer:
                answer.raise_for_status()
                self.lag = int(orjson.loads(await answer.read())["lag"])
        except aiohttp.ClientError:
            for key, count in counts.items():  # not delivered: send again next time
                self._sent[key] -= count
            raise

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(REPORT_SECONDS)
            if os.getppid() != self._parent:
                log.error("the worker's first process is gone; this ingest process stops")
                stop.set()
                return
            with contextlib.suppress(aiohttp.ClientError):
                await self.report()


async def _serve(config_path: Path, config: WorkerConfig, parent: int, control: str) -> int:
    # No cookie jar: this session forwards every client's requests, each with the Cookie
    # header its client sent. A jar would keep the cookies the first process sets (the UI's
    # session) and send them with other clients' requests: one person's session on another's
    # request, or a signed-in browser's cookie replaced by a stale one.
    primary = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=control),
                                    timeout=aiohttp.ClientTimeout(total=60),
                                    cookie_jar=aiohttp.DummyCookieJar())
    reporter: _Reporter
    core = IngestCore(config, CollectorRegistry(), lambda: reporter.lag)
    reporter = _Reporter(core, primary, parent)
    app = build_ingest_app(core, primary)
    runner = make_runner(app, config)
    await runner.setup()
    site = web.SockSite(runner, listen_socket(config.ingest.listen, shared=True),
                        ssl_context=listening_context(config_path, config))
    await site.start()
    settle_after_start()
    core.ready = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def apply(new: WorkerConfig) -> str:
        app[TOKENS][:] = tokens_of(new)
        core.backpressure.spec = new.ingest.backpressure
        core.config = new
        return "tokens and back-pressure settings"

    tasks = [asyncio.create_task(reporter.run(stop), name="report"),
             asyncio.create_task(watch_config(config_path, apply), name="config-watch")]
    await stop.wait()
    core.ready = False  # requests in flight finish; the others' sockets take new ones
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await site.stop()
    await runner.cleanup()
    with contextlib.suppress(aiohttp.ClientError):
        await reporter.report()  # the last counts
    await primary.close()
    core.store.close()
    return 0
