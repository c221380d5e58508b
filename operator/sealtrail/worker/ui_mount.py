"""The audit UI (`sealtrail.ui`) served by the worker, under `/ui` on its ingest listener.

Why here and not in http.py: the UI asks its host a few questions (`ui.backend.UiBackend`);
this module answers them from a `WorkerCore` (its tokens, exports, signing key and append
path), so that http.py only mounts it.

The UI takes the same ingest tokens as `GET /v1/events`, with the same tenants; the admin
token, which never opens audit data, does not sign in. Its own events (sign-ins, exports,
resumes) go through `WorkerCore.append`, the path every event takes: back-pressure included.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from sealtrail.api.event import SYSTEM_TENANT, Event
from sealtrail.api.worker_api import ExportReport
from sealtrail.chain.keys import PublicKey
from sealtrail.chain.query import ensure_search_indexes
from sealtrail.chain.store import StoreError
from sealtrail.export.credentials import CredentialError
from sealtrail.ui.app import build_ui_app
from sealtrail.ui.backend import NotRecordedError
from sealtrail.worker.backpressure import RefusedError
from sealtrail.worker.core import WorkerCore

__all__ = ["WorkerUiBackend", "mount_ui"]

log = logging.getLogger("sealtrail.worker")


class WorkerUiBackend:
    """A `UiBackend` over a running worker."""

    def __init__(self, core: WorkerCore) -> None:
        """Answer for `core`."""
        self.core = core

    @property
    def store_path(self) -> Path:
        """The worker's store."""
        return Path(self.core.config.store.path)

    @property
    def store_id(self) -> str | None:
        """The store's id."""
        return self.core.store.store_id

    @property
    def open(self) -> bool:
        """No ingest token configured: `GET /v1/events` asks for none, nor does the UI."""
        return not self.core.tokens

    def token_tenants(self) -> Sequence[tuple[str, list[str]]]:
        """Each ingest token as its file or variable holds it now, with its tenants."""
        found = []
        for credential, tenants in self.core.tokens:
            try:
                found.append((credential.value(), tenants))
            except CredentialError as error:  # names the file or variable, never a value
                log.error("cannot read a token: %s", error)  # noqa: TRY400 - no traceback wanted
        return found

    def exports(self) -> Sequence[ExportReport]:
        """The exports' delivery truth, as `GET /v1/status` reports it (without credentials).

        Not `core.report()`: that also reads every chain's head, a scan of the whole store
        (seconds on a million rows), and a page shows these badges on every load.
        """
        core = self.core
        now = time.time()
        reports = []
        for loop in core.engine.loops.values():
            item = asdict(loop.status())
            stored_at = (core.stored_at.oldest_after(loop.cursor)
                         if loop.cursor < core.last_seq else None)
            item.update(last_stored_seq=core.last_seq, acked_seq=loop.cursor,
                        lag_rows=max(0, core.last_seq - loop.cursor),
                        lag_seconds=0.0 if stored_at is None else round(max(0.0, now
                                                                              - stored_at), 3),
                        credential_version=None)
            reports.append(ExportReport.model_validate(item))
        return reports

    def resume(self, name: str) -> bool:
        """Resume the export `name` (as `POST /v1/exports/{name}/resume` does)."""
        if name not in self.core.engine.loops:
            return False
        self.core.engine.resume(name)
        return True

    def public_keys(self) -> Sequence[PublicKey]:
        """The signing key's public half (the key the store's checkpoints are signed with)."""
        if self.core.signing_key is None:
            return []
        return [self.core.signing_key.current().public]

    def add_search_indexes(self) -> None:
        """Add the UI's indexes to the worker's store (seconds on a large store, once)."""
        ensure_search_indexes(self.store_path)

    async def record(self, event_type: str, severity: str, action: str, identity: str,
                     extra: dict[str, str]) -> None:
        """Append the UI's event to `_system` through the worker's append path."""
        event = Event.model_validate({
            "event_type": event_type, "severity": severity, "tenant_id": SYSTEM_TENANT,
            "action": action, "identity": identity, "extra": extra})
        try:
            await self.core.append([event])
        except (RefusedError, StoreError) as error:
            log.warning("the UI could not record %s: %s", event_type, error)
            raise NotRecordedError(str(error)) from None


#: The first UI application mounted for each worker: later ones share its state.
_MOUNTED: weakref.WeakKeyDictionary[WorkerCore, web.Application] = weakref.WeakKeyDictionary()


def mount_ui(app: web.Application, core: WorkerCore) -> None:
    """Serve the audit UI under `/ui` of `app`, for `core`.

    Mounted twice when the worker has further ingest processes (the ingest listener, and the
    private socket they forward to): both share one set of sessions and verdicts.
    """
    first = _MOUNTED.get(core)
    ui = build_ui_app(WorkerUiBackend(core), same_as=first)
    if first is None:
        _MOUNTED[core] = ui
    app.add_subapp("/ui", ui)
