"""`sealtrail worker --config FILE`: the process that runs beside an application.

Start-up validates the whole config (every problem listed by path) before opening anything.
While running, the config file and every credential file are watched: a change (as the kubelet
makes it, by swapping a symlink) is applied live, with no restart; a bad new config is logged
and the running one kept. SIGTERM stops accepting, lets exports catch up until
`drainTimeoutSeconds`, persists cursors and exits 0; a backlog left then stays on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from sealtrail.api.configfile import ConfigFileError, load_config
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.export.credentials import Credential
from sealtrail.export.engine import ConfigError
from sealtrail.worker.core import WorkerCore
from sealtrail.worker.http import _TOKENS, build_app
from sealtrail.worker.nats_source import NatsSource

__all__ = ["run_worker"]

log = logging.getLogger("sealtrail.worker")

WATCH_SECONDS = 1.0


def run_worker(config_path: Path) -> int:
    """Run until SIGTERM/SIGINT; return the exit status."""
    logging.basicConfig(level=os.environ.get("SEALTRAIL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config(config_path, WorkerConfig)
    return asyncio.run(_serve(config_path, config))


def _identity(path: Path) -> tuple[int, int, float] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime)


async def _serve(config_path: Path, config: WorkerConfig) -> int:
    try:
        core = WorkerCore(config, CollectorRegistry())
    except ConfigError as error:
        raise ConfigFileError(config_path, [str(error)]) from None
    app = build_app(core)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = config.ingest.listen.rsplit(":", 1)
    site = web.TCPSite(runner, host, int(port))
    await site.start()
    core.start()
    source = NatsSource(core, config.nats) if config.nats is not None else None
    nats_task = asyncio.create_task(source.run(), name="nats-source") if source else None
    log.info("worker listening on %s, %d exports", config.ingest.listen, len(core.engine.loops))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch(config_path, core, app))
    await stop.wait()
    log.info("stopping: no new requests; draining exports for up to %ss",
             core.config.drain_timeout_seconds)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    if source is not None and nats_task is not None:
        source.stop()  # its last batch is committed and acked while the store is open
        await nats_task
    core.ready = False  # requests still in flight finish; new ones get 503
    await site.stop()
    drained = await core.drain_and_stop(core.config.drain_timeout_seconds)
    await runner.cleanup()
    log.info("stopped; %s", "every export drained" if drained
             else "a backlog stays on disk and resumes from each cursor on the next start")
    return 0


async def _watch(config_path: Path, core: WorkerCore, app: web.Application) -> None:
    """Apply config changes live. Credential files are re-read by their users on change."""
    seen = _identity(config_path)
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        current = _identity(config_path)
        if current is None or current == seen:
            continue
        seen = current
        try:
            config = load_config(config_path, WorkerConfig)
            changes = await core.reload(config)
        except (ConfigFileError, ConfigError) as error:
            log.error("config change refused, the running config stays: %s", error)  # noqa: TRY400 - the message is the point, not a traceback
            continue
        tokens = app[_TOKENS]
        tokens[:] = [(Credential(item.token), item.tenants) for item in config.ingest.tokens]
        log.info("config reloaded: %s", ", ".join(changes) or "exports unchanged")
