"""The two custom resources, `AuditExport` and `AuditPolicy` (group `sealtrail.dev/v1alpha1`).

These models are the source of truth: `crds/` is generated from them (`sealtrail crds`), and a
test holds the committed files identical to what they generate. The export settings are the
very models of the worker's config file (`ExportSettings`), so the operator renders a worker
entry by replacing each `secretKeyRef` with the file the Secret is mounted as.

Secrets are only ever `secretKeyRef`s to the resource's own namespace: a resource can never
name another namespace's Secret, and the worker gets them as mounted files (never env vars,
never `subPath`), which the kubelet updates in place on rotation.
"""

from __future__ import annotations

import ipaddress
import re
from fractions import Fraction
from typing import Annotated, Final, Literal

from pydantic import Field, field_validator, model_validator

from sealtrail.api.errors import format_path
from sealtrail.api.export import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    CredentialRef,
    ExportSettings,
    RouteRule,
    _Model,
)
from sealtrail.api.worker_config import BackpressureSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AuditExportSpec",
    "AuditExportStatus",
    "AuditPolicySpec",
    "AuditPolicyStatus",
    "CollectorSettings",
    "CollectorStatus",
    "Condition",
    "LabelSelector",
    "LabelSelectorRequirement",
    "PolicyCheckpoints",
    "WorkerSettings",
    "quantity",
]

GROUP: Final = "sealtrail.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

#: A Kubernetes quantity such as `1Gi` or `500Mi`.
_QUANTITY: Final = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$"


_SUFFIXES: Final[dict[str, int | Fraction]] = {
    "": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(text: str) -> Fraction:
    """The exact value of a quantity that matches `_QUANTITY` (`1.5Gi`, `500m`)."""
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", text)
    if found is None or found.group(2) not in _SUFFIXES:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return Fraction(found.group(1)) * _SUFFIXES[found.group(2)]


def _only_secret_refs(named: list[tuple[tuple[str | int, ...], CredentialRef | None]]) -> None:
    for path, ref in named:
        if ref is not None and ref.secret_key_ref is None:
            raise ValueError(f"{format_path(path)}: a custom resource names secrets as "
                             "secretKeyRef: {name, key} (a Secret in its own namespace)")


class AuditExportSpec(ExportSettings):
    """Where audit rows go: one SIEM backend and how to talk to it."""

    @model_validator(mode="after")
    def _secrets_by_reference(self) -> AuditExportSpec:
        _only_secret_refs(list(self.credentials()))
        tls = self.tls
        if tls.ca_file or tls.cert_file or tls.key_file:
            raise ValueError("tls: name a Secret with tls.secretName (keys ca.crt, tls.crt, "
                             "tls.key); file paths are for a worker's own config")
        return self


class LabelSelectorRequirement(_Model):
    """One `matchExpressions` entry, as in any Kubernetes label selector."""

    key: Annotated[str, Field(min_length=1, max_length=317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"{self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"{self.operator} takes no values")
        return self


class LabelSelector(_Model):
    """Which pods: all of `matchLabels` and every expression must hold."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        """True when `labels` satisfy the selector (an empty selector matches everything)."""
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        for requirement in self.match_expressions:
            present = requirement.key in labels
            value = labels.get(requirement.key)
            holds = {
                "In": present and value in requirement.values,
                "NotIn": not present or value not in requirement.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[requirement.operator]
            if not holds:
                return False
        return True


class PolicyCheckpoints(_Model):
    """Signed checkpoints: the Ed25519 key (a Secret key, PEM) and how often."""

    signing_key: CredentialRef | None = None
    every_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    every_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0


class WorkerSettings(_Model):
    """The worker the policy runs, as a sidecar or in the collector."""

    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    #: Ingest, on the pod's loopback (sidecar) or every address (collector).
    port: Annotated[int, Field(ge=1024, le=65535)] = 8470
    #: Status, metrics, health and resume, on every address: the operator and Prometheus
    #: reach the worker here. Ingest is never served on it.
    admin_port: Annotated[int, Field(ge=1024, le=65535)] = 8471
    processes: Annotated[int, Field(ge=1, le=32)] = 1
    synchronous: Literal["FULL", "EXTRA", "NORMAL"] = "FULL"
    #: Size of the sidecar's store volume (an `emptyDir` with this `sizeLimit`).
    store_size: Annotated[str, Field(pattern=_QUANTITY)] = "1Gi"
    cpu_request: Annotated[str, Field(pattern=_QUANTITY)] = "50m"
    #: A CPU limit, so that a namespace whose ResourceQuota counts `limits.cpu` (which then
    #: requires one of every container) accepts the pod.
    cpu_limit: Annotated[str, Field(pattern=_QUANTITY)] = "1"
    memory_request: Annotated[str, Field(pattern=_QUANTITY)] = "96Mi"
    memory_limit: Annotated[str, Field(pattern=_QUANTITY)] = "256Mi"
    #: Local disk the worker itself needs besides its store (its log, scratch /tmp).
    ephemeral_storage_request: Annotated[str, Field(pattern=_QUANTITY)] = "64Mi"
    #: Its limit; the sidecar's limit is this plus `storeSize`, as the store's `emptyDir`
    #: counts toward the pod's ephemeral storage.
    ephemeral_storage_limit: Annotated[str, Field(pattern=_QUANTITY)] = "256Mi"
    backpressure: BackpressureSpec = Field(default_factory=BackpressureSpec)
    drain_timeout_seconds: Annotated[int, Field(ge=0, le=3600)] = 20
    #: Delivered rows are pruned from the store once every export has them and they are this
    #: old (up to a signed checkpoint, so what stays verifies); null keeps every row. Needs
    #: `checkpoints.signingKey`: without one nothing can vouch for what stays, nothing is
    #: pruned, and a sidecar's store fills its `storeSize` until ingest refuses.
    retention_seconds: Annotated[int, Field(ge=0, le=100 * 365 * 86_400)] | None = 3600
    #: Secrets (of the pod's namespace) to pull `image` with, added to the pod's
    #: `imagePullSecrets` unless it lists them already.
    image_pull_secrets: list[Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]] = (
        Field(default_factory=list, max_length=16))

    @model_validator(mode="after")
    def _requests_within_limits(self) -> WorkerSettings:
        # The API server refuses a container whose request is above its limit, and with it
        # every pod the worker joins: refuse the policy instead, when it is applied.
        for resource, request, limit in (
                ("cpu", self.cpu_request, self.cpu_limit),
                ("memory", self.memory_request, self.memory_limit),
                ("ephemeralStorage", self.ephemeral_storage_request,
                 self.ephemeral_storage_limit)):
            if quantity(request) > quantity(limit):
                raise ValueError(f"{resource}Request ({request}) must not be above "
                                 f"{resource}Limit ({limit})")
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> WorkerSettings:
        if self.port == self.admin_port:
            raise ValueError(f"port and adminPort must differ (both are {self.port}): the "
                             "worker cannot listen twice on one port")
        return self


class CollectorSettings(_Model):
    """Collector mode: a StatefulSet with a volume per replica, behind a Service."""

    replicas: Annotated[int, Field(ge=1, le=20)] = 1
    storage_size: Annotated[str, Field(pattern=_QUANTITY)] = "10Gi"
    storage_class_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN)] | None = None
    #: Bearer token callers must send (the collector listens beyond localhost).
    ingest_token: CredentialRef | None = None
    #: The Service's virtual IP, from the cluster's service range (unset: the apiserver picks
    #: one). Pin it when a kube-apiserver is the caller: the apiserver cannot use cluster DNS,
    #: so its audit webhook kubeconfig names this address, and a pinned one survives the
    #: policy being deleted and created again. Changing it re-creates the Service.
    cluster_ip: Annotated[str, Field(max_length=45, pattern=r"^[0-9A-Fa-f:.]+$")] | None = (
        Field(default=None, alias="clusterIP"))

    @field_validator("cluster_ip")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
            if address.is_unspecified or address.is_loopback:
                raise ValueError(f"{value} cannot be a Service's ClusterIP")
            return str(address)
        return value


class PolicyHandoff(_Model):
    """Where this policy's sidecars hand off rows their drain could not deliver: a collector.

    A sidecar's store dies with its pod. When the pod is deleted while a SIEM is down (a
    rollout, a scale-down, a node drain), the worker posts what its exports have not delivered
    to this collector before it exits, and the collector's exports deliver it. A collector
    (`mode: collector`) with an `ingestToken` accepts handoffs with that token.
    """

    #: The collector's ingest URL: `https://sealtrail-collector-<policy>.<namespace>.svc:<port>`
    #: (its policy's `status.collector` lists its addresses).
    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]
    #: The collector's `ingestToken` (a Secret of this namespace with the same value).
    token: CredentialRef
    #: A ConfigMap of this namespace holding the collector's CA as `ca.crt` (a collector in
    #: this namespace publishes `sealtrail-collector-<policy>-ca`). Unset: the system's CAs.
    ca_config_map: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = None


class AuditPolicySpec(_Model):
    """Which pods get a worker, how, and which of this namespace's exports rows go to."""

    mode: Literal["sidecar", "collector"] = "sidecar"
    selector: LabelSelector = Field(default_factory=LabelSelector)
    routes: list[RouteRule] = Field(min_length=1, max_length=64)
    default_tenant: Annotated[
        str, Field(pattern=r"^(\$\{namespace\}|_system|[A-Za-z0-9][A-Za-z0-9_.-]{0,62})$")
    ] = "${namespace}"
    checkpoints: PolicyCheckpoints = Field(default_factory=PolicyCheckpoints)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    #: Sidecar mode: the collector to hand undelivered rows to when a pod stops.
    handoff: PolicyHandoff | None = None

    @model_validator(mode="after")
    def _secrets_by_reference(self) -> AuditPolicySpec:
        _only_secret_refs([(("checkpoints", "signingKey"), self.checkpoints.signing_key),
                           (("collector", "ingestToken"), self.collector.ingest_token),
                           (("handoff", "token"),
                            None if self.handoff is None else self.handoff.token)])
        return self

    @model_validator(mode="after")
    def _handoff_from_sidecars(self) -> AuditPolicySpec:
        if self.handoff is not None and self.mode == "collector":
            raise ValueError("handoff: a collector keeps its rows on its volume claim and "
                             "hands off nothing; handoff is for sidecar mode")
        return self

    def export_names(self) -> list[str]:
        """Every export the routes name, in first-mention order."""
        names: list[str] = []
        for rule in self.routes:
            names += [name for name in rule.exports if name not in names]
        return names


class Condition(_Model):
    """A status condition, as `metav1.Condition`."""

    type: Annotated[str, Field(max_length=316, pattern=r"^[A-Z][A-Za-z]*$")]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(min_length=1, max_length=1024,
                                 pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: Annotated[str, Field(max_length=32768)] = ""
    #: When `status` last changed (RFC 3339).
    last_transition_time: str
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class AuditExportStatus(_Model):
    """What the operator and the workers say about an export."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    backend: str | None = None
    #: Rows the furthest-behind worker has yet to deliver (absent until a worker reports).
    cursor_lag: int | None = None
    paused: bool = False
    pause_reason: str | None = None
    workers: int = 0
    workers_unreachable: int = 0
    last_error: str | None = None
    #: `resourceVersion`s of the Secrets the export uses, as the workers report using them.
    credential_version: str | None = None
    #: When the operator last looked (RFC 3339): refreshed at least every minute while an
    #: operator runs, so an old heartbeat means this status is no longer being kept current.
    heartbeat_time: str | None = None


class CollectorStatus(_Model):
    """Where a collector takes events, and what a caller must trust (collector mode only)."""

    #: The Service (and StatefulSet) name.
    service: Annotated[str, Field(pattern=DNS_LABEL)]
    #: The Service's virtual IPs, as allocated (or pinned by `spec.collector.clusterIP`).
    cluster_ips: list[str] = Field(default_factory=list, alias="clusterIPs")
    #: `https://<clusterIP>:<port>`, the address for a caller without cluster DNS.
    url: str | None = None
    #: The ConfigMap holding the collector's CA (`ca.crt`) and an audit webhook kubeconfig.
    ca_config_map: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = None


class AuditPolicyStatus(_Model):
    """What a policy produced: its config, the exports it found, the pods it reached."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    config_map: Annotated[str, Field(pattern=DNS_LABEL)] | None = None
    matched_exports: list[str] = Field(default_factory=list)
    unknown_exports: list[str] = Field(default_factory=list)
    injected_pods: int = 0
    uninjected_pods: list[str] = Field(default_factory=list)
    collector: CollectorStatus | None = None
    #: When the operator last looked (RFC 3339); see `AuditExportStatus.heartbeat_time`.
    heartbeat_time: str | None = None
