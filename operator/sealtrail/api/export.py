"""Export configuration: one export (a SIEM backend and how to talk to it) and routing rules.

The same models serve the worker's config file and, later, the `AuditExport` custom resource,
so field names are camelCase on the wire (`hecUrl`, `maxEvents`) and snake_case in Python.
Durations carry their unit in their name (`intervalMs`, `ackTimeoutSeconds`).

Credentials are never inline: a `CredentialRef` names an environment variable or a file, and
files are re-read so that a rotated Secret is used without a restart.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from sealtrail.api.destinations import (
    CLOUDWATCH_LOG_STREAM,
    DESTINATION_RULES,
    ELASTIC_INDEX,
    SPLUNK_INDEX,
    TEMPLATE_MAX_LENGTH,
    TemplateError,
    check_template,
)
from sealtrail.api.event import Severity

__all__ = [
    "BACKEND_KINDS",
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "BatchSpec",
    "CloudWatchSpec",
    "CredentialRef",
    "DatadogSpec",
    "ElasticAuth",
    "ElasticBasicAuth",
    "ElasticSpec",
    "ExportSettings",
    "ExportSpec",
    "ExportsConfig",
    "RetrySpec",
    "RouteRule",
    "SecretKeySelector",
    "SplunkSpec",
    "SyslogSpec",
    "TLSSpec",
    "WebhookSpec",
]

BACKEND_KINDS: Final = ("splunk", "elastic", "datadog", "webhook", "syslog", "cloudwatch")

#: A Kubernetes object name (RFC 1123 label): exports and Secrets are named so.
DNS_LABEL: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

#: An index or stream template (`audit_${tenant:id}`); `sealtrail.api.destinations` says which
#: a backend takes.
_Template = Annotated[str, Field(max_length=TEMPLATE_MAX_LENGTH)]

class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SecretKeySelector(_Model):
    """A key of a Secret in the resource's own namespace (`AuditExport`, `AuditPolicy` only)."""

    #: The Secret's name, in this resource's namespace.
    name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]
    #: The key within the Secret; the worker reads its value from a mounted file.
    key: Annotated[str, Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]


class CredentialRef(_Model):
    """Where a secret lives: exactly one of an environment variable, a file, or a Secret key.

    A worker reads `env` or `file`; a custom resource names a `secretKeyRef`, which the
    operator mounts as a file (never an env var, so that rotation reaches a running worker).
    """

    env: str | None = None
    file: str | None = None
    secret_key_ref: SecretKeySelector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialRef:
        given = [self.env, self.file, self.secret_key_ref]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of 'env', 'file' or 'secretKeyRef'")
        return self

    def describe(self) -> str:
        """Where the secret comes from, for messages (never the secret itself)."""
        if self.secret_key_ref is not None:
            return f"secret:{self.secret_key_ref.name}/{self.secret_key_ref.key}"
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"


class TLSSpec(_Model):
    """TLS to the SIEM: a private CA, a client certificate, or (for tests only) no checks.

    A worker names files; a custom resource names a Secret (`secretName`) holding `ca.crt`
    and/or `tls.crt` + `tls.key`, which the operator mounts and turns into those files.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    secret_name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TLSSpec:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together")
        return self


class BatchSpec(_Model):
    """How rows are grouped into requests. Each backend also caps these at its own limits."""

    max_events: Annotated[int, Field(ge=1, le=100_000)] = 500
    max_bytes: Annotated[int, Field(ge=1024, le=100 * 1024 * 1024)] = 1_000_000
    interval_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 1000
    max_interval_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 30_000

    @model_validator(mode="after")
    def _ordered(self) -> BatchSpec:
        if self.max_interval_ms < self.interval_ms:
            raise ValueError("maxIntervalMs must be at least intervalMs")
        return self


class RetrySpec(_Model):
    """Backoff between attempts, and when to give up and pause."""

    initial_backoff_ms: Annotated[int, Field(ge=1, le=600_000)] = 1000
    max_backoff_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 30_000
    pause_after_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    request_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> RetrySpec:
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError("maxBackoffMs must be at least initialBackoffMs")
        return self


def _no_credentials_in_url(url: object) -> object:
    """Refuse `user:password@` in a URL: a URL is logged and shown, a credential never is.

    Run before the pattern, which refuses the same (so the CRD's schema does too), to say why.
    """
    if not isinstance(url, str):
        return url  # the type check names it
    authority = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:
        raise ValueError(
            "must not hold a user or password (user:password@host): URLs are logged and "
            "shown in status; give credentials through the backend's auth fields, which "
            "read a file or an environment variable"
        )
    return url


#: An http(s) URL with a host and no credentials in it (no `@` before the path).
_HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s/?#@]+([/?#].*)?$"),
                     BeforeValidator(_no_credentials_in_url)]


class SplunkSpec(_Model):
    """Splunk HTTP Event Collector."""

    hec_url: _HttpUrl
    token: CredentialRef
    #: The index (a template with `${tenant:id}` and `${event:type}`); the token's default if
    #: not given.
    index: _Template | None = None
    sourcetype: str = "sealtrail:audit"
    source: str = "sealtrail"
    indexer_ack: bool = False
    ack_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0
    ack_poll_ms: Annotated[int, Field(ge=10, le=60_000)] = 1000

    @field_validator("index")
    @classmethod
    def _index_is_legal(cls, index: str | None) -> str | None:
        if index is not None:
            check_template(index, SPLUNK_INDEX)
        return index


class ElasticBasicAuth(_Model):
    """Username and password; the password is a credential reference."""

    username: str
    password: CredentialRef


class ElasticAuth(_Model):
    """Exactly one way to authenticate to Elasticsearch."""

    api_key: CredentialRef | None = None
    basic: ElasticBasicAuth | None = None
    bearer: CredentialRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ElasticAuth:
        given = [name for name in ("api_key", "basic", "bearer") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of apiKey, basic or bearer")
        return self


class ElasticSpec(_Model):
    """Elasticsearch `_bulk`."""

    url: _HttpUrl
    #: The index or data stream (a template with `${tenant:id}` and `${event:type}`).
    index: _Template = "sealtrail-audit"
    data_stream: bool = False
    #: Ingest pipeline to run on each document. Data streams need one that copies `timestamp`
    #: into `@timestamp`; a SIEM-side chain check must then drop `@timestamp` before hashing.
    pipeline: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,255}$")] | None = None
    auth: ElasticAuth | None = None

    @field_validator("index")
    @classmethod
    def _index_is_legal(cls, index: str) -> str:
        check_template(index, ELASTIC_INDEX)
        return index


class DatadogSpec(_Model):
    """Datadog Logs intake v2."""

    api_key: CredentialRef
    site: Literal[
        "datadoghq.com", "us3.datadoghq.com", "us5.datadoghq.com", "datadoghq.eu",
        "ap1.datadoghq.com", "ap2.datadoghq.com", "uk1.datadoghq.com", "ddog-gov.com",
        "us2.ddog-gov.com",
    ] = "datadoghq.com"
    url: _HttpUrl | None = None
    service: str = "sealtrail"
    source: str = "sealtrail"
    tags: list[str] = Field(default_factory=list)


class WebhookSpec(_Model):
    """A signed webhook (Standard Webhooks)."""

    url: _HttpUrl
    secret: CredentialRef


class SyslogSpec(_Model):
    """Syslog: RFC 5424 messages over TCP (RFC 6587 octet counting), TLS (RFC 5425) or UDP."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    transport: Literal["tcp", "tls", "udp"] = "tls"
    app_name: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[!-~]+$")] = "sealtrail"
    hostname: Annotated[str, Field(max_length=255, pattern=r"^[!-~]+$")] | None = None
    facility: Annotated[int, Field(ge=0, le=23)] = 13  # log audit


class CloudWatchSpec(_Model):
    """CloudWatch Logs PutLogEvents."""

    log_group: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[.\-_/#A-Za-z0-9]+$")]
    #: The log stream (a template with `${tenant:id}` and `${event:type}`).
    log_stream: _Template = "${tenant:id}"
    region: str | None = None
    endpoint_url: _HttpUrl | None = None
    create_missing: bool = True

    @field_validator("log_stream")
    @classmethod
    def _log_stream_is_legal(cls, log_stream: str) -> str:
        check_template(log_stream, CLOUDWATCH_LOG_STREAM)
        return log_stream


class ExportSettings(_Model):
    """An export without its name: exactly one backend block, and how to batch and retry.

    This is the `spec` of an `AuditExport` (named by its metadata) and, with a name, an entry
    of a worker's `exports`.
    """

    paused: bool = False
    splunk: SplunkSpec | None = None
    elastic: ElasticSpec | None = None
    datadog: DatadogSpec | None = None
    webhook: WebhookSpec | None = None
    syslog: SyslogSpec | None = None
    cloudwatch: CloudWatchSpec | None = None
    batch: BatchSpec = Field(default_factory=BatchSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    tls: TLSSpec = Field(default_factory=TLSSpec)
    proxy_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#@]+/?$"),
                         BeforeValidator(_no_credentials_in_url)] | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _one_backend(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        # Wrapped around field validation, so that a missing or doubled backend block is
        # reported together with any field errors, not instead of them or after them.
        problem = None
        if isinstance(data, dict):
            given = [kind for kind in BACKEND_KINDS if data.get(kind) is not None]
            if len(given) != 1:
                problem = (
                    "give exactly one backend block (" + ", ".join(BACKEND_KINDS) + f"); got "
                    f"{len(given)}" + (f": {', '.join(given)}" if given else "")
                )
        try:
            model = handler(data)
        except ValidationError as error:
            if problem is None:
                raise
            details: list[InitErrorDetails] = [
                InitErrorDetails(type=item["type"], loc=item["loc"], input=item["input"],
                                 ctx=item.get("ctx", {}))
                for item in error.errors()
            ]
            details.append(InitErrorDetails(
                type=PydanticCustomError("backend_blocks", problem), loc=(), input=data))
            raise ValidationError.from_exception_data(cls.__name__, details) from None
        if problem is not None:
            raise ValueError(problem)
        return model

    @property
    def kind(self) -> str:
        """Which backend: `splunk`, `elastic`, ..."""
        return next(kind for kind in BACKEND_KINDS if getattr(self, kind) is not None)

    def credentials(self) -> list[tuple[tuple[str, ...], CredentialRef]]:
        """Every credential of the export, with its path in camelCase (for messages)."""
        return _credentials(self, ())


class ExportSpec(ExportSettings):
    """One export of a worker: a name, and its settings."""

    name: Annotated[str, Field(pattern=DNS_LABEL)]


def _credentials(model: BaseModel, path: tuple[str, ...]) -> list[
        tuple[tuple[str, ...], CredentialRef]]:
    found: list[tuple[tuple[str, ...], CredentialRef]] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        where = (*path, field.alias or name)
        if isinstance(value, CredentialRef):
            found.append((where, value))
        elif isinstance(value, BaseModel):
            found += _credentials(value, where)
    return found


class RouteRule(_Model):
    """Send matching rows to named exports. Rules are tried in order; the first match wins.

    `index` (a template with `${tenant:id}` and `${event:type}`) overrides the export's own
    index, sourcetype-free destination: Splunk index, Elastic index, CloudWatch log stream.
    """

    tenants: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    event_types: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    min_severity: Severity = Severity.INFO
    #: Where matching rows go. Empty: they go nowhere (and are not offered to later rules).
    exports: list[str] = Field(max_length=32)
    #: Overrides the index or stream of every export named (a template with `${tenant:id}` and
    #: `${event:type}`); each export's backend must take what it renders.
    index: _Template | None = None
    #: Splunk only: the sourcetype for these rows (else the export's own).
    sourcetype: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _index_is_legal(self) -> RouteRule:
        """Refuse an index no backend takes; which exports take it is known with their kinds."""
        if self.index is None or not self.exports:
            return self  # rows that go nowhere render no name
        problems = []
        for rule in DESTINATION_RULES.values():
            try:
                check_template(self.index, rule)
            except TemplateError as error:
                problems.append(str(error))
            else:
                return self
        if all(problem == problems[0] for problem in problems):
            raise ValueError(f"index: {problems[0]}")
        raise ValueError(f"index: no backend takes it: {'; '.join(problems)}")


class ExportsConfig(_Model):
    """The exports of one worker and the rules that route rows to them."""

    exports: list[ExportSpec] = Field(default_factory=list)
    routes: list[RouteRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ExportsConfig:
        seen: set[str] = set()
        for export in self.exports:
            if export.name in seen:
                raise ValueError(f"two exports are named {export.name!r}")
            seen.add(export.name)
        for number, rule in enumerate(self.routes):
            for name in rule.exports:
                if name not in seen:
                    raise ValueError(f"routes[{number}] sends to {name!r}, which is no export")
        return self

    @model_validator(mode="after")
    def _route_indexes_fit(self) -> ExportsConfig:
        """A route's `index` must suit the backend of every export it names."""
        kinds = {export.name: export.kind for export in self.exports}
        for number, route in enumerate(self.routes):
            for name in route.exports if route.index is not None else ():
                problem = _template_problem(route.index or "", kinds[name])
                if problem is not None:
                    raise ValueError(f"routes[{number}].index: {problem} (export {name!r})")
        return self


def _template_problem(template: str, kind: str) -> str | None:
    """Why a backend of `kind` would refuse `template` as its index or stream, or None."""
    rule = DESTINATION_RULES.get(kind)
    if rule is None:
        return f"{kind} has no index or stream to template"
    try:
        check_template(template, rule)
    except TemplateError as error:
        return str(error)
    return None
