"""Splunk HTTP Event Collector: one batch of rows is one `POST /services/collector/event`.

Why it looks the way it does:

- Each row travels as the `event` of its own HEC envelope, spliced in as the stored bytes, so a
  Splunk-side checker sees exactly what was hashed. Index, sourcetype, time and the dedupe key
  travel beside it in the envelope (`index`, `fields`), never inside it.
- HEC answers errors with `{"text": ..., "code": N}`; the code says more than the HTTP status
  (a 400 is always a bad request, but code 7 names the index and `invalid-event-number` the
  row), so the status is classified first and the code refines it.
- A plain 200 only means the data "appears to be valid". With indexer acknowledgement on, the
  batch counts as delivered only once `/services/collector/ack` reports its ackId `true`;
  `false` can mean "pending" or "lost", so after `ackTimeoutSeconds` the batch is resent
  (duplicates carry the same `fields.dedupe_key`, and the chain itself shows them).
- ackIds are per channel, and a channel must be a GUID: one random UUID per backend instance.
- The token is re-read (cheaply) for every request, so a rotated Secret is used at once.

Why envelopes are spliced: the loop sizes every row before sending it, and the envelope is
most of a row's cost, so it is built once (`row_size` keeps it for `body`) from parts that are
cheap: the metadata head for each (index, sourcetype) serialized once, the time from a per-second
cache, the dedupe key and the hex record hash, and the stored bytes. The bytes are exactly those
`orjson.dumps` of the whole metadata object gave.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import orjson

from sealtrail.api.destinations import SPLUNK_INDEX
from sealtrail.api.export import ExportSpec, SplunkSpec
from sealtrail.export.backends.base import Backend, BatchLimits, ExportRow
from sealtrail.export.credentials import Credential, CredentialError
from sealtrail.export.http import HttpClients, post
from sealtrail.export.outcome import Outcome, OutcomeKind, classify_status, parse_retry_after

__all__ = ["SplunkBackend", "hec_base_url"]

#: A request size every HEC accepts (Splunk Cloud is commonly limited to about 1 MB).
MAX_REQUEST_BYTES: Final = 1_000_000
MAX_EVENTS: Final = 10_000

_EVENT_PATH: Final = "/services/collector/event"
_ACK_PATH: Final = "/services/collector/ack"
# Whatever of the collector path a user pasted into `hecUrl`.
_COLLECTOR_SUFFIX: Final = re.compile(r"/services/collector(?:/(?:event|raw)(?:/1\.0)?)?/*$")

# HEC's own codes (Splunk, "Troubleshoot HTTP Event Collector"), with a fixed description that
# is safe to put in a reason: the server's `text` is never echoed.
_HEC_CODES: Final = {
    1: "token disabled",
    2: "token is required",
    3: "invalid authorization",
    4: "invalid token",
    5: "no data",
    6: "invalid data format",
    7: "incorrect index",
    8: "internal server error",
    9: "server is busy",
    10: "data channel is missing",
    11: "invalid data channel",
    12: "event field is required",
    13: "event field cannot be blank",
    14: "ACK is disabled",
    15: "error in handling indexed fields",
    16: "query string authorization is not enabled",
    18: "HEC is unhealthy, queues are full",
    19: "HEC is unhealthy, ack service unavailable",
    20: "HEC is unhealthy, queues are full, ack service unavailable",
}
_PERMANENT_CODES: Final = frozenset({5, 6, 7, 10, 11, 12, 13, 14, 15, 16})
_AUTH_CODES: Final = frozenset({1, 2, 3, 4})
_RETRYABLE_CODES: Final = frozenset({8, 9, 18, 19, 20})

# Upper bounds for the envelope around one row, for `max_row_bytes`: a 20-character time, an
# 80-character index, a store id, a 63-character tenant id with a 20-digit tenant_seq, a
# 64-digit hash.
_WORST_TIME: Final = "-99999999999.999999"
_WORST_STORE: Final = "f" * 32
_WORST_TENANT: Final = "t" * 63
_WORST_SEQ: Final = 10**20 - 1
_SAFETY_MARGIN: Final = 64
#: Envelopes kept between sizing and sending, at most (about 10 batches of 1 MB).
_ENCODED_LIMIT: Final = 20_000

#: Metadata heads and whole seconds kept; more than this start their cache afresh.
_CACHE_LIMIT: Final = 4096

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def hec_base_url(hec_url: str) -> str:
    """The HEC base URL (`https://host:8088`), whether or not the collector path was given."""
    base = hec_url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return _COLLECTOR_SUFFIX.sub("", base).rstrip("/")


def epoch_text(timestamp: str) -> str | None:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` as exact epoch seconds with six decimals, or None."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    micros = (moment - _EPOCH) // _MICROSECOND
    seconds, fraction = divmod(abs(micros), 1_000_000)
    return f"{'-' if micros < 0 else ''}{seconds}.{fraction:06d}"


class SplunkBackend(Backend):
    """Splunk HEC `/services/collector/event`, with optional indexer acknowledgement."""

    kind = "splunk"
    destination_rule = SPLUNK_INDEX

    def __init__(self, spec: ExportSpec, clients: HttpClients) -> None:
        """Read the Splunk block; pick this instance's channel GUID. No connection yet."""
        super().__init__(spec, clients)
        if spec.splunk is None:
            raise ValueError("SplunkBackend needs an export with a 'splunk' block")
        self.splunk: SplunkSpec = spec.splunk
        self._token = Credential(spec.splunk.token)
        #: Every request of this instance carries it; ackIds are numbered per channel.
        self.channel = str(uuid.uuid4())
        self._encoded: dict[tuple[int, str | None], bytes] = {}
        self._heads: dict[tuple[str | None, str | None], bytes] = {}
        self._seconds: dict[str, str | None] = {}
        base = hec_base_url(spec.splunk.hec_url)
        self.event_url = base + _EVENT_PATH
        self.ack_url = base + _ACK_PATH
        self._limits = BatchLimits(
            max_events=MAX_EVENTS,
            max_bytes=MAX_REQUEST_BYTES,
            max_row_bytes=MAX_REQUEST_BYTES - self._worst_overhead(),
        )

    # -- sizes -----------------------------------------------------------------------------

    @property
    def limits(self) -> BatchLimits:
        """At most 10,000 events and 1,000,000 bytes a request; a row must fit alone."""
        return self._limits

    def row_size(self, row: ExportRow) -> int:
        """The row's envelope and its newline: the request body is exactly their sum.

        The envelope is kept until `body` needs it: building it is most of the per-row cost,
        and the loop sizes every row just before sending it.
        """
        encoded = self.envelope(row)
        if len(self._encoded) >= _ENCODED_LIMIT:
            self._encoded.clear()  # rows sized but never sent (a pause): start afresh
        self._encoded[(row.seq, row.destination)] = encoded
        return len(encoded) + 1

    def _worst_overhead(self) -> int:
        prefix = self._prefix(_WORST_TIME, "x" * SPLUNK_INDEX.max_length,
                              f"{_WORST_STORE}:{_WORST_TENANT}:{_WORST_SEQ}", "0" * 64)
        return len(prefix) + len(b"}\n") + _SAFETY_MARGIN

    # -- the request -----------------------------------------------------------------------

    def default_destination(self) -> str | None:
        """The export's own index (a template or a name), or None for the token's default."""
        return self.splunk.index

    def credentials(self) -> list[Credential]:
        """The HEC token."""
        return [self._token]

    @staticmethod
    def _index_for(row: ExportRow) -> str | None:
        """The row's index as the loop rendered it, or None for the token's default index."""
        return row.destination or None

    def _prefix(self, time_text: str | None, index: str | None, dedupe_key: str,
                record_hash: str, sourcetype: str | None = None) -> bytes:
        meta: dict[str, Any] = {"source": self.splunk.source,
                                "sourcetype": sourcetype or self.splunk.sourcetype}
        if index:
            meta["index"] = index
        meta["fields"] = {"dedupe_key": dedupe_key, "record_hash": record_hash}
        inner = orjson.dumps(meta)[1:-1]
        head = b'{"time":' + time_text.encode() + b"," if time_text is not None else b"{"
        return head + inner + b',"event":'

    def envelope(self, row: ExportRow) -> bytes:
        """One HEC envelope: metadata beside the row, the row's stored bytes as `event`.

        The same bytes as `_prefix(...) + body + "}"`, from cached parts (module docstring).
        """
        time_text = self._time_text(row.timestamp)
        head = b'{"time":' + time_text.encode() + b"," if time_text is not None else b"{"
        key = (self._index_for(row), row.sourcetype)
        meta = self._heads.get(key)
        if meta is None:
            if len(self._heads) >= _CACHE_LIMIT:
                self._heads.clear()
            meta = self._meta_head(*key)
            self._heads[key] = meta
        record_hash = row.record_hash
        hash_json = (b'"' + record_hash.encode("ascii") + b'"'
                     if record_hash.isascii() and record_hash.isalnum()
                     else orjson.dumps(record_hash))
        return (head + meta + orjson.dumps(row.dedupe_key) + b',"record_hash":' + hash_json
                + b'},"event":' + row.body + b"}")

    def _meta_head(self, index: str | None, sourcetype: str | None) -> bytes:
        """`"source":..,"sourcetype":..[,"index":..],"fields":{"dedupe_key":`, as in `_prefix`."""
        meta: dict[str, Any] = {"source": self.splunk.source,
                                "sourcetype": sourcetype or self.splunk.sourcetype}
        if index:
            meta["index"] = index
        return orjson.dumps(meta)[1:-1] + b',"fields":{"dedupe_key":'

    def _time_text(self, timestamp: str) -> str | None:
        """`epoch_text(timestamp)`, its whole seconds cached for the row's usual form.

        Rows store `YYYY-MM-DDTHH:MM:SS.ffffffZ`; under load many share a second, so the
        seconds are parsed once per second and the six fractional digits appended as they
        are. Anything else (another form, before 1970) takes `epoch_text` itself.
        """
        fraction = timestamp[20:26]
        if not (len(timestamp) == 27 and timestamp[19] == "." and timestamp[26] == "Z"
                and fraction.isascii() and fraction.isdigit()):
            return epoch_text(timestamp)
        second = timestamp[:19]
        whole = self._seconds.get(second, "")
        if whole == "":
            if len(self._seconds) >= _CACHE_LIMIT:
                self._seconds.clear()
            found = epoch_text(second + ".000000Z")
            whole = found[:-6] if found is not None and not found.startswith("-") else None
            self._seconds[second] = whole
        return epoch_text(timestamp) if whole is None else whole + fraction

    def body(self, rows: Sequence[ExportRow]) -> bytes:
        """The request body: the rows' envelopes back to back, one per line, in order."""
        encoded = self._encoded
        return b"".join(
            (encoded.pop((row.seq, row.destination), None) or self.envelope(row)) + b"\n"
            for row in rows
        )

    def _headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Splunk {token}",
            "X-Splunk-Request-Channel": self.channel,
            "Content-Type": "application/json",
        }

    async def send(self, rows: Sequence[ExportRow]) -> Outcome:
        """Post the batch; with indexer acknowledgement on, wait for its ackId to be true."""
        if not rows:
            return Outcome.success("nothing to send")
        client = self.clients.get(self.spec.tls, self.spec.proxy_url)
        answer = await self._post(client, self.event_url, self.body(rows),
                                  self.spec.retry.request_timeout_seconds)
        if isinstance(answer, Outcome):
            return answer
        response, reply = answer
        if not 200 <= response.status_code < 300:
            return _classify_error(response, reply, len(rows))
        if not self.splunk.indexer_ack:
            return Outcome.success("accepted by HEC", response.status_code)
        ack_id = reply.get("ackId") if reply is not None else None
        if not isinstance(ack_id, int) or isinstance(ack_id, bool):
            return Outcome.success(
                "accepted by HEC without an ackId (indexer acknowledgement is off for this "
                "token), so not confirmed as indexed", response.status_code,
            )
        return await self._wait_for_ack(client, ack_id)

    async def _post(self, client: httpx.AsyncClient, url: str, content: bytes,
                    seconds: float) -> tuple[httpx.Response, dict[str, Any] | None] | Outcome:
        """The response and its JSON object, or the Outcome that no usable answer came to."""
        try:
            token = self._token.value()
        except CredentialError as error:
            return Outcome(OutcomeKind.AUTH, f"HEC token: {error}")
        response = await post(client, url, content=content, headers=self._headers(token),
                              timeout_seconds=seconds, peer="HEC")
        if isinstance(response, Outcome):
            return response
        return response, _json_object(response.content)

    # -- indexer acknowledgement -----------------------------------------------------------

    async def _wait_for_ack(self, client: httpx.AsyncClient, ack_id: int) -> Outcome:
        """Poll until `ack_id` is true (SUCCESS) or `ackTimeoutSeconds` pass (RETRYABLE)."""
        interval = self.splunk.ack_poll_ms / 1000
        deadline = time.monotonic() + self.splunk.ack_timeout_seconds
        query = orjson.dumps({"acks": [ack_id]})
        last_problem = ""
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(interval, remaining))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            answer = await self._post(client, self.ack_url, query,
                                      min(self.spec.retry.request_timeout_seconds, remaining))
            if isinstance(answer, Outcome):
                if answer.kind is not OutcomeKind.RETRYABLE:
                    return answer
                last_problem = f"; last poll: {answer.reason}"
                continue
            response, reply = answer
            if not 200 <= response.status_code < 300:
                outcome = _classify_error(response, reply, None)
                if outcome.kind is not OutcomeKind.RETRYABLE:
                    return Outcome(outcome.kind, f"ack poll: {outcome.reason}", outcome.status)
                last_problem = f"; last poll: {outcome.reason}"
                continue
            acks = reply.get("acks") if reply is not None else None
            if isinstance(acks, dict) and acks.get(str(ack_id)) is True:
                return Outcome.success("indexed (indexer acknowledgement)", response.status_code)
            last_problem = "" if isinstance(acks, dict) else "; last poll: unreadable reply"
        return Outcome(OutcomeKind.RETRYABLE, "indexer acknowledgement timed out" + last_problem)


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        found = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def _classify_error(response: httpx.Response, reply: dict[str, Any] | None,
                    batch_size: int | None) -> Outcome:
    """A non-2xx answer: the HTTP status's class, refined by HEC's `code`."""
    status = response.status_code
    kind = classify_status(status)
    code = reply.get("code") if reply is not None else None
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    if code in _PERMANENT_CODES and status < 500:
        kind = OutcomeKind.PERMANENT
    elif code in _AUTH_CODES and 400 <= status < 500:
        kind = OutcomeKind.AUTH
    elif code in _RETRYABLE_CODES:
        kind = OutcomeKind.RETRYABLE

    reason = f"HEC HTTP {status}"
    if code is not None:
        reason += f" code {code}"
        if code in _HEC_CODES:
            reason += f" ({_HEC_CODES[code]})"
    rejected: int | None = None
    number = reply.get("invalid-event-number") if reply is not None else None
    if isinstance(number, int) and not isinstance(number, bool):
        reason += f", invalid-event-number {number}"
        if batch_size is not None and 0 <= number < batch_size:
            rejected = number
    if status == 413:
        return Outcome(OutcomeKind.PERMANENT, reason + ": request too large", status,
                       too_large=True)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return Outcome(kind, reason, status,
                   retry_after_seconds=retry_after if kind is OutcomeKind.RETRYABLE else None,
                   rejected_index=rejected if kind is OutcomeKind.PERMANENT else None)
