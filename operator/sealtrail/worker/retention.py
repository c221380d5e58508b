"""Retention in the worker: prune what every export has delivered, once it is old enough.

The store decides where a chain may be cut (`ChainStore.prune`: only below a signed
checkpoint, so what stays is still provable). The worker says what "delivered" means: the
smallest cursor over every export it is configured with, paused ones included, since a paused
export's backlog is not delivered. With no export configured nothing is delivered anywhere, so
nothing is pruned. An export added later starts from the oldest row still kept: rows pruned
before it existed can only be had from the SIEMs that received them.

After every round the store is measured again (`measure`: the byte budget's gauges,
`sealtrail_audit_store_used_bytes`), whether or not retention is on, so they show at once what
pruning did to the files, and ingest the byte gate closed opens again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from sealtrail.api.worker_config import RetentionSpec
from sealtrail.chain.store import ChainStore, PruneResult

__all__ = ["Retention"]

log = logging.getLogger("sealtrail.worker")

#: How often the store's size is measured when retention is off.
MEASURE_SECONDS = 30.0


class Retention:
    """Prunes a store on a timer, and keeps its size on the worker's metrics."""

    def __init__(self, store: ChainStore, spec: RetentionSpec | None,
                 registry: CollectorRegistry, measure: Callable[[], object]) -> None:
        """Set up the metric; `measure` re-measures the store (called after every round)."""
        self.store = store
        self.spec = spec
        self.measure = measure
        self.pruned_rows = Counter(
            "sealtrail_audit_store_pruned_rows",
            "Rows retention deleted from the store: delivered to every export, older than "
            "store.retention.keepSeconds, below a signed checkpoint.", registry=registry)
        #: Chains the store would not cut, and why, as last reported (logged when it changes).
        self.refused: dict[str, str] = {}

    @property
    def keep_seconds(self) -> float | None:
        """How long delivered rows are kept; None: retention is off."""
        return None if self.spec is None else self.spec.keep_seconds

    def prune_once(self, cursors: list[int], now: datetime) -> PruneResult | None:
        """Prune up to the smallest of `cursors` what is older than `keepSeconds` before `now`.

        Blocking (SQLite): run it in a thread. None when retention is off or there is no
        export to have delivered anything.
        """
        keep = self.keep_seconds
        result = None
        if keep is not None and cursors:
            result = self.store.prune(delivered_through_seq=min(cursors),
                                      older_than=now - timedelta(seconds=keep))
            self.pruned_rows.inc(result.rows)
            self._report_refused(result.refused)
            if result.rows:
                log.info("retention pruned %d rows of %d chains in %d transactions",
                         result.rows, len(result.chains), result.transactions)
        return result

    def _report_refused(self, refused: dict[str, str]) -> None:
        """Say once, loudly, that a chain cannot be pruned: its store may have been changed."""
        for tenant, why in refused.items():
            if self.refused.get(tenant) != why:
                log.error("retention keeps the chain of tenant %s whole: %s; run `sealtrail "
                          "verify` on the store", tenant, why)
        self.refused = dict(refused)

    async def run(self, cursors: Callable[[], list[int]]) -> None:
        """Prune every `everySeconds` (measure only, if retention is off), for good."""
        every = MEASURE_SECONDS if self.spec is None else self.spec.every_seconds
        while True:
            await asyncio.to_thread(self.prune_once, cursors(), datetime.now(UTC))
            self.measure()  # in the event loop: the gate it updates is the loop's
            await asyncio.sleep(every)
