"""Grouping rows into requests, the adaptive interval, and retry backoff.

Batches respect both the export's settings and the backend's hard limits, and never reorder
rows. A row bigger than the backend takes alone is put in a batch of its own, so the loop can
report it as permanently refused instead of splitting around it or truncating it.

The interval is the pause between send cycles while there is less than a full batch waiting:
it widens (doubling, up to the maximum) while every cycle finds rows, so that under steady load
requests grow fuller and fewer, and when the receiver pushes back; it collapses to the base
as soon as a cycle finds the queue empty. A full batch waiting is sent at once, whatever the
interval. At the maximum under a steady trickle is normal (requests wait to fill); at the
maximum while retryable failures continue, the receiver cannot keep up.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from sealtrail.api.export import BatchSpec
from sealtrail.export.backends.base import BatchLimits

__all__ = ["AdaptiveInterval", "full_jitter_seconds", "plan_batches"]

T = TypeVar("T")


def plan_batches(
    rows: Sequence[T], size_of: Callable[[T], int], limits: BatchLimits, batch: BatchSpec
) -> list[list[T]]:
    """Split `rows`, in order, into batches within both the backend's and the export's limits."""
    max_events = min(limits.max_events, batch.max_events)
    max_bytes = min(limits.max_bytes, batch.max_bytes)
    batches: list[list[T]] = []
    current: list[T] = []
    used = 0
    for row in rows:
        size = size_of(row)
        if size > limits.max_row_bytes or size > max_bytes:
            if current:
                batches.append(current)
            batches.append([row])  # alone: the loop refuses it for good, visibly
            current, used = [], 0
            continue
        if current and (len(current) >= max_events or used + size > max_bytes):
            batches.append(current)
            current, used = [], 0
        current.append(row)
        used += size
    if current:
        batches.append(current)
    return batches


class AdaptiveInterval:
    """The pause between send cycles, in milliseconds (see the module docstring)."""

    def __init__(self, base_ms: int, max_ms: int) -> None:
        """Start at the base."""
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.current_ms = base_ms

    def widen(self) -> None:
        """Steady load or push-back: double, up to the maximum."""
        self.current_ms = min(self.max_ms, max(1, self.current_ms * 2))

    def collapse(self) -> None:
        """The queue drained: back to the base."""
        self.current_ms = self.base_ms

    @property
    def at_max(self) -> bool:
        """True when the interval cannot widen further."""
        return self.current_ms >= self.max_ms

    @property
    def seconds(self) -> float:
        """The current interval in seconds."""
        return self.current_ms / 1000.0


def full_jitter_seconds(
    attempt: int, initial_ms: int, max_ms: int, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, initial * 2**attempt)]."""
    ceiling = min(max_ms, initial_ms * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, ceiling) / 1000.0
