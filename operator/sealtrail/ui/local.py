"""`sealtrail ui --db FILE`: the audit UI over a store file, without a worker.

For a store copied out of a pod, or one a person keeps on their own machine: the UI reads the
file read-only. There are no tokens (whoever reaches the port sees every tenant, which is why
it listens on loopback unless told otherwise), no exports to show, and nowhere to append the
UI's own audit events (a worker's UI records them; this one writes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from sealtrail.api.worker_api import ExportReport
from sealtrail.chain.keys import PublicKey
from sealtrail.chain.query import connect, ensure_search_indexes
from sealtrail.ui.app import build_ui_app

__all__ = ["LocalBackend", "run_local"]


class LocalBackend:
    """A `UiBackend` over a store file: open, no exports, records nothing."""

    def __init__(self, path: Path, keys: Sequence[PublicKey] = (), *,
                 index: bool = False) -> None:
        """Read `path`; check checkpoint signatures with `keys` (none: not checked).

        `index`: add the search indexes to the file on first use (`--index`; they change no
        row, but they are a write, which a person looking at evidence may not want).
        """
        self._path = path
        self._keys = list(keys)
        self._index = index
        db = connect(path)
        try:
            found = db.execute("SELECT value FROM audit_meta WHERE key = 'store_id'").fetchone()
        finally:
            db.close()
        self._store_id: str | None = None if found is None else str(found[0])

    @property
    def store_path(self) -> Path:
        """The store file."""
        return self._path

    @property
    def store_id(self) -> str | None:
        """The store's id."""
        return self._store_id

    @property
    def open(self) -> bool:
        """Always: a local file has no tokens (see the module docstring)."""
        return True

    def token_tenants(self) -> Sequence[tuple[str, list[str]]]:
        """None."""
        return []

    def exports(self) -> Sequence[ExportReport]:
        """None: a file has no exports running."""
        return []

    def resume(self, name: str) -> bool:
        """Nothing to resume."""
        del name
        return False

    def public_keys(self) -> Sequence[PublicKey]:
        """The keys given with `--pubkey`."""
        return self._keys

    def add_search_indexes(self) -> None:
        """Only with `--index` (see `__init__`)."""
        if self._index:
            ensure_search_indexes(self._path)

    async def record(self, event_type: str, severity: str, action: str, identity: str,
                     extra: dict[str, str]) -> None:
        """Nothing: the file is only read."""
        del event_type, severity, action, identity, extra


async def _serve(backend: LocalBackend, host: str, port: int) -> None:
    root = web.Application()
    root.add_subapp("/ui", build_ui_app(backend))

    async def home(_: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": "/ui/events"})

    root.router.add_get("/", home)
    runner = web.AppRunner(root, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"sealtrail ui: http://{host}:{port}/ui/ (Ctrl-C stops)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_local(path: Path, listen: str, keys: Sequence[PublicKey] = (), *,
              index: bool = False) -> int:
    """Serve the UI for the store at `path` on `listen` (host:port) until stopped."""
    host, _, port = listen.rpartition(":")
    asyncio.run(_serve(LocalBackend(path, keys, index=index), host.strip("[]") or "127.0.0.1",
                       int(port)))
    return 0
