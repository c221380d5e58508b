"""The worker's admin API as both ends see it: paths, the status document, digests, live fields.

The worker serves these and the operator reads them; both import this module, so a renamed key
or path is a type error on one side rather than a silent "no lag, not failing" on the other.

The status document is `WorkerStatus` (JSON keys are the field names, snake_case). Parsing is
strict about types and ignores keys it does not know, so an operator reads a newer worker's
document; a field added later must have a default, so that it also reads an older worker's
(sidecars live as long as their application's pods, far longer than an operator release).

`credential_version` is `credential_digest(value, key)`: an HMAC keyed with the admin token
(`admin.token` in the worker config), which only the worker and the operator hold. Without that
key the digest says nothing about the value, so it cannot be used to check guesses of a weak
password offline, as a plain hash could.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ADMIN_REALM",
    "DIGEST_HEX_CHARS",
    "HEALTH_PATH",
    "LIVE_FIELDS",
    "METRICS_PATH",
    "PRE_STOP_PATH",
    "READY_PATH",
    "RESUME_PATH",
    "STATUS_PATH",
    "BackpressureReport",
    "CheckpointReport",
    "ExportReport",
    "TenantReport",
    "WorkerStatus",
    "credential_digest",
    "restart_changes",
    "resume_path",
    "without_live_fields",
]

#: Delivery truth per export and chain state per tenant (`WorkerStatus`).
STATUS_PATH: Final = "/v1/status"
#: Prometheus text format.
METRICS_PATH: Final = "/metrics"
#: `POST` resumes the paused export `{name}` (aiohttp's route syntax; see `resume_path`).
RESUME_PATH: Final = "/v1/exports/{name}/resume"
#: 200 once the store is open and ingest accepts; 503 while starting or draining.
READY_PATH: Final = "/readyz"
#: 200 while the process answers.
HEALTH_PATH: Final = "/healthz"
#: The worker's preStop hook (`httpGet`, unauthenticated): `?grace=N`, the pod's grace in
#: seconds, starts the worker's termination clock (worker/termination.py).
PRE_STOP_PATH: Final = "/v1/lifecycle/pre-stop"
#: The realm of the `WWW-Authenticate: Bearer` challenge on a 401.
ADMIN_REALM: Final = "sealtrail"

#: Hex digits a credential digest keeps: 64 bits. Keyed, its length gives no guessing power to
#: anyone without the key; 64 bits keep two versions of one secret from ever colliding (48
#: would do too) while staying short enough to read in a status line.
DIGEST_HEX_CHARS: Final = 16
_DIGEST_CONTEXT: Final = b"sealtrail credential_version\n"


def credential_digest(value: str, key: bytes) -> str:
    """The `credential_version` of a secret value: HMAC-SHA256 keyed with `key`, truncated.

    The value is stripped first, as the worker reads a credential file. The message carries a
    fixed context, so the digest is never the same HMAC as any other use of the admin token.
    """
    if not key:
        raise ValueError("a credential digest needs a non-empty key")
    message = _DIGEST_CONTEXT + value.strip().encode("utf-8", "surrogateescape")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:DIGEST_HEX_CHARS]


def resume_path(name: str) -> str:
    """The resume path of export `name` (export names are DNS labels: nothing to quote)."""
    return RESUME_PATH.format(name=name)


# -- the status document ---------------------------------------------------------------------


class _Document(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class ExportReport(_Document):
    """One export of one worker: where its cursor is and whether it delivers."""

    name: str
    kind: str
    #: The last seq delivered and durably acknowledged (the same as `acked_seq`).
    cursor: int
    paused: bool
    pause_reason: str | None
    #: The last delivery failure, credential values removed; None once a batch went through.
    last_error: str | None
    consecutive_failures: int
    interval_ms: int
    interval_at_max: bool
    #: `credential_digest` of each credential in use, comma-separated; None if it has none.
    credential_version: str | None
    delivered_rows: int
    #: Dedupe key (`store:tenant:tenant_seq`) of the last row the SIEM refused, if any.
    rejected_row: str | None
    last_stored_seq: int
    acked_seq: int
    lag_rows: int
    #: Since the oldest undelivered row was stored (not since its client-set timestamp).
    lag_seconds: float


class BackpressureReport(_Document):
    """The ingest gate: open, slowing or closed (by export lag and by store bytes)."""

    state: Literal["open", "slowing", "closed"]
    lag_rows: int
    store_used_bytes: int | None = None
    store_limit_bytes: int | None = None


class CheckpointReport(_Document):
    """A tenant's newest signed checkpoint."""

    tenant_seq: int
    signed_at: str
    key_id: str


class TenantReport(_Document):
    """One tenant's chain head."""

    tenant_id: str
    head_tenant_seq: int
    head_hash: str
    last_checkpoint: CheckpointReport | None


class WorkerStatus(_Document):
    """`GET /v1/status`: the whole document."""

    #: The id of the store, on every row it writes (what a SIEM groups a pod's rows by);
    #: None for a store made before stores had ids.
    store_id: str | None
    last_seq: int
    ready: bool
    backpressure: BackpressureReport
    #: The last failure of each background task that had to be restarted.
    background_errors: dict[str, str] = Field(default_factory=dict)
    exports: list[ExportReport] = Field(default_factory=list)
    tenants: list[TenantReport] = Field(default_factory=list)

    def export(self, name: str) -> ExportReport | None:
        """The entry of export `name`, if this worker runs it."""
        return next((item for item in self.exports if item.name == name), None)


# -- what a running worker takes from a changed config file -------------------------------------


#: Config paths (as spelled in the YAML file) a running worker applies live, with no restart:
#: exports and routes (`WorkerCore.reload`), ingest tokens and back-pressure settings (every
#: ingest process), the NATS source (replaced) and the admin token's reference (its file is
#: followed anyway). A change anywhere else takes effect at the next start.
LIVE_FIELDS: Final[frozenset[tuple[str, ...]]] = frozenset({
    ("admin", "metricsToken"),
    ("routes",),
    ("exports",),
    ("nats",),
    ("ingest", "tokens"),
    ("ingest", "backpressure"),
    ("admin", "token"),
})


def without_live_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    """A config document (as the YAML file holds it) with every `LIVE_FIELDS` path removed.

    What is left is what a worker reads only at start: a hash of it says whether a changed
    config needs a restart.
    """
    return _without(document, ())


def _without(document: Mapping[str, Any], at: tuple[str, ...]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in document.items():
        path = (*at, key)
        if path in LIVE_FIELDS:
            continue
        nested = any(live[: len(path)] == path for live in LIVE_FIELDS)
        kept[key] = _without(value, path) if nested and isinstance(value, Mapping) else value
    return kept


def restart_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Dotted paths outside `LIVE_FIELDS` whose value differs: what only a restart applies.

    Paths go one level into a section (`store.path`, `admin.listen`), which names the setting.
    """
    old, new = without_live_fields(before), without_live_fields(after)
    changed = []
    for key in sorted(set(old) | set(new)):
        first, second = old.get(key), new.get(key)
        if first == second:
            continue
        if isinstance(first, Mapping) and isinstance(second, Mapping):
            changed += [f"{key}.{inner}" for inner in sorted(set(first) | set(second))
                        if first.get(inner) != second.get(inner)]
        else:
            changed.append(key)
    return changed
