"""The one module that writes to the Kubernetes API (kopf itself does the watching).

Called from kopf's sync handlers, which kopf runs in worker threads, so the `kubernetes`
client's blocking calls never stall the event loop. Writes are idempotent and only happen when
something changed: each object we own carries a hash of what we last applied
(`sealtrail.dev/applied-hash`), and an object whose hash matches is left alone (no write, no
new `resourceVersion`, no watch event to wake anyone).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Final

import kubernetes
from kubernetes.client.exceptions import ApiException

from sealtrail.api.resources import API_VERSION, GROUP, VERSION
from sealtrail.operator.refs import ObjectRef

__all__ = ["APPLIED_HASH", "Kube", "KubeError"]

log = logging.getLogger("sealtrail.operator")

APPLIED_HASH: Final = "sealtrail.dev/applied-hash"
#: How long `apply_recreating` waits for the object it deleted to be gone.
RECREATE_WAIT_SECONDS: Final = 30.0
#: What the API says when a StatefulSet update touches a field it cannot update.
#: How the API server refuses a StatefulSet change it cannot make in place: older releases
#: name the fields it may update; 1.37 names the field it may not (`volumeClaimTemplates`,
#: `selector`) with "field is immutable".
_IMMUTABLE_STATEFULSET: Final = ("updates to statefulset spec for fields other than",
                                 "field is immutable")


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the object, never a secret."""


def _why(error: ApiException, kind: str) -> str:
    """The API server's own message (what field, what rule), except about a Secret's contents."""
    if kind == "Secret":
        return ""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        return ""
    return f" ({str(message)[:400]})" if message else ""


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
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

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
            case "Secret":  # the collector's CA and serving certificate, no other
                return (self.core.read_namespaced_secret, self.core.create_namespaced_secret,
                        self.core.replace_namespaced_secret,
                        self.core.delete_namespaced_secret)
            case "PodDisruptionBudget":
                budgets = kubernetes.client.PolicyV1Api(self.api)
                return (budgets.read_namespaced_pod_disruption_budget,
                        budgets.create_namespaced_pod_disruption_budget,
                        budgets.replace_namespaced_pod_disruption_budget,
                        budgets.delete_namespaced_pod_disruption_budget)
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
            raise KubeError(f"cannot apply {kind} {namespace}/{name}: {error.reason}"
                            f"{_why(error, kind)}") from None
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

    # -- status and events (the leader's controller) ------------------------------------------

    def patch_status(self, plural: str, namespace: str, name: str,
                     changes: Mapping[str, Any]) -> bool:
        """Merge `changes` into an object's status; False if the object is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": dict(changes)})
        except ApiException as error:
            if error.status == 404:
                return False
            raise KubeError(f"cannot write the status of {plural} {namespace}/{name}: "
                            f"{error.reason}") from None
        return True

    def post_event(self, kind: str, namespace: str, name: str, uid: str, *, type_: str,
                   reason: str, message: str) -> None:
        """Post a core/v1 Event on one of our objects (best effort: a lost Event is logged)."""
        now = dt.datetime.now(dt.UTC)
        body = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": kind, "name": name,
                               "namespace": namespace, "uid": uid},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "sealtrail-operator"},
            "reportingComponent": "sealtrail.dev/operator",
        }
        try:
            self.core.create_namespaced_event(namespace, body)  # type: ignore[arg-type]
        except ApiException as error:
            log.warning("cannot post the %s event on %s %s/%s: %s", reason, kind, namespace,
                        name, error.reason)

    # -- Secrets: only ones our resources name, each read by name (never listed) -------------

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret by name, or None if it does not exist (or we may not read it)."""
        try:
            answer: Any = self.core.read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=5)
        except ApiException as error:
            if error.status in {403, 404}:
                return None
            raise KubeError(f"cannot read Secret {namespace}/{name}: {error.reason}") from None
        found: dict[str, Any] = json.loads(answer.data)
        return found

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a Secret we own; False if one of that name exists already."""
        try:
            self.core.create_namespaced_secret(namespace, dict(body))  # type: ignore[arg-type]
        except ApiException as error:
            if error.status == 409:
                return False
            raise KubeError(f"cannot create Secret {namespace}/{body['metadata']['name']}: "
                            f"{error.reason}") from None
        return True

    def replace_secret(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Replace a Secret we own at the resourceVersion we read; False on a conflict."""
        name = str(body["metadata"]["name"])
        try:
            self.core.replace_namespaced_secret(name, namespace, dict(body))  # type: ignore[arg-type]
        except ApiException as error:
            if error.status == 409:
                return False
            raise KubeError(f"cannot replace Secret {namespace}/{name}: {error.reason}") from None
        return True

    # -- collector mode: fields that cannot be updated, and what the other mode left ---------

    def read_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """An object of a kind we manage as the API has it; None if it does not exist."""
        read, *_ = self._calls(kind)
        try:
            answer: Any = read(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == HTTPStatus.NOT_FOUND:
                return None
            raise KubeError(f"cannot read {kind} {namespace}/{name}: {error.reason}") from None
        found: dict[str, Any] = json.loads(answer.data)
        return found

    def apply_recreating(self, obj: Mapping[str, Any], *,
                         wait_seconds: float = RECREATE_WAIT_SECONDS) -> str:
        """`apply`, re-creating the object if the change is to a field that cannot be updated.

        A StatefulSet takes updates only to a few fields of its spec; a change elsewhere
        (`volumeClaimTemplates`: `storageSize`, `storageClassName`; `selector`) is refused with
        422 on every attempt. Then the StatefulSet is deleted orphaning its pods and volume
        claims (nothing stops, no row is lost) and created again; the new one adopts the pods,
        rolls them if their template changed, and reuses the claims, which keep the size they
        were made with. A Service whose pinned `clusterIP` differs from the one it has is
        deleted and created again (its IP cannot change otherwise).

        Returns what `apply` does, or "recreated"; a KubeError says to retry when the old
        object was still going after `wait_seconds`.
        """
        kind, meta = str(obj["kind"]), obj["metadata"]
        name, namespace = str(meta["name"]), str(meta["namespace"])
        if kind == "Service":
            pinned = (obj.get("spec") or {}).get("clusterIP")
            current = self.read_object(kind, namespace, name)
            if pinned and current is not None and pinned != (current.get("spec") or {}).get(
                    "clusterIP"):
                log.warning("Service %s/%s: re-created for its new clusterIP %s", namespace,
                            name, pinned)
                self._delete_and_wait(kind, current, propagation="Background",
                                      wait_seconds=wait_seconds)
                self.apply(obj)
                return "recreated"
            return self.apply(obj)
        try:
            return self.apply(obj)
        except KubeError:
            if kind != "StatefulSet":
                raise
            current = self.read_object(kind, namespace, name)
            if current is None or not self._refused_as_immutable(obj, current):
                raise
        log.warning("StatefulSet %s/%s: re-created, because the change is to fields a "
                    "StatefulSet cannot update; its pods and volume claims are kept (existing "
                    "claims keep their size: expand them by hand if the StorageClass allows)",
                    namespace, name)
        self._delete_and_wait(kind, current, propagation="Orphan", wait_seconds=wait_seconds)
        self.apply(obj)
        return "recreated"

    def _refused_as_immutable(self, obj: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
        """Whether the API refuses to update the StatefulSet to `obj` for its fixed fields."""
        desired = json.loads(json.dumps(obj))
        desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            self.apps.replace_namespaced_stateful_set(
                str(desired["metadata"]["name"]), str(desired["metadata"]["namespace"]),
                desired, dry_run="All")
        except ApiException as error:
            return (error.status == HTTPStatus.UNPROCESSABLE_ENTITY
                    and any(text in str(error.body) for text in _IMMUTABLE_STATEFULSET))
        return False

    def _delete_and_wait(self, kind: str, current: Mapping[str, Any], *, propagation: str,
                         wait_seconds: float) -> None:
        """Delete `current` (that very object: its uid) and wait until it is gone."""
        name, namespace = str(current["metadata"]["name"]), str(current["metadata"]["namespace"])
        uid = str(current["metadata"]["uid"])
        *_, delete = self._calls(kind)
        options = kubernetes.client.V1DeleteOptions(
            propagation_policy=propagation,
            preconditions=kubernetes.client.V1Preconditions(uid=uid))
        try:
            delete(name, namespace, body=options)
        except ApiException as error:
            if error.status not in {HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT}:
                raise KubeError(f"cannot delete {kind} {namespace}/{name}: "
                                f"{error.reason}") from None
        deadline = time.monotonic() + wait_seconds
        while True:
            found = self.read_object(kind, namespace, name)
            if found is None or found["metadata"].get("uid") != uid:
                return
            if time.monotonic() >= deadline:
                raise KubeError(f"{kind} {namespace}/{name} is being deleted to be created "
                                "again with fields it cannot update; retrying")
            time.sleep(0.2)

    def delete_owned(self, ref: ObjectRef, owner_uid: str) -> bool:
        """Delete `ref` if `owner_uid` is among its owners; False if absent or not ours.

        Never deletes what the policy does not own (a user's object of the same name). A
        StatefulSet's pods go with it; its volume claims stay (`whenDeleted: Retain`).
        """
        current = self.read_object(ref.kind, ref.namespace, ref.name)
        if current is None:
            return False
        owners = current["metadata"].get("ownerReferences") or []
        if not any(owner.get("uid") == owner_uid for owner in owners):
            log.warning("%s is not the policy's (its owners do not include %s); left alone",
                        ref, owner_uid)
            return False
        *_, delete = self._calls(ref.kind)
        options = kubernetes.client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=kubernetes.client.V1Preconditions(uid=current["metadata"]["uid"]))
        try:
            delete(ref.name, ref.namespace, body=options)
        except ApiException as error:
            if error.status in {HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT}:
                return False  # gone, or replaced by another object since we read it
            raise KubeError(f"cannot delete {ref}: {error.reason}") from None
        return True

    def has_any(self, plural: str, namespaces: tuple[str, ...]) -> bool:
        """Whether any of our objects of `plural` exists (in `namespaces`, or anywhere)."""
        try:
            if not namespaces:
                found: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, plural,
                                                                    limit=1)
                return bool(found.get("items"))
            for namespace in namespaces:
                found = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                  plural, limit=1)
                if found.get("items"):
                    return True
        except ApiException as error:
            raise KubeError(f"cannot list {plural}: {error.reason}") from None
        return False
