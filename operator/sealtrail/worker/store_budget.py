"""How much disk the store may use, and how much it uses: the byte side of back-pressure.

Why a byte budget at all: in a pod the store lives on an `emptyDir` with a `sizeLimit`, and
the kubelet evicts the *whole pod* the moment the volume is over it, with no grace, taking the
application down and the undelivered rows with the volume. Counting rows cannot prevent that
(rows differ in size, the WAL grows while a reader holds a snapshot), so the worker measures
the bytes its store's directory really holds, the way the kubelet does (allocated blocks, as
`du` counts them), and ingest slows and then refuses well before the limit.

The limit is the smaller of the budget the operator rendered (`store.budgetBytes`, the
volume's `sizeLimit`) and what the filesystem can still give (used + free - a reserve): a store
on a node's disk must not fill it either, budget or not.

Measuring is a `scandir` of one directory plus a `statvfs`: cheap, but not free, so a sample
is reused for `SAMPLE_SECONDS`. Between two samples a worker at full speed writes a few MiB,
far inside the gap between the refusing watermark and the limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["SAMPLE_SECONDS", "StoreBudget", "StoreUsage", "directory_bytes"]

#: How long one measurement is reused.
SAMPLE_SECONDS: Final = 0.2
#: What `st_blocks` counts in (POSIX: 512-byte units, whatever the filesystem's block size).
_BLOCK: Final = 512


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """Bytes the store's directory holds, and the most it may hold."""

    used: int
    limit: int
    budget: int | None  # the configured budget (None: only the filesystem bounds it)

    @property
    def fraction(self) -> float:
        """Used over limit (1.0 or more: at or past it)."""
        return self.used / self.limit if self.limit > 0 else 1.0


def directory_bytes(directory: Path) -> int:
    """Bytes allocated to the regular files directly in `directory`, as `du` counts them.

    Allocated blocks, not apparent sizes: SQLite's files are dense, but a sparse or
    preallocated file counts for what it takes, which is what fills a volume. Files that
    vanish while being counted (a WAL being reset) count as nothing.
    """
    total = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_blocks * _BLOCK
        except FileNotFoundError:
            continue
    return total


class StoreBudget:
    """The store directory's usage against its limit, sampled at most every `SAMPLE_SECONDS`."""

    def __init__(self, directory: Path, budget_bytes: int | None, reserve_free_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Watch `directory` against `budget_bytes`, keeping `reserve_free_bytes` free."""
        self.directory = directory
        self.budget_bytes = budget_bytes
        self.reserve_free_bytes = reserve_free_bytes
        self._clock = clock
        self._sample: StoreUsage | None = None
        self._sampled_at = 0.0

    def usage(self, *, fresh: bool = False) -> StoreUsage:
        """The latest sample, or a new one if it is older than `SAMPLE_SECONDS` (or `fresh`)."""
        now = self._clock()
        if fresh or self._sample is None or now - self._sampled_at >= SAMPLE_SECONDS:
            self._sample = self._measure()
            self._sampled_at = now
        return self._sample

    def _measure(self) -> StoreUsage:
        used = directory_bytes(self.directory)
        try:
            stats = os.statvfs(self.directory)
            free = stats.f_bavail * stats.f_frsize
        except OSError:
            free = 0
        room = max(0, used + free - self.reserve_free_bytes)
        limit = room if self.budget_bytes is None else min(self.budget_bytes, room)
        return StoreUsage(used=used, limit=limit, budget=self.budget_bytes)
