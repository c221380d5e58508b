"""The worker as a native sidecar: the JSON patch (RFC 6902) the webhook returns, and its result.

The worker goes first among `initContainers` with `restartPolicy: Always`, so the kubelet starts
it, waits for its startup probe, and only then runs the pod's other init containers and its
containers; it stops after them, so it can drain what they wrote last. Every container after
it (init containers included: they run while it is up) gets `SEALTRAIL_URL` unless it already
sets it.

Secrets and the config reach the worker as whole volumes, never `subPath` and never env vars:
the kubelet swaps a mounted volume's files in place, and the worker re-reads them, so a rotated
token or a changed config needs no restart. Only what the worker reads at start (store,
listeners, processes) and a newly referenced Secret need a new pod; `new_pod_reasons` says when.

Nothing here refuses a pod: a pod that opted out, already has a worker, or whose declared
ports or volume names would clash gets no patch (the last with a reason to warn about).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from kubernetes.utils import parse_quantity

from sealtrail.api.resources import WorkerSettings
from sealtrail.operator import naming
from sealtrail.operator.render import Policy, RenderedConfig

__all__ = [
    "Outcome",
    "SidecarPlan",
    "has_worker",
    "new_pod_reasons",
    "opted_out",
    "plan_sidecar",
    "worker_container",
    "worker_volumes",
]

#: What Kubernetes uses when a pod sets no `terminationGracePeriodSeconds`.
_DEFAULT_GRACE_SECONDS: Final = 30
#: Time beyond the worker's drain for the kubelet to stop the app first and the worker last.
_GRACE_MARGIN_SECONDS: Final = 10

Outcome = Literal["injected", "opted-out", "already-injected", "conflict"]


@dataclass(frozen=True, slots=True)
class SidecarPlan:
    """The patch for a pod, and the pod as it will be; an empty patch leaves it as it is."""

    outcome: Outcome
    #: RFC 6902 operations, in order (empty unless `outcome` is "injected").
    patch: list[dict[str, Any]]
    #: The pod with `patch` applied (a copy; the input is never changed).
    pod: dict[str, Any]
    #: Why nothing was injected, for a person (None when injected).
    reason: str | None = None


def _ephemeral_limit(worker: WorkerSettings, *, sidecar: bool) -> str:
    """The worker's own ephemeral-storage limit, plus its `emptyDir` store as a sidecar.

    The kubelet counts an `emptyDir` (not in memory) toward the pod's ephemeral storage; with
    every container limited, a store filling its `sizeLimit` must not push the pod past the
    sum of the limits, or the kubelet evicts the pod, application included.
    """
    if not sidecar:
        return worker.ephemeral_storage_limit  # the collector's store is a volume claim
    total = (parse_quantity(worker.ephemeral_storage_limit)  # type: ignore[no-untyped-call]
             + parse_quantity(worker.store_size))  # type: ignore[no-untyped-call]
    return f"{math.ceil(total / 2**20)}Mi"


def worker_container(policy: Policy, rendered: RenderedConfig, *, default_image: str,
                     sidecar: bool) -> dict[str, Any]:
    """The `sealtrail-worker` container; as a sidecar it carries `restartPolicy: Always`."""
    worker = policy.spec.worker
    mounts = [
        {"name": naming.VOLUME_CONFIG, "mountPath": naming.CONFIG_DIR, "readOnly": True},
        {"name": naming.VOLUME_STORE, "mountPath": naming.STORE_DIR},
        {"name": naming.VOLUME_TMP, "mountPath": naming.TMP_DIR},
        *({"name": mount.volume, "mountPath": mount.path, "readOnly": True}
          for mount in rendered.mounts),
    ]
    container: dict[str, Any] = {
        "name": naming.CONTAINER_NAME,
        "image": worker.image or default_image,
        "args": list(naming.WORKER_ARGS),
    }
    if sidecar:
        container["restartPolicy"] = "Always"
    container |= {
        "ports": [
            {"name": naming.INGEST_PORT_NAME, "containerPort": worker.port, "protocol": "TCP"},
            {"name": naming.ADMIN_PORT_NAME, "containerPort": worker.admin_port,
             "protocol": "TCP"},
        ],
        "resources": {
            "requests": {"cpu": worker.cpu_request, "memory": worker.memory_request,
                         "ephemeral-storage": worker.ephemeral_storage_request},
            "limits": {"cpu": worker.cpu_limit, "memory": worker.memory_limit,
                       "ephemeral-storage": _ephemeral_limit(worker, sidecar=sidecar)},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": naming.RUN_AS_ID,
            "runAsGroup": naming.RUN_AS_ID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Startup gates the app's containers (a native sidecar must start first): poll often,
        # and allow two minutes for a large store to open.
        "startupProbe": _probe(naming.READY_PATH, period=1, failures=120),
        "readinessProbe": _probe(naming.READY_PATH, period=5, failures=2),
        "livenessProbe": _probe(naming.HEALTH_PATH, period=10, failures=3),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return container


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": naming.ADMIN_PORT_NAME},
            "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2}


def worker_volumes(policy: Policy, rendered: RenderedConfig, *,
                   store: bool) -> list[dict[str, Any]]:
    """The pod volumes the worker mounts; `store=False` when a PVC template provides it."""
    volumes: list[dict[str, Any]] = [
        {"name": naming.VOLUME_CONFIG,
         "configMap": {"name": naming.config_map_name(policy.name)}},
    ]
    if store:
        volumes.append({"name": naming.VOLUME_STORE,
                        "emptyDir": {"sizeLimit": policy.spec.worker.store_size}})
    volumes.append({"name": naming.VOLUME_TMP, "emptyDir": {}})
    volumes += [{"name": mount.volume, "secret": {"secretName": mount.secret}}
                for mount in rendered.mounts]
    return volumes


def _pointer(*parts: str | int) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _map_ops(path: tuple[str, ...], current: Any, entries: Mapping[str, str]) -> list[
        dict[str, Any]]:
    """Set `entries` in the object at `path`, creating it when the pod has none."""
    if not isinstance(current, Mapping):
        return [{"op": "add", "path": _pointer(*path), "value": dict(entries)}]
    return [{"op": "add", "path": _pointer(*path, key), "value": value}
            for key, value in entries.items()]


def _list_ops(path: tuple[str, ...], current: Any, items: list[dict[str, Any]]) -> list[
        dict[str, Any]]:
    """Append `items` to the array at `path`, creating it when the pod has none."""
    if not isinstance(current, list):
        return [{"op": "add", "path": _pointer(*path), "value": items}]
    return [{"op": "add", "path": _pointer(*path, "-"), "value": item} for item in items]


def _env_ops(spec: Mapping[str, Any], url: str) -> list[dict[str, Any]]:
    """`SEALTRAIL_URL` for every container and init container that does not set it."""
    ops: list[dict[str, Any]] = []
    for kind in ("initContainers", "containers"):
        for number, container in enumerate(spec.get(kind) or []):
            env = container.get("env")
            if isinstance(env, list) and any(item.get("name") == naming.ENV_URL for item in env):
                continue
            ops += _list_ops(("spec", kind, str(number), "env"), env,
                             [{"name": naming.ENV_URL, "value": url}])
    return ops


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def opted_out(pod: Mapping[str, Any]) -> bool:
    """True when the pod carries `sealtrail.dev/inject: "false"`."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(naming.INJECT_ANNOTATION) == "false")


def has_worker(pod: Mapping[str, Any]) -> bool:
    """True when the pod already has a `sealtrail-worker` container (injection is done)."""
    return any(container.get("name") == naming.CONTAINER_NAME
               for container in _containers(pod.get("spec") or {}))


def _conflict(spec: Mapping[str, Any], policy: Policy, volumes: list[dict[str, Any]]) -> (
        str | None):
    """Why the worker cannot join this pod without breaking it, if it cannot."""
    if spec.get("hostNetwork"):
        return ("the pod uses the host's network, where the worker's ports would be the "
                "node's and clash between pods")
    taken = {volume.get("name") for volume in spec.get("volumes") or []}
    clash = sorted(str(volume["name"]) for volume in volumes if volume["name"] in taken)
    if clash:
        return f"the pod already has volumes named {', '.join(clash)}"
    ours = {policy.spec.worker.port, policy.spec.worker.admin_port}
    for container in _containers(spec):
        for port in container.get("ports") or []:
            if port.get("containerPort") in ours and port.get("protocol", "TCP") == "TCP":
                return (f"container {container.get('name')!r} declares port "
                        f"{port['containerPort']}, which the worker needs")
    return None


def _apply(document: Mapping[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply our own `add`/`replace` operations to a copy (tests check it against jsonpatch)."""
    result = copy.deepcopy(dict(document))
    for op in ops:
        parts = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
        target: Any = result
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last, value = parts[-1], copy.deepcopy(op["value"])
        if isinstance(target, list):
            if last == "-":
                target.append(value)
            else:
                target.insert(int(last), value)
        else:
            target[last] = value
    return result


def plan_sidecar(pod: Mapping[str, Any], policy: Policy, rendered: RenderedConfig, *,
                 default_image: str) -> SidecarPlan:
    """The patch that adds the worker of `policy` (config `rendered`) to `pod`."""
    if rendered.mode != "sidecar":
        raise ValueError(f"auditpolicy/{policy.name} was rendered for {rendered.mode} mode; a "
                         "sidecar keeps ingest on the pod's loopback")
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    spec: Mapping[str, Any] = pod.get("spec") or {}
    same = copy.deepcopy(dict(pod))
    if opted_out(pod):
        return SidecarPlan("opted-out", [], same,
                           f'annotation {naming.INJECT_ANNOTATION}: "false"')
    if has_worker(pod):
        return SidecarPlan("already-injected", [], same,
                           f"the pod already has a {naming.CONTAINER_NAME} container")
    volumes = worker_volumes(policy, rendered, store=True)
    conflict = _conflict(spec, policy, volumes)
    if conflict is not None:
        return SidecarPlan("conflict", [], same, conflict)

    ops: list[dict[str, Any]] = []
    if "metadata" not in pod:
        ops.append({"op": "add", "path": "/metadata", "value": {}})
    ops += _map_ops(("metadata", "labels"), metadata.get("labels"),
                    {naming.POLICY_LABEL: naming.policy_label_value(policy.name)})
    ops += _map_ops(("metadata", "annotations"), metadata.get("annotations"), {
        naming.INJECTED_ANNOTATION: "true",
        naming.CONFIG_HASH_ANNOTATION: rendered.config_hash,
        naming.RESTART_HASH_ANNOTATION: rendered.restart_hash,
    })
    # Before the worker is inserted at index 0, while the init containers keep their indexes.
    ops += _env_ops(spec, f"http://127.0.0.1:{policy.spec.worker.port}")
    worker = worker_container(policy, rendered, default_image=default_image, sidecar=True)
    if isinstance(spec.get("initContainers"), list):
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": worker})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [worker]})
    ops += _list_ops(("spec", "volumes"), spec.get("volumes"), volumes)
    grace = spec.get("terminationGracePeriodSeconds")
    needed = policy.spec.worker.drain_timeout_seconds + _GRACE_MARGIN_SECONDS
    if (_DEFAULT_GRACE_SECONDS if grace is None else grace) < needed:
        ops.append({"op": "add" if grace is None else "replace",
                    "path": "/spec/terminationGracePeriodSeconds", "value": needed})
    return SidecarPlan("injected", ops, _apply(pod, ops))


def new_pod_reasons(pod: Mapping[str, Any], rendered: RenderedConfig) -> list[str]:
    """Why an injected pod cannot take `rendered` live and needs replacing (empty: it can).

    A changed config reaches a running worker through its ConfigMap volume, but not what the
    worker reads only at start (the restart hash) nor a Secret the pod does not mount.
    """
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    spec: Mapping[str, Any] = pod.get("spec") or {}
    reasons: list[str] = []
    if (metadata.get("annotations") or {}).get(naming.RESTART_HASH_ANNOTATION) != (
            rendered.restart_hash):
        reasons.append("settings the worker reads only at start changed")
    mounted = {(volume.get("name"), (volume.get("secret") or {}).get("secretName"))
               for volume in spec.get("volumes") or []}
    reasons += [f'Secret "{mount.secret}" is not mounted' for mount in rendered.mounts
                if (mount.volume, mount.secret) not in mounted]
    return reasons
