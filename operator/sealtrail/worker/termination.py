"""How long the worker may drain when it is told to stop: the time its pod actually has left.

The kubelet counts a pod's grace period from the moment it starts stopping the pod, for every
container at once. A native sidecar gets its SIGTERM only after the application's containers
have exited, so what it has left is the grace minus however long the application took: a
fixed `drainTimeoutSeconds` counted from SIGTERM would run past the SIGKILL whenever the
application is slow, and the worker would die mid-drain, before it could hand rows off.

The kubelet runs every container's preStop hook at the start, the sidecar's included (before it
waits for its turn). The operator gives the worker an `httpGet` preStop hook to
`/v1/lifecycle/pre-stop?grace=N`, N being the pod's grace as injected: that call is the start
of the clock. On SIGTERM the drain then takes `drainTimeoutSeconds`, or less if that would run
past `SAFETY_SECONDS` before the pod's grace runs out: never killed mid-drain, and never longer
than configured (a pod whose SIEM is down still goes away in the time it always did). Without
the call (a worker run outside Kubernetes, or a pod injected before this existed) it is
`drainTimeoutSeconds` from SIGTERM, as before.

The hook cannot carry the admin token (a pod spec holds no secret values), so the call is not
authenticated. What a stray call can do is bounded: the clock is believed only if SIGTERM
comes within the grace it named, so at worst a caller shortens one drain (what is left is then
handed off, not lost), and a NetworkPolicy keeps strangers off the admin port anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_GRACE_SECONDS", "SAFETY_SECONDS", "TerminationClock"]

#: Ended this long before the pod's grace runs out: the worker still has to persist cursors,
#: close the store and exit, and the kubelet's clock started a little before ours.
SAFETY_SECONDS: Final = 2.0
#: The largest grace the hook may name (a day; the API server allows more, nobody needs it).
MAX_GRACE_SECONDS: Final = 86_400


class TerminationClock:
    """When the pod began stopping, and how long it was given."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Nothing has begun yet."""
        self._clock = clock
        self.began: float | None = None
        self.grace_seconds: float | None = None

    def begin(self, grace_seconds: float) -> bool:
        """The preStop hook ran: the pod has `grace_seconds` from now. False if already begun.

        The first call counts: the kubelet calls the hook once, and a repeated call must not
        move the start later (which would promise more time than there is).
        """
        if self.began is not None:
            return False
        self.began = self._clock()
        self.grace_seconds = grace_seconds
        return True

    def time_left(self, fallback_seconds: float) -> tuple[float, str]:
        """Seconds the drain may take from now, and how that was decided (for the log)."""
        if self.began is None or self.grace_seconds is None:
            return fallback_seconds, (f"drainTimeoutSeconds ({fallback_seconds:g} s; no preStop "
                                      "call said when the pod began stopping)")
        elapsed = self._clock() - self.began
        if elapsed >= self.grace_seconds:
            return fallback_seconds, (f"drainTimeoutSeconds ({fallback_seconds:g} s): the "
                                      f"preStop call {elapsed:.0f} s ago named a grace of "
                                      f"{self.grace_seconds:g} s, already over, so it was not "
                                      "this termination's")
        left = max(0.0, self.grace_seconds - elapsed - SAFETY_SECONDS)
        if left >= fallback_seconds:
            return fallback_seconds, (f"drainTimeoutSeconds; the pod's grace of "
                                      f"{self.grace_seconds:g} s from {elapsed:.1f} s ago "
                                      "leaves more")
        return left, (f"what the pod's grace leaves: {self.grace_seconds:g} s from "
                      f"{elapsed:.1f} s ago, less {SAFETY_SECONDS:g} s to exit, is less than "
                      f"drainTimeoutSeconds ({fallback_seconds:g} s)")
