"""A Datadog Logs intake v2 (`POST /api/v2/logs`) on loopback, faithful to the documented API.

What it does as Datadog does: `DD-API-KEY` missing is 401 and wrong is 403 (with Datadog's
JSON:API error bodies); a gzip (or deflate) body is decompressed; the payload must be a JSON
array of log objects (else 400); more than 1,000 entries or more than 5,000,000 bytes
uncompressed is 413; a log over 1,000,000 bytes is *truncated and still answered 202*, which is
the behaviour that makes the backend check sizes itself (a truncated log is kept with
`truncated=True`, so a test can show that it never happens to our rows). Accepted logs are kept
in arrival order: each `message` (encoded back to UTF-8 bytes) with the rest of its attributes.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sealtrail.api.export import CredentialRef, DatadogSpec, ExportSpec, RetrySpec
from tests.receivers.harness import Failure, ReceiverCase
from tests.receivers.http_base import HttpReceiver, Request, Response
from tests.receivers.webhook import split_json_array

MAX_ENTRIES: Final = 1_000
MAX_PAYLOAD_BYTES: Final = 5_000_000
MAX_ENTRY_BYTES: Final = 1_000_000
PATH: Final = "/api/v2/logs"


@dataclass(frozen=True)
class StoredLog:
    """One log as Datadog would index it."""

    message: bytes
    attributes: dict[str, Any]  # everything but `message`
    truncated: bool
    size: int  # bytes of the entry as it arrived


def _errors(status: int, title: str, detail: str) -> Response:
    body = {"errors": [{"status": str(status), "title": title, "detail": detail}]}
    return Response(status, json.dumps(body).encode())


def _decompress(body: bytes, encoding: str) -> bytes:
    """The payload, at most MAX_PAYLOAD_BYTES + 1 bytes of it (so a bomb stays small)."""
    if encoding in ("", "identity"):
        return body[: MAX_PAYLOAD_BYTES + 1]
    wbits = {"gzip": 31, "deflate": 15}.get(encoding)
    if wbits is None:
        raise ValueError(f"unsupported content encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits)
    payload = inflater.decompress(body, MAX_PAYLOAD_BYTES + 1)
    if len(payload) <= MAX_PAYLOAD_BYTES and not inflater.eof:
        raise ValueError("truncated compressed body")
    return payload


class DatadogReceiver(HttpReceiver):
    """Datadog's logs intake, as far as a shipper can tell."""

    def __init__(self, api_key: str, *, port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.logs: list[StoredLog] = []

    def set_api_key(self, api_key: str) -> None:
        with self.lock:
            self.api_key = api_key

    def received(self) -> list[bytes]:
        with self.lock:
            return [log.message for log in self.logs]

    def handle(self, request: Request) -> Response:
        if request.path.split("?", 1)[0] != PATH:
            return _errors(404, "Not Found", "no such endpoint")
        if request.method != "POST":
            return _errors(405, "Method Not Allowed", "use POST")
        key = request.header("dd-api-key")
        if not key:
            return _errors(401, "Unauthorized", "API key is missing")
        with self.lock:
            accepted = self.api_key
        if key != accepted:
            return _errors(403, "Forbidden", "API key is invalid")
        encoding = (request.header("content-encoding") or "").strip().lower()
        try:
            payload = _decompress(request.body, encoding)
        except (ValueError, zlib.error):
            return _errors(400, "Bad Request", "cannot decode the request body")
        if len(payload) > MAX_PAYLOAD_BYTES:
            return _errors(413, "Payload Too Large", "payload is above 5MB uncompressed")
        try:
            raw_entries = split_json_array(payload)
            entries = [json.loads(raw) for raw in raw_entries]
        except ValueError:
            return _errors(400, "Bad Request", "malformed payload: expected a JSON array")
        if len(entries) > MAX_ENTRIES:
            return _errors(413, "Payload Too Large", "more than 1000 entries in the array")
        if not all(isinstance(entry, dict) for entry in entries):
            return _errors(400, "Bad Request", "each log must be a JSON object")
        logs = [self._store(raw, entry) for raw, entry in zip(raw_entries, entries, strict=True)]
        with self.lock:
            self.logs.extend(logs)
        return Response(202, b"{}")

    @staticmethod
    def _store(raw: bytes, entry: dict[str, Any]) -> StoredLog:
        message = entry.pop("message", "")
        text = message if isinstance(message, str) else json.dumps(message)
        data = text.encode("utf-8")
        truncated = len(raw) > MAX_ENTRY_BYTES
        if truncated:  # what Datadog does: keep the first megabyte, answer 2xx anyway
            keep = max(0, MAX_ENTRY_BYTES - (len(raw) - len(data)))
            data = data[:keep].decode("utf-8", errors="ignore").encode("utf-8")
        return StoredLog(data, entry, truncated, len(raw))


class DatadogCase(ReceiverCase):
    """The Datadog receiver as the conformance suite drives it."""

    kind = "datadog"

    def __init__(self) -> None:
        self.receiver = DatadogReceiver("not-yet-configured")

    def start(self) -> None:
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()

    def close(self) -> None:
        self.receiver.stop()

    def export_spec(self, name: str, credential_file: Path) -> ExportSpec:
        self.set_credential(credential_file.read_text(encoding="utf-8"))
        return ExportSpec(
            name=name,
            datadog=DatadogSpec(api_key=CredentialRef(file=str(credential_file)),
                                url=self.receiver.url),
            retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200),
        )

    def set_credential(self, value: str) -> None:
        self.receiver.set_api_key(value.strip())

    def fail_next(self, failure: Failure, count: int) -> None:
        if failure == "retryable":
            body = _errors(503, "Service Unavailable", "try again later").body
            self.receiver.fail_next(count, 503, body)
        elif failure == "permanent":
            body = _errors(400, "Bad Request", "malformed payload").body
            self.receiver.fail_next(count, 400, body)
        else:
            body = _errors(403, "Forbidden", "API key is invalid").body
            self.receiver.fail_next(count, 403, body)

    def received(self) -> list[bytes]:
        return self.receiver.received()
