"""Asking workers for their `/v1/status`: the one place the operator talks HTTP to workers.

Each poll asks every worker once, however many exports it serves, with a bounded number of
requests in flight and a short timeout, so a thousand pods (or a few blackholed ones behind a
default-deny NetworkPolicy) cannot exhaust the client or hold the answers of the others. A
worker that does not answer is reported with the reason, never dropped from the count. Each
request carries the namespace's admin credential: workers answer nobody else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from sealtrail.api.worker_api import STATUS_PATH
from sealtrail.operator.facts import WorkerAddress
from sealtrail.operator.status import WorkerReport

__all__ = ["Answer", "StatusPoller", "report_for"]

#: A worker's status document, or why there is none.
Answer = dict[str, Any] | str



class StatusPoller:
    """Shared by the controller of one operator process (one HTTP client)."""

    def __init__(self, *, timeout_seconds: float = 2.0, concurrency: int = 64) -> None:
        """Make the client; close it with `aclose`."""
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds,
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency))
        self._limit = asyncio.Semaphore(concurrency)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def _ask(self, worker: WorkerAddress, token: bytes | None) -> Answer:
        if not worker.ip:
            return "the pod has no IP yet"
        host = f"[{worker.ip}]" if ":" in worker.ip else worker.ip
        headers = {"Authorization": f"Bearer {token.decode()}"} if token else {}
        async with self._limit:
            try:
                answer = await self._client.get(f"http://{host}:{worker.port}{STATUS_PATH}",
                                                headers=headers)
                answer.raise_for_status()
                document = answer.json()
            except httpx.HTTPStatusError as error:
                return f"HTTP {error.response.status_code}"
            except httpx.HTTPError as error:
                return type(error).__name__ + (f": {error}" if str(error) else "")
            except ValueError:
                return "the answer is not JSON"
        return document if isinstance(document, dict) else "not a status document"

    async def poll(self, workers: Iterable[WorkerAddress],
                   token_of: Callable[[WorkerAddress], bytes | None]) -> dict[
                       WorkerAddress, Answer]:
        """Every worker's answer, each asked once."""
        unique = sorted(set(workers), key=lambda worker: worker.pod)
        answers = await asyncio.gather(*(self._ask(worker, token_of(worker))
                                         for worker in unique))
        return dict(zip(unique, answers, strict=True))


def report_for(worker: WorkerAddress, answer: Answer | None, export: str) -> WorkerReport:
    """What one worker's answer says about the export named `export`."""
    if answer is None:
        return WorkerReport(worker.pod, reachable=False, error="not polled yet")
    if isinstance(answer, str):
        return WorkerReport(worker.pod, reachable=False, error=answer)
    entry = next((item for item in answer.get("exports", [])
                  if isinstance(item, dict) and item.get("name") == export), None)
    return WorkerReport(worker.pod, reachable=True, export=entry)


def reports(workers: Iterable[WorkerAddress], answers: Mapping[WorkerAddress, Answer],
            export: str) -> list[WorkerReport]:
    """One report per worker for `export`."""
    return [report_for(worker, answers.get(worker), export) for worker in workers]
