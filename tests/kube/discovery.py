"""Discovery and OpenAPI documents, built from the registry on each request.

Both discovery flavours are served: the legacy per-group documents (`/api`, `/api/v1`, `/apis`,
`/apis/GROUP`, `/apis/GROUP/VERSION`) and the aggregated `apidiscovery.k8s.io/v2`
`APIGroupDiscoveryList` that kubectl asks for first. `/openapi/v3` publishes, per group-version,
the PATCH operations with their `fieldValidation` parameter: that is how kubectl learns it may
leave validation to the server (`?fieldValidation=Strict`) instead of downloading the full
OpenAPI v2 document for client-side validation, which the emulator does not serve (404).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.kube.resources import Registry, ResourceType, version_priority

__all__ = [
    "AGGREGATED_V2",
    "aggregated",
    "api_group",
    "api_versions",
    "group_list",
    "openapi_v3_document",
    "openapi_v3_index",
    "resource_list",
    "version_info",
]

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_STATUS_VERBS = ["get", "patch", "update"]
_KUBE_VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.1", "emulationMajor": "1",
                 "emulationMinor": "37", "minCompatibilityMajor": "1",
                 "minCompatibilityMinor": "36", "gitCommit": "emulator",
                 "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                 "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}


def version_info() -> dict[str, Any]:
    return dict(_KUBE_VERSION)


def api_versions(address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def _types(registry: Registry, group: str, version: str) -> list[ResourceType]:
    return sorted((t for t in registry.all() if t.group == group and t.version == version),
                  key=lambda t: t.plural)


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    kinds = _types(registry, group, version)
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for rtype in kinds:
        entry: dict[str, Any] = {
            "name": rtype.plural, "singularName": rtype.singular_name,
            "namespaced": rtype.namespaced, "kind": rtype.kind, "verbs": list(rtype.verbs),
        }
        if rtype.short_names:
            entry["shortNames"] = list(rtype.short_names)
        if rtype.categories:
            entry["categories"] = list(rtype.categories)
        resources.append(entry)
        resources.extend({"name": f"{rtype.plural}/{sub}", "singularName": "",
                          "namespaced": rtype.namespaced, "kind": rtype.kind,
                          "verbs": list(_STATUS_VERBS)}
                         for sub in rtype.subresources)
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": kinds[0].api_version, "resources": resources}


def _group_entry(registry: Registry, group: str) -> dict[str, Any] | None:
    versions = registry.groups().get(group)
    if not versions:
        return None
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def group_list(registry: Registry) -> dict[str, Any]:
    groups = [entry for name in sorted(registry.groups()) if name
              for entry in [_group_entry(registry, name)] if entry]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    entry = _group_entry(registry, group)
    return {"kind": "APIGroup", "apiVersion": "v1", **entry} if entry else None


def _discovery_resource(rtype: ResourceType) -> dict[str, Any]:
    kind = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
    entry: dict[str, Any] = {
        "resource": rtype.plural, "responseKind": kind,
        "scope": "Namespaced" if rtype.namespaced else "Cluster",
        "singularResource": rtype.singular_name, "verbs": list(rtype.verbs),
    }
    if rtype.short_names:
        entry["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        entry["categories"] = list(rtype.categories)
    if rtype.subresources:
        entry["subresources"] = [{"subresource": sub, "responseKind": kind,
                                  "verbs": list(_STATUS_VERBS)} for sub in rtype.subresources]
    return entry


def aggregated(registry: Registry, *, core: bool) -> dict[str, Any]:
    """The `APIGroupDiscoveryList` for `/api` (core) or `/apis` (every named group)."""
    items = []
    for group, versions in sorted(registry.groups().items()):
        if bool(group) == core:
            continue
        items.append({
            "metadata": {"name": group, "creationTimestamp": None},
            "versions": [{"version": version, "freshness": "Current",
                          "resources": [_discovery_resource(t)
                                        for t in _types(registry, group, version)]}
                         for version in versions],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {}, "items": items}


# -- OpenAPI v3 --------------------------------------------------------------------------------


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(rtype: ResourceType) -> str:
    prefix = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{prefix}.{rtype.version}.{rtype.kind}"


def openapi_v3_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    kinds = _types(registry, group, version)
    if not kinds:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rtype in kinds:
        gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
        prefix = f"/{_gv_path(group, version)}"
        item = (f"{prefix}/namespaces/{{namespace}}/{rtype.plural}/{{name}}" if rtype.namespaced
                else f"{prefix}/{rtype.plural}/{{name}}")
        body_types = ["application/json-patch+json", "application/merge-patch+json",
                      "application/apply-patch+yaml"]
        paths[item] = {"patch": {
            "operationId": f"patch{rtype.kind}",
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [
                {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                for name in ("dryRun", "fieldManager", "fieldValidation", "force")],
            "requestBody": {"content": {t: {"schema": {"type": "object"}} for t in body_types}},
            "responses": {"200": {"description": "OK"}},
        }}
        if rtype.schema is not None:
            schemas[_schema_name(rtype)] = {**rtype.schema,
                                            "x-kubernetes-group-version-kind": [gvk]}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.37.1"},
            "paths": paths, "components": {"schemas": schemas}}


def _digest(document: dict[str, Any]) -> str:
    encoded = json.dumps(document, sort_keys=True).encode()
    return hashlib.sha512(encoded).hexdigest().upper()


def openapi_v3_index(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for group, versions in registry.groups().items():
        for version in sorted(versions, key=version_priority, reverse=True):
            document = openapi_v3_document(registry, group, version)
            if document is not None:
                relative = f"/openapi/v3/{_gv_path(group, version)}?hash={_digest(document)}"
                paths[_gv_path(group, version)] = {"serverRelativeURL": relative}
    return {"paths": paths}
