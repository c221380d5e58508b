r"""An Elasticsearch `_bulk` endpoint on loopback, answering as Elasticsearch documents it to.

Why a fake rather than Elasticsearch: a real node is a large JVM image with a half-minute start,
and the part the exporter depends on, the bulk API at the wire, is well documented ("Bulk API",
"Data streams", "Rejected requests", "Security: authentication"). What matters is reproduced:

- `POST|PUT /_bulk` or `/{index}/_bulk` (the path's index is the default `_index`); another
  path is 400 "no handler found", another method 405;
- the body is NDJSON: an action line (`create`, `index` or `delete`, with `_index`, `_id` and a
  few known parameters), then for `create`/`index` the source line. A body not ending in `\n`
  is 400 `illegal_argument_exception` "The bulk request must be terminated by a newline [\n]";
  an empty one 400 `action_request_validation_exception`; a malformed action line 400;
- `Content-Type` must be `application/x-ndjson` or `application/json` (the
  `vnd.elasticsearch+` forms too): another is 406 "Content-Type header [...] is not supported";
- security: no `Authorization` is 401 `security_exception` "missing authentication
  credentials" with `WWW-Authenticate`; a wrong credential 401 "unable to authenticate"; a known
  principal without the bulk privilege (`deny_bulk`) 403 "is unauthorized";
- a body over `max_content_length` (100 MB by default, as `http.max_content_length`) is 413;
- the answer is 200 `{"took", "errors", "items"}` with one item per action, in order: `create`
  of a new `_id` 201 `created`; of an existing `_id` 409 `version_conflict_engine_exception`
  (nothing stored twice, and `errors` is true, as in Elasticsearch); an invalid index name 400
  `invalid_index_name_exception`; a source that is not a JSON object 400
  `mapper_parsing_exception`; an index in `blocked_indices` 403 `cluster_block_exception`;
- data-stream mode (`data_stream=True`: every index is a data stream): only `create` (else item
  400 "only write ops with an op_type of create are allowed in data streams"), a source without
  `@timestamp` is item 400 `mapper_parsing_exception` caused by "data stream timestamp field
  [@timestamp] is missing" (unless `require_timestamp=False`, standing for a default pipeline
  that sets it), and items report the backing index `.ds-<stream>-<date>-000001`;
- item-level failure injection: the next N items (`fail_items`), every item of the next N
  requests (`fail_requests`), or every item whose `_id` matches a pattern (`reject_ids`).

Documents are kept by `_index` and `_id` with the source line's exact bytes, in arrival order.
Simplifications, none of which the exporter can observe: one shard, no refresh, no mappings
beyond "the source is a JSON object", `_id` unique per index (a real data stream is unique per
backing index, so a rollover between two sends could let a duplicate through).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from sealtrail.api.export import CredentialRef, ElasticAuth, ElasticSpec, ExportSpec, RetrySpec

from .harness import Failure, ReceiverCase
from .http_base import HttpReceiver, Request, Response

DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024
_BULK_PATH = re.compile(r"^/(?:(?P<index>[^/_][^/]*)/)?_bulk$")
_ACTIONS = ("create", "index", "delete", "update")
_KNOWN_PARAMETERS = frozenset({
    "_index", "_id", "routing", "pipeline", "require_alias", "require_data_stream",
    "if_seq_no", "if_primary_term", "version", "version_type", "dynamic_templates",
    "list_executed_pipelines",
})
_INDEX_FORBIDDEN = set('\\/*?"<>|, #:')
_MEDIA_TYPES = frozenset({
    "application/x-ndjson", "application/json",
    "application/vnd.elasticsearch+x-ndjson", "application/vnd.elasticsearch+json",
})
_DATA_STREAM_DATE = "2026.01.01"
Scheme = Literal["ApiKey", "Basic", "Bearer"]


def es_error(status: int, error_type: str, reason: str, **extra: Any) -> Response:
    """A whole-request error in Elasticsearch's shape (`error.root_cause`, `type`, `reason`)."""
    cause = {"type": error_type, "reason": reason, **extra}
    body = {"error": {"root_cause": [cause], **cause}, "status": status}
    return Response(status, json.dumps(body).encode())


def invalid_index_reason(name: str) -> str | None:
    """Why Elasticsearch would refuse `name` as an index name, or None if it would not."""
    if not name:
        return "must not be empty"
    if name != name.lower():
        return "must be lowercase"
    if any(char in _INDEX_FORBIDDEN for char in name):
        return 'must not contain the following characters [\\, /, *, ?, ", <, >, |, , ,, #, :]'
    if name[0] in "-_+":
        return "must not start with '_', '-', or '+'"
    if name in {".", ".."}:
        return "must not be '.' or '..'"
    if len(name.encode()) > 255:
        return "index name is too long, (" + str(len(name.encode())) + " > 255)"
    return None


@dataclass
class Document:
    index: str
    id: str
    source: bytes  # the source line exactly as received


@dataclass
class _ItemFailure:
    status: int
    error_type: str
    reason: str
    remaining: int | None = None  # items (fail_items) or requests (fail_requests); None: rule
    id_pattern: re.Pattern[str] | None = None
    per_request: bool = False
    active: bool = False  # a per-request failure applying to the request being handled


@dataclass
class _Action:
    line: int
    op: str
    index: str | None
    id: str | None
    source: bytes | None


class BulkParseError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("bulk parse error")
        self.response = response


def _check_meta(op: str, meta: dict[str, Any], number: int, path_index: str | None) -> _Action:
    """The action's metadata, validated as Elasticsearch validates a bulk request up front."""
    unknown = [key for key in meta if key not in _KNOWN_PARAMETERS]
    if unknown:
        raise BulkParseError(es_error(
            400, "illegal_argument_exception",
            f"Action/metadata line [{number}] contains an unknown parameter [{unknown[0]}]"))
    index = meta.get("_index", path_index)
    if index is None:
        raise BulkParseError(es_error(400, "action_request_validation_exception",
                                      "Validation Failed: 1: index is missing;"))
    doc_id = meta.get("_id")
    if doc_id is not None and len(str(doc_id).encode()) > 512:
        raise BulkParseError(es_error(
            400, "action_request_validation_exception",
            f"Validation Failed: 1: id [{doc_id}] is too long, must be no longer than 512 "
            f"bytes but was: {len(str(doc_id).encode())};"))
    if op == "delete" and doc_id is None:
        raise BulkParseError(es_error(400, "action_request_validation_exception",
                                      "Validation Failed: 1: id is missing;"))
    return _Action(number, op, str(index), None if doc_id is None else str(doc_id), None)


class ElasticReceiver(HttpReceiver):
    """A single-node Elasticsearch, as far as `_bulk` goes."""

    def __init__(
        self,
        port: int | None = None,
        *,
        scheme: Scheme | None = "ApiKey",
        credential: str = "test-api-key",
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        data_stream: bool = False,
        require_timestamp: bool = True,
    ) -> None:
        super().__init__(port)
        self.scheme: Scheme | None = scheme  # None: security off, anonymous allowed
        self.credential = credential  # for Basic: "username:password"
        self.deny_bulk = False  # authenticated, but no privilege to write: 403
        self.max_content_length = max_content_length
        self.data_stream = data_stream
        self.require_timestamp = require_timestamp
        self.blocked_indices: set[str] = set()
        self.documents: dict[str, dict[str, Document]] = {}
        self.arrivals: list[Document] = []
        self.responses: list[dict[str, Any]] = []  # every 200 bulk answer, for tests
        self._item_failures: list[_ItemFailure] = []
        self._store_lock = threading.RLock()
        self._seq_no = 0

    # -- lifecycle -------------------------------------------------------------------------


    def accept(self, scheme: Scheme | None, credential: str = "") -> None:
        """Accept only this scheme and credential from now on (None: security disabled)."""
        with self.lock:
            self.scheme = scheme
            self.credential = credential

    def fail_items(self, count: int, status: int = 429,
                   error_type: str = "es_rejected_execution_exception",
                   reason: str = "rejected execution of coordinating operation") -> None:
        """The next `count` items (in any requests) answer this error and are not stored."""
        with self._store_lock:
            self._item_failures.append(_ItemFailure(status, error_type, reason, count))

    def fail_requests(self, count: int, status: int = 429,
                      error_type: str = "es_rejected_execution_exception",
                      reason: str = "rejected execution of coordinating operation") -> None:
        """Every item of the next `count` bulk requests answers this error."""
        with self._store_lock:
            self._item_failures.append(
                _ItemFailure(status, error_type, reason, count, per_request=True)
            )

    def reject_ids(self, pattern: str, status: int = 400,
                   error_type: str = "mapper_parsing_exception",
                   reason: str = "failed to parse") -> None:
        """From now on, every item whose `_id` matches `pattern` (re.search) answers this."""
        with self._store_lock:
            self._item_failures.append(
                _ItemFailure(status, error_type, reason, id_pattern=re.compile(pattern))
            )

    def clear_item_failures(self) -> None:
        with self._store_lock:
            self._item_failures.clear()

    # -- reading back ------------------------------------------------------------------------

    def sources(self, index: str | None = None) -> list[bytes]:
        """Stored sources in arrival order (each document once), optionally of one index."""
        with self._store_lock:
            return [doc.source for doc in self.arrivals if index is None or doc.index == index]

    def ids(self) -> list[tuple[str, str]]:
        with self._store_lock:
            return [(doc.index, doc.id) for doc in self.arrivals]

    # -- the protocol ------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        body = request.decoded_body()
        if len(body) > self.max_content_length:
            return Response(413, b"", {"content-type": "text/plain"})
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        split = urlsplit(request.path)
        matched = _BULK_PATH.match(split.path)
        if matched is None:
            return Response(400, json.dumps({
                "error": f"no handler found for uri [{request.path}] and method "
                         f"[{request.method}]"}).encode())
        if request.method not in {"POST", "PUT"}:
            return Response(405, json.dumps({
                "error": f"Incorrect HTTP method for uri [{request.path}] and method "
                         f"[{request.method}], allowed: [POST, PUT]", "status": 405}).encode())
        refused = self._check_content_type(request.header("content-type"))
        if refused is not None:
            return refused
        try:
            actions = self._parse(body, matched.group("index"))
        except BulkParseError as error:
            return error.response
        started = time.monotonic()
        with self._store_lock:
            self._start_request_failures()
            items = [self._apply(action) for action in actions]
            self._end_request_failures()
        errors = any("error" in next(iter(item.values())) for item in items)
        answer = {"errors": errors, "took": int((time.monotonic() - started) * 1000),
                  "items": items}
        with self._store_lock:
            self.responses.append(answer)
        return Response(200, json.dumps(answer).encode())

    def _authenticate(self, request: Request) -> Response | None:
        if self.scheme is None:
            return None
        given = request.header("authorization")
        challenge = {"www-authenticate": 'Basic realm="security", charset="UTF-8", '
                                         'Bearer realm="security", ApiKey'}
        if not given:
            response = es_error(401, "security_exception",
                                f"missing authentication credentials for REST request "
                                f"[{request.path}]")
            response.headers.update(challenge)
            return response
        scheme, _, value = given.partition(" ")
        if scheme.lower() == self.scheme.lower() and value.strip() == self._expected():
            if self.deny_bulk:
                return es_error(403, "security_exception",
                                "action [indices:data/write/bulk] is unauthorized for user "
                                "[sealtrail] with effective roles [viewer]")
            return None
        response = es_error(401, "security_exception",
                            "unable to authenticate with provided credentials and anonymous "
                            "access is not allowed for this request")
        response.headers.update(challenge)
        return response

    def _expected(self) -> str:
        if self.scheme == "Basic":
            return base64.b64encode(self.credential.encode()).decode("ascii")
        return self.credential

    @staticmethod
    def _check_content_type(value: str | None) -> Response | None:
        media = (value or "").split(";")[0].strip().lower()
        if media in _MEDIA_TYPES:
            return None
        if value and "/" not in media:
            return es_error(400, "media_type_header_exception",
                            "Invalid media-type value on headers [Content-Type]")
        return Response(406, json.dumps({
            "error": f"Content-Type header [{value or ''}] is not supported",
            "status": 406}).encode())

    def _parse(self, body: bytes, path_index: str | None) -> list[_Action]:
        if not body:
            raise BulkParseError(es_error(400, "action_request_validation_exception",
                                          "Validation Failed: 1: no requests added;"))
        if not body.endswith(b"\n"):
            raise BulkParseError(es_error(400, "illegal_argument_exception",
                                          "The bulk request must be terminated by a newline [\\n]"))
        lines = body[:-1].split(b"\n")
        actions: list[_Action] = []
        position = 0
        while position < len(lines):
            number = position + 1
            action = self._parse_action(lines[position], number, path_index)
            position += 1
            if action.op in {"create", "index"}:
                if position >= len(lines):
                    raise BulkParseError(es_error(
                        400, "illegal_argument_exception",
                        f"The bulk request must be terminated by a newline [\\n] (action line "
                        f"[{number}] has no source)"))
                action.source = lines[position]
                position += 1
            actions.append(action)
        return actions

    @staticmethod
    def _parse_action(line: bytes, number: int, path_index: str | None) -> _Action:
        def malformed(detail: str) -> BulkParseError:
            return BulkParseError(es_error(
                400, "illegal_argument_exception",
                f"Malformed action/metadata line [{number}], {detail}"))

        try:
            parsed = json.loads(line)
        except ValueError:
            raise malformed("expected START_OBJECT but found something else") from None
        if not isinstance(parsed, dict) or len(parsed) != 1:
            raise malformed("expected START_OBJECT with exactly one action")
        ((op, meta),) = parsed.items()
        if op not in _ACTIONS:
            raise malformed(
                f"expected field [create], [delete], [index] or [update] but found [{op}]")
        if op == "update":
            raise malformed("update is not modelled by this test receiver")
        if not isinstance(meta, dict):
            raise malformed("expected START_OBJECT after the action")
        return _check_meta(op, meta, number, path_index)

    # -- items -------------------------------------------------------------------------------

    def _start_request_failures(self) -> None:
        for failure in self._item_failures:
            if failure.per_request and failure.remaining:
                failure.remaining -= 1
                failure.active = True
                return

    def _end_request_failures(self) -> None:
        for failure in self._item_failures:
            failure.active = False
        self._item_failures = [f for f in self._item_failures
                               if f.remaining is None or f.remaining > 0]

    def _item_failure_for(self, doc_id: str) -> _ItemFailure | None:
        for failure in self._item_failures:
            if failure.per_request:
                if failure.active:
                    return failure
            elif failure.id_pattern is not None:
                if failure.id_pattern.search(doc_id):
                    return failure
            elif failure.remaining:
                failure.remaining -= 1
                return failure
        return None

    def _apply(self, action: _Action) -> dict[str, Any]:
        index = action.index or ""
        doc_id = action.id or uuid.uuid4().hex[:20]
        reported = f".ds-{index}-{_DATA_STREAM_DATE}-000001" if self.data_stream else index
        refusal = self._refusal(action, index, doc_id, reported)
        if refusal is not None:
            status, error = refusal
            return {action.op: {"_index": reported, "_id": doc_id, "status": status,
                                "error": error}}
        if action.op == "delete":
            return self._delete(index, doc_id, reported)
        existing = self.documents.get(index, {}).get(doc_id)
        document = Document(index, doc_id, bytes(action.source or b""))
        if existing is not None:  # `index` over an existing document replaces it in place
            self.arrivals[self.arrivals.index(existing)] = document
        else:
            self.arrivals.append(document)
        self.documents.setdefault(index, {})[doc_id] = document
        self._seq_no += 1
        return {action.op: {
            "_index": reported, "_id": doc_id, "_version": 1 if existing is None else 2,
            "result": "created" if existing is None else "updated",
            "_shards": {"total": 2, "successful": 1, "failed": 0},
            "_seq_no": self._seq_no - 1, "_primary_term": 1,
            "status": 201 if existing is None else 200,
        }}

    def _refusal(self, action: _Action, index: str, doc_id: str,
                 reported: str) -> tuple[int, dict[str, Any]] | None:
        """The item's status and error, in the order Elasticsearch meets them, or None."""
        invalid = invalid_index_reason(index)
        if invalid is not None:
            return 400, {"type": "invalid_index_name_exception",
                         "reason": f"Invalid index name [{index}], {invalid}", "index": index}
        if index in self.blocked_indices:
            return 403, {"type": "cluster_block_exception",
                         "reason": f"index [{index}] blocked by: [FORBIDDEN/8/index write (api)];"}
        if self.data_stream and action.op != "create":
            return 400, {"type": "illegal_argument_exception",
                         "reason": "only write ops with an op_type of create are allowed in "
                                   "data streams"}
        injected = self._item_failure_for(doc_id)
        if injected is not None:
            return injected.status, {"type": injected.error_type, "reason": injected.reason}
        if action.op == "delete":
            return None
        try:
            parsed = json.loads(action.source or b"")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return 400, {"type": "mapper_parsing_exception", "reason": "failed to parse",
                         "caused_by": {"type": "not_x_content_exception",
                                       "reason": "Compressor detection can only be called on "
                                                 "some xcontent bytes"}}
        if self.data_stream and self.require_timestamp and "@timestamp" not in parsed:
            return 400, {"type": "mapper_parsing_exception", "reason": "failed to parse",
                         "caused_by": {"type": "illegal_argument_exception",
                                       "reason": "data stream timestamp field [@timestamp] is "
                                                 "missing"}}
        if action.op == "create" and doc_id in self.documents.get(index, {}):
            return 409, {"type": "version_conflict_engine_exception",
                         "reason": f"[{doc_id}]: version conflict, document already exists "
                                   f"(current version [1])",
                         "index_uuid": "aAbBcCdD", "shard": "0", "index": reported}
        return None

    def _delete(self, index: str, doc_id: str, reported: str) -> dict[str, Any]:
        existing = self.documents.get(index, {}).pop(doc_id, None)
        if existing is not None:
            self.arrivals.remove(existing)
        return {"delete": {
            "_index": reported, "_id": doc_id, "_version": 2,
            "result": "deleted" if existing is not None else "not_found",
            "_shards": {"total": 2, "successful": 1, "failed": 0},
            "status": 200 if existing is not None else 404,
        }}


class ElasticCase(ReceiverCase):
    """The conformance suite's view of `ElasticReceiver`.

    `retryable` failures are, by default, every item of a request answering 429
    `es_rejected_execution_exception` inside a 200 (the partial-failure path most shippers get
    wrong); `retryable="http503"` answers a whole-request 503 instead.
    """

    kind = "elastic"
    deduplicates = True

    def __init__(self, retryable: Literal["items", "http503"] = "items") -> None:
        self.receiver = ElasticReceiver()
        self.retryable = retryable

    def start(self) -> None:
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()

    def close(self) -> None:
        self.receiver.stop()

    def export_spec(self, name: str, credential_file: Path) -> ExportSpec:
        self.set_credential(credential_file.read_text(encoding="utf-8").strip())
        return ExportSpec(
            name=name,
            elastic=ElasticSpec(
                url=self.receiver.url,
                auth=ElasticAuth(api_key=CredentialRef(file=str(credential_file))),
            ),
            retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200),
        )

    def set_credential(self, value: str) -> None:
        self.receiver.accept("ApiKey", value)

    def fail_next(self, failure: Failure, count: int) -> None:
        if failure == "retryable":
            if self.retryable == "http503":
                response = es_error(503, "cluster_block_exception",
                                    "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered "
                                    "/ initialized];")
                self.receiver.fail_next(count, 503, response.body)
            else:
                self.receiver.fail_requests(count, 429, "es_rejected_execution_exception",
                                            "rejected execution of coordinating operation")
        elif failure == "permanent":
            self.receiver.fail_requests(count, 400, "mapper_parsing_exception",
                                        "failed to parse field [seq] of type [long]")
        else:
            response = es_error(401, "security_exception",
                                "unable to authenticate with provided credentials and "
                                "anonymous access is not allowed for this request")
            self.receiver.fail_next(count, 401, response.body,
                                    {"www-authenticate": 'ApiKey, Basic realm="security"'})

    def received(self) -> list[bytes]:
        return self.receiver.sources()
