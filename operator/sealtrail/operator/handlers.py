"""The kopf handlers: thin. Each parses what it was given, calls a planner, reports.

What the cluster looks like to the operator comes from kopf's in-memory indexes (exports,
policies, Secrets and worker pods per namespace), so no handler lists anything from the API.
The planning is in `reconcile` (facts to objects and status) and `status` (worker reports to
an AuditExport's status); the writes are in `kube`; talking to workers is in `polling`.

Sync handlers run in kopf's thread pool (they call the blocking `kubernetes` client); the
async ones (the status timer, the admission webhook) never block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from sealtrail.api.resources import GROUP, VERSION
from sealtrail.operator import naming, reconcile
from sealtrail.operator.config import OperatorConfig
from sealtrail.operator.polling import StatusPoller, WorkerAddress
from sealtrail.operator.status import export_status, status_changes

__all__ = ["build_registry"]

log = logging.getLogger("sealtrail.operator")

EXPORTS = (GROUP, VERSION, "auditexports")
POLICIES = (GROUP, VERSION, "auditpolicies")


def _now() -> str:
    return reconcile.now()


def _facts(namespace: str | None, indexes: Mapping[str, Any], *,
           without_export: str | None = None) -> reconcile.NamespaceFacts:
    return reconcile.namespace_facts(
        namespace or "", indexes["exports_idx"], indexes["policies_idx"],
        indexes["secrets_idx"], without_export=without_export)


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:  # noqa: C901, PLR0915 - one place lists every handler, in the order events flow
    """Every handler of the operator, on a registry of its own (no import-time globals)."""
    registry = kopf.OperatorRegistry()

    # -- indexes: what the cluster holds, kept current by kopf's watches ---------------------

    @kopf.index(*EXPORTS, id="exports_idx", registry=registry)
    def exports_idx(*, namespace: str | None, name: str, body: kopf.Body,
                    **_: Any) -> dict[str | None, reconcile.ExportFact]:
        return {namespace: reconcile.export_fact(name, body)}

    @kopf.index(*POLICIES, id="policies_idx", registry=registry)
    def policies_idx(*, namespace: str | None, name: str, body: kopf.Body,
                     **_: Any) -> dict[str | None, reconcile.PolicyFact]:
        return {namespace: reconcile.policy_fact(name, body)}

    @kopf.index("", "v1", "secrets", id="secrets_idx", registry=registry)
    def secrets_idx(*, namespace: str | None, body: kopf.Body,
                    **_: Any) -> dict[str | None, reconcile.SecretFact]:
        return {namespace: reconcile.secret_fact(body)}

    @kopf.index("", "v1", "pods", labels={naming.POLICY_LABEL: kopf.PRESENT},
                id="workers_idx", registry=registry)
    def workers_idx(*, namespace: str | None, name: str, labels: Mapping[str, str],
                    body: kopf.Body, **_: Any) -> dict[tuple[str | None, str], WorkerAddress]:
        policy = str(labels[naming.POLICY_LABEL])
        return {(namespace, policy): reconcile.worker_address(str(namespace), name, body)}

    @kopf.index("", "v1", "pods", id="pods_idx", registry=registry)
    def pods_idx(*, namespace: str | None, name: str, body: kopf.Body,
                 **_: Any) -> dict[str | None, reconcile.PodFact]:
        return {namespace: reconcile.pod_fact(name, body)}

    # -- start-up ---------------------------------------------------------------------------

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In-cluster service account, or the kubeconfig, as the kubernetes client finds them.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.posting.level = logging.INFO
        settings.persistence.finalizer = f"{GROUP}/operator"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.watching.server_timeout = config.watch_timeout_seconds
        memo.kube = reconcile.connect()
        memo.poller = StatusPoller()
        if config.webhook is not None:
            server = reconcile.webhook_server(config.webhook, memo.kube)
            settings.admission.server = server

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(*, memo: Any, **_: Any) -> None:
        poller: StatusPoller = memo.poller
        await poller.aclose()

    # -- AuditExport: validate, resolve Secrets, re-render the policies that use it --------

    @kopf.on.create(*EXPORTS, id="export", registry=registry)
    @kopf.on.update(*EXPORTS, id="export", field="spec", registry=registry)
    @kopf.on.resume(*EXPORTS, id="export", registry=registry)
    def export_changed(*, namespace: str | None, name: str, body: kopf.Body,
                       patch: kopf.Patch, memo: Any, **indexes: Any) -> None:
        fact = reconcile.export_fact(name, body)
        facts = _facts(namespace, indexes)
        credentials = reconcile.credential_facts(fact, facts)
        previous = dict(body.get("status") or {})
        fresh = export_status(
            backend=fact.backend, spec_problem=fact.problem, spec_paused=fact.paused,
            credentials=credentials, reports=[], previous=previous,
            generation=body["metadata"].get("generation"), now=_now())
        # Workers' facts come from the timer; keep what it last found. The spec's own pause
        # (set, or just cleared) is known here and shown at once.
        own = {"Ready", "CredentialsValid"}
        was_spec_paused = any(c.get("type") == "Paused" and c.get("reason") == "SpecPaused"
                              for c in previous.get("conditions") or [])
        if fact.paused:
            own |= {"Paused", "Delivering"}
        elif was_spec_paused:
            own |= {"Paused"}  # resumed; whether it delivers, the next poll says
        else:
            fresh.pop("paused")
            fresh.pop("pauseReason")
        for key in ("cursorLag", "workers", "workersUnreachable", "lastError",
                    "credentialVersion"):
            fresh.pop(key)
        fresh["conditions"] = [c for c in fresh["conditions"] if c["type"] in own] + [
            c for c in previous.get("conditions") or [] if c.get("type") not in own]
        patch.status.update(status_changes(previous, fresh))
        if credentials.problems:
            kopf.warn(body, reason="CredentialsInvalid", message="; ".join(credentials.problems))
        reconcile.render_policies_using(memo.kube, facts, export=name,
                                        default_image=config.default_image)
        if fact.problem is not None:
            raise kopf.PermanentError(fact.problem)

    @kopf.on.delete(*EXPORTS, id="export-deleted", optional=True, registry=registry)
    def export_deleted(*, namespace: str | None, name: str, memo: Any,
                       **indexes: Any) -> None:
        facts = _facts(namespace, indexes, without_export=name)
        reconcile.render_policies_using(memo.kube, facts, export=name,
                                        default_image=config.default_image)

    # -- the status timer: what the workers say -------------------------------------------

    @kopf.timer(*EXPORTS, id="delivery", interval=config.poll_seconds, initial_delay=1.0,
                registry=registry)
    async def export_delivery(*, namespace: str | None, name: str, body: kopf.Body,
                              patch: kopf.Patch, memo: Any, **indexes: Any) -> None:
        fact = reconcile.export_fact(name, body)
        facts = _facts(namespace, indexes)
        workers = reconcile.workers_of_export(facts, indexes["workers_idx"], name)
        poller: StatusPoller = memo.poller
        reports = await poller.reports(workers, name)
        previous: Mapping[str, Any] = body.get("status") or {}
        fresh = export_status(
            backend=fact.backend, spec_problem=fact.problem, spec_paused=fact.paused,
            credentials=reconcile.credential_facts(fact, facts), reports=reports,
            previous=previous, generation=body["metadata"].get("generation"), now=_now())
        changes = status_changes(previous, fresh)
        if changes:
            patch.status.update(changes)
        for event in reconcile.transition_events(previous, fresh):
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    # -- AuditPolicy: render the worker config, run the collector ------------------------

    @kopf.on.create(*POLICIES, id="policy", registry=registry)
    @kopf.on.update(*POLICIES, id="policy", field="spec", registry=registry)
    @kopf.on.resume(*POLICIES, id="policy", registry=registry)
    @kopf.timer(*POLICIES, id="policy-resync", interval=config.policy_resync_seconds,
                initial_delay=2.0, registry=registry)
    def policy_changed(*, namespace: str | None, name: str, body: kopf.Body,
                       patch: kopf.Patch, memo: Any, **indexes: Any) -> None:
        facts = _facts(namespace, indexes)
        policy = reconcile.policy_fact(name, body)
        fresh = reconcile.render_policy(memo.kube, facts, policy, indexes["pods_idx"],
                                        now=_now(), previous=body.get("status") or {},
                                        default_image=config.default_image)
        patch.status.update(status_changes(body.get("status") or {}, fresh))
        if policy.problem is not None:
            raise kopf.PermanentError(policy.problem)

    # -- Secrets: a rotation needs nothing (the kubelet updates the files); a Secret that
    # -- appears, disappears or changes keys changes what renders -------------------------

    @kopf.on.event("", "v1", "secrets", id="secret", registry=registry)
    def secret_changed(*, namespace: str | None, name: str, memo: Any,
                       **indexes: Any) -> None:
        facts = _facts(namespace, indexes)
        if reconcile.secret_is_used(facts, name):
            reconcile.render_policies_using(memo.kube, facts, secret=name,
                                            default_image=config.default_image)

    # -- sidecar injection --------------------------------------------------------------

    if config.webhook is not None:
        @kopf.on.mutate("", "v1", "pods", id=naming.WEBHOOK_ID, operation="CREATE",
                        registry=registry)
        def inject(*, body: kopf.Body, patch: kopf.Patch, namespace: str | None,
                   warnings: list[str], **indexes: Any) -> None:
            pod_namespace = namespace or body.get("metadata", {}).get("namespace") or "default"
            facts = _facts(pod_namespace, indexes)
            reconcile.inject_pod(facts, dict(body), patch, warnings,
                                 default_image=config.default_image)

    return registry
