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

Nothing here refuses a pod: a pod that opted out, already has a worker, runs Windows, or whose
ports or volume names would clash gets no patch (the last two with a reason to warn about).

Living with other mutating webhooks (the chart sets `reinvocationPolicy: IfNeeded`):

- Planning is idempotent: a pod that has the worker gets no second one. When the API server
  calls again because a later webhook changed the pod, the worker only takes what it lacks of
  the app's AWS identity (see below) and its image pull secrets; nothing else changes.
- An identity webhook (EKS IRSA's pod-identity-webhook, EKS Pod Identity) gives the app's
  containers `AWS_*` env and a projected token volume. The worker needs the same to reach AWS
  (CloudWatch): it gets those env entries of the app's first container and its mounts of the
  token volume, read-only, except any it sets itself.
- The worker's image pull secrets (the policy's, then the operator's default) are added to the
  pod's `imagePullSecrets` unless listed already.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from kubernetes.utils import parse_quantity

from sealtrail.api.resources import WorkerSettings
from sealtrail.api.worker_api import PRE_STOP_PATH
from sealtrail.operator import naming
from sealtrail.operator.render import Policy, RenderedConfig

__all__ = [
    "GRACE_MARGIN_SECONDS",
    "Outcome",
    "SidecarPlan",
    "has_worker",
    "new_pod_reasons",
    "opted_out",
    "plan_reinvocation",
    "plan_sidecar",
    "pod_grace_seconds",
    "pre_stop_hook",
    "worker_container",
    "worker_volumes",
]

#: What Kubernetes uses when a pod sets no `terminationGracePeriodSeconds`.
_DEFAULT_GRACE_SECONDS: Final = 30
#: Time beyond the worker's drain for it to persist cursors and exit before the SIGKILL.
GRACE_MARGIN_SECONDS: Final = 5

#: The env an identity webhook gives the app that the worker copies (IRSA, then Pod Identity).
AWS_IDENTITY_ENV: Final = (
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_STS_REGIONAL_ENDPOINTS", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
#: The projected token volumes those webhooks add (IRSA, EKS Pod Identity).
AWS_TOKEN_VOLUMES: Final = ("aws-iam-token", "eks-pod-identity-token")
_OS_LABEL: Final = "kubernetes.io/os"
_PROBES: Final = ("startupProbe", "readinessProbe", "livenessProbe")

#: "unsupported": a Windows pod, which the Linux worker cannot join.
Outcome = Literal["injected", "opted-out", "already-injected", "conflict", "unsupported"]


@dataclass(frozen=True, slots=True)
class SidecarPlan:
    """The patch for a pod, and the pod as it will be; an empty patch leaves it as it is."""

    outcome: Outcome
    #: RFC 6902 operations, in order: the injection, or for "already-injected" what the worker
    #: lacks of the app's AWS identity and its pull secrets (empty for the other outcomes).
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
                if mount.kind == "secret" else
                {"name": mount.volume, "configMap": {"name": mount.secret, "optional": True}}
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


def _windows(spec: Mapping[str, Any]) -> str | None:
    """Why the pod runs on Windows, if it does.

    The worker image and its security settings are Linux-only: such a pod would be refused by
    the API server, or never start.
    """
    if (spec.get("os") or {}).get("name") == "windows":
        return "spec.os.name is windows"
    if (spec.get("nodeSelector") or {}).get(_OS_LABEL) == "windows":
        return f"its nodeSelector has {_OS_LABEL}=windows"
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    if required and all(any(
            expression.get("key") == _OS_LABEL and expression.get("operator") == "In"
            and set(expression.get("values") or []) == {"windows"}
            for expression in term.get("matchExpressions") or []) for term in required):
        return f"its node affinity requires {_OS_LABEL}=windows"
    return None


def _probed_ports(container: Mapping[str, Any]) -> list[int]:
    """The port numbers the container's probes call: it listens there, declared or not."""
    found = []
    for probe in (container.get(name) or {} for name in _PROBES):
        for handler in ("httpGet", "tcpSocket", "grpc"):
            port = (probe.get(handler) or {}).get("port")
            if isinstance(port, int):
                found.append(port)
    return found


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
        for port in _probed_ports(container):
            if port in ours:
                return (f"container {container.get('name')!r} is probed on port {port}, which "
                        "the worker needs")
    return None


def _aws_identity(spec: Mapping[str, Any], worker: Mapping[str, Any]) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """What the worker lacks of the app's AWS identity: env entries, and token mounts."""
    app: Mapping[str, Any] = next(iter(spec.get("containers") or []), {})
    has_env = {item.get("name") for item in worker.get("env") or []}
    env = [copy.deepcopy(item) for item in app.get("env") or []
           if item.get("name") in AWS_IDENTITY_ENV and item.get("name") not in has_env]
    volumes = {volume.get("name") for volume in spec.get("volumes") or []}
    mounted = worker.get("volumeMounts") or []
    taken = {mount.get("name") for mount in mounted} | {mount.get("mountPath")
                                                        for mount in mounted}
    mounts = [{"name": mount["name"], "mountPath": mount["mountPath"], "readOnly": True}
              for mount in app.get("volumeMounts") or []
              if mount.get("name") in AWS_TOKEN_VOLUMES and mount.get("name") in volumes
              and mount.get("name") not in taken and mount.get("mountPath") not in taken]
    return env, mounts


def _pull_secret_ops(spec: Mapping[str, Any], policy: Policy,
                     default_pull_secrets: Sequence[str]) -> list[dict[str, Any]]:
    """Add the worker's image pull secrets the pod does not list, in order, once each."""
    current = spec.get("imagePullSecrets")
    listed = {item.get("name") for item in current or []}
    wanted = [name for name in dict.fromkeys(
        [*policy.spec.worker.image_pull_secrets, *default_pull_secrets]) if name not in listed]
    return _list_ops(("spec", "imagePullSecrets"), current,
                     [{"name": name} for name in wanted]) if wanted else []


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


def plan_reinvocation(pod: Mapping[str, Any], policy: Policy, *,
                      default_pull_secrets: Sequence[str] = ()) -> SidecarPlan:
    """What a pod that has a worker still needs, as outcome "already-injected".

    The patch gives the worker what it lacks of the app's AWS identity and the pod its pull
    secrets; it is empty when nothing is missing, or the worker is not one sealtrail injected.
    """
    same = copy.deepcopy(dict(pod))
    reason = f"the pod already has a {naming.CONTAINER_NAME} container"
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    spec: Mapping[str, Any] = pod.get("spec") or {}
    found = [(kind, number, container) for kind in ("initContainers", "containers")
             for number, container in enumerate(spec.get(kind) or [])
             if container.get("name") == naming.CONTAINER_NAME]
    if annotations.get(naming.INJECTED_ANNOTATION) != "true" or len(found) != 1:
        return SidecarPlan("already-injected", [], same, reason)
    kind, number, worker = found[0]
    env, mounts = _aws_identity(spec, worker)
    ops: list[dict[str, Any]] = []
    if env:
        ops += _list_ops(("spec", kind, str(number), "env"), worker.get("env"), env)
    if mounts:
        ops += _list_ops(("spec", kind, str(number), "volumeMounts"),
                         worker.get("volumeMounts"), mounts)
    ops += _pull_secret_ops(spec, policy, default_pull_secrets)
    return SidecarPlan("already-injected", ops, _apply(pod, ops) if ops else same, reason)


def plan_sidecar(pod: Mapping[str, Any], policy: Policy, rendered: RenderedConfig, *,
                 default_image: str, default_pull_secrets: Sequence[str] = ()) -> SidecarPlan:
    """The patch that adds the worker of `policy` (config `rendered`) to `pod`.

    `default_pull_secrets` are the operator's image pull secrets for the worker, added after
    the policy's own.
    """
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
        return plan_reinvocation(pod, policy, default_pull_secrets=default_pull_secrets)
    windows = _windows(spec)
    if windows is not None:
        return SidecarPlan("unsupported", [], same,
                           f"a Windows pod ({windows}); the worker runs on Linux only")
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
    env, mounts = _aws_identity(spec, worker)
    if env:
        worker["env"] = env
    worker["volumeMounts"] += mounts
    worker["lifecycle"] = pre_stop_hook(pod_grace_seconds(
        spec.get("terminationGracePeriodSeconds"), policy.spec.worker.drain_timeout_seconds))
    if isinstance(spec.get("initContainers"), list):
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": worker})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [worker]})
    ops += _list_ops(("spec", "volumes"), spec.get("volumes"), volumes)
    ops += _pull_secret_ops(spec, policy, default_pull_secrets)
    grace = spec.get("terminationGracePeriodSeconds")
    total = pod_grace_seconds(grace, policy.spec.worker.drain_timeout_seconds)
    ops.append({"op": "add" if grace is None else "replace",
                "path": "/spec/terminationGracePeriodSeconds", "value": total})
    return SidecarPlan("injected", ops, _apply(pod, ops))


def pod_grace_seconds(app_grace: object, drain_seconds: int) -> int:
    """The grace an injected pod needs: the app's own, then the worker's drain after it.

    The kubelet counts one grace period for the whole pod and stops a native sidecar only
    after the app's containers have exited, so the worker's drain must be added to what the
    app was given (Kubernetes' 30 s if it set nothing), not share it: otherwise a slow app
    shutdown eats the drain. A grace that is not a whole number (the API server would have
    refused the pod) counts as the default.
    """
    own = app_grace if isinstance(app_grace, int) and app_grace >= 0 else _DEFAULT_GRACE_SECONDS
    return own + drain_seconds + GRACE_MARGIN_SECONDS


def pre_stop_hook(grace_seconds: int) -> dict[str, Any]:
    """The worker's preStop hook: tells it the pod began stopping, with how much grace.

    The kubelet runs every container's preStop at the start of termination, a sidecar's too,
    so this starts the worker's clock while the app is still shutting down
    (worker/termination.py).
    """
    return {"preStop": {"httpGet": {"path": f"{PRE_STOP_PATH}?grace={grace_seconds}",
                                    "port": naming.ADMIN_PORT_NAME}}}


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
    mounted |= {(volume.get("name"), (volume.get("configMap") or {}).get("name"))
                for volume in spec.get("volumes") or [] if "configMap" in volume}
    reasons += [f'{"Secret" if mount.kind == "secret" else "ConfigMap"} "{mount.secret}" is '
                "not mounted" for mount in rendered.mounts
                if (mount.volume, mount.secret) not in mounted]
    return reasons
