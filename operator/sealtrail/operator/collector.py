"""Collector mode: the worker as a StatefulSet behind a Service, for callers outside the pod.

The kube-apiserver's audit webhook (and any app that cannot carry a sidecar) posts to the
Service. A StatefulSet rather than a Deployment because each replica owns its store: a volume
per replica (`volumeClaimTemplates`) that outlives pod restarts and rescheduling, since the
backlog of undelivered rows lives there. `podManagementPolicy: Parallel` because replicas
share nothing, so none has to wait for another to start or stop.

The Service is a plain ClusterIP Service (not headless): the apiserver's audit webhook is
configured by a kubeconfig URL, and the apiserver (a hostNetwork static pod) cannot resolve
cluster DNS, so it needs one stable virtual IP that kube-proxy spreads over ready replicas.
`spec.collector.clusterIP` pins that IP, so that it survives the policy being recreated. The
StatefulSet names the Service as its `serviceName`; no per-pod DNS names are needed, since the
operator reaches each worker's admin port by pod IP.

Ingest is HTTPS: the worker serves the certificate in the Secret `<collector>-tls`, issued by
the operator (`collector_tls`) for the Service's DNS names and its ClusterIPs, which are known
only once the Service exists; so the Service is applied before the certificate is planned.

A PodDisruptionBudget (`maxUnavailable: 1`) keeps a drain from evicting more than one replica
at a time, and never blocks it: with one replica, `minAvailable: 1` would stop every drain of
its node, and a collector is something to drain past (callers retry, the backlog is on the
volume), not a reason to hold a node. Unhealthy pods may always be evicted, so a crash-looping
replica cannot block a drain either.

`stale_objects` names what the other mode left behind: switching to sidecar mode deletes the
collector's objects (never its volume claims, which hold undelivered rows); the sidecar mode
owns nothing the collector does not (its ConfigMap is the collector's too).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sealtrail.operator import naming
from sealtrail.operator.inject import (
    GRACE_MARGIN_SECONDS,
    pre_stop_hook,
    worker_container,
    worker_volumes,
)
from sealtrail.operator.refs import ObjectRef
from sealtrail.operator.render import Policy, RenderedConfig, config_map

__all__ = [
    "CollectorPlan",
    "cluster_ips",
    "collector_status",
    "ingest_url",
    "plan_collector",
    "serving_hosts",
    "stale_objects",
]

@dataclass(frozen=True, slots=True)
class CollectorPlan:
    """The objects of a policy's collector, each owned by the policy."""

    config_map: dict[str, Any]
    stateful_set: dict[str, Any]
    service: dict[str, Any]
    pod_disruption_budget: dict[str, Any]
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
    container = worker_container(policy, rendered, default_image=default_image, sidecar=False)
    grace = worker.drain_timeout_seconds + GRACE_MARGIN_SECONDS  # the worker is all it runs
    container["lifecycle"] = pre_stop_hook(grace)
    container["volumeMounts"].append({"name": naming.VOLUME_COLLECTOR_TLS,
                                      "mountPath": naming.COLLECTOR_TLS_DIR, "readOnly": True})
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
                    "terminationGracePeriodSeconds": grace,
                    "containers": [container],
                    "volumes": [*worker_volumes(policy, rendered, store=False), {
                        "name": naming.VOLUME_COLLECTOR_TLS,
                        "secret": {"secretName": naming.collector_tls_name(policy.name)}}],
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
    pinned = {} if policy.spec.collector.cluster_ip is None else {
        "clusterIP": policy.spec.collector.cluster_ip}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(policy, naming.collector_name(policy.name)),
        "spec": {
            "type": "ClusterIP",
            **pinned,
            "selector": naming.collector_labels(policy.name),
            "ports": [
                {"name": naming.INGEST_PORT_NAME, "port": worker.port, "protocol": "TCP",
                 "targetPort": naming.INGEST_PORT_NAME},
                {"name": naming.ADMIN_PORT_NAME, "port": worker.admin_port, "protocol": "TCP",
                 "targetPort": naming.ADMIN_PORT_NAME},
            ],
        },
    }


def _pod_disruption_budget(policy: Policy) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(policy, naming.collector_name(policy.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": naming.collector_labels(policy.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def plan_collector(policy: Policy, rendered: RenderedConfig, *,
                   default_image: str) -> CollectorPlan:
    """The ConfigMap, StatefulSet `sealtrail-collector-<policy>`, its Service and its PDB.

    The StatefulSet mounts the Secret `collector_tls.plan_collector_tls` plans, which needs the
    Service's ClusterIPs: apply the Service, then the TLS objects, then the StatefulSet.
    """
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
        pod_disruption_budget=_pod_disruption_budget(policy),
        warnings=tuple(warnings),
    )


def cluster_ips(service: Mapping[str, Any] | None) -> list[str]:
    """The virtual IPs of a Service as the API returned it (none for a missing or headless one)."""
    spec = (service or {}).get("spec") or {}
    found = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [str(ip) for ip in found if ip and ip != "None"]


def serving_hosts(policy: Policy, ips: Iterable[str]) -> list[str]:
    """What the collector's certificate is for: its Service's DNS names, then its ClusterIPs."""
    name = naming.collector_name(policy.name)
    namespace = policy.namespace
    return [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local",
            f"{name}.{namespace}", name, *ips]


def ingest_url(policy: Policy, ip: str) -> str:
    """`https://<ip>:<port>`: the collector's ingest address for a caller without cluster DNS."""
    host = f"[{ip}]" if isinstance(ipaddress.ip_address(ip), ipaddress.IPv6Address) else ip
    return f"https://{host}:{policy.spec.worker.port}"


def collector_status(policy: Policy, ips: Iterable[str]) -> dict[str, Any]:
    """`status.collector` of a collector-mode policy (camelCase, as the CRD has it)."""
    found = list(ips)
    status: dict[str, Any] = {"service": naming.collector_name(policy.name), "clusterIPs": found,
                              "caConfigMap": naming.collector_ca_name(policy.name)}
    if found:
        status["url"] = ingest_url(policy, found[0])
    return status


def stale_objects(policy: Policy) -> tuple[ObjectRef, ...]:
    """The objects the policy's other mode owns and this mode does not (delete each if owned).

    In sidecar mode that is the whole collector but its volume claims, which hold undelivered
    rows (they are adopted again if the policy goes back to collector mode). In collector mode
    it is nothing: the sidecar mode's only object, the ConfigMap, is the collector's too, and
    pods injected earlier keep their sidecar until they are replaced.
    """
    if policy.spec.mode == "collector":
        return ()
    name, namespace = naming.collector_name(policy.name), policy.namespace
    ca = naming.collector_ca_name(policy.name)
    return (ObjectRef("PodDisruptionBudget", namespace, name),
            ObjectRef("StatefulSet", namespace, name),
            ObjectRef("Service", namespace, name),
            ObjectRef("Secret", namespace, naming.collector_tls_name(policy.name)),
            ObjectRef("Secret", namespace, ca),
            ObjectRef("ConfigMap", namespace, ca))
