"""One export's loop: read after the cursor, route, batch, send, classify, advance.

Each export runs its own loop (its own task, cursor, backoff and pause state), so one SIEM that
is down or refusing rows never holds up another. The guarantees:

- **In order, at least once.** Rows are read in global `seq` order and sent in that order. The
  cursor moves only after the backend's definite success, in one store transaction, and only
  over a contiguous run of delivered rows; a restart resumes after it and may send again what
  was in flight, which every backend marks with the same dedupe key.
- **Nothing skipped.** A row the SIEM refuses for good is recorded (metric, log, status) and
  retried; after `pauseAfterFailures` consecutive permanent failures the export pauses with the
  reason. It resumes on `resume()`, a config change (a new loop), or a changed credential.
- **Back-pressure, not loss.** The backlog stays in the store; the loop holds one batch.
- **A failed cursor write is not the end.** When the store cannot record a delivery (a full
  disk), the loop says so (status `lastError`, a metric, the log) and tries again with backoff
  until it can; the rows are resent at worst, never skipped.
- **No credential leaves through a peer's words.** Every reason a backend gives passes
  `credentials.redact` with the backend's credential values before status or a log holds it,
  whatever a proxy or SIEM echoed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

from sealtrail.api.export import ExportSpec
from sealtrail.chain.store import StoredRow
from sealtrail.export.backends.base import Backend, ExportRow, render_template
from sealtrail.export.batching import AdaptiveInterval, full_jitter_seconds, plan_batches
from sealtrail.export.credentials import CredentialError, redact
from sealtrail.export.metrics import ExportMetrics
from sealtrail.export.outcome import Outcome, OutcomeKind
from sealtrail.export.routing import Router

__all__ = ["ExportLoop", "LoopStatus", "RowSource"]

log = logging.getLogger("sealtrail.export")

#: How many rows one read takes from the store, in multiples of a batch. With the read-ahead
#: this bounds the rows an export holds in memory to about four batches, whatever the backlog.
READ_BATCHES: Final = 2
#: While paused, how often to look whether the credential changed (which resumes).
PAUSED_POLL_SECONDS: Final = 1.0
#: Where rows go, kept per (tenant, event type, severity) up to this many; then afresh.
_PLACEMENTS_LIMIT: Final = 4096

#: A row's place in this export: its rendered destination and its route's sourcetype; None
#: when its route does not lead here.
_Placement = tuple[str | None, str | None] | None


class RowSource(Protocol):
    """What an export reads rows from and records its deliveries in.

    A worker's `ChainStore` is one; a collector's `HandoffStore` (rows other workers handed
    off at shutdown, each still naming the store that wrote it) is the other. `seq` of the
    rows it gives is its own order, which the cursors count in.
    """

    def cursor(self, export_name: str) -> int:
        """The seq up to which `export_name` has delivered (0 if it never has)."""

    def set_cursor(self, export_name: str, last_seq: int) -> None:
        """Record delivery up to `last_seq`, durably; a cursor never moves backwards."""

    def export_rows(self, after_seq: int, limit: int) -> list[StoredRow]:
        """Up to `limit` rows after `after_seq`, in seq order."""

    def last_seq(self) -> int:
        """The seq of the newest row (0 when empty)."""


@dataclass(frozen=True, slots=True)
class LoopStatus:
    """A snapshot of one export, for status APIs and tests."""

    name: str
    kind: str
    cursor: int
    paused: bool
    pause_reason: str | None
    last_error: str | None
    consecutive_failures: int
    interval_ms: int
    interval_at_max: bool
    credential_version: str | None
    delivered_rows: int
    rejected_row: str | None  # dedupe key ("store:tenant:tenant_seq") of the last row refused


class ExportLoop:
    """The loop of one export over one store."""

    def __init__(
        self,
        spec: ExportSpec,
        backend: Backend,
        store: RowSource,
        router: Router,
        metrics: ExportMetrics,
        *,
        rng: random.Random | None = None,
        on_advance: Callable[[], None] | None = None,
        label: str | None = None,
    ) -> None:
        """Set up; nothing runs until `run()`. `on_advance` is called when the cursor moves.

        `label` names the loop in metrics and logs (default: the export's name); a second
        engine over other rows, sharing the metrics, gives its loops labels of their own.
        """
        self.spec = spec
        self.name = spec.name
        self.label = label or spec.name
        self.backend = backend
        self.store = store
        self.router = router
        self.metrics = metrics
        self.cursor = store.cursor(spec.name)
        self.interval = AdaptiveInterval(spec.batch.interval_ms, spec.batch.max_interval_ms)
        self.paused = spec.paused
        self.pause_reason: str | None = "paused in the export's spec" if spec.paused else None
        self.last_error: str | None = None
        self.failures = 0
        self.delivered_rows = 0
        self.rejected_row: str | None = None
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        # What may cut a wait short, by what the loop waits for (see `_sleep`).
        self._rows = asyncio.Event()  # any new row: ends an idle wait
        self._full = asyncio.Event()  # a full batch waiting: ends the interval under load
        self._interrupt = asyncio.Event()  # stop, resume, drain: ends any wait
        self._stored = 0  # the newest seq the loop was told of
        self._stopping = False
        self._deadline: float | None = None  # of a drain in progress
        self._paused_credential: str | None = None
        self._self_paused = False
        self._default_destination = backend.default_destination()
        self._on_advance = on_advance
        self._cursor_failures = 0  # consecutive failed cursor writes
        # Route and rendered destination by (tenant, type, severity), for `self._placed_by`.
        self._placements: dict[tuple[str, str, str], _Placement] = {}
        self._placed_by: Router | None = None
        metrics.export_last_seq.labels(self.label).set(self.cursor)
        metrics.interval.labels(self.label).set(self.interval.current_ms)
        metrics.interval_max.labels(self.label).set(self.interval.max_ms)
        metrics.paused.labels(self.label).set(1 if self.paused else 0)

    # -- control -------------------------------------------------------------------------

    def wake(self, last_seq: int | None = None) -> None:
        """New rows were stored (up to `last_seq`, if known).

        An idle loop sends at once. A loop waiting out its interval under steady load sends
        early only once a full batch waits (else requests would never grow fuller), and a
        retry backoff or a receiver's Retry-After is never cut short by new rows.
        """
        self._rows.set()
        if last_seq is None:
            self._full.set()
            return
        self._stored = max(self._stored, last_seq)
        if self._stored - self.cursor >= self.spec.batch.max_events:
            self._full.set()

    def interrupt(self) -> None:
        """End whatever wait the loop is in (a drain, a stop, a resume)."""
        self._interrupt.set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stopping

    def stop(self) -> None:
        """Finish the current attempt and return from `run()`."""
        self._stopping = True
        self._interrupt.set()

    def pause(self, reason: str, *, self_paused: bool = False) -> None:
        """Stop sending until resumed; say why everywhere a person looks.

        Only a self-pause (after permanent failures) resumes by itself when the credential
        changes; a pause a person asked for waits for a person.
        """
        if not self.paused:
            log.warning("export %s paused: %s", self.label, reason)
        self.paused = True
        self.pause_reason = reason
        self._self_paused = self_paused
        self._paused_credential = self._credential_version()
        self.metrics.paused.labels(self.label).set(1)

    def resume(self, why: str = "resumed") -> None:
        """Start sending again, with a clean failure count."""
        if self.paused:
            log.info("export %s resumed: %s", self.label, why)
        self.paused = False
        self.pause_reason = None
        self.failures = 0
        self.metrics.paused.labels(self.label).set(0)
        self._interrupt.set()

    def status(self) -> LoopStatus:
        """What this export is doing, right now."""
        return LoopStatus(
            name=self.name,
            kind=self.spec.kind,
            cursor=self.cursor,
            paused=self.paused,
            pause_reason=self.pause_reason,
            last_error=self.last_error,
            consecutive_failures=self.failures,
            interval_ms=self.interval.current_ms,
            interval_at_max=self.interval.at_max,
            credential_version=self.backend.credential_version(),
            delivered_rows=self.delivered_rows,
            rejected_row=self.rejected_row,
        )

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`."""
        await self._pump(deadline=None)

    async def drain(self, deadline_seconds: float) -> bool:
        """Deliver until nothing is left after the cursor, or until the deadline.

        For the CLI, tests and graceful shutdown; True if everything was delivered.
        """
        return await self._pump(deadline=time.monotonic() + deadline_seconds)

    async def _pump(self, deadline: float | None) -> bool:  # noqa: C901, PLR0912 - one loop, read top to bottom
        """The loop proper. With a deadline, returns when drained (True) or out of time.

        While a backlog lasts, the next rows are read from the store in a thread while the
        current ones are being sent, so that disk and network waits overlap.
        """
        limit = min(self.backend.limits.max_events, self.spec.batch.max_events) * READ_BATCHES
        ahead: asyncio.Task[list[StoredRow]] | None = None
        self._deadline = deadline
        try:
            while not self._stopping:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if self.paused:
                    if deadline is not None:
                        return False
                    await self._wait_while_paused()
                    continue
                if ahead is not None:
                    rows, ahead = await ahead, None
                else:
                    rows = await self._read(self.cursor, limit)
                if not rows:
                    if deadline is not None:
                        return True
                    self._set_interval(collapse=True)
                    await self._sleep(self.interval.seconds, self._rows)
                    continue
                backlog = len(rows) == limit
                if backlog:
                    ahead = asyncio.create_task(self._read(rows[-1].seq, limit))
                if not await self._ship(rows):
                    if ahead is not None:  # stale now: resume from the cursor
                        ahead.cancel()
                        ahead = None
                    continue
                # The queue was not empty: steady load widens the interval (fuller requests
                # when the next cycle waits); a backlog is sent on at once, whatever it says.
                self._set_interval(collapse=False)
                if not backlog and deadline is None:
                    await self._sleep(self.interval.seconds, self._full)
            return False
        finally:
            self._deadline = None
            if ahead is not None:
                ahead.cancel()

    async def _read(self, after_seq: int, limit: int) -> list[StoredRow]:
        return await asyncio.to_thread(self.store.export_rows, after_seq, limit)

    async def _ship(self, rows: Sequence[StoredRow]) -> bool:
        """Send what of `rows` is routed here; True once every row is done."""
        routed = self._export_rows(rows)
        for batch in plan_batches(routed, self.backend.row_size, self.backend.limits,
                                  self.spec.batch):
            if not await self._deliver(batch):
                return False
        await self._advance(rows[-1].seq)  # rows routed elsewhere are done for this export
        return True

    def _export_rows(self, rows: Sequence[StoredRow]) -> list[ExportRow]:
        """The rows routed here, with their destinations, in order.

        Routing and rendering depend only on (tenant, type, severity), which a backlog repeats
        endlessly, so each is decided once per router (`_placement`) and then looked up.
        """
        if self._placed_by is not self.router:  # a new config: decide afresh
            self._placements.clear()
            self._placed_by = self.router
        placements = self._placements
        routed: list[ExportRow] = []
        for row in rows:
            key = (row.tenant_id, row.event_type, row.severity)
            try:
                placement = placements[key]
            except KeyError:
                if len(placements) >= _PLACEMENTS_LIMIT:
                    placements.clear()
                placement = placements[key] = self._placement(*key)
            if placement is not None:
                routed.append(ExportRow(row.seq, row.tenant_id, row.tenant_seq,
                                        row.record_hash, row.event_type, row.severity,
                                        row.timestamp, row.body, placement[0], placement[1],
                                        row.store_id, row.row_seq))
        return routed

    def _placement(self, tenant: str, event_type: str, severity: str) -> _Placement:
        """Where this export sends a row with these attributes (None: it does not)."""
        route = self.router.route_for(self.name, tenant, event_type, severity)
        if route is None:
            return None
        template = route.index or self._default_destination
        rule = self.backend.destination_rule
        destination = (
            render_template(template, tenant, event_type, rule)
            if template is not None and rule is not None
            else template
        )
        return destination, route.sourcetype

    async def _deliver(self, batch: list[ExportRow]) -> bool:
        """Send one batch until every row is delivered; False if paused or stopped first."""
        done: set[int] = set()  # indices into `batch`
        window = len(batch)  # shrinks when the SIEM says a request is too large
        attempt = 0
        auth_retried = False
        while len(done) < len(batch):
            if self._stopping or self.paused or self._past_deadline():
                return False
            pending = [index for index in range(len(batch)) if index not in done][:window]
            rows = [batch[index] for index in pending]
            outcome = await self._attempt(rows)
            delivered = set(range(len(rows))) if outcome.ok else set(outcome.delivered)
            done.update(pending[index] for index in delivered)
            await self._advance_prefix(batch, done)
            if delivered:
                self.delivered_rows += len(delivered)
                self.metrics.events.labels(self.label).inc(len(delivered))
                self.metrics.bytes.labels(self.label).inc(
                    sum(len(rows[index].body) for index in delivered))
            if outcome.ok:
                self.failures = 0
                self.last_error = None
                attempt = 0
                auth_retried = False
                continue
            self.last_error = outcome.reason
            if outcome.kind is OutcomeKind.AUTH and not auth_retried:
                auth_retried = True
                self._refresh_credentials()
                continue  # once, at once, with what the file says now
            if outcome.kind is OutcomeKind.RETRYABLE:
                self.metrics.failures.labels(self.label, "true").inc()
                self._set_interval(collapse=False)
                delay = outcome.retry_after_seconds
                if delay is None:
                    delay = full_jitter_seconds(attempt, self.spec.retry.initial_backoff_ms,
                                                self.spec.retry.max_backoff_ms, self._rng)
                attempt += 1
                log.info("export %s: %s; retrying in %.2fs", self.label, outcome.reason, delay)
                await self._sleep(delay)
                continue
            # PERMANENT, or AUTH a second time
            if outcome.too_large and len(rows) > 1:
                window = max(1, len(rows) // 2)
                continue  # split, not a failure yet
            if self._permanent(outcome, rows):
                return False  # paused
            await self._sleep(full_jitter_seconds(attempt, self.spec.retry.initial_backoff_ms,
                                                  self.spec.retry.max_backoff_ms, self._rng))
            attempt += 1
        return True

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    async def _attempt(self, rows: list[ExportRow]) -> Outcome:
        if len(rows) == 1 and self.backend.row_size(rows[0]) > self.backend.limits.max_row_bytes:
            return Outcome(
                OutcomeKind.PERMANENT,
                f"row of {len(rows[0].body)} bytes is over the backend's limit of "
                f"{self.backend.limits.max_row_bytes} per row; it is never truncated",
                rejected_index=0,
            )
        started = time.perf_counter()
        try:
            outcome = await self.backend.send(rows)
        except CredentialError as error:
            outcome = Outcome(OutcomeKind.AUTH, str(error))
        except Exception as error:  # noqa: BLE001 - logged with its traceback, redacted
            log.error("export %s: the %s backend raised: %s",  # noqa: TRY400 - redacted
                      self.label, self.spec.kind,
                      self.redact("".join(traceback.format_exception(error))).rstrip())
            outcome = Outcome(OutcomeKind.RETRYABLE,
                              f"unexpected {type(error).__name__} in the {self.spec.kind} backend")
        self.metrics.request_seconds.labels(self.label).observe(time.perf_counter() - started)
        self.metrics.outcomes.labels(self.label, outcome.kind.value).inc()
        if outcome.reason:
            outcome = replace(outcome, reason=self.redact(outcome.reason))
        return outcome

    def redact(self, text: str) -> str:
        """`text` without any spelling of this export's credentials (see `credentials.redact`)."""
        return redact(text, self.backend.secrets())

    def _permanent(self, outcome: Outcome, rows: list[ExportRow]) -> bool:
        """Record a permanent failure; True if it paused the export."""
        self.failures += 1
        self.metrics.failures.labels(self.label, "false").inc()
        if outcome.rejected_index is not None and outcome.rejected_index < len(rows):
            row = rows[outcome.rejected_index]
            self.rejected_row = row.dedupe_key
            self.metrics.rejected.labels(self.label).inc()
            log.error("export %s: row %s (seq %d) refused: %s", self.label, row.dedupe_key,
                      row.seq, outcome.reason)
        else:
            log.error("export %s: permanent failure: %s", self.label, outcome.reason)
        if self.failures >= self.spec.retry.pause_after_failures:
            self.pause(f"{self.failures} consecutive permanent failures; last: {outcome.reason}",
                       self_paused=True)
            return True
        return False

    def _refresh_credentials(self) -> None:
        try:
            self.backend.refresh_credentials()
        except CredentialError as error:
            self.last_error = str(error)

    # -- cursor, waiting, interval ---------------------------------------------------------

    async def _advance_prefix(self, batch: list[ExportRow], done: set[int]) -> None:
        prefix = 0
        while prefix in done:
            prefix += 1
        if prefix:
            await self._advance(batch[prefix - 1].seq)

    async def _advance(self, seq: int) -> None:
        """Record delivery up to `seq`, trying until the store takes it (or the loop stops).

        A store that cannot write (a full disk) must not end the loop: the rows were
        delivered, so the worst a lost cursor write costs is sending them again. Until the
        write succeeds, status says why (`lastError`) and the failures are counted.
        """
        while seq > self.cursor:
            try:
                await asyncio.to_thread(self.store.set_cursor, self.name, seq)
            except Exception as error:  # noqa: BLE001 - any store failure: retry, never die
                self._cursor_failures += 1
                self.metrics.cursor_write_failures.labels(self.label).inc()
                delay = full_jitter_seconds(self._cursor_failures - 1,
                                            self.spec.retry.initial_backoff_ms,
                                            self.spec.retry.max_backoff_ms, self._rng)
                self.last_error = (f"cannot record delivery up to seq {seq} in the store "
                                   f"({type(error).__name__}: {error}); retrying")
                # No traceback: a full disk would repeat one at every retry.
                log.error("export %s: %s in %.2fs",  # noqa: TRY400
                          self.label, self.last_error, delay)
                if self._stopping or self._past_deadline():
                    return  # the rows are resent after the cursor on the next run
                await self._sleep(delay)
                continue
            if self._cursor_failures:
                log.info("export %s: the store records deliveries again", self.label)
                self._cursor_failures = 0
                self.last_error = None
            self.cursor = seq
            self.metrics.export_last_seq.labels(self.label).set(seq)
            if self._on_advance is not None:
                self._on_advance()

    def _set_interval(self, *, collapse: bool) -> None:
        if collapse:
            self.interval.collapse()
        else:
            self.interval.widen()
        self.metrics.interval.labels(self.label).set(self.interval.current_ms)

    async def _sleep(self, seconds: float, also: asyncio.Event | None = None) -> None:
        """Wait `seconds`, or until interrupted, or until `also` is set (if given)."""
        if self._deadline is not None:  # a drain never waits past its deadline
            seconds = max(0.0, min(seconds, self._deadline - time.monotonic()))
        events = [self._interrupt] + ([also] if also is not None else [])
        for event in events:
            event.clear()
        if self._stopping:
            return
        # What was stored while the loop was busy counts too (the events were just cleared).
        waiting = self._stored - self.cursor
        if (also is self._rows and waiting > 0) or (
                also is self._full and waiting >= self.spec.batch.max_events):
            return
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _wait_while_paused(self) -> None:
        await self._sleep(PAUSED_POLL_SECONDS)
        if self.paused and self._self_paused and not self._stopping:
            current = self._credential_version(force=True)
            if current is not None and current != self._paused_credential:
                self.resume("the credential changed")

    def _credential_version(self, *, force: bool = False) -> str | None:
        if force:
            with contextlib.suppress(CredentialError):
                self.backend.refresh_credentials()
        return self.backend.credential_version()
