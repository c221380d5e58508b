"""What the worker is, without its HTTP face: the store, the exports, back-pressure, status.

The HTTP handlers, the NATS source and the tests all go through `WorkerCore.append`, so every
way in gets the same back-pressure and the same guarantee: a caller is told "stored" only
after the transaction holding its events has committed.

The checkpoint signing key follows its file: before the store may sign (an append, the
checkpoint timer), the store's policy is pointed at the key the file holds now.

Status is an `api.worker_api.WorkerStatus`. Its `credential_version`s are keyed with the admin
token (`admin.token`), which the operator also holds; a worker without one keys them with a
random key of its own, so they still show a rotation but the operator cannot match them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from sealtrail.api.event import Event
from sealtrail.api.export import CredentialRef
from sealtrail.api.worker_api import (
    BackpressureReport,
    CheckpointReport,
    ExportReport,
    TenantReport,
    WorkerStatus,
    credential_digest,
)
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.chain.ingest_keys import IngestKey, KeyConflict, KeyReplay
from sealtrail.chain.keys import KeyFileError, ReloadingSigner
from sealtrail.chain.store import ChainStore, CheckpointPolicy, Stored, StoreError, check_sizes
from sealtrail.export.credentials import Credential, CredentialError
from sealtrail.export.engine import ExportEngine
from sealtrail.export.loop import ExportLoop
from sealtrail.worker.backpressure import Backpressure
from sealtrail.worker.group_commit import GroupCommit
from sealtrail.worker.handoff import HandoffSender
from sealtrail.worker.handoff_receiver import HandoffReceiver
from sealtrail.worker.retention import Retention
from sealtrail.worker.store_budget import StoreBudget
from sealtrail.worker.termination import TerminationClock

__all__ = ["FOLLOW_SECONDS", "IngestCore", "WorkerCore", "tokens_of"]

log = logging.getLogger("sealtrail.worker")

#: How often the worker looks for rows committed by other processes.
FOLLOW_SECONDS = 0.01
#: How often back-pressure and the lag gauge are recomputed even when nothing happens.
LAG_REFRESH_SECONDS = 1.0
#: How long a background task that failed waits before it runs again (at most).
RESTART_MAX_SECONDS = 30.0
#: At most this many (seq, stored-at) marks are kept for `lag_seconds` (see `StoredAt`).
STORED_AT_MARKS = 4096
#: Bytes of the random digest key of a worker without an admin token.
_OWN_KEY_BYTES: Final = 32
#: How long the exports may finish a request in flight when the drain moves on to a handoff
#: (at most; never more than a fifth of the time left): the handoff needs the rest.
HANDOFF_STOP_GRACE_SECONDS: Final = 1.0


class StoredAt:
    """When rows were stored, to the worker's knowledge: for `lag_seconds`.

    A mark `(seq, t)` says every row up to `seq` had been committed by wall-clock time `t`.
    Marks are added as the worker commits or notices rows and dropped once every export is
    past them; when there are too many (an export paused for a month), neighbours are merged
    keeping the earlier time, so the lag shown can only be too large, never too small. Rows
    stored before the worker started are marked with its start time: the store keeps no
    stored-at time per row (an event's own `timestamp` is the client's, and can be anything).
    """

    def __init__(self, last_seq: int, now: float) -> None:
        """Everything up to `last_seq` is marked as stored at `now`."""
        self._seqs: list[int] = [last_seq] if last_seq > 0 else []
        self._times: list[float] = [now] if last_seq > 0 else []

    def stored(self, last_seq: int, now: float) -> None:
        """Rows up to `last_seq` are committed by `now`."""
        if self._seqs and last_seq <= self._seqs[-1]:
            return
        self._seqs.append(last_seq)
        self._times.append(now)
        if len(self._seqs) > STORED_AT_MARKS:
            # Merge pairs: (a, ta), (b, tb) -> (b, ta): rows a+1..b are taken as stored at ta.
            self._seqs = self._seqs[1::2] if len(self._seqs) % 2 == 0 else \
                [*self._seqs[1:-1:2], self._seqs[-1]]
            self._times = self._times[0::2][: len(self._seqs)]

    def oldest_after(self, cursor: int) -> float | None:
        """When the oldest row after `cursor` was stored, or None if none is known."""
        index = bisect.bisect_right(self._seqs, cursor)
        return self._times[index] if index < len(self._seqs) else None

    def forget_through(self, cursor: int) -> None:
        """Drop marks every export is past."""
        index = bisect.bisect_right(self._seqs, cursor)
        del self._seqs[:index], self._times[:index]


def tokens_of(config: WorkerConfig) -> list[tuple[Credential, list[str]]]:
    """The ingest tokens of a config, each with the tenants it may write."""
    return [(Credential(item.token), item.tenants) for item in config.ingest.tokens]


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
        store_dir = Path(config.store.path).resolve().parent
        self.budget = StoreBudget(store_dir, config.store.budget_bytes,
                                  config.store.reserve_free_bytes)
        self.backpressure = Backpressure(config.ingest.backpressure, lag, registry, self.budget)
        self.ingested = Counter("sealtrail_audit_ingested_events_total",
                                "Events stored through the worker.", registry=registry)
        #: The ingest tokens, shared by every HTTP app of this process; a config change
        #: replaces the contents of this very list.
        self.tokens = tokens_of(config)
        self.ready = False
        #: Validated requests wait here for their transaction, shared with whatever else was
        #: ready by then (worker/group_commit.py).
        self.commits = GroupCommit(self.store)

    async def append(self, events: Sequence[Event], size_hint: int = 0) -> list[Stored]:
        """Pass back-pressure, store the batch in one transaction, say so.

        `size_hint`: the bytes the events came in (a request body), for the byte budget.
        """
        stored = await self.append_fields([event.row_fields() for event in events], size_hint)
        assert isinstance(stored, list)  # noqa: S101 - no key, so no replay or conflict
        return stored

    async def append_fields(self, rows: list[dict[str, Any]], size_hint: int = 0,
                            key: IngestKey | None = None, source_bytes: int | None = None,
                            ) -> list[Stored] | KeyReplay | KeyConflict:
        """`append` for validated row fields, under an `Idempotency-Key` if one is given.

        The rows go into the process's next group commit (worker/group_commit.py). With a key
        that another request committed first, nothing is stored and its answer (or the
        conflict) comes back instead. `source_bytes`: the size of the JSON the rows were
        decoded from (`check_sizes`).
        """
        await self.backpressure.admit(size_hint)
        check_sizes(rows, source_bytes)
        self.follow_signing_key()
        stored = await self.commits.append(rows, key) if rows else []
        if isinstance(stored, list) and stored:
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
        self.engine.on_advance = self._exports_moved
        #: Hands what the drain cannot deliver to a collector (`handoff.url`), and counts
        #: what is abandoned either way.
        self.handoff_sender = HandoffSender(config.handoff, self.store, registry)
        for name in self.engine.loops:  # each series exists at 0, so a rise shows in increase()
            self.handoff_sender.abandoned.labels(name)
        #: Rows other workers handed off to this one (`handoff.accept`), and their exports.
        self.handoff_receiver: HandoffReceiver | None = None
        if config.handoff is not None and config.handoff.accept is not None:
            self.handoff_receiver = HandoffReceiver(config, config.handoff.accept, registry,
                                                    self.engine)
        self.stored_at = StoredAt(self.last_seq, time.time())
        #: The last failure of each background task, for status (None: running fine).
        self.background_errors: dict[str, str | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: The admin credential (`admin.token`), followed as its file changes; None: no auth.
        self.admin_token: Credential | None = _credential(config.admin.token)
        #: `admin.metricsToken`: opens `/metrics` only.
        self.metrics_token: Credential | None = _credential(config.admin.metrics_token)
        self._own_key = secrets.token_bytes(_OWN_KEY_BYTES)
        #: When the pod began stopping (its preStop hook), for the drain's deadline.
        self.termination = TerminationClock()
        #: Prunes what every export delivered (`store.retention`), then re-measures the store.
        self.retention = Retention(self.store, config.store.retention, registry,
                                   self._measure_store)
        self.backpressure.update()  # the store's bytes are on the gauges from the start

    def _measure_store(self) -> None:
        """Measure the store's bytes now (after a prune) and let the gate follow."""
        self.budget.usage(fresh=True)
        self.backpressure.update()

    def digest_key(self) -> bytes:
        """What `credential_version` digests are keyed with: the admin token as it is now.

        Without one (or while it cannot be read) a random key of this process: a rotation
        still shows, but nobody else can compute or check the digests.
        """
        if self.admin_token is not None:
            try:
                return self.admin_token.value().encode("utf-8", "surrogateescape")
            except CredentialError as error:  # names the file, never a value
                log.error("cannot read the admin token: %s", error)  # noqa: TRY400 - no traceback wanted
        return self._own_key

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the exports, the checkpoint timer, and the watch for other writers."""
        self.engine.start()
        if self.handoff_receiver is not None:
            self.handoff_receiver.start()
        if self.store.checkpoint_policy is not None:
            self._background("checkpoint-timer", self._checkpoints)
        self._background("store-follower", self._follow_store)
        self._background("lag-refresh", self._refresh_lag)
        self._background("retention", self._retention)
        self.ready = True

    def _background(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        self.background_errors[name] = None
        self._tasks.append(asyncio.create_task(self._supervise(name, body), name=name))

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` for good: a failure is logged, shown in status and followed by a restart.

        Nothing the worker runs in the background may die silently (a dead checkpoint timer
        or store follower leaves status looking healthy while the promise behind it is gone).
        """
        failures = 0
        while True:
            try:
                await body()
            except Exception as error:  # logged, shown in status, restarted
                failures += 1
                delay = min(RESTART_MAX_SECONDS, 0.5 * 2 ** min(failures, 8))
                self.background_errors[name] = (
                    f"{type(error).__name__}: {error}; restarted after {delay:g}s "
                    f"({failures} failures)")
                log.exception("%s failed; restarting in %gs", name, delay)
                await asyncio.sleep(delay)
            else:
                return

    async def _retention(self) -> None:
        """Retention's timer, with what every configured export has delivered.

        Paused exports count (their backlog is not delivered); with none, nothing is.
        """
        await self.retention.run(lambda: [loop.cursor for loop in self.engine.loops.values()])

    def _exports_moved(self) -> None:
        """An export's cursor moved: the lag and back-pressure follow at once."""
        self.backpressure.update()
        self.stored_at.forget_through(self._min_cursor())

    def _min_cursor(self) -> int:
        return min((loop.cursor for loop in self.engine.loops.values()), default=self.last_seq)

    def _stored(self, last_seq: int) -> None:
        """Rows up to `last_seq` are committed (here or by another process)."""
        self.stored_at.stored(last_seq, time.time())

    async def _refresh_lag(self) -> None:
        """Recompute back-pressure and the lag gauge now and then, whatever else happens."""
        while True:
            await asyncio.sleep(LAG_REFRESH_SECONDS)
            self.backpressure.update()

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
                self._stored(last)
                self.engine.notify(last)
                self.backpressure.update()

    async def _checkpoints(self) -> None:
        """Sign what is due by time; from the start too (rows from before a restart count)."""
        policy = self.store.checkpoint_policy
        assert policy is not None  # noqa: S101 - only started with a policy
        every = min(policy.every_seconds or 5.0, 5.0)
        while True:
            self.follow_signing_key()
            made = await asyncio.to_thread(self.store.emit_due_checkpoints)
            if made:
                self.last_seq = await asyncio.to_thread(self.store.last_seq)
                self._stored(self.last_seq)
                self.engine.notify(self.last_seq)
            await asyncio.sleep(every)

    async def drain_and_stop(self, timeout_seconds: float) -> bool:
        """Stop taking work, vouch for the last rows, deliver or hand them off; stop.

        In order, all within `timeout_seconds`:

        1. Every tenant whose chain moved since its last checkpoint gets one now, signed with
           the current key, so that the last rows leave covered by a signature.
        2. The exports deliver until every unpaused one has caught up, or until no more than
           the handoff reserve is left (`worker.handoff.reserve_seconds`, recomputed as the
           backlog shrinks; no reserve without `handoff.url`).
        3. With `handoff.url`, whatever some export (paused or not) has not delivered is posted
           to the collector, and recorded as safe once it has committed it.
        4. What is left is abandoned: logged per export at ERROR and counted. It stays in the
           store and each export resumes after its durable cursor on the next start, which
           saves it only if the store outlives the pod.

        True when nothing was abandoned.
        """
        clock = asyncio.get_running_loop()
        deadline = clock.time() + timeout_seconds
        self.ready = False
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._sign_final_checkpoints()
        target = await asyncio.to_thread(self.store.last_seq)
        held = 0 if self.handoff_receiver is None else \
            await asyncio.to_thread(self.handoff_receiver.store.last_seq)
        sender = self.handoff_sender
        # The running loops deliver; wake them so none waits out its interval, and watch
        # every unpaused cursor reach the last stored row.
        while True:
            backlog = target - min((loop.cursor for loop in self.engine.loops.values()),
                                   default=target)
            reserve = sender.reserve_seconds(backlog, timeout_seconds)
            if not self._behind(target, held) or clock.time() >= deadline - reserve:
                break
            self.engine.notify()
            if self.handoff_receiver is not None:
                self.handoff_receiver.engine.notify()
            await asyncio.sleep(0.05)
        abandoned = await self._stop_receiver(held)
        if sender.configured and self._min_cursor() < target:
            await self.engine.stop(grace_seconds=max(0.0, min(
                HANDOFF_STOP_GRACE_SECONDS, (deadline - clock.time()) / 5)))
            safe = await sender.hand_off(self._min_cursor(), target, deadline)
        else:
            await self.engine.stop(grace_seconds=5.0)
            safe = await asyncio.to_thread(sender.safe_through) if sender.configured else 0
        abandoned += sender.abandon(
            {loop.label: target - max(loop.cursor, safe) for loop in self.engine.loops.values()},
            f"the store {self.store.path}")
        self.store.close()
        return abandoned == 0

    async def _sign_final_checkpoints(self) -> None:
        """Sign the head of every tenant that moved since its last checkpoint (if a key is set).

        The checkpoint timer signs by time and row count; between two of its rounds a chain's
        last rows are vouched for by nothing. At shutdown they are about to leave (delivered or
        handed off) and the store may go with the pod, so they are signed first: a SIEM can
        then tell the chain's true end from a cut one.
        """
        if self.signing_key is None:
            return
        try:
            signer = self.signing_key.current()
            made = await asyncio.to_thread(self.store.checkpoint, signer)
        except (KeyFileError, StoreError) as error:
            log.error("cannot sign the final checkpoints (%s); the last rows leave without one",  # noqa: TRY400 - no traceback wanted
                      error)
            return
        if made:
            self.last_seq = await asyncio.to_thread(self.store.last_seq)
            self._stored(self.last_seq)
            self.engine.notify(self.last_seq)
            log.info("signed final checkpoints for %d tenants (key %s)", len(made),
                     signer.key_id)

    def _behind(self, target: int, held: int) -> bool:
        """True while an unpaused export (of own or handed-off rows) has rows to deliver."""
        if any(not loop.paused and loop.cursor < target for loop in self.engine.loops.values()):
            return True
        receiver = self.handoff_receiver
        return receiver is not None and any(
            not loop.paused and loop.cursor < held for loop in receiver.engine.loops.values())

    async def _stop_receiver(self, held: int) -> int:
        """Stop delivering handed-off rows; count what is left of them (abandoned here too)."""
        receiver = self.handoff_receiver
        if receiver is None:
            return 0
        await receiver.stop(grace_seconds=5.0)
        return self.handoff_sender.abandon(
            {loop.label: held - loop.cursor for loop in receiver.engine.loops.values()},
            f"the handoff store {receiver.store.path}")

    # -- ingest --------------------------------------------------------------------------

    def lag(self) -> int:
        """Rows the furthest-behind unpaused export has yet to deliver."""
        cursors = [loop.cursor for loop in self.engine.loops.values() if not loop.paused]
        return max((self.last_seq - cursor for cursor in cursors), default=0)

    def appended(self, last_seq: int) -> None:
        """Wake the exports: there is more to send."""
        self._stored(last_seq)
        self.engine.notify(last_seq)

    async def reload(self, config: WorkerConfig) -> list[str]:
        """Apply a new config's exports and routes live (store settings need a restart)."""
        changes = await self.engine.apply_config(config)
        if self.handoff_receiver is not None:
            changes += await self.handoff_receiver.reload(config)
        self.backpressure.spec = config.ingest.backpressure
        if config.admin.token != self.config.admin.token:
            self.admin_token = _credential(config.admin.token)
            changes.append("admin token " + ("removed: the admin API is open"
                                             if config.admin.token is None else "replaced"))
        if config.admin.metrics_token != self.config.admin.metrics_token:
            self.metrics_token = _credential(config.admin.metrics_token)
            changes.append("metrics token " + ("removed" if config.admin.metrics_token is None
                                               else "replaced"))
        self.config = config
        return changes

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`report()` as the JSON document `GET /v1/status` answers."""
        return self.report().model_dump(mode="json")

    def report(self) -> WorkerStatus:
        """Delivery truth per export and chain state per tenant (never a secret)."""
        now = time.time()
        self.backpressure.update()
        usage = self.backpressure.usage
        key = self.digest_key()
        exports = [self._export_report(loop, key, now) for loop in self.engine.loops.values()]
        checkpoints = {cp.tenant_id: cp for cp in self.store.latest_checkpoints()}
        tenants = []
        for head in self.store.heads():
            checkpoint = checkpoints.get(head.tenant_id)
            tenants.append(TenantReport(
                tenant_id=head.tenant_id, head_tenant_seq=head.tenant_seq,
                head_hash=head.record_hash,
                last_checkpoint=None if checkpoint is None else CheckpointReport(
                    tenant_seq=checkpoint.tenant_seq, signed_at=checkpoint.signed_at,
                    key_id=checkpoint.key_id)))
        return WorkerStatus(
            store_id=self.store.store_id,
            last_seq=self.last_seq,
            ready=self.ready,
            backpressure=BackpressureReport(
                state=self.backpressure.state.value, lag_rows=self.lag(),
                store_used_bytes=None if usage is None else usage.used,
                store_limit_bytes=None if usage is None else usage.limit),
            background_errors={name: error for name, error in self.background_errors.items()
                               if error is not None},
            exports=exports,
            tenants=tenants,
        )

    def _export_report(self, loop: ExportLoop, key: bytes, now: float) -> ExportReport:
        item = asdict(loop.status())
        # From when the oldest undelivered row was stored, not from its own timestamp
        # (which the client set, and which may be a month old or in the future).
        stored_at = self.stored_at.oldest_after(loop.cursor) if loop.cursor < self.last_seq \
            else None
        lag_seconds = 0.0 if stored_at is None else max(0.0, now - stored_at)
        item.update(last_stored_seq=self.last_seq, acked_seq=loop.cursor,
                    lag_rows=self.last_seq - loop.cursor, lag_seconds=round(lag_seconds, 3),
                    credential_version=_keyed_version(loop, key))
        return ExportReport.model_validate(item)


def _credential(ref: CredentialRef | None) -> Credential | None:
    return None if ref is None else Credential(ref)


def _keyed_version(loop: ExportLoop, key: bytes) -> str | None:
    """The export's credential digests keyed with `key`, comma-separated.

    A backend without credential files (CloudWatch: the AWS chain) has only its own version,
    a digest of the access key id; that is keyed again, so nothing unkeyed leaves the process.
    """
    credentials = loop.backend.credentials()
    if not credentials:
        own = loop.backend.credential_version()
        return None if own is None else credential_digest(own, key)
    digests = [digest for credential in credentials if (digest := credential.digest(key))]
    return ",".join(digests) if digests else None
