"""What the worker is, without its HTTP face: the store, the exports, back-pressure, status.

The HTTP handlers, the NATS source and the tests all go through `WorkerCore.append`, so every
way in gets the same back-pressure and the same guarantee: a caller is told "stored" only
after the transaction holding its events has committed.

The checkpoint signing key follows its file: before the store may sign (an append, the
checkpoint timer), the store's policy is pointed at the key the file holds now.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from sealtrail.api.event import Event
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.chain.keys import ReloadingSigner
from sealtrail.chain.store import ChainStore, CheckpointPolicy, Stored
from sealtrail.export.engine import ExportEngine
from sealtrail.worker.backpressure import Backpressure

__all__ = ["FOLLOW_SECONDS", "IngestCore", "WorkerCore"]

log = logging.getLogger("sealtrail.worker")

#: How often the worker looks for rows committed by other processes.
FOLLOW_SECONDS = 0.01


class IngestCore:
    """What every ingest process has: the store, the back-pressure gate, the ingest count.

    A worker with `ingest.processes > 1` runs one `WorkerCore` (which also owns the exports)
    and plain `IngestCore`s in its other processes; their lag comes from the first.
    """

    def __init__(self, config: WorkerConfig, registry: CollectorRegistry,
                 lag: Callable[[], int]) -> None:
        """Open the store (signing checkpoints if a key is configured)."""
        self.config = config
        self.registry = registry
        policy = None
        key = config.checkpoints.signing_key
        #: The signing key, reloaded when its file changes (None: no checkpoints).
        self.signing_key: ReloadingSigner | None = None
        if key is not None and key.file is not None:
            self.signing_key = ReloadingSigner(Path(key.file))
            policy = CheckpointPolicy(self.signing_key.current(), config.checkpoints.every_rows,
                                      config.checkpoints.every_seconds)
        Path(config.store.path).parent.mkdir(parents=True, exist_ok=True)
        self.store = ChainStore(config.store.path, synchronous=config.store.synchronous,
                                default_tenant=config.store.default_tenant, checkpoints=policy)
        self.last_seq = self.store.last_seq()
        self.backpressure = Backpressure(config.ingest.backpressure, lag, registry)
        self.ingested = Counter("sealtrail_audit_ingested_events_total",
                                "Events stored through the worker.", registry=registry)
        self.ready = False
        # One request at a time validates or appends in this process. Without it, the event
        # loop validating the next request (pydantic holds the GIL throughout) starves the
        # store thread of the GIL while it holds the store's write lock, and every other
        # ingest process waits on that lock: two processes were then barely faster than one.
        # Concurrency comes from more processes, not from threads fighting over one GIL.
        self.cpu = asyncio.Lock()

    async def append(self, events: Sequence[Event]) -> list[Stored]:
        """Pass back-pressure, store the batch in one transaction, say so."""
        await self.backpressure.admit()
        async with self.cpu:
            self.follow_signing_key()
            stored = await asyncio.to_thread(self.store.append, list(events))
        if stored:
            self.last_seq = max(self.last_seq, stored[-1].seq)
            self.ingested.inc(len(stored))
            self.appended(self.last_seq)
        return stored

    def appended(self, last_seq: int) -> None:
        """Rows up to `last_seq` were just committed here (a hook for the exports)."""

    def follow_signing_key(self) -> None:
        """Have the store sign its next checkpoints with the key file's current key.

        `ReloadingSigner.current` costs a clock read, and a `stat` at most once a second.
        """
        policy = self.store.checkpoint_policy
        if self.signing_key is None or policy is None:
            return
        signer = self.signing_key.current()
        if signer is not policy.signer:
            self.store.checkpoint_policy = dataclasses.replace(policy, signer=signer)


class WorkerCore(IngestCore):
    """One worker: a store, its export engine, and the gate in front of it."""

    def __init__(self, config: WorkerConfig, registry: CollectorRegistry) -> None:
        """Open the store and build the exports (nothing runs until `start`)."""
        super().__init__(config, registry, self.lag)
        self.engine = ExportEngine(self.store, config, registry)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the exports, the checkpoint timer, and the watch for other writers."""
        self.engine.start()
        if self.store.checkpoint_policy is not None:
            self._tasks.append(asyncio.create_task(self._checkpoints(), name="checkpoint-timer"))
        self._tasks.append(asyncio.create_task(self._follow_store(), name="store-follower"))
        self.ready = True

    async def _follow_store(self) -> None:
        """Notice rows other processes commit (ingest processes, `sealtrail append`).

        `PRAGMA data_version` changes on any other connection's commit and costs next to
        nothing, so polling it every few milliseconds keeps exports and lag current without
        any message passing between processes.
        """
        version = await asyncio.to_thread(self.store.data_version)
        while True:
            await asyncio.sleep(FOLLOW_SECONDS)
            current = await asyncio.to_thread(self.store.data_version)
            if current == version:
                continue
            version = current
            last = await asyncio.to_thread(self.store.last_seq)
            if last > self.last_seq:
                self.last_seq = last
                self.engine.notify(last)

    async def _checkpoints(self) -> None:
        policy = self.store.checkpoint_policy
        assert policy is not None  # noqa: S101 - only started with a policy
        every = min(policy.every_seconds or 5.0, 5.0)
        while True:
            await asyncio.sleep(every)
            self.follow_signing_key()
            made = await asyncio.to_thread(self.store.emit_due_checkpoints)
            if made:
                self.last_seq = await asyncio.to_thread(self.store.last_seq)
                self.engine.notify(self.last_seq)

    async def drain_and_stop(self, timeout_seconds: float) -> bool:
        """Stop taking work, let exports catch up until the deadline, stop. True if drained.

        What is left at the deadline stays in the store, and each export resumes after its
        durable cursor on the next start: a backlog is delayed, never lost.
        """
        self.ready = False
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # The running loops deliver; wake them so none waits out its interval, and watch
        # every unpaused cursor reach the last stored row.
        target = await asyncio.to_thread(self.store.last_seq)
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        while True:
            behind = [loop for loop in self.engine.loops.values()
                      if not loop.paused and loop.cursor < target]
            if not behind or asyncio.get_running_loop().time() >= deadline:
                break
            self.engine.notify()
            await asyncio.sleep(0.05)
        await self.engine.stop(grace_seconds=5.0)
        self.store.close()
        return not behind

    # -- ingest --------------------------------------------------------------------------

    def lag(self) -> int:
        """Rows the furthest-behind unpaused export has yet to deliver."""
        cursors = [loop.cursor for loop in self.engine.loops.values() if not loop.paused]
        return max((self.last_seq - cursor for cursor in cursors), default=0)

    def appended(self, last_seq: int) -> None:
        """Wake the exports: there is more to send."""
        self.engine.notify(last_seq)

    async def reload(self, config: WorkerConfig) -> list[str]:
        """Apply a new config's exports and routes live (store settings need a restart)."""
        changes = await self.engine.apply_config(config)
        self.backpressure.spec = config.ingest.backpressure
        self.config = config
        return changes

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Delivery truth per export and chain state per tenant (never a secret)."""
        now = datetime.now(UTC)
        exports = []
        for loop in self.engine.loops.values():
            item = asdict(loop.status())
            pending = self.store.export_rows(loop.cursor, 1)
            lag_seconds = 0.0
            if pending:
                with contextlib.suppress(ValueError):
                    lag_seconds = max(0.0, (now - datetime.fromisoformat(pending[0].timestamp))
                                      .total_seconds())
            item.update(last_stored_seq=self.last_seq, acked_seq=loop.cursor,
                        lag_rows=self.last_seq - loop.cursor, lag_seconds=round(lag_seconds, 3))
            exports.append(item)
        checkpoints = {cp.tenant_id: cp for cp in self.store.latest_checkpoints()}
        tenants = []
        for head in self.store.heads():
            checkpoint = checkpoints.get(head.tenant_id)
            tenants.append({
                "tenant_id": head.tenant_id, "head_tenant_seq": head.tenant_seq,
                "head_hash": head.record_hash,
                "last_checkpoint": None if checkpoint is None else {
                    "tenant_seq": checkpoint.tenant_seq, "signed_at": checkpoint.signed_at,
                    "key_id": checkpoint.key_id},
            })
        return {
            "store_id": self.store.store_id,
            "last_seq": self.last_seq,
            "ready": self.ready,
            "backpressure": {"state": self.backpressure.state.value, "lag_rows": self.lag()},
            "exports": exports,
            "tenants": tenants,
        }
