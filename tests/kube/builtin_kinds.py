"""Server-side defaulting and validation for the built-in kinds, as far as operators notice them.

Real pods come back with `restartPolicy`, `dnsPolicy`, per-container `imagePullPolicy` and a
`Pending` status; services get a cluster IP; secrets' `stringData` is folded into `data`;
namespaces carry the `kubernetes.io/metadata.name` label that namespaceSelectors rely on. An
operator tested against an apiserver that skipped these would see different objects than in a
cluster, so they are reproduced here; validation covers the fields whose absence the real
apiserver refuses (containers, images, selectors, webhook essentials).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Callable
from typing import Any

from tests.kube.errors import Cause, bad_request

__all__ = ["apply_defaults", "metadata_causes", "name_causes", "validation_causes"]

Obj = dict[str, Any]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_TEXT = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_LABEL_TEXT = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_LABEL_NAMED = {"namespaces", "services"}


def name_causes(group_resource: str, name: str) -> list[Cause]:
    """metadata.name rules: an RFC 1123 label for namespaces and services, else a subdomain."""
    if group_resource in _LABEL_NAMED:
        if len(name) > 63 or not _LABEL.match(name):
            return [Cause.invalid("metadata.name", name, _LABEL_TEXT)]
    elif len(name) > 253 or not _SUBDOMAIN.match(name):
        return [Cause.invalid("metadata.name", name, _SUBDOMAIN_TEXT)]
    return []


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_TEXT = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
_NAME_PART_TEXT = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
    "for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
_ANNOTATIONS_LIMIT = 256 * 1024


def _qualified_name_causes(path: str, key: str) -> list[Cause]:
    prefix, _, name = key.rpartition("/")
    causes: list[Cause] = []
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        causes.append(Cause.invalid(path, key, "prefix part " + _SUBDOMAIN_TEXT))
    if len(name) > 63:
        causes.append(Cause.invalid(path, key, "name part must be no more than 63 characters"))
    elif not _NAME_PART.match(name):
        causes.append(Cause.invalid(path, key, _NAME_PART_TEXT))
    return causes


def metadata_causes(obj: Obj) -> list[Cause]:
    """Labels, annotations and ownerReferences as ObjectMeta validation checks them."""
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    for key, value in (meta.get("labels") or {}).items():
        causes += _qualified_name_causes("metadata.labels", str(key))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            detail = ("must be no more than 63 characters" if isinstance(value, str)
                      and len(value) > 63 else _LABEL_VALUE_TEXT)
            causes.append(Cause.invalid("metadata.labels", value, detail))
    annotations = meta.get("annotations") or {}
    for key in annotations:
        causes += _qualified_name_causes("metadata.annotations", str(key))
    size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
    if size > _ANNOTATIONS_LIMIT:
        causes.append(Cause("FieldValueTooLong", "metadata.annotations",
                            f"Too long: may not be more than {_ANNOTATIONS_LIMIT} bytes"))
    references = meta.get("ownerReferences") or []
    for index, reference in enumerate(references):
        for field in ("apiVersion", "kind", "name", "uid"):
            if not reference.get(field):
                causes.append(Cause.invalid(f"metadata.ownerReferences[{index}].{field}",
                                            reference.get(field, ""),
                                            f"{field} must not be empty"))
    if sum(1 for r in references if r.get("controller")) > 1:
        causes.append(Cause.invalid("metadata.ownerReferences", references,
                                    "Only one reference can have Controller set to true"))
    return causes


# -- defaulting --------------------------------------------------------------------------------


def _container_defaults(container: Obj) -> None:
    image = str(container.get("image") or "")
    tag = image.rsplit("/", 1)[-1]
    pinned = "@" in image or (":" in tag and not tag.endswith(":latest"))
    container.setdefault("imagePullPolicy", "IfNotPresent" if pinned else "Always")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")


def _pod_spec_defaults(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    for container in itertools.chain(spec.get("containers") or [],
                                     spec.get("initContainers") or []):
        _container_defaults(container)


def _pod(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    _pod_spec_defaults(spec)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    if creating:
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}


def _workload(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {})
    _pod_spec_defaults(template.setdefault("spec", {}))
    if obj["kind"] == "Deployment":
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%",
                                                       "maxUnavailable": "25%"}})
    else:
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                           "rollingUpdate": {"partition": 0}})
        spec.setdefault("persistentVolumeClaimRetentionPolicy",
                        {"whenDeleted": "Retain", "whenScaled": "Retain"})
    if creating:
        obj["status"] = {"replicas": 0, "availableReplicas": 0} if obj["kind"] == "StatefulSet" \
            else {}


_cluster_ips = itertools.count(1)


def _service(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if creating and "clusterIP" not in spec:
        # Addresses are only ever strings here: nothing routes to them.
        index = next(_cluster_ips)
        spec["clusterIP"] = f"10.96.{index // 250}.{index % 250 + 1}"
    if spec.get("clusterIP") not in (None, "None"):
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    if creating:
        obj["status"] = {"loadBalancer": {}}


def _secret(obj: Obj, creating: bool) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as error:
            raise bad_request(f'Secret in version "v1" cannot be handled as a Secret: illegal '
                              f"base64 data at input byte 0 (key {key!r})") from error
    if not data:
        del obj["data"]


def _namespace(obj: Obj, creating: bool) -> None:
    meta = obj["metadata"]
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    if creating:
        obj["status"] = {"phase": "Active"}


def _webhooks(obj: Obj, creating: bool) -> None:
    for hook in obj.get("webhooks") or []:
        hook.setdefault("failurePolicy", "Fail")
        hook.setdefault("matchPolicy", "Equivalent")
        hook.setdefault("namespaceSelector", {})
        hook.setdefault("objectSelector", {})
        hook.setdefault("timeoutSeconds", 10)
        if obj["kind"] == "MutatingWebhookConfiguration":
            hook.setdefault("reinvocationPolicy", "Never")
        service = (hook.get("clientConfig") or {}).get("service")
        if service is not None:
            service.setdefault("port", 443)
        for rule in hook.get("rules") or []:
            rule.setdefault("scope", "*")


def _crd(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})


_DEFAULTERS: dict[str, Callable[[Obj, bool], None]] = {
    "pods": _pod,
    "deployments.apps": _workload,
    "statefulsets.apps": _workload,
    "services": _service,
    "secrets": _secret,
    "namespaces": _namespace,
    "mutatingwebhookconfigurations.admissionregistration.k8s.io": _webhooks,
    "validatingwebhookconfigurations.admissionregistration.k8s.io": _webhooks,
    "customresourcedefinitions.apiextensions.k8s.io": _crd,
}


def apply_defaults(group_resource: str, obj: Obj, creating: bool) -> None:
    """Default a built-in object in place (idempotent; run again after mutating admission)."""
    defaulter = _DEFAULTERS.get(group_resource)
    if defaulter is not None:
        defaulter(obj, creating)


# -- validation --------------------------------------------------------------------------------


def _containers(spec: Obj, path: str) -> list[Cause]:
    containers = spec.get("containers")
    if not containers:
        return [Cause.required(f"{path}.containers")]
    causes: list[Cause] = []
    names: set[str] = set()
    for index, container in enumerate(containers):
        where = f"{path}.containers[{index}]"
        name = container.get("name")
        if not name:
            causes.append(Cause.required(f"{where}.name"))
        elif name in names:
            causes.append(Cause.duplicate(f"{where}.name", name))
        names.add(name)
        if not container.get("image"):
            causes.append(Cause.required(f"{where}.image"))
    return causes


def _pod_causes(obj: Obj) -> list[Cause]:
    return _containers(obj.get("spec") or {}, "spec")


def _workload_causes(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    causes = _containers(template.get("spec") or {}, "spec.template.spec")
    selector = spec.get("selector")
    if not selector:
        causes.append(Cause.required("spec.selector"))
        return causes
    labels = (template.get("metadata") or {}).get("labels") or {}
    wanted = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        causes.append(Cause.invalid("spec.template.metadata.labels", labels,
                                    "`selector` does not match template `labels`"))
    return causes


def _webhook_causes(obj: Obj) -> list[Cause]:
    causes: list[Cause] = []
    for index, hook in enumerate(obj.get("webhooks") or []):
        where = f"webhooks[{index}]"
        if not hook.get("name"):
            causes.append(Cause.required(f"{where}.name"))
        if hook.get("sideEffects") not in ("None", "NoneOnDryRun"):
            causes.append(Cause.not_supported(f"{where}.sideEffects", hook.get("sideEffects"),
                                              ["None", "NoneOnDryRun"]))
        if "v1" not in (hook.get("admissionReviewVersions") or []):
            causes.append(Cause.invalid(f"{where}.admissionReviewVersions",
                                        hook.get("admissionReviewVersions"),
                                        "must include at least one of v1"))
        config = hook.get("clientConfig") or {}
        if ("url" in config) == ("service" in config):
            causes.append(Cause.required(f"{where}.clientConfig",
                                         "exactly one of url or service is required"))
        if hook.get("failurePolicy") not in ("Fail", "Ignore"):
            causes.append(Cause.not_supported(f"{where}.failurePolicy", hook.get("failurePolicy"),
                                              ["Fail", "Ignore"]))
    return causes


def _service_causes(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    if spec.get("type", "ClusterIP") != "ExternalName" and not spec.get("ports") \
            and spec.get("clusterIP") != "None":
        return [Cause.required("spec.ports")]
    return []


def _new_event_causes(obj: Obj) -> list[Cause]:
    """events.k8s.io/v1 insists on the fields that make an event attributable."""
    causes = [Cause.required(field) for field in ("eventTime", "reportingController",
                                                  "reportingInstance", "action", "reason")
              if not obj.get(field)]
    if obj.get("type") not in ("Normal", "Warning"):
        causes.append(Cause.not_supported("type", obj.get("type"), ["Normal", "Warning"]))
    if len(str(obj.get("note") or "")) > 1024:
        causes.append(Cause.too_long("note", 1024))
    return causes


_VALIDATORS: dict[str, Callable[[Obj], list[Cause]]] = {
    "events.events.k8s.io": _new_event_causes,
    "pods": _pod_causes,
    "deployments.apps": _workload_causes,
    "statefulsets.apps": _workload_causes,
    "services": _service_causes,
    "mutatingwebhookconfigurations.admissionregistration.k8s.io": _webhook_causes,
    "validatingwebhookconfigurations.admissionregistration.k8s.io": _webhook_causes,
}


def validation_causes(group_resource: str, obj: Obj) -> list[Cause]:
    validator = _VALIDATORS.get(group_resource)
    return validator(obj) if validator is not None else []
