"""All the exports of one store: build them from config, run them, report on them.

Each export is an independent `ExportLoop` task. The engine validates what a config can get
wrong before anything runs (unknown route targets, index templates that could render illegal
names), so a bad config is an error at start, not a 400 at runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from sealtrail.api.export import ExportsConfig, ExportSpec
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import Backend, TemplateError, check_backend_templates
from sealtrail.export.backends.registry import backend_class
from sealtrail.export.http import HttpClients
from sealtrail.export.loop import ExportLoop, LoopStatus
from sealtrail.export.metrics import ExportMetrics
from sealtrail.export.routing import Router

__all__ = ["ConfigError", "ExportEngine", "validate_config"]

log = logging.getLogger("sealtrail.export")


class ConfigError(ValueError):
    """The export config cannot work; the message names where."""


def validate_config(config: ExportsConfig) -> None:
    """Check what the models alone cannot: templates against each backend's naming rules."""
    for number, export in enumerate(config.exports):
        cls = backend_class(export.kind)
        templates = [(f"exports[{number}].{export.kind}", _own_template(export))]
        templates += [
            (f"routes[{index}].index", rule.index)
            for index, rule in enumerate(config.routes)
            if export.name in rule.exports and rule.index is not None
        ]
        for where, template in templates:
            try:
                check_backend_templates(cls, [template])
            except TemplateError as error:
                raise ConfigError(f"{where}: {error} (export {export.name!r})") from None


def _own_template(export: ExportSpec) -> str | None:
    if export.splunk is not None:
        return export.splunk.index
    if export.elastic is not None:
        return export.elastic.index
    if export.cloudwatch is not None:
        return export.cloudwatch.log_stream
    return None


class ExportEngine:
    """Runs one loop per export over a store."""

    def __init__(
        self,
        store: ChainStore,
        config: ExportsConfig,
        registry: CollectorRegistry,
        clients: HttpClients | None = None,
    ) -> None:
        """Validate the config and build every backend; nothing is sent until `start()`."""
        validate_config(config)
        self.store = store
        self.config = config
        self.metrics = ExportMetrics(registry)
        self.clients = clients or HttpClients()
        self.router = Router(config.routes, [export.name for export in config.exports])
        self.loops: dict[str, ExportLoop] = {
            export.name: self._loop(export) for export in config.exports
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False

    def _loop(self, export: ExportSpec) -> ExportLoop:
        backend: Backend = backend_class(export.kind)(export, self.clients)
        return ExportLoop(export, backend, self.store, self.router, self.metrics)

    def start(self) -> None:
        """Start every loop as its own task (call inside a running event loop)."""
        self._started = True
        self.metrics.last_seq.set(self.store.last_seq())
        for name, loop in self.loops.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(loop.run(), name=f"export-{name}")

    def notify(self, last_seq: int | None = None) -> None:
        """New rows were stored: wake every loop."""
        if last_seq is not None:
            self.metrics.last_seq.set(last_seq)
        for loop in self.loops.values():
            loop.wake(last_seq)

    def pause(self, name: str, reason: str = "paused by request") -> None:
        """Pause one export."""
        self.loops[name].pause(reason)

    def resume(self, name: str) -> None:
        """Resume one export."""
        self.loops[name].resume("resumed by request")

    def status(self) -> list[LoopStatus]:
        """Every export's status."""
        return [loop.status() for loop in self.loops.values()]

    async def apply_config(self, config: ExportsConfig) -> list[str]:
        """Apply a new config live: start new exports, restart changed ones, stop removed ones.

        Unchanged exports keep running; every export keeps its cursor (it lives in the store).
        A changed export starts afresh, unpaused unless its spec says so: a config change is
        one of the ways out of a self-pause. Returns what changed, for the log.
        """
        validate_config(config)
        router = Router(config.routes, [export.name for export in config.exports])
        wanted = {export.name: export for export in config.exports}
        changes = []
        for name in list(self.loops):
            if name not in wanted or wanted[name] != self.loops[name].spec:
                await self._stop_loop(name)
                if name not in wanted:
                    self.metrics.forget(name)
                    changes.append(f"removed {name}")
        self.router = router
        for name, export in wanted.items():
            if name in self.loops:
                self.loops[name].router = router
                continue
            self.loops[name] = self._loop(export)
            changes.append(f"started {name}")
            if self._started:
                self._tasks[name] = asyncio.create_task(self.loops[name].run(),
                                                        name=f"export-{name}")
        self.config = config
        return changes

    async def _stop_loop(self, name: str) -> None:
        loop = self.loops.pop(name)
        loop.stop()
        task = self._tasks.pop(name, None)
        if task is not None:
            _, pending = await asyncio.wait([task], timeout=5.0)
            for stuck in pending:
                stuck.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stuck
        await loop.backend.aclose()

    async def drain(self, deadline_seconds: float, names: Iterable[str] | None = None) -> bool:
        """Deliver everything stored so far (for the CLI and tests); True if all drained."""
        wanted = list(names) if names is not None else list(self.loops)
        results = await asyncio.gather(
            *(self.loops[name].drain(deadline_seconds) for name in wanted)
        )
        return all(results)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop every loop, letting an attempt in flight finish for up to `grace_seconds`."""
        for loop in self.loops.values():
            loop.stop()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()
        for loop in self.loops.values():
            await loop.backend.aclose()
        await self.clients.aclose()
