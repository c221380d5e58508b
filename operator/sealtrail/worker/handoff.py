"""A worker's side of handoff: at shutdown, post what the exports could not deliver in time.

Why: a sidecar's store is an `emptyDir` that dies with its pod. When a SIEM is down during a
rollout, the drain (`drainTimeoutSeconds`) cannot deliver the backlog, and without handoff every
undelivered row would go with the pod. With `handoff.url`, the drain keeps a reserve of its time
for this: once the time left is no more than the reserve, the exports stop and every row some
export has not delivered (everything after the smallest cursor, paused exports included) is
posted to the collector (`POST <url>/v1/handoff`), in batches, as the store holds it. A batch
counts as safe only when the collector answers that it has committed it; the worker then records
so in its store (the cursor `:handoff` in its cursor file, a name no export can have), so
that a restart with the store kept does not send it again.

The reserve (`reserve_seconds`): `RESERVE_FLOOR_SECONDS` plus the backlog at
`RESERVE_ROWS_PER_SECOND` (about a seventh of what `bench/handoff_bench.py` measured on loopback
to a collector with `synchronous: FULL`), never more than `RESERVE_MAX_FRACTION` of the drain, so
that the exports always get a share of it. It is recomputed as the backlog shrinks: exports
that are catching up keep their time.

Rows neither delivered nor handed off when the worker exits are *abandoned*: logged at ERROR
with the count per export, and counted in `sealtrail_audit_rows_abandoned_total`.

What goes to the collector is rows and the bearer token, nothing else. What the collector
answers is never logged as it came: it is cut to `PEER_TEXT_CHARS` printable characters with
the token removed (`credentials.redact`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter

from sealtrail.api.export import TLSSpec
from sealtrail.api.worker_config import HandoffSpec
from sealtrail.chain.store import ChainStore, StoredRow
from sealtrail.export.credentials import Credential, CredentialError, redact
from sealtrail.export.http import HttpClients, TlsFileError, post, safe_url
from sealtrail.export.outcome import Outcome, OutcomeKind
from sealtrail.worker.handoff_receiver import HANDOFF_PATH

__all__ = [
    "HANDOFF_CURSOR",
    "MAX_BATCH_BYTES",
    "RESERVE_FLOOR_SECONDS",
    "RESERVE_MAX_FRACTION",
    "RESERVE_ROWS_PER_SECOND",
    "HandoffSender",
    "handoff_url",
    "reserve_seconds",
]

log = logging.getLogger("sealtrail.worker")

#: The store's record of what the collector holds: every row up to it is safe there. Export
#: names are DNS labels, so no export can be called this.
HANDOFF_CURSOR: Final = ":handoff"
#: The least time kept for a handoff: a connection, a TLS handshake, one commit, the answer.
RESERVE_FLOOR_SECONDS: Final = 2.0
#: The handoff rate the reserve plans with. Measured: ~36,000 rows/s from one sidecar on
#: loopback, ~33,000 at a collector taking three at once (docs/performance.md); planning with
#: a seventh of that leaves room for a real network, TLS, a slower disk and a busy collector.
RESERVE_ROWS_PER_SECOND: Final = 5_000.0
#: The reserve never takes more of the drain than this: the exports always get the rest.
RESERVE_MAX_FRACTION: Final = 0.8
#: Bytes of rows one request carries at most, below the collector's default
#: `ingest.maxBodyBytes` (16 MiB); a 413 halves the batch anyway.
MAX_BATCH_BYTES: Final = 8 * 1024 * 1024
#: Characters of a collector's answer that may reach a log line.
PEER_TEXT_CHARS: Final = 300
#: Back-off between attempts after a retryable failure: from the first to the last, doubling.
_BACKOFF_SECONDS: Final = (0.1, 2.0)


def reserve_seconds(backlog_rows: int, drain_seconds: float) -> float:
    """The time to keep for handing off `backlog_rows`, out of a drain of `drain_seconds`."""
    if backlog_rows <= 0:
        return 0.0
    wanted = RESERVE_FLOOR_SECONDS + backlog_rows / RESERVE_ROWS_PER_SECOND
    return min(wanted, drain_seconds * RESERVE_MAX_FRACTION)


def handoff_url(base: str) -> str:
    """The collector's handoff endpoint: `base` + `/v1/handoff`, unless `base` names it."""
    trimmed = base.rstrip("/")
    return trimmed if trimmed.endswith(HANDOFF_PATH) else trimmed + HANDOFF_PATH


def _bounded(text: str, secrets: list[str]) -> str:
    """A peer's text fit for a log: printable, the token removed, at most `PEER_TEXT_CHARS`."""
    shown = "".join(char if char.isprintable() else " " for char in text[:PEER_TEXT_CHARS * 2])
    shown = redact(shown, secrets)
    return shown[:PEER_TEXT_CHARS] + ("..." if len(shown) > PEER_TEXT_CHARS else "")


@dataclass
class _Attempt:
    """How one request ended: `ok`, or what to do next and why."""

    ok: bool = False
    retry: bool = False
    too_large: bool = False
    auth: bool = False
    reason: str = ""
    wait_seconds: float | None = None


class HandoffSender:
    """The sending side of one worker, and the counts of what its shutdown left behind.

    Built for every worker: without `handoff.url` it only counts abandoned rows.
    """

    def __init__(self, spec: HandoffSpec | None, store: ChainStore,
                 registry: CollectorRegistry) -> None:
        """Keep the settings and make the counters; nothing is sent before `hand_off`."""
        self.spec = spec if spec is not None and spec.url is not None else None
        self.store = store
        self.sent = Counter(
            "sealtrail_audit_handoff_rows_total",
            "Rows handed off to the collector at shutdown, acknowledged by it as committed.",
            registry=registry)
        self.abandoned = Counter(
            "sealtrail_audit_rows_abandoned_total",
            "Rows an export had not delivered when the worker exited and that were not handed "
            "off either: they stay in the store, and are lost if it goes with the pod.",
            ["export"], registry=registry)

    @property
    def configured(self) -> bool:
        """True when there is a collector to hand off to."""
        return self.spec is not None

    def reserve_seconds(self, backlog_rows: int, drain_seconds: float) -> float:
        """The part of the drain to keep for handing off the backlog (0 without a collector)."""
        return reserve_seconds(backlog_rows, drain_seconds) if self.configured else 0.0

    def safe_through(self) -> int:
        """Every row up to this seq is held by the collector (0: nothing handed off yet)."""
        return self.store.cursor(HANDOFF_CURSOR)

    def abandon(self, behind: Mapping[str, int], where: str) -> int:
        """Log and count what each export (by label) leaves undelivered at exit; the total.

        `where` says where the rows stay (a store's path), for the log line.
        """
        total = 0
        for label, rows in sorted(behind.items()):
            if rows <= 0:
                continue
            total += rows
            self.abandoned.labels(label).inc(rows)
            log.error("export %s: %d rows neither delivered nor handed off at exit (abandoned): "
                      "they stay in %s and go out after the next start if it outlives this "
                      "pod; in an emptyDir they are lost with it%s", label, rows, where,
                      "" if self.configured else " (handoff.url hands them to a collector)")
        return total

    # -- sending ---------------------------------------------------------------------------

    async def hand_off(self, after_seq: int, through_seq: int, deadline: float) -> int:
        """Post rows `after_seq`+1 .. `through_seq` until done or `deadline` (loop time).

        Returns the seq up to which the collector holds the rows (acknowledged durably, and
        recorded in the store), which is `through_seq` when everything went.
        """
        spec = self.spec
        if spec is None or spec.url is None or spec.token is None:
            return after_seq
        position = max(after_seq, await asyncio.to_thread(self.safe_through))
        if position >= through_seq:
            return position
        if self.store.store_id is None:
            log.error("handoff: this store was made before stores had ids; its rows cannot be "
                      "told from another replica's chain, so the collector would refuse them")
            return position
        url = handoff_url(spec.url)
        clients = HttpClients()
        token = Credential(spec.token)
        started, first = time.monotonic(), position
        log.info("handing off %d undelivered rows (seq %d to %d) to %s", through_seq - position,
                 position + 1, through_seq, safe_url(url))
        try:
            position = await self._send_all(clients, token, url, position=position,
                                            through_seq=through_seq, deadline=deadline)
        finally:
            await clients.aclose()
        handed = position - first
        if handed:
            log.info("handed off %d rows in %.2fs; the collector holds every row up to seq %d",
                     handed, time.monotonic() - started, position)
        return position

    async def _send_all(self, clients: HttpClients, token: Credential, url: str, *,
                        position: int, through_seq: int, deadline: float) -> int:
        spec = self.spec
        assert spec is not None  # noqa: S101 - hand_off checked
        clock = asyncio.get_running_loop()
        rows_per_request = spec.batch_rows
        attempt = 0
        auth_retried = False
        while position < through_seq:
            left = deadline - clock.time()
            if left <= 0:
                log.error("handoff: out of time with rows up to seq %d still to go", through_seq)
                break
            rows = await asyncio.to_thread(self._batch, position, through_seq, rows_per_request)
            if not rows:  # nothing left up to through_seq (pruned rows leave gaps in seq)
                return through_seq
            try:
                client = clients.get(TLSSpec(ca_file=spec.ca_file))
                secret = token.value(force=auth_retried)
            except (TlsFileError, CredentialError) as error:
                log.error("handoff: %s; nothing more can be handed off", error)  # noqa: TRY400 - names a file, no traceback wanted
                break
            result = await self._attempt(client, url, secret, rows,
                                         min(spec.timeout_seconds, left))
            if result.ok:
                await asyncio.to_thread(self.store.set_cursor, HANDOFF_CURSOR, rows[-1].seq)
                self.sent.inc(len(rows))
                position = rows[-1].seq
                attempt, auth_retried = 0, False
                continue
            if result.too_large and len(rows) > 1:
                rows_per_request = max(1, len(rows) // 2)
                continue
            if result.auth and not auth_retried:
                auth_retried = True  # once, with what the token file says now
                continue
            if not result.retry:
                log.error("handoff: the collector refused rows from seq %d: %s; they stay in "
                          "this store", rows[0].seq, result.reason)
                break
            delay = result.wait_seconds
            if delay is None:
                delay = min(_BACKOFF_SECONDS[1], _BACKOFF_SECONDS[0] * 2 ** attempt)
            attempt += 1
            delay = min(delay, max(0.0, deadline - clock.time()))
            log.warning("handoff: %s; trying again in %.2fs", result.reason, delay)
            await asyncio.sleep(delay)
        return position

    def _batch(self, position: int, through_seq: int, rows_per_request: int) -> list[StoredRow]:
        """The next rows to send: at most `rows_per_request`, and `MAX_BATCH_BYTES` of them."""
        found = self.store.export_rows(position, min(rows_per_request, through_seq - position))
        batch: list[StoredRow] = []
        size = 0
        for row in found:
            size += len(row.body) + 1
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(row)
        return batch

    async def _attempt(self, client: httpx.AsyncClient, url: str, secret: str,
                       rows: list[StoredRow], timeout_seconds: float) -> _Attempt:
        body = b"".join(row.body + b"\n" for row in rows)
        answer = await post(client, url, content=body, timeout_seconds=timeout_seconds,
                            headers={"Authorization": f"Bearer {secret}",
                                     "Content-Type": "application/x-ndjson"},
                            peer="the handoff collector")
        if isinstance(answer, Outcome):
            return _Attempt(retry=answer.kind is OutcomeKind.RETRYABLE, reason=answer.reason)
        return _classify(answer, len(rows), [secret])


def _classify(answer: httpx.Response, sent: int, secrets: list[str]) -> _Attempt:
    """What the collector's answer means for the batch just sent."""
    status = answer.status_code
    said = f"{status} {_bounded(answer.text, secrets)}"
    if 200 <= status < 300:
        try:
            counts = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            counts = None
        if not _acknowledges(counts, sent):
            # Something answered 2xx that is not a collector that took the rows (a wrong URL,
            # a proxy's page): they are not safe, and sending them again will not make them so.
            return _Attempt(reason=f"answered {said}, which does not acknowledge the {sent} "
                                   "rows sent: is handoff.url a sealtrail collector?")
        return _Attempt(ok=True)
    if status in (401, 403):
        return _Attempt(auth=True, reason=f"the collector refused the token: {said}")
    if status == 413:
        return _Attempt(too_large=True, reason=f"the batch is too large for the collector: {said}")
    if status in (408, 429) or status >= 500:
        wait = answer.headers.get("Retry-After", "")
        return _Attempt(retry=True, reason=f"the collector answered {said}",
                        wait_seconds=float(wait) if wait.isdigit() else None)
    return _Attempt(reason=said)


def _acknowledges(counts: object, sent: int) -> bool:
    """True for a collector's answer that accounts for every row sent (stored or held)."""
    if not isinstance(counts, Mapping):
        return False
    stored, duplicates = counts.get("stored"), counts.get("duplicates")
    return type(stored) is int and type(duplicates) is int and stored + duplicates == sent
