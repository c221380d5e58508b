"""The worker's config file: store, checkpoints, ingest, back-pressure, routes, exports.

`exports` and `routes` are the very models the `AuditExport` and `AuditPolicy` resources use, so
the operator can render this file from them. Secrets are references (`{env:}`/`{file:}`), never
values. See docs/worker-config.md for a full example.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from sealtrail.api.errors import format_path
from sealtrail.api.export import CredentialRef, ExportsConfig, _Model

__all__ = [
    "AdminSpec",
    "BackpressureSpec",
    "CheckpointSpec",
    "HandoffAcceptSpec",
    "HandoffSpec",
    "IdempotencySpec",
    "IngestSpec",
    "IngestTlsSpec",
    "IngestToken",
    "NatsSpec",
    "RetentionSpec",
    "StoreSpec",
    "WorkerConfig",
]


def _check_port(value: str) -> str:
    if int(value.rsplit(":", 1)[1]) > 65_535:  # the largest TCP port
        raise ValueError("the port must be 0-65535")
    return value


#: `host:port`, an IPv6 address in brackets (`[::]:8471`: every address, IPv6 and IPv4); the
#: pattern alone would let port 99999 through to a crash at start-up.
ListenAddress = Annotated[
    str, Field(pattern=r"^([^\s:\[\]]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$"),
    AfterValidator(_check_port)]


class RetentionSpec(_Model):
    """How long delivered rows stay in the store.

    A row is pruned once every configured export has delivered it (paused ones included) and
    it is older than `keepSeconds`, and only up to a signed checkpoint: what stays is still
    provable (`sealtrail verify`), and the SIEM holds every row. So it needs
    `checkpoints.signingKey`, and with no export configured nothing is pruned.
    """

    #: Keep delivered rows at least this long (0: prune as soon as delivered and checkpointed);
    #: unset: keep every row for good.
    keep_seconds: Annotated[float, Field(ge=0, le=100 * 365 * 86_400)] | None = None
    #: How often the worker prunes (and measures the store's size).
    every_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0


class StoreSpec(_Model):
    """Where the chain store lives."""

    path: str = "/var/lib/sealtrail/audit.db"
    synchronous: Literal["FULL", "EXTRA", "NORMAL"] = "FULL"
    default_tenant: Annotated[
        str, Field(pattern=r"^(_system|[A-Za-z0-9][A-Za-z0-9_.-]{0,62})$")
    ] = "default"
    #: Bytes the store's directory may hold (the volume's `sizeLimit`, which the operator
    #: renders here); unset: only the filesystem's free space bounds it. Ingest slows and then
    #: refuses before the limit (`ingest.backpressure.storeHighFraction`), never past it.
    budget_bytes: Annotated[int, Field(ge=1024 * 1024)] | None = None
    #: Free space the store leaves on its filesystem, budget or not.
    reserve_free_bytes: Annotated[int, Field(ge=0)] = 32 * 1024 * 1024
    #: Prune delivered rows after a while; unset: keep every row.
    retention: RetentionSpec | None = None


class CheckpointSpec(_Model):
    """Signed checkpoints: the key, and how often."""

    signing_key: CredentialRef | None = None
    every_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    every_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0

    @model_validator(mode="after")
    def _file_key(self) -> CheckpointSpec:
        if self.signing_key is not None and self.signing_key.file is None:
            raise ValueError("signingKey must be a {file: ...}: a PEM key does not fit in env")
        return self


class IngestToken(_Model):
    """A bearer token, optionally bound to tenants (a request for another tenant gets 403)."""

    token: CredentialRef
    tenants: list[str] = Field(default_factory=lambda: ["*"], min_length=1)


class BackpressureSpec(_Model):
    """When ingest slows and then refuses or holds requests, by the lag of unpaused exports."""

    high_watermark_rows: Annotated[int, Field(ge=1)] = 100_000
    low_watermark_rows: Annotated[int, Field(ge=0)] = 50_000
    mode: Literal["reject", "block"] = "reject"
    slowdown_ms: Annotated[int, Field(ge=0, le=10_000)] = 50
    retry_after_seconds: Annotated[int, Field(ge=1, le=3600)] = 5
    block_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: The byte side: ingest refuses once the store's directory holds this fraction of its
    #: limit (`store.budgetBytes`, or what the filesystem can give), slows from 80 % of it,
    #: and opens again below `storeLowFraction`. The gap up to 1.0 is what keeps the volume
    #: from ever passing its `sizeLimit` (which evicts the whole pod).
    store_high_fraction: Annotated[float, Field(gt=0, le=0.95)] = 0.85
    store_low_fraction: Annotated[float, Field(ge=0, lt=0.95)] = 0.7

    @model_validator(mode="after")
    def _ordered(self) -> BackpressureSpec:
        if self.low_watermark_rows >= self.high_watermark_rows:
            raise ValueError("lowWatermarkRows must be below highWatermarkRows")
        if self.store_low_fraction >= self.store_high_fraction:
            raise ValueError("storeLowFraction must be below storeHighFraction")
        return self


class IdempotencySpec(_Model):
    """How long and how many `Idempotency-Key`s of `POST /v1/events` the worker remembers."""

    keep_seconds: Annotated[int, Field(ge=60, le=30 * 86_400)] = 86_400
    max_keys: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000


class IngestTlsSpec(_Model):
    """Serve ingest over HTTPS with this certificate and key (PEM files).

    The files are followed: a renewed certificate (a Secret's files swapped by the kubelet) is
    used for new connections within a second, with no restart; new files that cannot be used
    leave the previous ones in use, with a warning.
    """

    cert_file: Annotated[str, Field(min_length=1)]
    key_file: Annotated[str, Field(min_length=1)]


class IngestSpec(_Model):
    """The ingest API."""

    listen: ListenAddress = "127.0.0.1:8470"
    #: HTTPS instead of HTTP (the collector's; a sidecar's loopback listener needs none).
    tls: IngestTlsSpec | None = None
    tokens: list[IngestToken] = Field(default_factory=list)
    max_body_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 16 * 1024 * 1024
    max_events_per_request: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    backpressure: BackpressureSpec = Field(default_factory=BackpressureSpec)
    #: Processes taking ingest requests on the listen address. One Python process validates and
    #: appends on one core; more share the port and the store. With more than one, the worker
    #: starts that many besides its first process, which takes no ingest itself and runs the
    #: exports, status, metrics and the UI (each process needs ~70-90 MiB).
    processes: Annotated[int, Field(ge=1, le=32)] = 1
    #: A client must send a request's line and headers within this many seconds of connecting
    #: (or of its previous answer), and its body within as many again; idle keep-alive
    #: connections are closed after it too.
    read_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    idempotency: IdempotencySpec = Field(default_factory=IdempotencySpec)


class NatsSpec(_Model):
    """An optional NATS JetStream source (durable pull consumer; ack after commit)."""

    url: Annotated[str, Field(pattern=r"^(nats|tls)://[^\s]+$")]
    stream: str
    subject: str
    durable: str = "sealtrail"
    batch: Annotated[int, Field(ge=1, le=10_000)] = 500


class AdminSpec(_Model):
    """A second listener for status, metrics, health and resume, and never ingest.

    In a pod, ingest stays on loopback (only the app's containers can write) while the
    operator and Prometheus reach the worker on the pod's address through this one.

    `token` is the admin credential: with it, status, metrics and resume want
    `Authorization: Bearer <token>` (on the ingest listener too), and `credential_version`
    digests are keyed with it. Its file is followed, so a rotation needs no restart.
    """

    listen: ListenAddress | None = None
    token: CredentialRef | None = None
    #: A second credential that opens `GET /metrics` and nothing else: the one a Prometheus
    #: scrape config holds (so a monitoring system never holds the admin token).
    metrics_token: CredentialRef | None = None


class HandoffAcceptSpec(_Model):
    """Take rows other workers hand off at shutdown (`POST /v1/handoff`): a collector's part.

    Rows arrive sealed, exactly as their own store holds them; each is checked (hash, canonical
    bytes, links within its chain) and kept in a store of their own (`storePath`), from which
    this worker's exports deliver them beside its own rows.
    """

    #: Bearer tokens a sender may present (each sidecar's `handoff.token`); any one opens
    #: `POST /v1/handoff` and nothing else.
    tokens: Annotated[list[CredentialRef], Field(min_length=1)]
    #: The SQLite file of handed-off rows; default: beside the worker's store,
    #: `<store.path>.handoff`.
    store_path: Annotated[str, Field(min_length=1)] | None = None
    #: Rows one request may carry (a body is bounded by `ingest.maxBodyBytes` too).
    max_rows_per_request: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class HandoffSpec(_Model):
    """Where undelivered rows go when the drain at shutdown cannot deliver them in time.

    A sidecar's store is an `emptyDir`, which dies with its pod: rows its exports have not
    delivered by the end of `drainTimeoutSeconds` would go with it. With `url`, the worker
    posts them to a collector (`POST <url>/v1/handoff`) while there is still time, and the
    collector's exports deliver them. `accept` makes this worker such a collector.
    """

    #: The collector's base URL (scheme, host, port; `/v1/handoff` is appended unless given).
    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    #: The bearer token the collector accepts (one of its `handoff.accept.tokens`).
    token: CredentialRef | None = None
    #: The CA of the collector's certificate (without it, the system's CAs).
    ca_file: Annotated[str, Field(min_length=1)] | None = None
    #: Rows per request (fewer when rows are large, or when the collector says 413).
    batch_rows: Annotated[int, Field(ge=1, le=100_000)] = 2_000
    #: The most one request may take (never more than the time left before the deadline).
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    accept: HandoffAcceptSpec | None = None

    @model_validator(mode="after")
    def _url_with_token(self) -> HandoffSpec:
        if (self.url is None) != (self.token is None):
            raise ValueError("url and token go together: give both to hand off, or neither")
        if self.ca_file is not None and self.url is None:
            raise ValueError("caFile is for the collector at url; give url and token too")
        return self


class WorkerConfig(ExportsConfig):
    """The whole worker config file."""

    store: StoreSpec = Field(default_factory=StoreSpec)
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    admin: AdminSpec = Field(default_factory=AdminSpec)
    nats: NatsSpec | None = None
    drain_timeout_seconds: Annotated[float, Field(ge=0, le=3600)] = 20.0
    #: Hand undelivered rows to a collector at shutdown, and/or accept them as one.
    handoff: HandoffSpec | None = None

    @model_validator(mode="after")
    def _retention_needs_checkpoints(self) -> WorkerConfig:
        """Rows are pruned only up to a signed checkpoint: without a key, never (say so now)."""
        retention = self.store.retention
        if retention is not None and retention.keep_seconds is not None and (
                self.checkpoints.signing_key is None):
            raise ValueError("store.retention.keepSeconds needs checkpoints.signingKey: rows "
                             "are pruned only up to a signed checkpoint, so without a key none "
                             "ever would be")
        return self

    @model_validator(mode="after")
    def _files_not_secrets(self) -> WorkerConfig:
        """A worker reads files and env vars; Secret references are the operator's to mount."""
        named: list[tuple[tuple[str | int, ...], CredentialRef | None]] = [
            (("checkpoints", "signingKey"), self.checkpoints.signing_key)]
        named.append((("admin", "metricsToken"), self.admin.metrics_token))
        named += [(("ingest", "tokens", number, "token"), item.token)
                  for number, item in enumerate(self.ingest.tokens)]
        named.append((("admin", "token"), self.admin.token))
        if self.handoff is not None:
            named.append((("handoff", "token"), self.handoff.token))
            if self.handoff.accept is not None:
                named += [(("handoff", "accept", "tokens", number), ref)
                          for number, ref in enumerate(self.handoff.accept.tokens)]
        for number, export in enumerate(self.exports):
            named += [(("exports", number, *path), ref) for path, ref in export.credentials()]
            if export.tls.secret_name is not None:
                raise ValueError(f"exports[{number}].tls.secretName: a worker reads caFile, "
                                 "certFile and keyFile; the operator mounts the Secret as those")
        for path, ref in named:
            if ref is not None and ref.secret_key_ref is not None:
                raise ValueError(f"{format_path(path)}.secretKeyRef: a worker reads secrets from "
                                 "{file:} or {env:}; the operator mounts Secrets as files")
        return self

