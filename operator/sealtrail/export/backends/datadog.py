"""Datadog Logs intake v2: one batch of rows is one gzip'd `POST /api/v2/logs`.

Why it looks the way it does:

- Each row is the `message` of its own log entry, as the stored text (the canonical row JSON,
  decoded as UTF-8), so a Datadog-side checker that reads `message` back gets exactly the bytes
  that were hashed. Source, service, tags, the dedupe key and the record hash travel beside it
  as attributes of the entry, never inside it. Datadog has no idempotency key, so
  `dedupe_key` (`store_id:tenant_id:tenant_seq`) is what lets duplicates be removed at query
  time.
- Datadog's limits: 1,000 entries and 5,000,000 bytes (uncompressed) a request, 1,000,000
  bytes a log. A log over 1 MB is *truncated and still answered 2xx*, which for a hash chain
  is silent corruption, so the sizes are checked here: `row_size` is the true size of a row's
  entry, `max_row_bytes` is 1,000,000 so the loop refuses a larger row for good, and `send`
  refuses one too rather than ever letting Datadog cut it.
- Statuses (Datadog's own table): 202 accepted; 400 bad payload; 401 missing and 403 invalid
  key; 413 over 5 MB (split); 408, 429 and 5xx retry after a while.
- The API key is read through `Credential` for every request (cheap unless the file changed),
  so a rotated Secret is used from the next batch on.
- Each entry is encoded once: `row_size` keeps it for the request, which the loop builds right
  after sizing. It is spliced from a head serialized once per tenant (source, service, tags),
  the row's text as a JSON string, the dedupe key and the hex record hash: the same bytes as
  `orjson.dumps` of the whole entry object gave.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Sequence
from typing import Any, Final

import httpx
import orjson

from sealtrail.api.export import DatadogSpec, ExportSpec
from sealtrail.export.backends.base import Backend, BatchLimits, ExportRow
from sealtrail.export.credentials import Credential, CredentialError
from sealtrail.export.http import HttpClients, post
from sealtrail.export.outcome import Outcome, OutcomeKind, classify_status, parse_retry_after

__all__ = [
    "MAX_ENTRIES",
    "MAX_ENTRY_BYTES",
    "MAX_PAYLOAD_BYTES",
    "DatadogBackend",
    "intake_url",
]

#: Datadog's documented limits for one request to the logs intake.
MAX_ENTRIES: Final = 1_000
MAX_PAYLOAD_BYTES: Final = 5_000_000  # uncompressed
MAX_ENTRY_BYTES: Final = 1_000_000  # one log; above this Datadog truncates it

_PATH: Final = "/api/v2/logs"
# `row_size` is the size of the entry alone; the array adds `[`, `]` and a comma between two
# entries. Keeping the sum of entry sizes under this keeps the whole array under 5,000,000.
_ENTRIES_BUDGET: Final = MAX_PAYLOAD_BYTES - 2 - (MAX_ENTRIES - 1)
# Compress in a worker thread above this, so that a 5 MB batch does not stall the event loop.
_INLINE_GZIP_BYTES: Final = 256 * 1024
#: Entries kept between sizing and sending, at most (ten full requests), and tenant heads kept.
_ENCODED_LIMIT: Final = 10 * MAX_ENTRIES
_HEADS_LIMIT: Final = 4096

_REASONS: Final = {
    400: "Datadog refused the payload (400 bad request)",
    401: "Datadog says the API key is missing (401)",
    403: "Datadog refused the API key (403)",
    408: "Datadog timed out reading the request (408)",
    413: "payload over Datadog's 5 MB limit (413)",
    429: "Datadog is rate limiting (429)",
}


def intake_url(spec: DatadogSpec) -> str:
    """`{url or https://http-intake.logs.<site>}/api/v2/logs` (a pasted full path is fine)."""
    base = (spec.url or f"https://http-intake.logs.{spec.site}").rstrip("/")
    base = base.removesuffix(_PATH).rstrip("/")
    return base + _PATH


class DatadogBackend(Backend):
    """Datadog Logs intake v2 (`POST /api/v2/logs`, gzip, `DD-API-KEY`)."""

    kind = "datadog"
    destination_rule = None  # no per-row index in this API

    def __init__(self, spec: ExportSpec, clients: HttpClients) -> None:
        """Read the Datadog block; no connection yet."""
        super().__init__(spec, clients)
        if spec.datadog is None:
            raise ValueError("DatadogBackend needs an export with a 'datadog' block")
        self.datadog: DatadogSpec = spec.datadog
        self._api_key = Credential(spec.datadog.api_key)
        self.url = intake_url(spec.datadog)
        self._tags = ",".join(tag.strip() for tag in spec.datadog.tags if tag.strip())
        self._encoded: dict[tuple[int, str], bytes] = {}
        self._heads: dict[str, bytes] = {}
        self._limits = BatchLimits(
            max_events=MAX_ENTRIES,
            max_bytes=_ENTRIES_BUDGET,
            max_row_bytes=MAX_ENTRY_BYTES,
        )

    # -- sizes -----------------------------------------------------------------------------

    @property
    def limits(self) -> BatchLimits:
        """1,000 logs, 1,000,000 bytes each, and 5,000,000 bytes in all.

        `max_bytes` (4,998,999) bounds the sum of `row_size`, which counts entries alone, so
        that with its brackets and up to 999 commas the array stays within 5,000,000.
        """
        return self._limits

    def row_size(self, row: ExportRow) -> int:
        """The true size of the row's log entry, uncompressed (what Datadog holds to 1 MB).

        The entry is kept for `_payload`: the loop sends right after sizing.
        """
        try:
            entry = self._entry(row)
        except UnicodeDecodeError:
            return len(row.body)  # refused in `send`; the size is only for batching
        if len(self._encoded) >= _ENCODED_LIMIT:
            self._encoded.clear()  # rows sized but never sent (a pause): start afresh
        self._encoded[(row.seq, row.record_hash)] = entry
        return len(entry)

    def _entry(self, row: ExportRow) -> bytes:
        """`orjson.dumps` of the entry object, spliced from cached parts (module docstring)."""
        tenant = row.tenant_id
        head = self._heads.get(tenant)
        if head is None:
            if len(self._heads) >= _HEADS_LIMIT:
                self._heads.clear()
            fields: dict[str, Any] = {
                "ddsource": self.datadog.source,
                "service": self.datadog.service,
                "ddtags": self._ddtags(row),
            }
            head = orjson.dumps(fields)[:-1] + b',"message":'
            self._heads[tenant] = head
        record_hash = row.record_hash
        hash_json = (b'"' + record_hash.encode("ascii") + b'"'
                     if record_hash.isascii() and record_hash.isalnum()
                     else orjson.dumps(record_hash))
        return (head + orjson.dumps(row.body.decode("utf-8")) + b',"dedupe_key":'
                + orjson.dumps(row.dedupe_key) + b',"record_hash":' + hash_json + b"}")

    def _ddtags(self, row: ExportRow) -> str:
        tenant = f"tenant:{row.tenant_id}"
        return f"{self._tags},{tenant}" if self._tags else tenant

    def _payload(self, rows: Sequence[ExportRow]) -> bytes | Outcome:
        """The uncompressed JSON array, or why it must not be sent (Datadog would cut it)."""
        entries: list[bytes] = []
        encoded = self._encoded
        for index, row in enumerate(rows):
            try:
                entry = encoded.pop((row.seq, row.record_hash), None) or self._entry(row)
            except UnicodeDecodeError:
                return Outcome(OutcomeKind.PERMANENT, f"row seq {row.seq} is not UTF-8 text",
                               rejected_index=index)
            if len(entry) > MAX_ENTRY_BYTES:
                return Outcome(
                    OutcomeKind.PERMANENT,
                    f"row seq {row.seq} makes a {len(entry)}-byte Datadog log; the limit is "
                    f"{MAX_ENTRY_BYTES} and Datadog would truncate it, so it is not sent",
                    rejected_index=index,
                )
            entries.append(entry)
        payload = b"[" + b",".join(entries) + b"]"
        if len(entries) > MAX_ENTRIES or len(payload) > MAX_PAYLOAD_BYTES:
            return Outcome(
                OutcomeKind.PERMANENT,
                f"batch of {len(entries)} logs, {len(payload)} bytes, is over Datadog's limits "
                f"({MAX_ENTRIES} logs, {MAX_PAYLOAD_BYTES} bytes); not sent",
                too_large=True,
            )
        return payload

    # -- sending ---------------------------------------------------------------------------

    def credentials(self) -> list[Credential]:
        """The API key."""
        return [self._api_key]

    async def send(self, rows: Sequence[ExportRow]) -> Outcome:
        """POST the rows as one gzip'd JSON array of log entries and classify the answer."""
        if not rows:
            return Outcome.success("nothing to send")
        payload = self._payload(rows)
        if isinstance(payload, Outcome):
            return payload
        try:
            api_key = self._api_key.value()
        except CredentialError as error:
            return Outcome(OutcomeKind.AUTH, str(error))
        if len(payload) > _INLINE_GZIP_BYTES:
            body = await asyncio.to_thread(gzip.compress, payload, 6, mtime=0)
        else:
            body = gzip.compress(payload, 6, mtime=0)
        headers = {
            "DD-API-KEY": api_key,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
        }
        client = self.clients.get(self.spec.tls, self.spec.proxy_url)
        timeout = self.spec.retry.request_timeout_seconds
        response = await post(client, self.url, content=body, headers=headers,
                              timeout_seconds=timeout, peer="Datadog")
        return response if isinstance(response, Outcome) else _classify(response)


def _classify(response: httpx.Response) -> Outcome:
    status = response.status_code
    kind = classify_status(status)
    if kind is OutcomeKind.SUCCESS:
        return Outcome.success(f"Datadog accepted the batch ({status})", status)
    reason = _REASONS.get(status) or f"Datadog answered {status}"
    if status == 413:
        return Outcome(OutcomeKind.PERMANENT, reason, status, too_large=True)
    retry_after = None
    if kind is OutcomeKind.RETRYABLE:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    return Outcome(kind, reason, status, retry_after_seconds=retry_after)
