"""All the exports of one store: build them from config, run them, report on them.

Each export is an independent `ExportLoop` task. The engine validates what a config can get
wrong before anything runs (unknown route targets, index templates that could render illegal
names), so a bad config is an error at start, not a 400 at runtime.

A collector runs a second engine, over the rows other workers handed off to it
(`chain.handoff_store`), with the same exports. It shares the first engine's metrics (one
Prometheus registry cannot hold two collectors of one name) and labels its loops
`handoff:<export>`, so the two deliveries stay apart on every series; the store-wide
`sealtrail_audit_last_seq` stays the first engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry

from sealtrail.api.export import ExportsConfig, ExportSpec
from sealtrail.export.backends.base import Backend, TemplateError, check_backend_templates
from sealtrail.export.backends.registry import backend_class
from sealtrail.export.http import HttpClients
from sealtrail.export.loop import ExportLoop, LoopStatus, RowSource
from sealtrail.export.metrics import ExportMetrics
from sealtrail.export.routing import Router

__all__ = ["ConfigError", "ExportEngine", "validate_config"]

log = logging.getLogger("sealtrail.export")

#: How long a loop that failed unexpectedly waits before it runs again (at most).
RESTART_MAX_SECONDS: Final = 30.0


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
        store: RowSource,
        config: ExportsConfig,
        registry: CollectorRegistry,
        clients: HttpClients | None = None,
        *,
        metrics: ExportMetrics | None = None,
        label_prefix: str = "",
    ) -> None:
        """Validate the config and build every backend; nothing is sent until `start()`.

        `metrics` and `label_prefix` are for a second engine in one process (see the module
        docstring): it records on the first's metrics, its loops labelled `<prefix><name>`,
        and leaves `sealtrail_audit_last_seq` to the first.
        """
        validate_config(config)
        self.store = store
        self.config = config
        self._owns_last_seq = metrics is None
        self.metrics = metrics or ExportMetrics(registry)
        self.label_prefix = label_prefix
        self.clients = clients or HttpClients()
        self.router = Router(config.routes, [export.name for export in config.exports])
        self.loops: dict[str, ExportLoop] = {
            export.name: self._loop(export) for export in config.exports
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        #: Called whenever an export's cursor moves (the worker recomputes its lag then).
        self.on_advance: Callable[[], None] | None = None

    def _loop(self, export: ExportSpec) -> ExportLoop:
        backend: Backend = backend_class(export.kind)(export, self.clients)
        return ExportLoop(export, backend, self.store, self.router, self.metrics,
                          on_advance=self._advanced, label=self.label_prefix + export.name)

    def _advanced(self) -> None:
        if self.on_advance is not None:
            self.on_advance()

    def _run_task(self, name: str) -> asyncio.Task[None]:
        return asyncio.create_task(self._supervise(self.loops[name]),
                                   name=f"export-{self.label_prefix}{name}")

    async def _supervise(self, loop: ExportLoop) -> None:
        """Run `loop` until it stops; if it fails, say so everywhere and run it again.

        A loop is built not to raise, so this is for what nobody foresaw: one export must
        never stop for good, silently, while the lag grows behind it.
        """
        failures = 0
        while True:
            try:
                await loop.run()
            except Exception as error:  # noqa: BLE001 - logged (redacted), shown, restarted
                failures += 1
                delay = min(RESTART_MAX_SECONDS, 0.5 * 2 ** min(failures, 8))
                loop.last_error = loop.redact(
                    f"the export loop failed ({type(error).__name__}: {error}); "
                    f"restarting in {delay:g}s")
                log.error("export %s: %s", loop.label, loop.redact(  # noqa: TRY400 - redacted
                    "".join(traceback.format_exception(error)).rstrip()))
                self.metrics.restarts.labels(loop.label).inc()
                await asyncio.sleep(delay)
                if loop.stopping:
                    return
                continue
            return

    def start(self) -> None:
        """Start every loop as its own task (call inside a running event loop)."""
        self._started = True
        if self._owns_last_seq:
            self.metrics.last_seq.set(self.store.last_seq())
        for name in self.loops:
            if name not in self._tasks:
                self._tasks[name] = self._run_task(name)

    def notify(self, last_seq: int | None = None) -> None:
        """New rows were stored: wake every loop."""
        if last_seq is not None and self._owns_last_seq:
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
                    self.metrics.forget(self.label_prefix + name)
                    changes.append(f"removed {name}")
        self.router = router
        for name, export in wanted.items():
            if name in self.loops:
                self.loops[name].router = router
                continue
            self.loops[name] = self._loop(export)
            changes.append(f"started {name}")
            if self._started:
                self._tasks[name] = self._run_task(name)
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
