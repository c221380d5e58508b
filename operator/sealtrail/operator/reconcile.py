"""Between the handlers and the planners: facts from kopf's indexes in, objects and status out.

The handlers hand over what kopf gave them (bodies and indexes); this module turns those into
plain facts (`ExportFact`, `PolicyFact`, `SecretFact`: parsed specs, a Secret's keys and the
digests of its values, never the values), calls the pure planners (`render`, `inject`,
`collector`) and hands what they planned to `kube` to apply. Nothing here keeps state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from sealtrail.api.errors import UNKNOWN_SETTING, field_errors
from sealtrail.api.resources import AuditExportSpec
from sealtrail.operator import naming
from sealtrail.operator.admission import decide
from sealtrail.operator.certs import make_serving_certificate
from sealtrail.operator.collector import plan_collector
from sealtrail.operator.config import DEFAULT_IMAGE, WebhookConfig
from sealtrail.operator.inject import has_worker, opted_out
from sealtrail.operator.kube import Kube, KubeError
from sealtrail.operator.polling import WorkerAddress
from sealtrail.operator.render import Policy, config_map, render_worker_config
from sealtrail.operator.status import (
    CredentialFacts,
    condition,
    credential_digest,
    merge_conditions,
)

__all__ = [
    "ExportFact",
    "NamespaceFacts",
    "PodFact",
    "PolicyFact",
    "SecretFact",
    "connect",
    "credential_facts",
    "export_fact",
    "inject_pod",
    "namespace_facts",
    "now",
    "pod_fact",
    "policy_fact",
    "render_policies_using",
    "render_policy",
    "secret_fact",
    "secret_is_used",
    "transition_events",
    "webhook_server",
    "worker_address",
    "workers_of_export",
]

log = logging.getLogger("sealtrail.operator")

#: How often the webhook configuration's caBundle is checked (helm upgrades reset it).
CA_CHECK_SECONDS = 60.0


def now() -> str:
    """The time as Kubernetes writes it (RFC 3339, UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def connect() -> Kube:
    """The operator's API writer."""
    return Kube()


def _spec_problem(kind: str, name: str, error: ValidationError) -> str:
    problems = [f"spec.{item.field}: {item.message}" if item.field else f"spec: {item.message}"
                for item in field_errors(error, unknown=UNKNOWN_SETTING)]
    return f"{kind}/{name}: " + "; ".join(problems)


# -- facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFact:
    """An AuditExport: its spec if valid, else why not."""

    name: str
    spec: AuditExportSpec | None
    problem: str | None
    paused: bool
    backend: str | None


def export_fact(name: str, body: Mapping[str, Any]) -> ExportFact:
    """Parse an AuditExport body."""
    raw = body.get("spec") or {}
    try:
        spec = AuditExportSpec.model_validate(raw)
    except ValidationError as error:
        backend = next((kind for kind in ("splunk", "elastic", "datadog", "webhook", "syslog",
                                          "cloudwatch") if kind in raw), None)
        return ExportFact(name, None, _spec_problem("auditexport", name, error),
                          bool(raw.get("paused")), backend)
    return ExportFact(name, spec, None, spec.paused, spec.kind)


@dataclass(frozen=True)
class PolicyFact:
    """An AuditPolicy: parsed if valid, else why not."""

    name: str
    policy: Policy | None
    problem: str | None
    generation: int | None


def policy_fact(name: str, body: Mapping[str, Any]) -> PolicyFact:
    """Parse an AuditPolicy body."""
    generation = (body.get("metadata") or {}).get("generation")
    try:
        return PolicyFact(name, Policy.from_object(body), None, generation)
    except ValidationError as error:
        return PolicyFact(name, None, _spec_problem("auditpolicy", name, error), generation)


@dataclass(frozen=True)
class SecretFact:
    """A Secret as the operator keeps it: its name, keys, version and value digests."""

    name: str
    keys: frozenset[str]
    resource_version: str
    digests: Mapping[str, str] = field(default_factory=dict)


def secret_fact(body: Mapping[str, Any]) -> SecretFact:
    """Keys and digests of a Secret; the values themselves are dropped here."""
    meta = body.get("metadata") or {}
    data = body.get("data") or {}
    digests = {}
    for key, encoded in data.items():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            digests[key] = credential_digest(base64.b64decode(encoded).decode())
    return SecretFact(str(meta.get("name")), frozenset(data), str(meta.get("resourceVersion")),
                      digests)


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
        """Policies with a valid spec."""
        return [fact.policy for fact in self.policies.values() if fact.policy is not None]


def _values(index: Any, key: Any) -> list[Any]:
    try:
        return list(index[key])
    except KeyError:
        return []


def namespace_facts(namespace: str, exports_idx: Any, policies_idx: Any, secrets_idx: Any, *,
                    without_export: str | None = None) -> NamespaceFacts:
    """Gather one namespace's facts from kopf's indexes (no API call)."""
    exports = {fact.name: fact for fact in _values(exports_idx, namespace)
               if fact.name != without_export}
    policies = {fact.name: fact for fact in _values(policies_idx, namespace)}
    secrets = {fact.name: fact for fact in _values(secrets_idx, namespace)}
    return NamespaceFacts(namespace, exports, policies, secrets)


# -- credentials ----------------------------------------------------------------------------


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


def _secrets_of_export(spec: AuditExportSpec) -> set[str]:
    names = {ref.secret_key_ref.name for _, ref in spec.credentials()
             if ref.secret_key_ref is not None}
    if spec.tls.secret_name is not None:
        names.add(spec.tls.secret_name)
    return names


def secret_is_used(facts: NamespaceFacts, secret: str) -> bool:
    """True when an export or policy of the namespace names the Secret."""
    if any(secret in _secrets_of_export(spec) for spec in facts.valid_exports.values()):
        return True
    for policy in facts.valid_policies:
        refs = [policy.spec.checkpoints.signing_key, policy.spec.collector.ingest_token]
        if any(ref is not None and ref.secret_key_ref is not None
               and ref.secret_key_ref.name == secret for ref in refs):
            return True
    return False


# -- rendering ------------------------------------------------------------------------------


def _apply_policy_objects(kube: Kube, facts: NamespaceFacts,
                          policy: Policy, default_image: str) -> tuple[Any, str | None]:
    """Render and apply one policy's objects; the render result and any apply failure."""
    result = render_worker_config(policy, facts.valid_exports, facts.secret_keys)
    if result.rendered is None:
        return result, None
    try:
        if policy.spec.mode == "collector":
            plan = plan_collector(policy, result.rendered, default_image=default_image)
            for obj in (plan.config_map, plan.stateful_set, plan.service):
                kube.apply(obj)
        else:
            kube.apply(config_map(policy, result.rendered))
    except KubeError as error:
        return result, str(error)
    return result, None


def render_policies_using(kube: Kube, facts: NamespaceFacts, *, export: str | None = None,
                          secret: str | None = None,
                          default_image: str = DEFAULT_IMAGE) -> None:
    """Re-render the policies of the namespace that route to `export` or use `secret`."""
    for policy in facts.valid_policies:
        names = policy.spec.export_names()
        uses = export is not None and export in names
        if secret is not None:
            own = NamespaceFacts(facts.namespace, {name: facts.exports[name] for name in names
                                                   if name in facts.exports},
                                 {policy.name: facts.policies[policy.name]}, facts.secrets)
            uses = uses or secret_is_used(own, secret)
        if uses:
            _, failure = _apply_policy_objects(kube, facts, policy, default_image)
            if failure is not None:
                log.error("auditpolicy %s/%s: %s", facts.namespace, policy.name, failure)


def render_policy(kube: Kube, facts: NamespaceFacts, fact: PolicyFact, pods_idx: Any, *,
                  now: str, previous: Mapping[str, Any],
                  default_image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """Apply a policy's objects and return its whole status."""
    def cond(kind: str, status: Any, reason: str, message: str) -> dict[str, Any]:
        return condition(kind, status, reason, message, now=now, generation=fact.generation)

    if fact.policy is None:
        return {"observedGeneration": fact.generation, "conditions": merge_conditions(
            previous.get("conditions") or [],
            [cond("Ready", "False", "InvalidSpec", fact.problem or "invalid spec")])}
    policy = fact.policy
    result, failure = _apply_policy_objects(kube, facts, policy, default_image)
    problems = list(result.problems)
    conditions = []
    if result.rendered is None:
        conditions.append(cond("Ready", "False", "RenderFailed", "; ".join(problems)))
    elif failure is not None:
        conditions.append(cond("Ready", "False", "ApplyFailed", failure))
    else:
        conditions.append(cond("Ready", "True", "Rendered",
                               f"worker config in ConfigMap {naming.config_map_name(policy.name)}"
                               if policy.spec.mode == "sidecar" else
                               f"collector {naming.collector_name(policy.name)} applied"))
    conditions.append(
        cond("ExportsResolved", "False", "ExportsMissing", "; ".join(problems)) if problems
        else cond("ExportsResolved", "True", "Resolved", "every export the routes name is used"))
    pods = [pod for pod in _values(pods_idx, facts.namespace)
            if isinstance(pod, PodFact)]
    label = naming.policy_label_value(policy.name)
    injected = [pod.name for pod in pods if pod.has_worker
                and pod.labels.get(naming.POLICY_LABEL) == label]
    missing = sorted(pod.name for pod in pods if policy.spec.mode == "sidecar"
                     and not pod.has_worker and not pod.opted_out
                     and policy.spec.selector.matches(dict(pod.labels)))
    return {
        "observedGeneration": fact.generation,
        "conditions": merge_conditions(previous.get("conditions") or [], conditions),
        "configMap": naming.config_map_name(policy.name),
        "matchedExports": list(result.matched_exports),
        "unknownExports": list(result.unknown_exports),
        "injectedPods": len(injected),
        "uninjectedPods": missing[:50],
    }


def workers_of_export(facts: NamespaceFacts, workers_idx: Any,
                      export: str) -> list[WorkerAddress]:
    """The worker pods of every policy of the namespace that routes to `export`."""
    found: list[WorkerAddress] = []
    for policy in facts.valid_policies:
        if export in policy.spec.export_names():
            label = naming.policy_label_value(policy.name)
            found += _values(workers_idx, (facts.namespace, label))
    return sorted(found, key=lambda worker: worker.pod)


# -- injection ------------------------------------------------------------------------------


def inject_pod(facts: NamespaceFacts, pod: dict[str, Any], patch: kopf.Patch,
               warnings: list[str], *, default_image: str) -> None:
    """Add the matching policy's worker to a pod being created (never refuse the pod)."""
    admission = decide(pod, facts.namespace, policies=facts.valid_policies,
                       exports=facts.valid_exports, secret_keys=facts.secret_keys,
                       default_image=default_image)
    warnings.extend(admission.warnings)
    if admission.pod is None:
        return
    mutated = admission.pod

    def become(body: Any) -> None:  # kopf's RawBody: the pod as the apiserver sent it
        body.clear()
        body.update(copy.deepcopy(mutated))

    patch.fns.append(become)


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the object."""

    type: str
    reason: str
    message: str


def _state(status: Mapping[str, Any], kind: str) -> str | None:
    return next((str(c.get("status")) for c in status.get("conditions") or []
                 if c.get("type") == kind), None)


def transition_events(previous: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[Event]:
    """Events for pause, resume and credential failures, once per transition."""
    events = []
    before, after = _state(previous, "Paused"), _state(fresh, "Paused")
    if after == "True" and before != "True":
        events.append(Event("Warning", "Paused", str(fresh.get("pauseReason") or "paused")))
    elif after == "False" and before == "True":
        events.append(Event("Normal", "Resumed", "delivery resumed"))
    if _state(fresh, "CredentialsValid") == "False" and _state(
            previous, "CredentialsValid") != "False":
        message = next((str(c.get("message")) for c in fresh.get("conditions") or []
                        if c.get("type") == "CredentialsValid"), "")
        events.append(Event("Warning", "CredentialsInvalid", message))
    return events


# -- the webhook server ---------------------------------------------------------------------


def webhook_server(config: WebhookConfig, kube: Kube) -> kopf.WebhookServer:
    """The webhook server (kopf's), with a mounted certificate or a self-made one we publish."""
    if config.cert_dir is not None:
        ca = config.cert_dir / "ca.crt"
        return kopf.WebhookServer(addr=config.addr, port=config.port,
                                  certfile=config.cert_dir / "tls.crt",
                                  pkeyfile=config.cert_dir / "tls.key",
                                  cafile=ca if ca.exists() else None)
    directory = Path(tempfile.mkdtemp(prefix="sealtrail-webhook-"))
    made = make_serving_certificate(directory, list(config.hosts))
    if config.configuration is not None:
        asyncio.get_running_loop().create_task(
            _publish_ca(kube, config.configuration, made.ca_pem), name="publish-webhook-ca")
    return kopf.WebhookServer(addr=config.addr, port=config.port, certfile=made.cert_file,
                              pkeyfile=made.key_file, cadata=made.ca_pem)


async def _publish_ca(kube: Kube, configuration: str, ca_pem: bytes) -> None:
    """Keep our CA in the webhook configuration (created by the chart, maybe after us)."""
    while True:
        try:
            found = await asyncio.to_thread(kube.set_webhook_ca, configuration, ca_pem)
            if not found:
                log.warning("MutatingWebhookConfiguration %s not found yet; pods are not "
                            "injected until it exists", configuration)
        except KubeError as error:
            log.error("cannot publish the webhook CA: %s", error)  # noqa: TRY400 - the reason is the message
        await asyncio.sleep(CA_CHECK_SECONDS)
