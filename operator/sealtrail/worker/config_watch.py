"""Watch the worker's config file and apply a changed one, live.

The kubelet updates a mounted ConfigMap by swapping a symlink, so the file is compared by
inode, size and mtime rather than watched with inotify (which loses the swapped file). A new
config that does not load is logged and the running one kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from sealtrail.api.configfile import ConfigFileError, load_config
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.export.engine import ConfigError

__all__ = ["WATCH_SECONDS", "watch_config"]

log = logging.getLogger("sealtrail.worker")

WATCH_SECONDS = 1.0


def _identity(path: Path) -> tuple[int, int, float] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime)


async def watch_config(config_path: Path,
                       apply: Callable[[WorkerConfig], Awaitable[str]]) -> None:
    """Call `apply` with each new valid config until cancelled; log what it says it did."""
    seen = _identity(config_path)
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        current = _identity(config_path)
        if current is None or current == seen:
            continue
        seen = current
        try:
            config = load_config(config_path, WorkerConfig)
            done = await apply(config)
        except (ConfigFileError, ConfigError) as error:
            log.error("config change refused, the running config stays: %s", error)  # noqa: TRY400 - the message is the point, not a traceback
            continue
        log.info("config reloaded: %s", done)
