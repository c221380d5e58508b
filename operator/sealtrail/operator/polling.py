"""Asking workers for their `/v1/status`: the one place the operator talks HTTP to workers.

Every export's timer asks the workers of the policies that route to it. Answers are kept for
a moment (`ttl_seconds`), so that ten exports served by the same pod cost one request, not ten,
and requests to all pods go out concurrently. A worker that does not answer is reported with
the reason, never dropped from the count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from sealtrail.operator.status import WorkerReport

__all__ = ["StatusPoller", "WorkerAddress"]


@dataclass(frozen=True)
class WorkerAddress:
    """Where one worker's admin listener is."""

    pod: str  # namespace/name, for messages
    ip: str | None
    port: int


class StatusPoller:
    """Shared by all timers of one operator process (one HTTP client, one small cache)."""

    def __init__(self, *, timeout_seconds: float = 2.0, ttl_seconds: float = 1.0) -> None:
        """Make the client; close it with `aclose`."""
        self._client = httpx.AsyncClient(timeout=timeout_seconds)
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, dict[str, Any] | str]] = {}

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def _status(self, url: str) -> dict[str, Any] | str:
        """The worker's status document, or why there is none."""
        cached = self._cache.get(url)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        result: dict[str, Any] | str
        try:
            answer = await self._client.get(url)
            answer.raise_for_status()
            document = answer.json()
            result = document if isinstance(document, dict) else "not a status document"
        except httpx.HTTPStatusError as error:
            result = f"HTTP {error.response.status_code}"
        except httpx.HTTPError as error:
            result = type(error).__name__ + (f": {error}" if str(error) else "")
        except ValueError:
            result = "the answer is not JSON"
        self._cache[url] = (time.monotonic(), result)
        return result

    async def reports(self, workers: Sequence[WorkerAddress], export: str) -> list[WorkerReport]:
        """One report per worker for the export named `export`."""
        now = time.monotonic()  # forget answers past their time: pods come and go
        self._cache = {url: entry for url, entry in self._cache.items()
                       if now - entry[0] < self._ttl}

        async def ask(worker: WorkerAddress) -> WorkerReport:
            if not worker.ip:
                return WorkerReport(worker.pod, reachable=False, error="the pod has no IP yet")
            host = f"[{worker.ip}]" if ":" in worker.ip else worker.ip
            found = await self._status(f"http://{host}:{worker.port}/v1/status")
            if isinstance(found, str):
                return WorkerReport(worker.pod, reachable=False, error=found)
            entry = next((item for item in found.get("exports", [])
                          if isinstance(item, dict) and item.get("name") == export), None)
            return WorkerReport(worker.pod, reachable=True, export=entry)

        return list(await asyncio.gather(*(ask(worker) for worker in workers)))
