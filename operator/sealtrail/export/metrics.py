"""Prometheus metrics of the export side, on a registry the caller passes in.

Names follow DESIGN.md (`sealtrail_audit_*`), labelled by export. Nothing here ever carries a
credential, a row's content or a free-text reason as a label value.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ExportMetrics"]


class ExportMetrics:
    """Every export metric, built on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the collectors."""
        self.last_seq = Gauge(
            "sealtrail_audit_last_seq", "Global seq of the newest stored row.", registry=registry
        )
        self.export_last_seq = Gauge(
            "sealtrail_audit_export_last_seq",
            "Seq up to which the export has delivered (its cursor).",
            ["export"], registry=registry,
        )
        self.failures = Counter(
            "sealtrail_audit_export_failures_total",
            "Failed send attempts, by whether they will be retried.",
            ["export", "retryable"], registry=registry,
        )
        self.outcomes = Counter(
            "sealtrail_audit_export_outcomes_total",
            "Send attempts by outcome class (success, retryable, permanent, auth).",
            ["export", "outcome"], registry=registry,
        )
        self.events = Counter(
            "sealtrail_audit_export_events_total", "Rows delivered.", ["export"],
            registry=registry,
        )
        self.bytes = Counter(
            "sealtrail_audit_export_bytes_total", "Row bytes delivered.", ["export"],
            registry=registry,
        )
        self.rejected = Counter(
            "sealtrail_audit_export_rejected_rows_total",
            "Rows the SIEM refused for good (the export pauses; rows are never skipped).",
            ["export"], registry=registry,
        )
        self.cursor_write_failures = Counter(
            "sealtrail_audit_export_cursor_write_failures_total",
            "Failed attempts to record a delivery in the store (a full disk, say); retried.",
            ["export"], registry=registry,
        )
        self.restarts = Counter(
            "sealtrail_audit_export_loop_restarts_total",
            "Times an export's loop failed unexpectedly and was restarted.",
            ["export"], registry=registry,
        )
        self.interval = Gauge(
            "sealtrail_audit_batch_interval_ms", "Current adaptive batch interval.", ["export"],
            registry=registry,
        )
        self.interval_max = Gauge(
            "sealtrail_audit_batch_interval_max_ms", "Configured maximum batch interval.",
            ["export"], registry=registry,
        )
        self.paused = Gauge(
            "sealtrail_audit_export_paused", "1 while the export is paused.", ["export"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "sealtrail_audit_export_request_seconds", "Time per send attempt.", ["export"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )

    def forget(self, export: str) -> None:
        """Drop an export's series (it was removed from the config)."""
        for metric in (self.export_last_seq, self.events, self.bytes, self.rejected,
                       self.cursor_write_failures, self.restarts,
                       self.interval, self.interval_max, self.paused, self.request_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(export)
        for retryable in ("true", "false"):
            with contextlib.suppress(KeyError):
                self.failures.remove(export, retryable)
