"""`sealtrail worker --config FILE`: the process that runs beside an application.

Start-up validates the whole config (every problem listed by path) before opening anything.
While running, the config file and every credential file are watched: a change (as the kubelet
makes it, by swapping a symlink) is applied live, with no restart; a bad new config is logged
and the running one kept. SIGTERM stops accepting, lets exports catch up until
`drainTimeoutSeconds`, persists cursors and exits 0; a backlog left then stays on disk (or is
handed off). In a pod the drain is cut shorter when the pod's grace, counted from its preStop
hook, would end first (worker/termination.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from sealtrail.api.configfile import ConfigFileError, load_config
from sealtrail.api.worker_api import restart_changes
from sealtrail.api.worker_config import NatsSpec, WorkerConfig
from sealtrail.export.credentials import CredentialError
from sealtrail.export.engine import ConfigError
from sealtrail.memory import settle_after_start
from sealtrail.worker.config_watch import watch_config
from sealtrail.worker.core import WorkerCore
from sealtrail.worker.http import TOKENS, build_admin_app, build_app, make_runner, tokens_of
from sealtrail.worker.ingest_process import run_ingest_process
from sealtrail.worker.ingest_tls import listening_context
from sealtrail.worker.nats_source import NatsSource
from sealtrail.worker.processes import IngestProcesses, listen_socket

__all__ = ["run_worker"]

log = logging.getLogger("sealtrail.worker")


def run_worker(config_path: Path, ingest_process: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the exit status.

    `ingest_process` (`PID:SOCKET` of the first process): run as one of the further ingest
    processes the first one starts.
    """
    if ingest_process is not None:
        return run_ingest_process(config_path, ingest_process)
    logging.basicConfig(level=os.environ.get("SEALTRAIL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config(config_path, WorkerConfig)
    return asyncio.run(_serve(config_path, config))


async def _serve(config_path: Path, config: WorkerConfig) -> int:
    try:
        core = WorkerCore(config, CollectorRegistry())
    except ConfigError as error:
        raise ConfigFileError(config_path, [str(error)]) from None
    app = build_app(core)
    ingest = _Ingest(config_path, core, app)
    await ingest.start()
    admin = await _start_admin(core, config)
    await ingest.listening()
    settle_after_start()
    core.start()
    nats = _NatsRunner(core)
    nats.start(config.nats)
    log.info("worker listening on %s%s, %d exports", config.ingest.listen,
             f" (admin on {config.admin.listen})" if config.admin.listen else "",
             len(core.engine.loops))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    started = config.model_dump(mode="json", by_alias=True)

    async def apply(new: WorkerConfig) -> str:
        nats_changed = new.nats != core.config.nats
        changes = await core.reload(new)
        app[TOKENS][:] = tokens_of(new)
        if nats_changed:  # the old consumer's last batch is committed and acked first
            await nats.stop()
            nats.start(new.nats)
            changes.append("NATS source " + ("stopped" if new.nats is None else "restarted"))
        _warn_if_waiting(started, new)
        return ", ".join(changes) or "exports unchanged"

    watcher = asyncio.create_task(watch_config(config_path, apply), name="config-watch")
    watcher.add_done_callback(_report_failure)
    await stop.wait()
    drain_seconds, why = core.termination.time_left(core.config.drain_timeout_seconds)
    deadline = loop.time() + drain_seconds
    log.info("stopping: no new requests; draining exports for up to %.1f s (%s)",
             drain_seconds, why)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await nats.stop()  # its last batch is committed and acked while the store is open
    await ingest.stop(max(1.0, deadline - loop.time()))
    drained = await core.drain_and_stop(max(0.0, deadline - loop.time()))
    await ingest.cleanup()
    if admin is not None:
        await admin.cleanup()
    log.info("stopped; %s", "every row delivered or handed off" if drained
             else "a backlog stays on disk and resumes from each cursor on the next start")
    return 0


class _Ingest:
    """Who takes ingest connections: this process alone, or `ingest.processes` others.

    With one process it does everything. With more, they take ingest and this one runs the
    exports, status, metrics and the UI, and answers what they forward (worker/processes.py).
    """

    def __init__(self, config_path: Path, core: WorkerCore, app: web.Application) -> None:
        self._config_path = config_path
        self._core = core
        self._app = app
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._others: IngestProcesses | None = None

    async def start(self) -> None:
        """Listen, or start the ingest processes."""
        config = self._core.config
        if config.ingest.processes > 1:
            self._others = IngestProcesses(self._config_path, self._core,
                                           config.ingest.processes)
            await self._others.start()
            return
        self._runner = make_runner(self._app, config)
        await self._runner.setup()
        self._site = web.SockSite(self._runner, listen_socket(config.ingest.listen, shared=False),
                                  ssl_context=listening_context(self._config_path, config))
        await self._site.start()

    async def listening(self) -> None:
        """Return once ingest is served (at once, unless other processes serve it)."""
        if self._others is not None:
            await self._others.listening()

    async def stop(self, timeout_seconds: float) -> None:
        """Take no new requests; those in flight finish (new ones on a kept connection: 503)."""
        if self._others is not None:
            await self._others.stop(timeout_seconds)
        self._core.ready = False
        if self._site is not None:
            await self._site.stop()

    async def cleanup(self) -> None:
        """Close what is left of the listener."""
        if self._runner is not None:
            await self._runner.cleanup()


async def _start_admin(core: WorkerCore, config: WorkerConfig) -> web.AppRunner | None:
    """Serve the admin listener, if the config has one; say once if it asks for no token."""
    _say_who_may_ask(core, config)
    if config.admin.listen is None:
        return None
    admin = make_runner(build_admin_app(core), config)
    await admin.setup()
    await web.SockSite(admin, listen_socket(config.admin.listen, shared=False)).start()
    return admin


def _warn_if_waiting(started: dict[str, Any], new: WorkerConfig) -> None:
    """Name what a new config changes outside `LIVE_FIELDS`: it waits for the next start."""
    waiting = restart_changes(started, new.model_dump(mode="json", by_alias=True))
    if waiting:
        log.warning("changed settings that take effect only at the next start: %s",
                    ", ".join(waiting))


def _say_who_may_ask(core: WorkerCore, config: WorkerConfig) -> None:
    """Say once, at start, if status, metrics and resume answer anyone, or nobody."""
    if core.admin_token is not None:
        try:
            core.admin_token.value()
        except CredentialError as error:  # names the file or variable, never a value
            log.error("%s: status, metrics and resume answer 503 until it can be read",  # noqa: TRY400 - no traceback wanted
                      error)
        return
    open_on = [f"the admin listener ({config.admin.listen})"] if config.admin.listen else []
    if not config.ingest.tokens:
        open_on.append(f"the ingest listener ({config.ingest.listen})")
    if open_on:
        log.warning("no admin.token: status, metrics and resume on %s answer without a token, "
                    "and credential versions are keyed with a key of this process only",
                    " and ".join(open_on))


def _report_failure(task: asyncio.Task[None]) -> None:
    """Log a background task that ended by failing, the moment it does (never silently)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("%s failed and is no longer running", task.get_name(), exc_info=error)


class _NatsRunner:
    """The NATS source of a worker, if its config has one; replaced live on a config change."""

    def __init__(self, core: WorkerCore) -> None:
        self._core = core
        self._source: NatsSource | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, spec: NatsSpec | None) -> None:
        if spec is not None:
            self._source = NatsSource(self._core, spec)
            self._task = asyncio.create_task(self._source.run(), name="nats-source")
            self._task.add_done_callback(_report_failure)

    async def stop(self) -> None:
        if self._source is not None and self._task is not None:
            self._source.stop()
            await self._task
        self._source, self._task = None, None

