"""The operator's own metrics (`/metrics` on the probe port): what a platform team alerts on.

A pod admitted without its worker is an audit gap, so every admission is counted by outcome,
and an error in the webhook (which admits the pod all the same) is an outcome of its own.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ADMISSION_OUTCOMES", "OperatorMetrics"]

#: injected: got a worker; skipped: no policy matches, opted out, or has one already;
#: refused: a policy matches but the worker could not be added (the warning says why);
#: not_ready: answered before this replica knew the cluster; error: a bug, admitted anyway.
ADMISSION_OUTCOMES: Final = ("injected", "skipped", "refused", "not_ready", "error")


class OperatorMetrics:
    """One set per operator process, on its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register every series (outcomes at zero, so an alert has something to compare)."""
        self.registry = registry
        self.admissions = Counter(
            "sealtrail_operator_admissions", "Pod creations the webhook answered, by outcome.",
            ["outcome"], registry=registry)
        for outcome in ADMISSION_OUTCOMES:
            self.admissions.labels(outcome)
        self.leader = Gauge(
            "sealtrail_operator_leader", "1 while this replica holds the Lease and reconciles.",
            registry=registry)
        self.ready = Gauge(
            "sealtrail_operator_ready", "1 once this replica knows the cluster and can admit.",
            registry=registry)
        self.status_writes = Counter(
            "sealtrail_operator_status_writes", "Status writes to AuditExports and AuditPolicies.",
            ["kind"], registry=registry)
        self.rounds = Counter(
            "sealtrail_operator_reconcile_rounds", "Rounds of the leader's reconcile loop.",
            registry=registry)
