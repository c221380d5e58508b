"""A collector's side of handoff: take the rows sidecars could not deliver, deliver them.

A worker with `handoff.accept` keeps what arrives on `POST /v1/handoff` (the route is in
`worker.http`) in a `HandoffStore` of its own, after checking every row and every link
(`chain.handoff_store`), and runs a second `ExportEngine` over that store with the worker's
own exports and routes. The second engine shares the first one's metrics and HTTP clients;
its loops are labelled `handoff:<export>`, so a dashboard tells the collector's own deliveries
from the ones it makes for pods that are gone. Each handed-off row still names the store that
wrote it, so its dedupe key (`store_id:tenant_id:tenant_seq`) is the one the sidecar would
have sent: a row that both delivered lands once per key.
"""

from __future__ import annotations

import asyncio
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from sealtrail.api.worker_config import HandoffAcceptSpec, WorkerConfig
from sealtrail.chain.handoff_store import HandoffStore, Received, parse_rows
from sealtrail.export.credentials import Credential
from sealtrail.export.engine import ExportEngine

__all__ = ["HANDOFF_LABEL_PREFIX", "HANDOFF_PATH", "HandoffReceiver", "handoff_store_path"]

#: Where sidecars post their undelivered rows (on the ingest listener).
HANDOFF_PATH: Final = "/v1/handoff"
#: The export label of the loops that deliver handed-off rows: `handoff:<export>`.
HANDOFF_LABEL_PREFIX: Final = "handoff:"


def handoff_store_path(config: WorkerConfig, spec: HandoffAcceptSpec) -> str:
    """`handoff.accept.storePath`, or by default `<store.path>.handoff`, beside the store."""
    return spec.store_path or f"{config.store.path}.handoff"


class HandoffReceiver:
    """The handed-off rows of one collector: their store, their exports, their counts."""

    def __init__(self, config: WorkerConfig, spec: HandoffAcceptSpec,
                 registry: CollectorRegistry, primary: ExportEngine) -> None:
        """Open the store of handed-off rows and build their exports (nothing runs yet)."""
        self.spec = spec
        self.store = HandoffStore(handoff_store_path(config, spec))
        self.engine = ExportEngine(self.store, config, registry, primary.clients,
                                   metrics=primary.metrics, label_prefix=HANDOFF_LABEL_PREFIX)
        #: The credentials a sender may present (`handoff.accept.tokens`), followed as their
        #: files change.
        self.tokens = [Credential(ref) for ref in spec.tokens]
        self.received = Counter(
            "sealtrail_audit_handoff_received_rows_total",
            "Rows other workers handed off to this one, by outcome: stored, or a duplicate of "
            "a row already held (a retry).", ["outcome"], registry=registry)
        for outcome in ("stored", "duplicate"):
            self.received.labels(outcome)
        self.last_seq = Gauge(
            "sealtrail_audit_handoff_last_seq",
            "Newest handed-off row held (its arrival order, which the handoff:<export> "
            "cursors in sealtrail_audit_export_last_seq count in).", registry=registry)
        self.last_seq.set(self.store.last_seq())

    def start(self) -> None:
        """Start delivering what is held (call inside a running event loop)."""
        self.engine.start()

    async def receive(self, raw: bytes) -> Received:
        """Check and keep the rows of one request body; answerable once this returns.

        `HandoffRefusedError` when the rows are refused (nothing kept), `StoreError` when the
        store could not be written (nothing kept either).
        """
        rows = await asyncio.to_thread(parse_rows, raw, self.spec.max_rows_per_request)
        received = await asyncio.to_thread(self.store.receive, rows)
        self.received.labels("stored").inc(received.stored)
        self.received.labels("duplicate").inc(received.duplicates)
        if received.stored:
            self.last_seq.set(received.last_seq)
            self.engine.notify()
        return received

    async def reload(self, config: WorkerConfig) -> list[str]:
        """Follow a new config's exports and routes, as the worker's own engine does."""
        return [f"handoff {change}" for change in await self.engine.apply_config(config)]

    async def stop(self, grace_seconds: float) -> None:
        """Stop the exports (cursors are durable) and close the store."""
        await self.engine.stop(grace_seconds=grace_seconds)
        await asyncio.to_thread(self.store.close)
