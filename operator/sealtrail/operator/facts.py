"""Facts: what kopf's watches and the named Secrets say, parsed into plain values. Pure.

The handlers index bodies as these facts (`ExportFact`, `PolicyFact`, `PodFact`,
`WorkerAddress`), the Secret reader turns each Secret it was asked for into a `SecretFact`
(its keys and keyed digests of its values, never the values), and the planners and the
controller read nothing else. Nothing here calls the API or keeps state.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from sealtrail.api.errors import UNKNOWN_SETTING, field_errors
from sealtrail.api.export import BACKEND_KINDS
from sealtrail.api.resources import AuditExportSpec
from sealtrail.operator import naming
from sealtrail.operator.inject import has_worker, opted_out
from sealtrail.operator.render import Policy

__all__ = [
    "CredentialFacts",
    "ExportFact",
    "NamespaceFacts",
    "PodFact",
    "PolicyFact",
    "SecretFact",
    "WorkerAddress",
    "credential_facts",
    "export_fact",
    "is_terminal",
    "namespace_facts",
    "pod_fact",
    "policy_fact",
    "secret_fact",
    "secrets_named",
    "values_of",
    "worker_address",
    "workers_of_export",
]

#: Pod phases after which a pod runs nothing: not a worker to poll, not a pod to count.
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})


def _spec_problem(kind: str, name: str, error: ValidationError) -> str:
    problems = [f"spec.{item.field}: {item.message}" if item.field else f"spec: {item.message}"
                for item in field_errors(error, unknown=UNKNOWN_SETTING)]
    return f"{kind}/{name}: " + "; ".join(problems)


def _generation(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("generation")
    return int(value) if value is not None else None


def _status(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(body.get("status") or {})


@dataclass(frozen=True)
class ExportFact:
    """An AuditExport: its spec if valid (else why not), and the status it carries now."""

    name: str
    spec: AuditExportSpec | None
    problem: str | None
    paused: bool
    backend: str | None
    generation: int | None = None
    status: Mapping[str, Any] = field(default_factory=dict)
    uid: str = ""


def export_fact(name: str, body: Mapping[str, Any]) -> ExportFact:
    """Parse an AuditExport body."""
    raw = body.get("spec") or {}
    generation, status = _generation(body), _status(body)
    uid = str((body.get("metadata") or {}).get("uid", ""))
    try:
        spec = AuditExportSpec.model_validate(raw)
    except ValidationError as error:
        backend = next((kind for kind in BACKEND_KINDS if kind in raw), None)
        return ExportFact(name, None, _spec_problem("auditexport", name, error),
                          bool(raw.get("paused")), backend, generation, status, uid)
    return ExportFact(name, spec, None, spec.paused, spec.kind, generation, status, uid)


@dataclass(frozen=True)
class PolicyFact:
    """An AuditPolicy: parsed if valid (else why not), and the status it carries now."""

    name: str
    policy: Policy | None
    problem: str | None
    generation: int | None
    status: Mapping[str, Any] = field(default_factory=dict)


def policy_fact(name: str, body: Mapping[str, Any]) -> PolicyFact:
    """Parse an AuditPolicy body."""
    generation, status = _generation(body), _status(body)
    try:
        return PolicyFact(name, Policy.from_object(body), None, generation, status)
    except ValidationError as error:
        return PolicyFact(name, None, _spec_problem("auditpolicy", name, error), generation,
                          status)


@dataclass(frozen=True)
class SecretFact:
    """A Secret as the operator keeps it: its name, keys, version and value digests."""

    name: str
    keys: frozenset[str]
    resource_version: str
    digests: Mapping[str, str] = field(default_factory=dict)


def secret_fact(body: Mapping[str, Any], digest: Callable[[str], str]) -> SecretFact:
    """Keys and digests (made by `digest`) of a Secret; the values are dropped here."""
    meta = body.get("metadata") or {}
    data = body.get("data") or {}
    digests = {}
    for key, encoded in data.items():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            digests[key] = digest(base64.b64decode(encoded).decode())
    return SecretFact(str(meta.get("name")), frozenset(data), str(meta.get("resourceVersion")),
                      digests)


def is_terminal(body: Mapping[str, Any]) -> bool:
    """A pod that has finished (a completed Job's, an evicted one) or is being deleted."""
    phase = (body.get("status") or {}).get("phase")
    return phase in TERMINAL_PHASES or bool((body.get("metadata") or {}).get("deletionTimestamp"))


@dataclass(frozen=True)
class PodFact:
    """A pod as the policy status needs it."""

    name: str
    labels: Mapping[str, str]
    has_worker: bool
    opted_out: bool


def pod_fact(name: str, body: Mapping[str, Any]) -> PodFact:
    """What a pod's labels and containers say."""
    labels = {str(k): str(v) for k, v in ((body.get("metadata") or {}).get("labels") or {})
              .items()}
    return PodFact(name, labels, has_worker(body), opted_out(body))


@dataclass(frozen=True)
class WorkerAddress:
    """Where one worker's admin listener is."""

    pod: str  # namespace/name, for messages
    ip: str | None
    port: int


def worker_address(namespace: str, name: str, body: Mapping[str, Any]) -> WorkerAddress:
    """Where a worker pod's admin listener is: its IP, and the port named `st-admin`."""
    spec = body.get("spec") or {}
    port = 0
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if container.get("name") == naming.CONTAINER_NAME:
            port = next((int(p["containerPort"]) for p in container.get("ports", [])
                         if p.get("name") == naming.ADMIN_PORT_NAME), 0)
    ip = (body.get("status") or {}).get("podIP")
    return WorkerAddress(f"{namespace}/{name}", str(ip) if ip else None, port)


@dataclass(frozen=True)
class NamespaceFacts:
    """Everything of one namespace the planners look at."""

    namespace: str
    exports: Mapping[str, ExportFact]
    policies: Mapping[str, PolicyFact]
    secrets: Mapping[str, SecretFact]

    @property
    def valid_exports(self) -> dict[str, AuditExportSpec]:
        """Exports with a valid spec, by name."""
        return {name: fact.spec for name, fact in self.exports.items() if fact.spec is not None}

    @property
    def secret_keys(self) -> dict[str, frozenset[str]]:
        """Each Secret's keys, by name."""
        return {name: fact.keys for name, fact in self.secrets.items()}

    @property
    def valid_policies(self) -> list[Policy]:
        """Policies with a valid spec, by name."""
        return sorted((fact.policy for fact in self.policies.values()
                       if fact.policy is not None), key=lambda policy: policy.name)


def values_of(index: Any, key: Any) -> list[Any]:
    """The values a kopf index holds under `key` (none when it holds nothing there)."""
    try:
        return list(index[key])
    except KeyError:
        return []


def namespace_facts(namespace: str, exports: Iterable[ExportFact],
                    policies: Iterable[PolicyFact],
                    secrets: Mapping[str, SecretFact]) -> NamespaceFacts:
    """One namespace's facts."""
    return NamespaceFacts(namespace, {fact.name: fact for fact in exports},
                          {fact.name: fact for fact in policies}, dict(secrets))


# -- which Secrets are named, and whether they resolve -----------------------------------------


def _secrets_of_export(spec: AuditExportSpec) -> set[str]:
    names = {ref.secret_key_ref.name for _, ref in spec.credentials()
             if ref.secret_key_ref is not None}
    if spec.tls.secret_name is not None:
        names.add(spec.tls.secret_name)
    return names


def _secrets_of_policy(policy: Policy) -> set[str]:
    handoff = policy.spec.handoff
    refs = [policy.spec.checkpoints.signing_key, policy.spec.collector.ingest_token,
            None if handoff is None else handoff.token]
    return {ref.secret_key_ref.name for ref in refs
            if ref is not None and ref.secret_key_ref is not None}


def secrets_named(exports: Iterable[ExportFact], policies: Iterable[PolicyFact]) -> set[str]:
    """Every Secret the namespace's valid exports and policies name: all the operator reads."""
    names: set[str] = set()
    for export in exports:
        if export.spec is not None:
            names |= _secrets_of_export(export.spec)
    for fact in policies:
        if fact.policy is not None:
            names |= _secrets_of_policy(fact.policy)
    return names


@dataclass(frozen=True)
class CredentialFacts:
    """What the operator knows of the Secrets an export names."""

    problems: tuple[str, ...] = ()  # e.g. 'Secret "hec" has no key "token"'
    #: digest of a current Secret value -> "secret/key@resourceVersion"
    versions: Mapping[str, str] = field(default_factory=dict)


def credential_facts(export: ExportFact, facts: NamespaceFacts) -> CredentialFacts:
    """Whether the export's Secrets resolve, and which digests are which Secret versions."""
    if export.spec is None:
        return CredentialFacts()
    problems, versions = [], {}
    for path, ref in export.spec.credentials():
        selector = ref.secret_key_ref
        if selector is None:
            continue
        where = "spec." + ".".join(path) + ".secretKeyRef"
        secret = facts.secrets.get(selector.name)
        if secret is None:
            problems.append(f'{where}: Secret "{selector.name}" not found in namespace '
                            f'"{facts.namespace}"')
        elif selector.key not in secret.keys:
            problems.append(f'{where}: Secret "{selector.name}" has no key "{selector.key}"')
        elif selector.key in secret.digests:
            versions[secret.digests[selector.key]] = (
                f"{selector.name}/{selector.key}@{secret.resource_version}")
    tls_secret = export.spec.tls.secret_name
    if tls_secret is not None and tls_secret not in facts.secrets:
        problems.append(f'spec.tls.secretName: Secret "{tls_secret}" not found in namespace '
                        f'"{facts.namespace}"')
    return CredentialFacts(tuple(problems), versions)


def workers_of_export(facts: NamespaceFacts, workers: Mapping[str, Iterable[WorkerAddress]],
                      export: str) -> list[WorkerAddress]:
    """The worker pods (by policy label value) of every policy that routes to `export`."""
    found: list[WorkerAddress] = []
    for policy in facts.valid_policies:
        if export in policy.spec.export_names():
            found += workers.get(naming.policy_label_value(policy.name), [])
    return sorted(set(found), key=lambda worker: worker.pod)
