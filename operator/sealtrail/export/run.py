"""`sealtrail export`: run the export engine over a store from the command line.

Until the worker process exists (it adds ingest, status and reload), this is how a store is
shipped: `--until-drained` delivers everything stored and exits, otherwise it runs until
SIGTERM or SIGINT and then stops after the attempt in flight (cursors are always durable).

Once started, the process settles its garbage collector as a worker does (see
`sealtrail.worker.memory`, which this layer may not import): what start-up loaded (modules,
pydantic's schemas, the config) is frozen out of the collector's sight, since it lives as long
as the process and every full collection would walk it to find nothing, and young collections
come every `YOUNG_THRESHOLD` allocations instead of 700, so that a batch's rows, which hold no
cycles, die by reference counting before the collector looks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Final

import orjson
from prometheus_client import CollectorRegistry

from sealtrail.api.configfile import ConfigFileError, load_config
from sealtrail.api.export import ExportsConfig
from sealtrail.chain.store import ChainStore
from sealtrail.export.engine import ConfigError, ExportEngine

__all__ = ["YOUNG_THRESHOLD", "run_export"]

#: Allocations (net) between young collections; CPython's default is 700.
YOUNG_THRESHOLD: Final = 20_000


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
    gc.collect()  # see the module docstring
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
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
