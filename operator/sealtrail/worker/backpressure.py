"""Back-pressure: slow, then refuse or hold, ingest while an export falls too far behind.

The lag that counts is the worst of the *unpaused* exports (a paused export waits for a person
and must not stop the log from being written). Past 80 % of the high watermark each request is
delayed by `slowdownMs`, a nudge senders feel before anything is refused; past the high
watermark ingest stops accepting (429 with Retry-After, or holds the request, by `mode`) until
the lag falls below the low watermark. An event accepted is never dropped: refusing is how the
worker avoids accepting what it could not keep up with.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from sealtrail.api.worker_config import BackpressureSpec

__all__ = ["Backpressure", "RefusedError"]


class RefusedError(Exception):
    """Ingest refuses for now; try again after `retry_after_seconds`."""

    def __init__(self, retry_after_seconds: int, lag: int) -> None:
        """Say when to come back, and how far behind exports are."""
        super().__init__(f"exports are {lag} rows behind; retry in {retry_after_seconds}s")
        self.retry_after_seconds = retry_after_seconds
        self.lag = lag


class State(enum.Enum):
    """Where ingest stands."""

    OPEN = "open"
    SLOWING = "slowing"
    CLOSED = "closed"


class Backpressure:
    """The gate every ingest request passes."""

    def __init__(self, spec: BackpressureSpec, lag: Callable[[], int],
                 registry: CollectorRegistry) -> None:
        """Watch `lag()` against the spec's watermarks."""
        self.spec = spec
        self._lag = lag
        self.state = State.OPEN
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

    def update(self) -> int:
        """Recompute the state from the lag now; return the lag."""
        lag = self._lag()
        self.lag_gauge.set(lag)
        if self.state is State.CLOSED:
            if lag <= self.spec.low_watermark_rows:
                self.state = State.OPEN
                self._opened.set()
        elif lag >= self.spec.high_watermark_rows:
            self.state = State.CLOSED
            self._opened.clear()
        else:
            self.state = (State.SLOWING if lag >= self.spec.high_watermark_rows * 0.8
                          else State.OPEN)
        return lag

    async def admit(self) -> None:
        """Let a request through, after a delay, a wait, or not at all (`RefusedError`)."""
        lag = self.update()
        if self.state is State.OPEN:
            return
        self.refused.inc()
        if self.state is State.SLOWING:
            await asyncio.sleep(self.spec.slowdown_ms / 1000)
            return
        if self.spec.mode == "reject":
            raise RefusedError(self.spec.retry_after_seconds, lag)
        deadline = asyncio.get_running_loop().time() + self.spec.block_timeout_seconds
        while self.state is State.CLOSED:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise RefusedError(self.spec.retry_after_seconds, lag)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._opened.wait(), timeout=min(0.2, remaining))
            lag = self.update()

    @property
    def accepting(self) -> bool:
        """False while ingest refuses or holds requests."""
        return self.state is not State.CLOSED
