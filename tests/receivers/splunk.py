"""A Splunk HTTP Event Collector on loopback, answering as Splunk documents HEC to answer.

Why a fake rather than Splunk: Splunk Enterprise is a multi-gigabyte image with a licence
and a minute-long start, and its behaviour at the wire is well documented ("Format events for
HTTP Event Collector", "Troubleshoot HTTP Event Collector", "About HTTP Event Collector
Indexer Acknowledgment"). What matters for the exporter is reproduced:

- the body is JSON envelopes back to back (whitespace between them allowed);
- `Authorization: Splunk <token>`: none is 401 code 2, another scheme 401 code 3, a wrong
  token 403 code 4;
- body over `max_content_length` is 413; no body 400 code 5; malformed JSON 400 code 6; an
  index the token may not write 400 code 7; no `event` 400 code 12; a blank one 400 code 13,
  each with `invalid-event-number`. Events before the bad one stay indexed
  (`index_before_error`), as HEC does, so a resent batch can show duplicates;
- with indexer acknowledgement on, a request without a channel is 400 code 10 and one whose
  channel is not a GUID 400 code 11; a success carries an `ackId` numbered per channel, and
  `/services/collector/ack` reports `true` once (then forgets the id) after `ack_delay_polls`
  `false` answers, or never if `ack_lost` (then the data is lost: never searchable).

Each accepted envelope's `event` is kept as the exact bytes received (a slice of the body),
so tests can compare them with the store byte for byte.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sealtrail.api.export import CredentialRef, ExportSpec, RetrySpec, SplunkSpec

from .harness import Failure, ReceiverCase
from .http_base import HttpReceiver, Request, Response

EVENT_PATHS = frozenset({"/services/collector", "/services/collector/event",
                         "/services/collector/event/1.0"})
ACK_PATHS = frozenset({"/services/collector/ack", "/services/collector/ack/1.0"})
HEALTH_PATHS = frozenset({"/services/collector/health", "/services/collector/health/1.0"})
_WHITESPACE = b" \t\r\n"


def hec_reply(status: int, text: str, code: int | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"text": text}
    if code is not None:
        body["code"] = code
    body.update(extra)
    return Response(status, json.dumps(body).encode())


@dataclass
class HecEvent:
    """One accepted envelope."""

    event: bytes  # the raw JSON value of `event`, exactly as it was in the request
    index: str | None
    source: str | None
    sourcetype: str | None
    time: Any
    fields: dict[str, Any]
    channel: str | None


@dataclass
class _Channel:
    next_ack_id: int = 0
    # ackId -> polls still to answer `false` before `true` (None: lost, never true)
    pending: dict[int, int | None] = field(default_factory=dict)


class SplunkReceiver(HttpReceiver):
    """A protocol-faithful HEC endpoint (see the module docstring)."""

    def __init__(
        self,
        token: str | None = None,  # None: no token is accepted until one is set
        *,
        port: int | None = None,
        allowed_indexes: set[str] | None = None,
        indexer_ack: bool = False,
        max_content_length: int = 1_000_000,
        index_before_error: bool = True,
    ) -> None:
        super().__init__(port)
        self.token = token
        self.allowed_indexes = allowed_indexes  # None: the token may write any index
        self.indexer_ack = indexer_ack
        self.max_content_length = max_content_length
        self.index_before_error = index_before_error
        self.ack_delay_polls = 0  # answer `false` this many times before `true`
        self.ack_lost = False  # never answer `true` (the data is lost)
        self.events: list[HecEvent] = []
        self.channels: dict[str, _Channel] = {}
        self.ack_polls = 0

    # -- what tests read -------------------------------------------------------------------

    def event_bytes(self) -> list[bytes]:
        with self.lock:
            return [item.event for item in self.events]

    def event_requests(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if urlsplit(r.path).path in EVENT_PATHS]

    # -- protocol --------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path = urlsplit(request.path).path.rstrip("/") or "/"
        if path in HEALTH_PATHS:
            return hec_reply(200, "HEC is healthy", 17)
        if request.method != "POST" or path not in EVENT_PATHS | ACK_PATHS:
            return hec_reply(404, "The requested URL was not found on this server.", 404)
        body = request.decoded_body()
        if len(body) > self.max_content_length:
            return hec_reply(413, f"Content-Length of {len(body)} too large "
                                  f"(maximum is {self.max_content_length})")
        refused = self._check_token(request)
        if refused is not None:
            return refused
        channel = request.header("x-splunk-request-channel")
        if channel is None:
            channel = (parse_qs(urlsplit(request.path).query).get("channel") or [None])[0]
        if path in ACK_PATHS:
            return self._ack(channel, body)
        if self.indexer_ack:
            if not channel:
                return hec_reply(400, "Data channel is missing", 10)
            try:
                uuid.UUID(channel)
            except ValueError:
                return hec_reply(400, "Invalid data channel", 11)
        return self._events(body, channel)

    def _check_token(self, request: Request) -> Response | None:
        authorization = request.header("authorization")
        if not authorization:
            return hec_reply(401, "Token is required", 2)
        scheme, _, token = authorization.partition(" ")
        if scheme != "Splunk" or not token.strip():
            return hec_reply(401, "Invalid authorization", 3)
        with self.lock:
            accepted = self.token
        if accepted is None or token.strip() != accepted:
            return hec_reply(403, "Invalid token", 4)
        return None

    def _events(self, body: bytes, channel: str | None) -> Response:
        if not body.strip(_WHITESPACE):
            return hec_reply(400, "No data", 5)
        parsed: list[HecEvent] = []
        refused: Response | None = None
        for number, item in enumerate(_envelopes(body)):
            if isinstance(item, str):
                refused = hec_reply(400, "Invalid data format", 6, **{"invalid-event-number": number})
                break
            refused = self._check_envelope(item, number)
            if refused is not None:
                break
            envelope, raw_event = item
            parsed.append(HecEvent(raw_event, envelope.get("index"), envelope.get("source"),
                                   envelope.get("sourcetype"), envelope.get("time"),
                                   dict(envelope.get("fields") or {}), channel))
        if refused is not None:
            if self.index_before_error and parsed:
                with self.lock:
                    self.events.extend(parsed)
            return refused
        with self.lock:
            if not (self.indexer_ack and self.ack_lost):
                self.events.extend(parsed)  # searchable at once; lost data never is
            if not self.indexer_ack:
                return hec_reply(200, "Success", 0)
            state = self.channels.setdefault(str(channel), _Channel())
            ack_id = state.next_ack_id
            state.next_ack_id += 1
            state.pending[ack_id] = None if self.ack_lost else self.ack_delay_polls
        return hec_reply(200, "Success", 0, ackId=ack_id)

    def _check_envelope(self, item: tuple[dict[str, Any], bytes | None],
                        number: int) -> Response | None:
        envelope, raw_event = item
        where = {"invalid-event-number": number}
        if raw_event is None:
            return hec_reply(400, "Event field is required", 12, **where)
        if envelope["event"] in ("", None) or (isinstance(envelope["event"], str)
                                               and not envelope["event"].strip()):
            return hec_reply(400, "Event field cannot be blank", 13, **where)
        index = envelope.get("index")
        if index is not None and self.allowed_indexes is not None and (
                index not in self.allowed_indexes):
            return hec_reply(400, "Incorrect index", 7, **where)
        fields = envelope.get("fields")
        if fields is not None and (not isinstance(fields, dict) or any(
                isinstance(value, dict) for value in fields.values())):
            return hec_reply(400, "Error in handling indexed fields", 15, **where)
        return None

    def _ack(self, channel: str | None, body: bytes) -> Response:
        if not self.indexer_ack:
            return hec_reply(400, "ACK is disabled", 14)
        if not channel:
            return hec_reply(400, "Data channel is missing", 10)
        try:
            uuid.UUID(channel)
            query = json.loads(body)
            asked = [int(ack) for ack in query["acks"]]
        except (ValueError, KeyError, TypeError):
            return hec_reply(400, "Invalid data format", 6)
        answer: dict[str, bool] = {}
        with self.lock:
            self.ack_polls += 1
            state = self.channels.get(channel, _Channel())
            for ack_id in asked:
                if ack_id not in state.pending:  # unknown, or already reported true
                    answer[str(ack_id)] = False
                    continue
                remaining = state.pending[ack_id]
                if remaining is None or remaining > 0:  # lost, or not yet replicated
                    if remaining is not None:
                        state.pending[ack_id] = remaining - 1
                    answer[str(ack_id)] = False
                else:  # replicated: report once, then forget
                    del state.pending[ack_id]
                    answer[str(ack_id)] = True
        return Response(200, json.dumps({"acks": answer}).encode())


def _envelopes(body: bytes) -> list[tuple[dict[str, Any], bytes | None] | str]:
    """Each envelope with its `event`'s raw bytes, or an error string where parsing failed."""
    text = body.decode("utf-8", errors="strict") if _is_utf8(body) else None
    if text is None:
        return ["not UTF-8"]
    decoder = json.JSONDecoder()
    found: list[tuple[dict[str, Any], bytes | None] | str] = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n":
            position += 1
        if position >= len(text):
            return found
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            found.append("malformed JSON")
            return found
        if not isinstance(value, dict):
            found.append("not an object")
            return found
        found.append((value, _raw_event(text, position, end) if "event" in value else None))
        position = end


def _raw_event(text: str, start: int, end: int) -> bytes:
    """The exact text of the top-level `event` member's value inside one envelope."""
    decoder = json.JSONDecoder()
    position = start + 1  # after "{"
    while True:
        position = _skip(text, position)
        key, position = decoder.raw_decode(text, position)
        position = _skip(text, position)
        assert text[position] == ":"
        position = _skip(text, position + 1)
        _, value_end = decoder.raw_decode(text, position)
        if key == "event":
            return text[position:value_end].encode()
        position = _skip(text, value_end)
        if text[position] == "}" or position >= end:
            raise ValueError("no event member")
        position += 1  # ","


def _skip(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class SplunkCase(ReceiverCase):
    """The conformance suite's view of a `SplunkReceiver`."""

    kind = "splunk"

    def __init__(self, **options: Any) -> None:
        self.receiver = SplunkReceiver(**options)

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
            splunk=SplunkSpec(hec_url=self.receiver.url,
                              token=CredentialRef(file=str(credential_file)),
                              indexer_ack=self.receiver.indexer_ack),
            retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200),
        )

    def set_credential(self, value: str) -> None:
        with self.receiver.lock:
            self.receiver.token = value

    def fail_next(self, failure: Failure, count: int) -> None:
        replies = {
            "retryable": (503, {"text": "Server is busy", "code": 9}),
            "permanent": (400, {"text": "Invalid data format", "code": 6,
                                "invalid-event-number": 0}),
            "auth": (403, {"text": "Invalid token", "code": 4}),
        }
        status, body = replies[failure]
        self.receiver.fail_next(count, status, json.dumps(body).encode())

    def received(self) -> list[bytes]:
        return self.receiver.event_bytes()
