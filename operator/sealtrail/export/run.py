"""`sealtrail export`: run the export engine over a store from the command line.

Until the worker process exists (it adds ingest, status and reload), this is how a store is
shipped: `--until-drained` delivers everything stored and exits, otherwise it runs until
SIGTERM or SIGINT and then stops after the attempt in flight (cursors are always durable).

Once started, the process settles its memory as a worker does (`sealtrail/memory.py`): freed
heap kept for reuse, and start-up's objects frozen out of the garbage collector's sight.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from sealtrail.api.configfile import ConfigFileError, load_config
from sealtrail.api.export import ExportsConfig
from sealtrail.chain.store import ChainStore
from sealtrail.export.engine import ConfigError, ExportEngine
from sealtrail.memory import settle_after_start

__all__ = ["run_export"]


def run_export(db: Path, config_path: Path, *, until_drained: bool,
               timeout_seconds: float) -> int:
    """Run exports; return the process exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config(config_path, ExportsConfig)
    if not db.exists():
        raise ConfigFileError(db, ["no such store"])
    with ChainStore(db) as store:
        try:
            return asyncio.run(_run(store, config, until_drained, timeout_seconds))
        except ConfigError as error:
            raise ConfigFileError(config_path, [str(error)]) from None


async def _run(store: ChainStore, config: ExportsConfig, until_drained: bool,
               timeout_seconds: float) -> int:
    engine = ExportEngine(store, config, CollectorRegistry())
    settle_after_start()  # as the worker does: sealtrail/memory.py
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    drained = True
    try:
        if until_drained:
            drained = await engine.drain(timeout_seconds)
        else:
            engine.start()
            await stop.wait()
    finally:
        await engine.stop()
    status = [asdict(item) for item in engine.status()]
    print(orjson.dumps({"drained": drained, "exports": status}).decode(), file=sys.stdout)
    return 0 if drained else 1
