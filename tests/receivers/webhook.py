"""A Standard Webhooks consumer on loopback, verifying as the specification says a consumer must.

It recomputes `v1` signatures (HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}`)
with each secret it trusts and accepts the request if any signature in `webhook-signature`
matches (constant-time compare); a missing header, no matching signature or a timestamp more
than five minutes off is 401. It can be told the endpoint is gone (410), and can deduplicate by
`webhook-id` (off by default, so that the suite sees every delivery). The rows of each accepted
body are kept as the exact bytes of each array element, in arrival order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sealtrail.api.export import CredentialRef, ExportSpec, RetrySpec, WebhookSpec
from tests.receivers.harness import Failure, ReceiverCase
from tests.receivers.http_base import HttpReceiver, Request, Response

TOLERANCE_SECONDS: Final = 5 * 60
_WHITESPACE: Final = " \t\n\r"


def split_json_array(body: bytes) -> list[bytes]:
    """The exact bytes of each element of a JSON array (ValueError if `body` is not one)."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    elements: list[bytes] = []
    position = _skip(text, 0)
    if not text.startswith("[", position):
        raise ValueError("not a JSON array")
    position = _skip(text, position + 1)
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            _, end = decoder.raw_decode(text, position)
            elements.append(text[position:end].encode("utf-8"))
            position = _skip(text, end)
            if text.startswith(",", position):
                position = _skip(text, position + 1)
                continue
            if text.startswith("]", position):
                position += 1
                break
            raise ValueError("expected ',' or ']' in the array")
    if _skip(text, position) != len(text):
        raise ValueError("data after the array")
    return elements


def _skip(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def secret_key(secret: str) -> bytes:
    """`whsec_` + base64 decodes; anything else is raw bytes (as the sender treats it)."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    return secret.encode("utf-8")


def new_secret(seed: bytes) -> str:
    """A `whsec_` secret of 32 bytes derived from `seed` (tests want reproducible keys)."""
    return "whsec_" + base64.b64encode(hashlib.sha256(seed).digest()).decode("ascii")


@dataclass(frozen=True)
class Delivery:
    """One accepted request."""

    webhook_id: str
    timestamp: int
    rows: list[bytes]
    duplicate: bool


def _error(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message}).encode())


class WebhookReceiver(HttpReceiver):
    """A Standard Webhooks verifier that keeps what it accepted."""

    def __init__(self, secrets: list[str], *, port: int | None = None,
                 tolerance_seconds: float = TOLERANCE_SECONDS, deduplicate: bool = False,
                 clock: Callable[[], float] = time.time,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(port, tls)
        self.keys = [secret_key(secret) for secret in secrets]
        self.tolerance_seconds = tolerance_seconds
        self.deduplicate = deduplicate
        self.gone = False
        self.clock = clock
        self.deliveries: list[Delivery] = []
        self.rejections: list[str] = []  # why each refused request was refused

    def set_secrets(self, secrets: list[str]) -> None:
        with self.lock:
            self.keys = [secret_key(secret) for secret in secrets]

    @property
    def webhook_ids(self) -> list[str]:
        with self.lock:
            return [delivery.webhook_id for delivery in self.deliveries]

    def received(self) -> list[bytes]:
        with self.lock:
            return [row for delivery in self.deliveries if not delivery.duplicate
                    for row in delivery.rows]

    def _refuse(self, status: int, why: str) -> Response:
        with self.lock:
            self.rejections.append(why)
        return _error(status, why)

    def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return self._refuse(405, "method not allowed")
        if self.gone:
            return self._refuse(410, "gone")
        message_id = request.header("webhook-id")
        stamp = request.header("webhook-timestamp")
        signatures = request.header("webhook-signature")
        if not message_id or not stamp or not signatures:
            return self._refuse(401, "missing required headers")
        try:
            timestamp = int(stamp)
        except ValueError:
            return self._refuse(401, "invalid timestamp")
        if abs(self.clock() - timestamp) > self.tolerance_seconds:
            return self._refuse(401, "timestamp outside tolerance")
        signed = f"{message_id}.{timestamp}.".encode() + request.body
        with self.lock:
            keys = list(self.keys)
        expected = [base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
                    for key in keys]
        if not any(self._matches(candidate, expected) for candidate in signatures.split(" ")):
            return self._refuse(401, "no matching signature")
        try:
            rows = split_json_array(request.body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return self._refuse(400, "body is not a JSON array")
        with self.lock:
            seen = any(delivery.webhook_id == message_id for delivery in self.deliveries)
            self.deliveries.append(
                Delivery(message_id, timestamp, rows, duplicate=self.deduplicate and seen)
            )
        return Response(200, b"{}")

    @staticmethod
    def _matches(candidate: str, expected: list[bytes]) -> bool:
        version, _, value = candidate.partition(",")
        if version != "v1" or not value:
            return False
        try:
            given = base64.b64decode(value, validate=True)
        except binascii.Error:
            return False
        found = False
        for digest in expected:  # no early exit: every key is compared every time
            found |= hmac.compare_digest(given, base64.b64decode(digest))
        return found


class WebhookCase(ReceiverCase):
    """The webhook receiver as the conformance suite drives it."""

    kind = "webhook"

    def __init__(self) -> None:
        self.receiver = WebhookReceiver([new_secret(b"sealtrail-test-initial")])

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
            webhook=WebhookSpec(url=self.receiver.url + "/hooks/sealtrail",
                                secret=CredentialRef(file=str(credential_file))),
            retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200),
        )

    def set_credential(self, value: str) -> None:
        self.receiver.set_secrets(value.split())

    def fail_next(self, failure: Failure, count: int) -> None:
        if failure == "retryable":
            self.receiver.fail_next(count, 503, b'{"error":"unavailable"}')
        elif failure == "permanent":
            self.receiver.fail_next(count, 400, b'{"error":"bad request"}')
        else:
            self.receiver.fail_next(count, 401, b'{"error":"no matching signature"}')

    def received(self) -> list[bytes]:
        return self.receiver.received()
