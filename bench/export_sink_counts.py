"""What the benchmark sinks share: a counts file the benchmark polls, written atomically.

A sink keeps counts, not events, so that a million-row drain measures the exporter, not the
sink. The file is replaced whole (`Path.replace`), never seen half written, after every
request (or read, for a stream): a few thousand small writes in a million-row drain, and the
file is never behind what was answered. `bench/export_bench.py` polls it until every row has
arrived.
"""

from __future__ import annotations

import json
from pathlib import Path


class Counts:
    """Totals of one sink, mirrored to a JSON file."""

    def __init__(self, path: Path) -> None:
        """Start at zero; the file appears at the first `note` or `flush`."""
        self.path = path
        self.totals: dict[str, int] = {"events": 0, "requests": 0, "bytes": 0, "refused": 0}

    def note(self, events: int, size: int, **others: int) -> None:
        """Count one accepted request (or, for a stream, one read) of `events` rows."""
        totals = self.totals
        totals["events"] += events
        totals["requests"] += 1
        totals["bytes"] += size
        for name, value in others.items():
            totals[name] = totals.get(name, 0) + value
        self.flush()

    def refused(self) -> None:
        """Count a request the sink answered with an error (the benchmark then fails)."""
        self.totals["refused"] += 1
        self.flush()

    def flush(self) -> None:
        """Write the totals now."""
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.totals))
        partial.replace(self.path)
