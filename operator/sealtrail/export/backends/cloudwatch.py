"""CloudWatch Logs `PutLogEvents`: each row is one log event whose `message` is the stored row.

Why it looks the way it does:

- botocore does the AWS parts: SigV4 signing and the standard credential chain (environment,
  shared files, web identity for IRSA, container and instance metadata). Nothing here signs or
  reads a key by hand. botocore's own retries are off (one attempt in all): the export loop owns
  retries, and two layers of backoff would hide throttling from it.
- boto3 is synchronous, so a whole batch is sent from a worker thread (`asyncio.to_thread`)
  and the event loop never waits on the network.
- The log stream is the row's destination (`${tenant:id}` by default), so one batch can hold
  rows for several streams. Rows are grouped per stream, in order of first appearance, and each
  stream's rows are sent in batch order: a tenant's chain arrives in chain order. A stream's rows
  are further split into several calls, never reordered, wherever PutLogEvents would refuse one
  call: a timestamp going backwards (events must be chronological, and sorting would break the
  chain's order), a span of 24 hours or more, 10,000 events, or 1,048,576 bytes counted as the
  UTF-8 message plus 26 bytes per event.
- Sequence tokens are ignored by the service now; none is sent, and parallel calls are allowed.
  `InvalidSequenceTokenException` and `DataAlreadyAcceptedException` are documented as never
  returned any more; should one come, it is a plain 400 and so PERMANENT: visible, and it
  pauses the export, where calling it delivered could lose rows on a guess.
- A missing group or stream (`ResourceNotFoundException`) is created, stream first and the
  group only if that is what is missing, and the call is made once more; with `createMissing`
  off it is PERMANENT. A permanent answer concerns one call's rows or stream, so the batch's
  other calls still go; a retryable or auth answer stops the batch (the next call would fare
  no better).
- Events outside the service's time window (over 14 days old, older than the group's retention,
  over 2 hours ahead) are refused one by one while the rest of the call is stored; the answer
  says which in `rejectedLogEventsInfo`. Those rows will never be accepted, so the outcome is
  PERMANENT with `rejected_index` on the first of them and `delivered` naming exactly the rows
  that were stored, before and after them: only the refused rows are sent again.
- Only the error code, HTTP status and our own description go into `Outcome.reason`: AWS
  validation messages can quote the offending value (a row), and auth messages the key id.
- botocore's client-side parameter validation is off: it walks every event of every call in
  Python (about a third of the backend's CPU per row), and the calls are built to pass it
  (`plan_calls` keeps 1 to 10,000 events and the byte and time limits, messages are rows and
  never empty, stream names follow the log-stream naming rule). Should one not, the service
  refuses it with its own `InvalidParameterException`, which is PERMANENT as botocore's
  `ParamValidationError` was. Timestamps are parsed once per second of row time (a backlog has
  many rows per second); the stored bytes go out as the message, decoded once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol, cast

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from sealtrail.api.destinations import CLOUDWATCH_LOG_STREAM
from sealtrail.api.export import CloudWatchSpec, ExportSpec
from sealtrail.export.backends.base import Backend, BatchLimits, ExportRow, destination_of
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind, classify_status, parse_retry_after

__all__ = [
    "EVENT_OVERHEAD_BYTES",
    "MAX_BATCH_BYTES",
    "MAX_EVENTS",
    "MAX_SPAN_MS",
    "CloudWatchBackend",
    "PlannedCall",
    "plan_calls",
    "timestamp_ms",
]

#: PutLogEvents limits (API reference, "PutLogEvents").
MAX_EVENTS: Final = 10_000
MAX_BATCH_BYTES: Final = 1_048_576
EVENT_OVERHEAD_BYTES: Final = 26
MAX_SPAN_MS: Final = 24 * 3600 * 1000

# The service's acceptance window. Used only to tell which side of an ambiguous index a row is
# on (see `_rejected_in_call`), never to hold rows back: the service has the last word.
_TOO_OLD_MS: Final = 14 * 24 * 3600 * 1000
_TOO_NEW_MS: Final = 2 * 3600 * 1000
_CLOCK_MARGIN_MS: Final = 5 * 60 * 1000

# Error codes, as AWS services spell them (the same code may come with several statuses).
_RETRYABLE_CODES: Final = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "RequestLimitExceeded",
    "ServiceUnavailableException", "ServiceUnavailable", "InternalFailure",
    "InternalServerError", "RequestTimeout", "RequestTimeoutException", "RequestExpired",
    "OperationAbortedException", "PriorRequestNotComplete",
})
_AUTH_CODES: Final = frozenset({
    "ExpiredTokenException", "ExpiredToken", "UnrecognizedClientException",
    "InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature",
    "InvalidClientTokenId", "MissingAuthenticationToken", "AccessDeniedException",
    "AccessDenied", "NotAuthorized",
})
# botocore failing to find or fetch credentials (no keys, a broken profile, STS refusing the
# web identity token): the chain must be re-read, like an expired token.
_CREDENTIAL_ERRORS: Final = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.NoAuthTokenError,
    botocore.exceptions.TokenRetrievalError,
    botocore.exceptions.UnauthorizedSSOTokenError,
)
# Everything botocore raises for the network, credentials or a refused request. Anything else
# is a bug and is left to raise rather than be retried for ever as if it were an outage.
_AWS_ERRORS: Final = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)
_SAFE_MESSAGE: Final = re.compile(r"^[A-Za-z0-9 ,.;()_-]{1,160}$")

#: Whole seconds of row time kept (in ms); more than this start the cache afresh.
_SECONDS_LIMIT: Final = 4096

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


class _LogsClient(Protocol):
    """The part of boto3's untyped `logs` client this module calls, with the types it uses."""

    def put_log_events(self, **kwargs: Any) -> dict[str, Any]: ...
    def create_log_group(self, **kwargs: Any) -> dict[str, Any]: ...
    def create_log_stream(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One PutLogEvents call: a stream and the batch indices it carries, in batch order."""

    stream: str
    indices: tuple[int, ...]


def timestamp_ms(timestamp: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 row timestamp (exact integer arithmetic)."""
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


def plan_calls(
    streams: Sequence[str], timestamps: Sequence[int], sizes: Sequence[int]
) -> list[PlannedCall]:
    """Split one batch into PutLogEvents calls the service will take, never reordering rows.

    `streams[i]`, `timestamps[i]` (ms) and `sizes[i]` (message bytes + 26) describe row `i`.
    Streams go in order of first appearance; within a stream a new call starts where the
    timestamp goes backwards, where the span from the call's first event would reach 24 hours,
    or where 10,000 events or 1,048,576 bytes would be exceeded.
    """
    by_stream: dict[str, list[int]] = {}
    for index, stream in enumerate(streams):
        by_stream.setdefault(stream, []).append(index)
    calls: list[PlannedCall] = []
    for stream, indices in by_stream.items():
        current: list[int] = []
        used = 0
        for index in indices:
            stamp, size = timestamps[index], sizes[index]
            if current and (
                len(current) >= MAX_EVENTS
                or used + size > MAX_BATCH_BYTES
                or stamp < timestamps[current[-1]]
                or stamp - timestamps[current[0]] >= MAX_SPAN_MS
            ):
                calls.append(PlannedCall(stream, tuple(current)))
                current, used = [], 0
            current.append(index)
            used += size
        if current:
            calls.append(PlannedCall(stream, tuple(current)))
    return calls


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _error_code(error: botocore.exceptions.ClientError) -> tuple[str, int | None, str, str | None]:
    """Code, HTTP status, message and Retry-After of an AWS error answer (boto3 gives dicts)."""
    response = cast("dict[str, Any]", error.response)
    details = cast("dict[str, Any]", response.get("Error") or {})
    metadata = cast("dict[str, Any]", response.get("ResponseMetadata") or {})
    headers = cast("dict[str, str]", metadata.get("HTTPHeaders") or {})
    status = metadata.get("HTTPStatusCode")
    return (
        str(details.get("Code") or "Unknown"),
        status if isinstance(status, int) else None,
        str(details.get("Message") or ""),
        headers.get("retry-after"),
    )


def _classify_client_error(error: botocore.exceptions.ClientError, action: str) -> Outcome:
    """The class of an AWS error answer: its code first, the HTTP status when the code is new."""
    code, status, message, retry_after = _error_code(error)
    if code in _AUTH_CODES:
        kind = OutcomeKind.AUTH
    elif code in _RETRYABLE_CODES:
        kind = OutcomeKind.RETRYABLE
    elif status is not None:
        kind = classify_status(status)
        if kind is OutcomeKind.SUCCESS:  # an error code with a 2xx: never trust it as delivery
            kind = OutcomeKind.RETRYABLE
    else:
        kind = OutcomeKind.PERMANENT
    reason = f"{code}" + (f" (HTTP {status})" if status is not None else "") + f" {action}"
    # Which rule a refused call broke ("... must be in chronological order") helps an operator,
    # so that message is kept when it is short and plain; validation messages, which quote the
    # offending value (a row), and every other service message are left out.
    if code == "InvalidParameterException" and _SAFE_MESSAGE.fullmatch(message):
        reason += f": {message}"
    return Outcome(kind, reason, status=status,
                   retry_after_seconds=parse_retry_after(retry_after))


def _classify_exception(error: Exception, action: str) -> Outcome:
    """The class of a failure that is not an AWS error answer (transport, credentials, input)."""
    if isinstance(error, botocore.exceptions.ClientError):
        return _classify_client_error(error, action)
    name = type(error).__name__
    if isinstance(error, _CREDENTIAL_ERRORS):
        detail = (
            "no AWS credentials found in the standard chain (environment, shared files, web "
            "identity token, container or instance metadata)"
            if isinstance(error, botocore.exceptions.NoCredentialsError)
            else f"AWS credentials could not be loaded ({name})"
        )
        return Outcome(OutcomeKind.AUTH, f"{detail} {action}")
    if isinstance(error, botocore.exceptions.NoRegionError):
        return Outcome(OutcomeKind.PERMANENT, "no AWS region: set cloudwatch.region or AWS_REGION")
    if isinstance(error, botocore.exceptions.ParamValidationError):
        return Outcome(OutcomeKind.PERMANENT, f"request refused by botocore's checks {action}")
    # Connection refused or reset, timeouts, DNS, TLS, a proxy: all transient (base.py).
    return Outcome(OutcomeKind.RETRYABLE, f"{name} {action}")


class CloudWatchBackend(Backend):
    """CloudWatch Logs `PutLogEvents`, through boto3 and the standard AWS credential chain."""

    kind = "cloudwatch"
    destination_rule = CLOUDWATCH_LOG_STREAM

    def __init__(self, spec: ExportSpec, clients: HttpClients) -> None:
        """Read the CloudWatch block. The boto3 client is made on first send, in a thread."""
        super().__init__(spec, clients)
        if spec.cloudwatch is None:
            raise ValueError("CloudWatchBackend needs an export with a 'cloudwatch' block")
        self.cloudwatch: CloudWatchSpec = spec.cloudwatch
        self._lock = threading.Lock()
        self._client: _LogsClient | None = None
        self._credential_digest: str | None = None
        self._aws_secrets: list[str] = []  # secret key and session token last loaded
        self._seconds: dict[str, int] = {}  # `timestamp_ms` of a row second, see `_timestamp`

    # -- the Backend interface ----------------------------------------------------------------

    @property
    def limits(self) -> BatchLimits:
        """10,000 events and 1 MiB per call, counting 26 bytes per event beside the message."""
        return BatchLimits(
            max_events=MAX_EVENTS,
            max_bytes=MAX_BATCH_BYTES,
            max_row_bytes=MAX_BATCH_BYTES - EVENT_OVERHEAD_BYTES,
        )

    def row_size(self, row: ExportRow) -> int:
        """The message's UTF-8 bytes (the stored row, as is) plus the service's 26 per event."""
        return len(row.body) + EVENT_OVERHEAD_BYTES

    def default_destination(self) -> str:
        """The export's log stream template (`${tenant:id}` unless configured)."""
        return self.cloudwatch.log_stream

    def refresh_credentials(self) -> None:
        """Drop the client; the next send builds a new session that re-reads the whole chain.

        A new session re-reads environment variables, shared files and the web identity token
        file, so rotated static keys and a fresh IRSA token are both picked up. Building it is
        left to the next send because it takes CPU time (and maybe STS) off the event loop.
        """
        with self._lock:
            self._client = None

    def credential_version(self) -> str | None:
        """First 12 hex digits of SHA-256 of the access key id last used (never the key)."""
        return self._credential_digest

    def secrets(self) -> list[str]:
        """The secret access key and session token last loaded, for the loop to redact."""
        return list(self._aws_secrets)

    async def send(self, rows: Sequence[ExportRow]) -> Outcome:
        """Send the batch as one or more PutLogEvents calls from a worker thread."""
        if not rows:
            return Outcome.success("nothing to send")
        return await asyncio.to_thread(self._send_blocking, list(rows))

    # -- sending (in a worker thread) ---------------------------------------------------------

    def _send_blocking(self, rows: list[ExportRow]) -> Outcome:
        events: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            try:
                events.append({"timestamp": self._timestamp(row.timestamp),
                               "message": row.body.decode("utf-8")})
            except (ValueError, UnicodeDecodeError):
                return Outcome(OutcomeKind.PERMANENT,
                               f"row seq {row.seq} has no valid timestamp or is not UTF-8",
                               rejected_index=index)  # nothing was sent
        try:
            client = self._get_client()
        except _AWS_ERRORS as error:
            return _classify_exception(error, "while creating the CloudWatch Logs client")
        calls = plan_calls([destination_of(row) for row in rows],
                           [event["timestamp"] for event in events],
                           [self.row_size(row) for row in rows])
        delivered: set[int] = set()
        first_failure: Outcome | None = None
        for call in calls:
            outcome, accepted = self._put(client, call, events, rows)
            delivered.update(accepted)
            if outcome.ok:
                continue
            first_failure = first_failure or outcome
            if outcome.kind is not OutcomeKind.PERMANENT:
                break  # throttled, down or unauthorised: the next call would fare no better
            # A permanent answer concerns this call's rows or stream only: go on with the rest.
        if first_failure is None:
            return Outcome.success(f"{len(rows)} events in {len(calls)} call(s)")
        return dataclasses.replace(first_failure, delivered=frozenset(delivered))

    def _timestamp(self, timestamp: str) -> int:
        """`timestamp_ms(timestamp)`, its whole seconds cached for the row's usual form.

        Rows store `YYYY-MM-DDTHH:MM:SS.ffffffZ`: the second is parsed once and the
        milliseconds added from the digits (floor, as `timestamp_ms` divides). Anything else
        takes `timestamp_ms` itself (and its ValueError).
        """
        fraction = timestamp[20:26]
        if not (len(timestamp) == 27 and timestamp[19] == "." and timestamp[26] == "Z"
                and fraction.isascii() and fraction.isdigit()):
            return timestamp_ms(timestamp)
        second = timestamp[:19]
        whole = self._seconds.get(second)
        if whole is None:
            if len(self._seconds) >= _SECONDS_LIMIT:
                self._seconds.clear()
            whole = timestamp_ms(second + ".000000Z")
            self._seconds[second] = whole
        return whole + int(fraction[:3])

    def _put(
        self,
        client: _LogsClient,
        call: PlannedCall,
        events: list[dict[str, Any]],
        rows: list[ExportRow],
    ) -> tuple[Outcome, set[int]]:
        """One PutLogEvents call (creating the group/stream once if allowed).

        Returns the outcome and the batch indices the service stored.
        """
        group = self.cloudwatch.log_group
        where = f"to log group {group!r}, stream {call.stream!r}"
        request = {
            "logGroupName": group,
            "logStreamName": call.stream,
            "logEvents": [events[index] for index in call.indices],
        }
        try:
            try:
                response = client.put_log_events(**request)
            except botocore.exceptions.ClientError as error:
                if _error_code(error)[0] != "ResourceNotFoundException":
                    raise
                if not self.cloudwatch.create_missing:
                    return Outcome(
                        OutcomeKind.PERMANENT,
                        f"log group {group!r} or stream {call.stream!r} does not exist and "
                        "createMissing is false",
                        status=400,
                    ), set()
                self._create(client, call.stream)
                response = client.put_log_events(**request)
        except _AWS_ERRORS as error:  # base.py: never raise for I/O (a bug still raises)
            return _classify_exception(error, f"from PutLogEvents {where}"), set()
        info = cast("dict[str, Any]", response.get("rejectedLogEventsInfo") or {})
        rejected, windows = self._rejected_in_call(info, call, events)
        if not rejected:
            return Outcome.success(), set(call.indices)
        accepted = set(call.indices) - rejected
        first = min(rejected)
        reason = (
            f"CloudWatch refused {len(rejected)} of {len(call.indices)} events {where}, "
            f"first row seq {rows[first].seq}: {' and '.join(windows)}; "
            "the service will never accept them"
        )
        return Outcome(OutcomeKind.PERMANENT, reason, rejected_index=first), accepted

    def _create(self, client: _LogsClient, stream: str) -> None:
        """Create the stream, and the group first if that is what is missing.

        The stream first: a role allowed `CreateLogStream` but not `CreateLogGroup` (common with
        IRSA) still works when only the stream is new.
        """
        group = self.cloudwatch.log_group
        try:
            client.create_log_stream(logGroupName=group, logStreamName=stream)
        except botocore.exceptions.ClientError as error:
            code = _error_code(error)[0]
            if code == "ResourceAlreadyExistsException":
                return
            if code != "ResourceNotFoundException":
                raise
            try:
                client.create_log_group(logGroupName=group)
            except botocore.exceptions.ClientError as group_error:
                if _error_code(group_error)[0] != "ResourceAlreadyExistsException":
                    raise
            try:
                client.create_log_stream(logGroupName=group, logStreamName=stream)
            except botocore.exceptions.ClientError as stream_error:
                if _error_code(stream_error)[0] != "ResourceAlreadyExistsException":
                    raise

    @staticmethod
    def _rejected_in_call(
        info: dict[str, Any], call: PlannedCall, events: list[dict[str, Any]]
    ) -> tuple[set[int], list[str]]:
        """Batch indices of the call's events the service refused, and which windows.

        A call is chronological, so too-old and expired events are a prefix of it and too-new
        ones a suffix. The AWS reference says `tooNewLogEventStartIndex` is the first too-new
        event (inclusive) and `tooOldLogEventEndIndex` ends the too-old prefix (exclusive), but
        also calls it "the index of the last log event that is too old"; moto reports the last
        too-old event and the *last* too-new one. So the indices are read in the widest sense
        and our clock settles the rows they leave ambiguous: a row the service stored but we
        call refused is only sent again (a duplicate, which the chain shows), while a row it
        refused that we called stored would be lost. Retention is unknown here, so the event at
        `expiredLogEventEndIndex` counts as refused.
        """
        stamps = [events[index]["timestamp"] for index in call.indices]
        count = len(stamps)
        now = _now_ms()
        local: set[int] = set()
        windows: list[str] = []

        def index_of(key: str) -> int | None:
            value = info.get(key)
            return min(max(value, 0), count - 1) if isinstance(value, int) else None

        too_old = index_of("tooOldLogEventEndIndex")
        if too_old is not None:
            local.update(range(too_old))
            local.update(j for j in range(count)
                         if stamps[j] < now - _TOO_OLD_MS + _CLOCK_MARGIN_MS)
            windows.append("older than 14 days")
        expired = index_of("expiredLogEventEndIndex")
        if expired is not None:
            local.update(range(expired + 1))
            windows.append("older than the log group's retention")
        too_new = index_of("tooNewLogEventStartIndex")
        if too_new is not None:
            local.update(range(too_new, count))
            local.update(j for j in range(count)
                         if stamps[j] > now + _TOO_NEW_MS - _CLOCK_MARGIN_MS)
            windows.append("more than 2 hours in the future")
        return {call.indices[j] for j in local}, windows

    # -- the boto3 client ---------------------------------------------------------------------

    def _get_client(self) -> _LogsClient:
        """The client, built on first use (and after `refresh_credentials`).

        Built outside the lock: building can wait on STS (web identity), and
        `refresh_credentials` runs on the event loop, which must never wait for that.
        """
        with self._lock:
            client = self._client
        if client is None:
            client, digest = self._build_client()
            with self._lock:
                self._client, self._credential_digest = client, digest
        return client

    def _build_client(self) -> tuple[_LogsClient, str | None]:
        """A new session (so the chain is read afresh) and a `logs` client without retries.

        Raises NoCredentialsError at once when the chain finds nothing, so that the outcome
        says so plainly instead of failing inside a signed request.
        """
        spec = self.spec
        timeout = spec.retry.request_timeout_seconds
        options: dict[str, Any] = {
            # `total_max_attempts` counts the first request: 1 means botocore never retries.
            # (`max_attempts` in this dict counts *retries*: 1 would mean two attempts.)
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "user_agent_extra": "sealtrail",
            "parameter_validation": False,  # see the module docstring
        }
        if spec.proxy_url is not None:
            options["proxies"] = {"http": spec.proxy_url, "https": spec.proxy_url}
        if spec.tls.cert_file is not None and spec.tls.key_file is not None:
            options["client_cert"] = (spec.tls.cert_file, spec.tls.key_file)
        verify: bool | str | None = None  # botocore's default: AWS_CA_BUNDLE, else certifi
        if spec.tls.insecure_skip_verify:
            verify = False
        elif spec.tls.ca_file is not None:
            verify = spec.tls.ca_file
        session = boto3.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError
        frozen = credentials.get_frozen_credentials()
        access_key = cast("str", frozen.access_key)
        self._aws_secrets = [str(value) for value in (frozen.secret_key, frozen.token) if value]
        client = session.client(
            "logs",
            region_name=self.cloudwatch.region,
            endpoint_url=self.cloudwatch.endpoint_url,
            verify=verify,
            config=Config(**options),
        )
        digest = hashlib.sha256(access_key.encode()).hexdigest()[:12]
        return cast("_LogsClient", client), digest
