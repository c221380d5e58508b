"""Collector mode: the worker as a StatefulSet behind a Service, for callers outside the pod.

The kube-apiserver's audit webhook (and any app that cannot carry a sidecar) posts to the
Service. A StatefulSet rather than a Deployment because each replica owns its store: a volume
per replica (`volumeClaimTemplates`) that outlives pod restarts and rescheduling, since the
backlog of undelivered rows lives there. `podManagementPolicy: Parallel` because replicas
share nothing, so none has to wait for another to start or stop.

The Service is a plain ClusterIP Service (not headless): the apiserver's audit webhook is
configured by a kubeconfig URL, and the apiserver often cannot resolve cluster DNS, so it needs
one stable virtual IP that kube-proxy spreads over ready replicas. The StatefulSet names it as
its `serviceName`; no per-pod DNS names are needed, since the operator reaches each worker's
admin port by pod IP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sealtrail.operator import naming
from sealtrail.operator.inject import worker_container, worker_volumes
from sealtrail.operator.render import Policy, RenderedConfig, config_map

__all__ = ["CollectorPlan", "plan_collector"]

_GRACE_MARGIN_SECONDS: Final = 10


@dataclass(frozen=True, slots=True)
class CollectorPlan:
    """The objects of a policy's collector, each owned by the policy."""

    config_map: dict[str, Any]
    stateful_set: dict[str, Any]
    service: dict[str, Any]
    #: What a person should know about what was planned (not errors: it was planned).
    warnings: tuple[str, ...]


def _metadata(policy: Policy, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": policy.namespace,
        "labels": naming.managed_labels(policy.name),
        "ownerReferences": [naming.owner_reference(policy.name, policy.uid)],
    }


def _stateful_set(policy: Policy, rendered: RenderedConfig, default_image: str) -> dict[
        str, Any]:
    name = naming.collector_name(policy.name)
    worker = policy.spec.worker
    settings = policy.spec.collector
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": settings.storage_size}},
    }
    if settings.storage_class_name is not None:
        claim["storageClassName"] = settings.storage_class_name
    pod_labels = naming.managed_labels(policy.name) | naming.collector_labels(policy.name)
    metadata = _metadata(policy, name)
    metadata["annotations"] = {naming.CONFIG_HASH_ANNOTATION: rendered.config_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata,
        "spec": {
            "replicas": settings.replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": naming.collector_labels(policy.name)},
            # The claims hold undelivered rows: keep them when the set goes or shrinks.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain",
                                                     "whenScaled": "Retain"},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    # Rolls the pods only for what a running worker cannot take live.
                    "annotations": {naming.RESTART_HASH_ANNOTATION: rendered.restart_hash},
                },
                "spec": {
                    "automountServiceAccountToken": False,  # the worker never calls the API
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": naming.RUN_AS_ID,
                        "runAsGroup": naming.RUN_AS_ID,
                        "fsGroup": naming.RUN_AS_ID,  # so the claimed volume is writable
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds":
                        worker.drain_timeout_seconds + _GRACE_MARGIN_SECONDS,
                    "containers": [worker_container(policy, rendered,
                                                    default_image=default_image,
                                                    sidecar=False)],
                    "volumes": worker_volumes(policy, rendered, store=False),
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": naming.VOLUME_STORE,
                             "labels": naming.managed_labels(policy.name)},
                "spec": claim,
            }],
        },
    }


def _service(policy: Policy) -> dict[str, Any]:
    worker = policy.spec.worker
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(policy, naming.collector_name(policy.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.collector_labels(policy.name),
            "ports": [
                {"name": naming.INGEST_PORT_NAME, "port": worker.port, "protocol": "TCP",
                 "targetPort": naming.INGEST_PORT_NAME},
                {"name": naming.ADMIN_PORT_NAME, "port": worker.admin_port, "protocol": "TCP",
                 "targetPort": naming.ADMIN_PORT_NAME},
            ],
        },
    }


def plan_collector(policy: Policy, rendered: RenderedConfig, *,
                   default_image: str) -> CollectorPlan:
    """The ConfigMap, StatefulSet `sealtrail-collector-<policy>` and its Service."""
    if rendered.mode != "collector":
        raise ValueError(f"auditpolicy/{policy.name} was rendered for {rendered.mode} mode; a "
                         "collector needs ingest on every address")
    warnings: list[str] = []
    if policy.spec.collector.replicas > 1:
        warnings.append(
            f"auditpolicy/{policy.name}: spec.collector.replicas: each of the "
            f"{policy.spec.collector.replicas} replicas keeps its own chain per tenant, and the "
            "Service spreads callers over them: one tenant's events are split over several "
            "chains, told apart in the SIEM by store_id, with no order between them")
    return CollectorPlan(
        config_map=config_map(policy, rendered),
        stateful_set=_stateful_set(policy, rendered, default_image),
        service=_service(policy),
        warnings=tuple(warnings),
    )
