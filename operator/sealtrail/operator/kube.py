"""The one module that writes to the Kubernetes API (kopf itself does the watching).

Called from kopf's sync handlers, which kopf runs in worker threads, so the `kubernetes`
client's blocking calls never stall the event loop. Writes are idempotent and only happen when
something changed: each object we own carries a hash of what we last applied
(`sealtrail.dev/applied-hash`), and an object whose hash matches is left alone (no write, no
new `resourceVersion`, no watch event to wake anyone).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import kubernetes
from kubernetes.client.exceptions import ApiException

__all__ = ["APPLIED_HASH", "Kube", "KubeError"]

log = logging.getLogger("sealtrail.operator")

APPLIED_HASH: Final = "sealtrail.dev/applied-hash"


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the object, never a secret."""


def _hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class Kube:
    """Typed API clients, made once per operator process."""

    def __init__(self) -> None:
        """Load in-cluster config, or the kubeconfig (`KUBECONFIG`) outside a cluster."""
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        self.api = kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.admission = kubernetes.client.AdmissionregistrationV1Api(self.api)

    def _calls(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any],
                                         Callable[..., Any], Callable[..., Any]]:
        """read, create, replace, delete for a kind we manage."""
        match kind:
            case "ConfigMap":
                return (self.core.read_namespaced_config_map,
                        self.core.create_namespaced_config_map,
                        self.core.replace_namespaced_config_map,
                        self.core.delete_namespaced_config_map)
            case "Service":
                return (self.core.read_namespaced_service, self.core.create_namespaced_service,
                        self.core.replace_namespaced_service,
                        self.core.delete_namespaced_service)
            case "StatefulSet":
                return (self.apps.read_namespaced_stateful_set,
                        self.apps.create_namespaced_stateful_set,
                        self.apps.replace_namespaced_stateful_set,
                        self.apps.delete_namespaced_stateful_set)
        raise KubeError(f"sealtrail does not manage {kind} objects")

    def apply(self, obj: Mapping[str, Any]) -> str:
        """Create `obj`, or replace it if what we applied last differs; say which."""
        kind, meta = str(obj["kind"]), obj["metadata"]
        name, namespace = str(meta["name"]), str(meta["namespace"])
        digest = _hash(obj)
        desired = json.loads(json.dumps(obj))
        desired["metadata"].setdefault("annotations", {})[APPLIED_HASH] = digest
        read, create, replace, _ = self._calls(kind)
        try:
            current = read(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status != 404:
                raise KubeError(f"cannot read {kind} {namespace}/{name}: {error.reason}") from None
            current = None
        try:
            if current is None:
                create(namespace, desired)
                return "created"
            existing = json.loads(current.data)
            annotations = existing.get("metadata", {}).get("annotations") or {}
            if annotations.get(APPLIED_HASH) == digest:
                return "unchanged"
            desired["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            if kind == "Service":  # the apiserver's allocations are immutable
                for key in ("clusterIP", "clusterIPs"):
                    if key in existing.get("spec", {}):
                        desired["spec"][key] = existing["spec"][key]
            replace(name, namespace, desired)
        except ApiException as error:
            raise KubeError(f"cannot apply {kind} {namespace}/{name}: {error.reason}") from None
        return "replaced"

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an object we own; False if it was not there."""
        *_, delete = self._calls(kind)
        try:
            delete(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise KubeError(f"cannot delete {kind} {namespace}/{name}: {error.reason}") from None
        return True

    def set_webhook_ca(self, configuration: str, ca_pem: bytes) -> bool:
        """Write our CA into every webhook of a MutatingWebhookConfiguration; False if absent."""
        try:
            current = self.admission.read_mutating_webhook_configuration(
                configuration, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return False
            raise KubeError(f"cannot read MutatingWebhookConfiguration {configuration}: "
                            f"{error.reason}") from None
        bundle = base64.b64encode(ca_pem).decode()
        raw: Any = current  # an HTTP response, not a model: `_preload_content=False`
        webhooks = json.loads(raw.data).get("webhooks") or []
        patch = [{"op": "replace" if "caBundle" in hook.get("clientConfig", {}) else "add",
                  "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
                 for index, hook in enumerate(webhooks)
                 if hook.get("clientConfig", {}).get("caBundle") != bundle]
        if patch:
            try:
                self.admission.patch_mutating_webhook_configuration(configuration, patch)
            except ApiException as error:
                raise KubeError(f"cannot patch MutatingWebhookConfiguration {configuration}: "
                                f"{error.reason}") from None
        return True
