"""Elasticsearch `_bulk`: one NDJSON request per batch, classified item by item.

Why `create` with `_id = record_hash`, always: a batch that is sent again (after a timeout, a
crash, a partial failure) must not store a row twice, and `create` refuses a second document
with the same `_id` (item 409 `version_conflict_engine_exception`), which here means "already
delivered". Data streams accept nothing but `create`, so the same request serves both. The
record hash, not the row's position: every worker keeps its own chains, so two replicas of
a Deployment both write a row 1 of tenant `payments` (stores made before stores had ids do not
even say which store they are from); keyed by position, the second would be taken for a
duplicate and dropped. The hash covers the row and its whole chain before it, so it
is the same on every resend of a row and different for every other row.

Why per-item classification: Elasticsearch answers 200 even when some items failed
(`"errors": true`). Treating that 200 as success drops rows (the failure mode several shippers
are known for); treating it as a whole-batch failure resends rows that landed. Each item is
classed on its own (2xx and 409 delivered, 429 and 5xx retryable, other 4xx permanent) and the
`Outcome` says which rows are delivered, so that the loop resends only the others.

`_source` is the stored row, byte for byte: the SIEM then holds exactly what was hashed, and a
checker there can recompute the chain (docs/chain-format.md).

Why the body is spliced, not serialized: the loop sizes every row (`row_size`) and then sends it,
so the request is built from parts that cost nothing to size: one action head per index (kept,
JSON-encoded once), the record hash (hex, needing no escaping) and the stored bytes. The bytes
are the same `orjson.dumps({"create": {"_index": .., "_id": ..}})` gave. A clean answer
(`"errors": false` among the top-level members before `items`) is recognised from its first
bytes without parsing the thousands of items after it; any other answer is parsed and classed
item by item as before.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx
import orjson

from sealtrail.api.destinations import ELASTIC_INDEX
from sealtrail.api.export import ElasticSpec, ExportSpec
from sealtrail.export.backends.base import Backend, BatchLimits, ExportRow, destination_of
from sealtrail.export.credentials import Credential, CredentialError
from sealtrail.export.http import HttpClients, post
from sealtrail.export.outcome import Outcome, OutcomeKind, classify_status, parse_retry_after

__all__ = ["ElasticBackend"]

# Elastic advises bulk requests of 8-32 MB; http.max_content_length (100 MB by default) is the
# hard ceiling, answered with 413. 10 MB stays well inside both and inside what a proxy in front
# of a cluster usually allows.
_MAX_BYTES: Final = 10 * 1024 * 1024
_MAX_EVENTS: Final = 10_000
# `row_size` counts the action line too, so a row up to this size fits a request of its own
# with room to spare; a bigger one is refused for good by the loop, never truncated.
_MAX_ROW_BYTES: Final = _MAX_BYTES - 1024

_MAX_REASON: Final = 200
# Elasticsearch quotes the offending value in parse errors ("Preview of field's value: ..."):
# that is row content, which must never reach an Outcome's reason.
_CONTENT_MARKERS: Final = ("Preview of field's value", "preview of field's value")
#: Action heads kept (one per index); more indices than this start the cache afresh.
_HEADS_LIMIT: Final = 4096
#: A bulk answer whose top level says `"errors": false` before anything but plain scalar members
#: (Elasticsearch writes `took` and `errors` before `items`). Anchored, so it reads a few bytes.
_CLEAN_ANSWER: Final = re.compile(
    rb'\A\s*\{(?:\s*"[A-Za-z_]+"\s*:\s*(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)'
    rb'\s*,)*\s*"errors"\s*:\s*false\s*[,}]'
)


class ElasticBackend(Backend):
    """`POST {url}/_bulk` with one `create` per row."""

    kind = "elastic"
    destination_rule = ELASTIC_INDEX

    def __init__(self, spec: ExportSpec, clients: HttpClients) -> None:
        """Resolve the auth mode and its credentials now; read their values on each send."""
        super().__init__(spec, clients)
        if spec.elastic is None:
            raise ValueError(f"export {spec.name!r} has no elastic block")
        self.elastic: ElasticSpec = spec.elastic
        self._url = self.elastic.url.rstrip("/") + "/_bulk"
        if self.elastic.pipeline:
            # Data streams require @timestamp; only an ingest pipeline can add it (see the
            # field's docs for what that means for a SIEM-side chain check).
            self._url += "?pipeline=" + quote(self.elastic.pipeline, safe="")
        auth = self.elastic.auth
        self._api_key = Credential(auth.api_key) if auth and auth.api_key else None
        self._bearer = Credential(auth.bearer) if auth and auth.bearer else None
        self._basic_user = auth.basic.username if auth and auth.basic else None
        self._basic_password = Credential(auth.basic.password) if auth and auth.basic else None
        self._heads: dict[str, bytes] = {}

    # -- limits and destinations -------------------------------------------------------------

    @property
    def limits(self) -> BatchLimits:
        """10,000 rows and 10 MB a request (see the constants for why)."""
        return BatchLimits(
            max_events=_MAX_EVENTS, max_bytes=_MAX_BYTES, max_row_bytes=_MAX_ROW_BYTES
        )

    def row_size(self, row: ExportRow) -> int:
        """The action line plus the source line, newlines included: what the body grows by."""
        record_hash = row.record_hash
        id_size = (len(record_hash) + 2 if record_hash.isascii() and record_hash.isalnum()
                   else len(_document_id(record_hash)))  # measured, not built, for a hex hash
        return len(self._head(row)) + id_size + len(row.body) + 4  # `}}\n` and `\n`

    def default_destination(self) -> str | None:
        """The export's `index` (a template), used for rows whose route names none."""
        return self.elastic.index

    def credentials(self) -> list[Credential]:
        """The one credential of the configured auth mode (none without auth)."""
        found = (self._api_key, self._bearer, self._basic_password)
        return [credential for credential in found if credential is not None]

    def secrets(self) -> list[str]:
        """The credential values, and Basic's `user:password` pair (sent base64'd)."""
        found = super().secrets()
        if self._basic_password is not None:
            with contextlib.suppress(CredentialError):
                found.append(f"{self._basic_user}:{self._basic_password.value()}")
        return found

    def _head(self, row: ExportRow) -> bytes:
        """`{"create":{"_index":"<index>","_id":` for the row's index, encoded once per index."""
        index = destination_of(row)
        head = self._heads.get(index)
        if head is None:
            if len(self._heads) >= _HEADS_LIMIT:
                self._heads.clear()
            head = b'{"create":{"_index":' + orjson.dumps(index) + b',"_id":'
            self._heads[index] = head
        return head

    # -- sending -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        """Request headers, credentials read now so that a rotated Secret is used at once."""
        headers = {"Content-Type": "application/x-ndjson", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"ApiKey {self._api_key.value()}"
        elif self._bearer is not None:
            headers["Authorization"] = f"Bearer {self._bearer.value()}"
        elif self._basic_password is not None:
            pair = f"{self._basic_user}:{self._basic_password.value()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def encode(self, rows: Sequence[ExportRow]) -> bytes:
        """The `_bulk` body: action line, the row's stored bytes, newline; for every row."""
        parts: list[bytes] = []
        append = parts.append
        for row in rows:
            append(self._head(row))
            append(_document_id(row.record_hash))
            append(b"}}\n")
            append(row.body)
            append(b"\n")
        return b"".join(parts)

    async def send(self, rows: Sequence[ExportRow]) -> Outcome:
        """Send the batch as one `_bulk` request and classify the answer, item by item."""
        if not rows:
            return Outcome.success("nothing to send")
        try:
            headers = self._headers()
        except CredentialError as error:
            return Outcome(OutcomeKind.AUTH, str(error))
        answer = await self._post(self.encode(rows), headers)
        if isinstance(answer, Outcome):
            return answer
        if not 200 <= answer.status_code < 300:
            return _whole_request_outcome(answer)
        return _items_outcome(answer, len(rows))

    async def _post(self, body: bytes, headers: dict[str, str]) -> httpx.Response | Outcome:
        """The response, or the Outcome of a request that got none."""
        client = self.clients.get(self.spec.tls, self.spec.proxy_url)
        # A timed-out request may have landed: resending is safe, `create` is idempotent.
        return await post(client, self._url, content=body, headers=headers,
                          timeout_seconds=self.spec.retry.request_timeout_seconds,
                          peer="Elasticsearch")


def _document_id(record_hash: str) -> bytes:
    """The `_id` as JSON: the hex record hash in quotes (anything else goes through orjson)."""
    if record_hash.isascii() and record_hash.isalnum():
        return b'"' + record_hash.encode("ascii") + b'"'
    return orjson.dumps(record_hash)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _safe_reason(found: object) -> str:
    """An Elasticsearch reason, cut before any quoted row content and shortened."""
    if not isinstance(found, str):
        return ""
    text: str = found
    for marker in _CONTENT_MARKERS:
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut].rstrip(" .;,")
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _describe_error(error: Any) -> str:
    """`type: reason` of an Elasticsearch error object (or of its root cause), safely."""
    if isinstance(error, str):
        return _safe_reason(error)
    if not isinstance(error, dict):
        return ""
    kind = error.get("type")
    kind = kind if isinstance(kind, str) else "error"
    reason = _safe_reason(error.get("reason"))
    caused_by = error.get("caused_by")
    if isinstance(caused_by, dict) and isinstance(caused_by.get("type"), str):
        inner = _safe_reason(caused_by.get("reason"))
        reason = f"{reason} (caused by {caused_by['type']}: {inner})" if reason else inner
    return f"{kind}: {reason}" if reason else str(kind)


def _whole_request_outcome(response: httpx.Response) -> Outcome:
    """A non-2xx answer: the whole request was refused, per the shared status table."""
    status = response.status_code
    body = _json_or_none(response)
    detail = _describe_error(body.get("error")) if isinstance(body, dict) else ""
    reason = f"HTTP {status}" + (f" {detail}" if detail else "")
    return Outcome(
        classify_status(status),
        reason,
        status=status,
        retry_after_seconds=parse_retry_after(response.headers.get("retry-after")),
        too_large=status == 413,
    )


def _item_result(item: Any) -> dict[str, Any] | None:
    """The single `{"create": {...}}` value of a response item, or None if malformed."""
    if isinstance(item, dict) and len(item) == 1:
        (value,) = item.values()
        if isinstance(value, dict):
            return value
    return None


@dataclass
class _Tally:
    """Items of one bulk response, classed."""

    delivered: set[int] = field(default_factory=set)
    duplicates: int = 0
    retryable: int = 0
    permanent: int = 0
    first_retryable: str = ""
    rejected_index: int | None = None
    rejected_reason: str = ""

    def add(self, index: int, item: Any) -> None:
        """Class one item: 2xx or 409 delivered, 429 or 5xx retryable, anything else permanent."""
        result = _item_result(item)
        status = result.get("status") if result is not None else None
        if result is None or not isinstance(status, int):
            # A malformed item proves nothing either way; resending its row is safe.
            self.retryable += 1
            self.first_retryable = self.first_retryable or "malformed item"
        elif 200 <= status < 300:
            self.delivered.add(index)
        elif status == 409:  # version_conflict_engine_exception: this _id is already there
            self.delivered.add(index)
            self.duplicates += 1
        elif status == 429 or 500 <= status < 600:
            self.retryable += 1
            if not self.first_retryable:
                self.first_retryable = f"{status} {_describe_error(result.get('error'))}".rstrip()
        else:
            self.permanent += 1
            if self.rejected_index is None:
                self.rejected_index = index
                self.rejected_reason = f"{status} {_describe_error(result.get('error'))}".rstrip()


def _items_outcome(response: httpx.Response, count: int) -> Outcome:
    """A 2xx answer: success, or a mix to be classed item by item."""
    status = response.status_code
    content = response.content
    # Every item succeeded: parsing them would only confirm it (see the module docstring).
    clean = _CLEAN_ANSWER.match(content) is not None and content.rstrip().endswith(b"}")
    body = {"errors": False} if clean else _json_or_none(response)
    if not isinstance(body, dict):
        # Nothing says which rows landed; all of them can be sent again safely (`create`).
        return Outcome(OutcomeKind.RETRYABLE, "unreadable bulk response", status=status)
    if body.get("errors") is False:
        return Outcome(
            OutcomeKind.SUCCESS, f"{count} created", status, delivered=frozenset(range(count))
        )
    items = body.get("items")
    if not isinstance(items, list) or len(items) != count:
        found = len(items) if isinstance(items, list) else 0
        return Outcome(
            OutcomeKind.RETRYABLE, f"bulk response has {found} items for {count} rows", status
        )
    tally = _Tally()
    for index, item in enumerate(items):
        tally.add(index, item)
    done = frozenset(tally.delivered)
    already = f", {tally.duplicates} already present" if tally.duplicates else ""
    if tally.permanent:
        return Outcome(
            OutcomeKind.PERMANENT,
            f"item {tally.rejected_index} refused: {tally.rejected_reason} ({tally.permanent} "
            f"refused, {tally.retryable} to retry, {len(done)} delivered{already})",
            status,
            delivered=done,
            rejected_index=tally.rejected_index,
        )
    if tally.retryable:
        return Outcome(
            OutcomeKind.RETRYABLE,
            f"{tally.retryable} items to retry ({tally.first_retryable}), "
            f"{len(done)} delivered{already}",
            status,
            delivered=done,
        )
    return Outcome(OutcomeKind.SUCCESS, f"{count} delivered{already}", status, delivered=done)
