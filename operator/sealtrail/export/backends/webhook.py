"""Standard Webhooks v1: one batch of rows is one signed `POST` of a JSON array.

Why it looks the way it does:

- The body is the stored rows spliced into `[`, `,`, `]` as they are, never re-serialized: a
  receiver that checks the chain sees exactly the bytes that were hashed, and the signature
  covers exactly the bytes sent.
- `webhook-id` is derived from the batch's record hashes, so the same rows sent again (after a
  timeout, a crash, a restart) carry the same id and the receiver can drop the duplicate, as the
  specification intends. `webhook-timestamp` is the time of *this* attempt.
- `webhook-signature` is `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, once per
  secret in the credential: during a rotation the Secret holds the old and the new
  `whsec_...` secret (whitespace-separated) and both signatures are sent, so the receiver can
  switch keys without a gap. A secret without the `whsec_` prefix is used as raw bytes.
- Statuses as the specification suggests: 2xx success; 3xx a failure (redirects are not
  followed: the URL should be fixed); 410 Gone means the endpoint wants no more deliveries;
  429, 502, 503, 504 throttle (with `Retry-After`); everything else a failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Final

import httpx

from sealtrail.api.export import ExportSpec, WebhookSpec
from sealtrail.export.backends.base import Backend, BatchLimits, ExportRow
from sealtrail.export.credentials import Credential, CredentialError
from sealtrail.export.http import HttpClients, post
from sealtrail.export.outcome import Outcome, OutcomeKind, classify_status, parse_retry_after

__all__ = [
    "SECRET_PREFIX",
    "WebhookBackend",
    "signature_header",
    "signing_keys",
    "webhook_id",
]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format's prefix, not a secret

#: No protocol limit; these keep one delivery within what ordinary web servers accept.
MAX_EVENTS: Final = 10_000
MAX_PAYLOAD_BYTES: Final = 10_000_000
# `row_size` is a row's own bytes; the array adds `[`, `]` and a comma between two rows.
_ROWS_BUDGET: Final = MAX_PAYLOAD_BYTES - 2 - (MAX_EVENTS - 1)

_REASONS: Final = {
    401: "the webhook endpoint refused the signature (401)",
    403: "the webhook endpoint refused the sender (403)",
    408: "the webhook endpoint timed out reading the request (408)",
    410: "the webhook endpoint answered 410 Gone: it asked to be disabled; fix or remove "
         "the export",
    413: "the webhook endpoint says the batch is too large (413)",
    429: "the webhook endpoint is rate limiting (429)",
}


def signing_keys(secrets: str) -> list[bytes]:
    """The HMAC keys in a credential: whitespace-separated secrets, `whsec_` + base64 each.

    A secret without the prefix is taken as raw bytes. Raises ValueError (naming the position,
    never the value) for a `whsec_` secret whose rest is not base64.
    """
    keys = []
    for position, secret in enumerate(secrets.split(), start=1):
        if secret.startswith(SECRET_PREFIX):
            try:
                keys.append(base64.b64decode(secret[len(SECRET_PREFIX):], validate=True))
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"secret {position} is not base64 after {SECRET_PREFIX!r}"
                ) from None
        else:
            keys.append(secret.encode("utf-8"))
    if not keys or not all(keys):
        raise ValueError("the credential holds no usable secret")
    return keys


def webhook_id(rows: Sequence[ExportRow]) -> str:
    """`msg_` + 24 hex digits of SHA-256 over the batch's record hashes: same rows, same id."""
    digest = hashlib.sha256("\n".join(row.record_hash for row in rows).encode("ascii"))
    return "msg_" + digest.hexdigest()[:24]


def signature_header(keys: Sequence[bytes], message_id: str, timestamp: int,
                     body: bytes) -> str:
    """The `webhook-signature` value: a `v1,<base64>` signature per key, space-separated."""
    prefix = f"{message_id}.{timestamp}.".encode("ascii")
    signatures = []
    for key in keys:
        # Fed in two parts: the same MAC as over `prefix + body`, without copying the body.
        mac = hmac.new(key, prefix, hashlib.sha256)
        mac.update(body)
        signatures.append("v1," + base64.b64encode(mac.digest()).decode("ascii"))
    return " ".join(signatures)


class WebhookBackend(Backend):
    """A Standard Webhooks endpoint: signed JSON array of rows."""

    kind = "webhook"
    destination_rule = None

    def __init__(self, spec: ExportSpec, clients: HttpClients,
                 clock: Callable[[], float] = time.time) -> None:
        """Read the webhook block; no connection yet. `clock` gives Unix seconds."""
        super().__init__(spec, clients)
        if spec.webhook is None:
            raise ValueError("WebhookBackend needs an export with a 'webhook' block")
        self.webhook: WebhookSpec = spec.webhook
        self._secret = Credential(spec.webhook.secret)
        self._clock = clock
        self._limits = BatchLimits(
            max_events=MAX_EVENTS, max_bytes=_ROWS_BUDGET, max_row_bytes=_ROWS_BUDGET
        )

    @property
    def limits(self) -> BatchLimits:
        """10,000 rows and 10,000,000 bytes a delivery (brackets and commas included)."""
        return self._limits

    def row_size(self, row: ExportRow) -> int:
        """The row's stored bytes, as they appear in the array."""
        return len(row.body)

    def credentials(self) -> list[Credential]:
        """The signing secret(s)."""
        return [self._secret]

    async def send(self, rows: Sequence[ExportRow]) -> Outcome:
        """POST the rows as one signed JSON array and classify the answer."""
        if not rows:
            return Outcome.success("nothing to send")
        try:
            keys = signing_keys(self._secret.value())
        except CredentialError as error:
            return Outcome(OutcomeKind.AUTH, str(error))
        except ValueError as error:
            return Outcome(OutcomeKind.AUTH,
                           f"webhook secret in {self.webhook.secret.describe()}: {error}")
        body = b"[" + b",".join(row.body for row in rows) + b"]"
        message_id = webhook_id(rows)
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(keys, message_id, timestamp, body),
        }
        client = self.clients.get(self.spec.tls, self.spec.proxy_url)
        timeout = self.spec.retry.request_timeout_seconds
        response = await post(client, self.webhook.url, content=body, headers=headers,
                              timeout_seconds=timeout, peer="the webhook endpoint")
        return response if isinstance(response, Outcome) else _classify(response)


def _classify(response: httpx.Response) -> Outcome:
    status = response.status_code
    kind = classify_status(status)
    if kind is OutcomeKind.SUCCESS:
        return Outcome.success(f"the webhook endpoint accepted the batch ({status})", status)
    if 300 <= status < 400:
        return Outcome(OutcomeKind.PERMANENT, f"the webhook endpoint redirects ({status}); "
                       "redirects are not followed, set the export's URL to the new address",
                       status)
    reason = _REASONS.get(status) or f"the webhook endpoint answered {status}"
    if status == 413:
        return Outcome(OutcomeKind.PERMANENT, reason, status, too_large=True)
    retry_after = None
    if kind is OutcomeKind.RETRYABLE:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    return Outcome(kind, reason, status, retry_after_seconds=retry_after)
