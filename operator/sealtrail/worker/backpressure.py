"""Back-pressure: slow, then refuse or hold, ingest while exports fall behind or disk runs out.

Two gauges, each with its own watermarks, and ingest follows the worse of them:

- **rows**: the lag of the worst *unpaused* export (a paused export waits for a person and
  must not stop the log from being written);
- **bytes**: what the store's directory holds against its limit (`store_budget.py`): with a
  SIEM down long enough, the store fills whatever the lag, and past a volume's `sizeLimit` the
  kubelet evicts the pod, application and undelivered rows with it.

Past 80 % of a high watermark each request is delayed by `slowdownMs`, a nudge senders feel
before anything is refused; past it ingest stops accepting (429 with Retry-After, or holds the
request, by `mode`) until the gauge falls below its low watermark. An event accepted is never
dropped: refusing is how the worker avoids accepting what it could not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from sealtrail.api.worker_config import BackpressureSpec
from sealtrail.worker.store_budget import StoreBudget, StoreUsage

__all__ = ["Backpressure", "RefusedError"]


class RefusedError(Exception):
    """Ingest refuses for now; try again after `retry_after_seconds`."""

    def __init__(self, retry_after_seconds: int, lag: int, usage: StoreUsage | None = None
                 ) -> None:
        """Say when to come back, and why: how far behind exports are, or how full the store."""
        why = f"exports are {lag} rows behind"
        if usage is not None:
            why = (f"the store holds {usage.used / _MIB:.1f} MiB of the {usage.limit / _MIB:.1f} "
                   f"MiB it may use ({usage.fraction:.0%}) while exports are {lag} rows behind")
        super().__init__(f"{why}; retry in {retry_after_seconds}s")
        self.retry_after_seconds = retry_after_seconds
        self.lag = lag


class State(enum.Enum):
    """Where ingest stands."""

    OPEN = "open"
    SLOWING = "slowing"
    CLOSED = "closed"


_MIB = 1024 * 1024
#: Bytes a store may grow by per byte of request body, at most (see `_would_overflow`).
_GROWTH = 3


def _next_state(state: State, value: float, high: float, low: float) -> State:
    """One gauge's state: closed from `high` until below `low`, slowing from 80 % of `high`."""
    if state is State.CLOSED:
        return State.OPEN if value <= low else State.CLOSED
    if value >= high:
        return State.CLOSED
    return State.SLOWING if value >= high * 0.8 else State.OPEN


_RANK = {State.OPEN: 0, State.SLOWING: 1, State.CLOSED: 2}


class Backpressure:
    """The gate every ingest request passes."""

    def __init__(self, spec: BackpressureSpec, lag: Callable[[], int],
                 registry: CollectorRegistry, budget: StoreBudget | None = None) -> None:
        """Watch `lag()` and the store's bytes (`budget`) against the spec's watermarks."""
        self.spec = spec
        self._lag = lag
        self.budget = budget
        self.state = State.OPEN
        self._rows_state = State.OPEN
        self._bytes_state = State.OPEN
        self.usage: StoreUsage | None = None
        # Bytes admitted since `_sample` was measured (see `_would_overflow`).
        self._sample: StoreUsage | None = None
        self._admitted = 0
        self._opened = asyncio.Event()
        self._opened.set()
        self.refused = Counter(
            "sealtrail_audit_backpressure_paused_total",
            "Ingest requests slowed, refused or held because exports fell behind.",
            registry=registry,
        )
        self.lag_gauge = Gauge(
            "sealtrail_audit_export_lag_rows", "Rows the furthest-behind unpaused export lags.",
            registry=registry,
        )
        self.used_gauge = Gauge(
            "sealtrail_audit_store_used_bytes",
            "Bytes the store's directory holds (allocated blocks, as the kubelet counts them).",
            registry=registry,
        )
        self.limit_gauge = Gauge(
            "sealtrail_audit_store_limit_bytes",
            "Most the store's directory may hold: its budget, or less if the disk has less.",
            registry=registry,
        )
        self.refusing_for_bytes = Gauge(
            "sealtrail_audit_store_full",
            "1 while ingest refuses because the store is near its byte limit.",
            registry=registry,
        )

    def update(self) -> int:
        """Recompute the state from the lag and the store's bytes now; return the lag."""
        lag = self._lag()
        self.lag_gauge.set(lag)
        self._rows_state = _next_state(self._rows_state, lag, self.spec.high_watermark_rows,
                                       self.spec.low_watermark_rows)
        if self.budget is not None:
            usage = self._measure()
            self.used_gauge.set(usage.used)
            self.limit_gauge.set(usage.limit)
            self._bytes_state = _next_state(self._bytes_state, usage.fraction,
                                            self.spec.store_high_fraction,
                                            self.spec.store_low_fraction)
            self.refusing_for_bytes.set(1 if self._bytes_state is State.CLOSED else 0)
        self.state = max(self._rows_state, self._bytes_state, key=_RANK.__getitem__)
        if self.state is State.CLOSED:
            self._opened.clear()
        else:
            self._opened.set()
        return lag

    def _refusal(self, lag: int) -> RefusedError:
        """Why ingest refuses: the store's bytes if they are what closed it, else the lag."""
        full = self._bytes_state is State.CLOSED and self.usage is not None
        return RefusedError(self.spec.retry_after_seconds, lag, self.usage if full else None)

    async def admit(self, size_hint: int = 0) -> None:
        """Let a request through, after a delay, a wait, or not at all (`RefusedError`).

        `size_hint` is the request's body size: a request that would take the store past its
        limit is refused even while the gate is open (a 10,000-event batch can be several
        MiB, more than the gap between the watermark and a small volume's `sizeLimit`).
        """
        lag = self.update()
        if self._would_overflow(size_hint):
            self.refused.inc()
            assert self.usage is not None  # noqa: S101 - _would_overflow measured it
            raise RefusedError(self.spec.retry_after_seconds, lag, self.usage)
        if self.state is State.OPEN:
            return
        self.refused.inc()
        if self.state is State.SLOWING:
            await asyncio.sleep(self.spec.slowdown_ms / 1000)
            return
        if self.spec.mode == "reject":
            raise self._refusal(lag)
        deadline = asyncio.get_running_loop().time() + self.spec.block_timeout_seconds
        while self.state is State.CLOSED:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise self._refusal(lag)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._opened.wait(), timeout=min(0.2, remaining))
            lag = self.update()

    def check_room(self, size_hint: int) -> None:
        """Refuse (`RefusedError`) only if `size_hint` bytes could take the store past its limit.

        For rows another worker hands off at shutdown: they are not new load the watermarks
        should slow, they are rows that are lost if refused, so only the hard limit applies.
        """
        if self._would_overflow(size_hint):
            assert self.usage is not None  # noqa: S101 - _would_overflow measured it
            raise RefusedError(self.spec.retry_after_seconds, self._lag(), self.usage)

    def _would_overflow(self, size_hint: int) -> bool:
        """True if storing `size_hint` bytes of events could take the store past its limit.

        A row costs its bytes in the WAL and again in the database file once checkpointed,
        plus index entries: `_GROWTH` times the request's size is a safe upper estimate.
        """
        if self.budget is None or size_hint <= 0:
            return False
        usage = self._measure()
        growth = _GROWTH * size_hint
        if usage.used + growth >= usage.limit:
            return True
        self._admitted += growth  # until the next measurement sees it on disk
        return False

    def _measure(self) -> StoreUsage:
        """The store's usage: the latest sample plus what was admitted since it was taken."""
        assert self.budget is not None  # noqa: S101 - callers check
        sample = self.budget.usage()
        if sample is not self._sample:  # a new measurement includes what was admitted before
            self._sample, self._admitted = sample, 0
        self.usage = StoreUsage(sample.used + self._admitted, sample.limit, sample.budget)
        return self.usage

    @property
    def accepting(self) -> bool:
        """False while ingest refuses or holds requests."""
        return self.state is not State.CLOSED
