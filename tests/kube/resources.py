"""Which resource types the emulator serves: the built-in ones and those its CRDs define.

A `ResourceType` is one served (group, version, plural); everything that varies by type — scope,
discovery names, whether `/status` is a subresource, whether `metadata.generation` is kept, the
CRD's schema and printer columns — lives on it, so the request handlers stay type-agnostic.
Objects are stored per group-resource (all served versions of a CRD share one storage, as with a
`None` conversion strategy).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.kube.errors import Cause

__all__ = [
    "BUILTIN_TYPES", "Registry", "ResourceType", "crd_causes", "crd_types", "version_priority",
]

_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served resource: `pods` in v1, `auditexports` in sealtrail.dev/v1alpha1, ..."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    has_generation: bool = False
    verbs: tuple[str, ...] = _VERBS
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False, hash=False)
    list_kind_name: str = ""
    crd_name: str = ""  # set for custom resources
    selectable_fields: tuple[str, ...] = ()  # a CRD version's selectableFields, as "spec.x"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """The storage key and the name in messages: `pods`, `auditexports.sealtrail.dev`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return self.list_kind_name or f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def is_custom(self) -> bool:
        return bool(self.crd_name)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _t(group: str, plural: str, kind: str, *, short: tuple[str, ...] = (),
       namespaced: bool = True, status: bool = False, generation: bool = False,
       categories: tuple[str, ...] = (), version: str = "v1") -> ResourceType:
    return ResourceType(group=group, version=version, plural=plural, kind=kind,
                        namespaced=namespaced, short_names=short, categories=categories,
                        subresources=("status",) if status else (), has_generation=generation)


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _t("", "namespaces", "Namespace", short=("ns",), namespaced=False, status=True),
    _t("", "pods", "Pod", short=("po",), status=True, generation=True, categories=("all",)),
    _t("", "secrets", "Secret"),
    _t("", "configmaps", "ConfigMap", short=("cm",)),
    _t("", "services", "Service", short=("svc",), status=True, categories=("all",)),
    _t("", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _t("", "events", "Event", short=("ev",)),
    _t("events.k8s.io", "events", "Event", short=("ev",)),
    _t("apps", "deployments", "Deployment", short=("deploy",), status=True, generation=True,
       categories=("all",)),
    _t("apps", "statefulsets", "StatefulSet", short=("sts",), status=True, generation=True,
       categories=("all",)),
    _t("admissionregistration.k8s.io", "mutatingwebhookconfigurations",
       "MutatingWebhookConfiguration", namespaced=False, generation=True,
       categories=("api-extensions",)),
    _t("admissionregistration.k8s.io", "validatingwebhookconfigurations",
       "ValidatingWebhookConfiguration", namespaced=False, generation=True,
       categories=("api-extensions",)),
    _t("apiextensions.k8s.io", "customresourcedefinitions", "CustomResourceDefinition",
       short=("crd", "crds"), namespaced=False, status=True, generation=True,
       categories=("api-extensions",)),
    _t("coordination.k8s.io", "leases", "Lease"),
)

_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA > beta > alpha, higher numbers first, others last."""
    match = _VERSION.match(version)
    if not match:
        return (0, 0, 0)
    major, stage, minor = match.groups()
    rank = {"alpha": 1, "beta": 2}.get(stage or "", 3)
    return (rank, int(major), int(minor or 0))


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def crd_causes(crd: dict[str, Any]) -> list[Cause]:
    """What the apiserver's CRD validation would refuse (the part tests can trip over)."""
    spec = crd.get("spec") or {}
    return _name_causes(crd, spec) + _version_causes(spec.get("versions") or [])


def _name_causes(crd: dict[str, Any], spec: dict[str, Any]) -> list[Cause]:
    names = spec.get("names") or {}
    causes: list[Cause] = []
    group, plural = spec.get("group") or "", names.get("plural") or ""
    if not group:
        causes.append(Cause.required("spec.group"))
    if not plural:
        causes.append(Cause.required("spec.names.plural"))
    elif not _DNS_LABEL.match(plural):
        causes.append(Cause.invalid("spec.names.plural", plural, "a lowercase RFC 1123 label"))
    if not names.get("kind"):
        causes.append(Cause.required("spec.names.kind"))
    name = (crd.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        causes.append(Cause.invalid("metadata.name", name,
                                    'must be spec.names.plural+"."+spec.group'))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(Cause.not_supported("spec.scope", spec.get("scope"),
                                          ["Cluster", "Namespaced"]))
    return causes


def _version_causes(versions: list[dict[str, Any]]) -> list[Cause]:
    causes: list[Cause] = []
    if not versions:
        causes.append(Cause.required("spec.versions", "must have exactly one version marked "
                                                      "as storage version"))
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(Cause.invalid("spec.versions", [v.get("name") for v in versions],
                                    "must have exactly one version marked as storage version"))
    for index, version in enumerate(versions):
        if version.get("served") and not (version.get("schema") or {}).get("openAPIV3Schema"):
            causes.append(Cause.required(f"spec.versions[{index}].schema.openAPIV3Schema",
                                         "schemas are required"))
    return causes


def crd_types(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a (valid) CRD serves, one per served version."""
    spec = crd["spec"]
    names = spec["names"]
    kinds: list[ResourceType] = []
    for version in spec["versions"]:
        if not version.get("served"):
            continue
        subresources = tuple(sorted((version.get("subresources") or {}).keys()))
        kinds.append(ResourceType(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            kind=names["kind"],
            namespaced=spec["scope"] == "Namespaced",
            singular=names.get("singular") or names["kind"].lower(),
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            subresources=subresources,
            has_generation=True,
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            list_kind_name=names.get("listKind") or "",
            crd_name=crd["metadata"]["name"],
            selectable_fields=tuple(str(f.get("jsonPath", "")).lstrip(".")
                                    for f in version.get("selectableFields") or []),
        ))
    return kinds


class Registry:
    """The served types, looked up by (group, version, plural) and by kind for admission."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rtype in BUILTIN_TYPES:
            self._types[rtype.group, rtype.version, rtype.plural] = rtype
        self.revision = 0  # bumped on every change, for discovery and OpenAPI hashes

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def by_group_resource(self, group_resource: str) -> list[ResourceType]:
        return [t for t in self.all() if t.group_resource == group_resource]

    def preferred(self, group_resource: str) -> ResourceType | None:
        served = self.by_group_resource(group_resource)
        return max(served, key=lambda t: version_priority(t.version)) if served else None

    def groups(self) -> dict[str, list[str]]:
        """Group name -> served versions, preferred first."""
        found: dict[str, set[str]] = {}
        for rtype in self.all():
            found.setdefault(rtype.group, set()).add(rtype.version)
        return {group: sorted(versions, key=version_priority, reverse=True)
                for group, versions in found.items()}

    def replace_crd(self, crd_name: str, kinds: list[ResourceType]) -> None:
        """Serve exactly `kinds` for this CRD (an empty list stops serving it)."""
        with self._lock:
            for key in [k for k, t in self._types.items() if t.crd_name == crd_name]:
                del self._types[key]
            for rtype in kinds:
                self._types[rtype.group, rtype.version, rtype.plural] = rtype
            self.revision += 1
