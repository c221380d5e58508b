"""The REST semantics of kube-apiserver: create, get, list, update, patch and delete.

All of them on the main resource and on `/status`, plus deletecollection.

What real clients depend on is reproduced: resourceVersion preconditions and 409s, `generation`
bumped only by spec changes, a write that changes nothing being no write at all (no new
resourceVersion, no watch event), `status` as a true subresource, finalizers holding a deleted
object with `deletionTimestamp` set, namespaces that must exist (and stop accepting content while
terminating), background garbage collection through ownerReferences, CRDs whose creation serves
new types, schema pruning/defaulting/validation for custom resources, and admission webhooks.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import json
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.kube import builtin_kinds, protobuf, schema
from tests.kube.admission import Admission, AdmissionRequest
from tests.kube.errors import (
    ApiError,
    Cause,
    already_exists,
    bad_request,
    conflict,
    forbidden,
    invalid,
    method_not_allowed,
    not_found,
    status_success,
    unsupported_media_type,
)
from tests.kube.patching import (
    apply_json_patch,
    merge_patch,
    server_side_apply,
    strategic_merge_patch,
)
from tests.kube.resources import Registry, ResourceType, crd_causes, crd_types
from tests.kube.selectors import FieldSelector, LabelSelector
from tests.kube.store import ABSENT, Store, StoreConflictError
from tests.kube.tables import table

__all__ = ["PATCH_TYPES", "Api", "Reply", "Target", "now"]

log = logging.getLogger("tests.kube.api")

Obj = dict[str, Any]
Query = Mapping[str, str]

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE, STRATEGIC, APPLY)
_CRD = "customresourcedefinitions.apiextensions.k8s.io"
_SYSTEM_META = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields")
_KEPT_ON_UPDATE = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                   "generation", "name", "namespace", "selfLink")
_RETRIES = 10
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now() -> str:
    """The apiserver's timestamps: RFC 3339, UTC, whole seconds."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Target:
    """What a request addresses: a type, maybe a namespace, maybe an object and subresource."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str = ""


@dataclass
class Reply:
    status: int
    body: Any
    warnings: list[str] = field(default_factory=list)


class _RetryError(Exception):
    """The object changed while a write was being prepared; read it again and redo the write."""


def decode_body(body: bytes, content_type: str) -> Any:
    """A request body as an object: JSON, YAML, or the protobuf kubectl sends for simple kinds."""
    if not body.strip():
        raise bad_request("the body of the request is empty")
    if content_type == protobuf.PROTOBUF:
        return protobuf.decode(body)
    try:
        if "yaml" in content_type:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as error:
        raise bad_request(f"couldn't get version/kind; json parse error: {error}") from error


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    return meta


def _comparable(obj: Obj, *, without: tuple[str, ...] = ()) -> Obj:
    copied = {k: v for k, v in obj.items() if k not in without}
    meta = dict(copied.get("metadata") or {})
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    copied["metadata"] = meta
    return copied


def _body_changed(rtype: ResourceType, old: Obj, new: Obj) -> bool:
    """Whether anything that `generation` counts changed.

    That is everything but metadata, and but status when status is a subresource.
    """
    skipped = ("metadata", "status") if rtype.has_status else ("metadata",)
    return {k: v for k, v in old.items() if k not in skipped} != \
        {k: v for k, v in new.items() if k not in skipped}


class Api:
    """Resource handlers; the HTTP layer turns their `Reply` or `ApiError` into responses."""

    def __init__(self, store: Store, registry: Registry, admission: Admission) -> None:
        self.store = store
        self.registry = registry
        self.admission = admission

    # -- shaping objects -------------------------------------------------------------------

    def output(self, rtype: ResourceType, obj: Obj) -> Obj:
        """The object as served in `rtype`'s version (CRD versions share storage)."""
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        return obj

    def _incoming(self, rtype: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(f'{rtype.kind} in version "{rtype.version}" cannot be handled as '
                              f"a {rtype.kind}: the body is not a JSON object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        # Other served versions of the same CRD are converted (None strategy) implicitly.
        if api_version and api_version != rtype.api_version and not any(
                t.api_version == api_version
                for t in self.registry.by_group_resource(rtype.group_resource)):
            raise bad_request(f"the API version in the data ({api_version}) does not match "
                              f"the expected API version ({rtype.api_version})")
        if kind and kind != rtype.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                              f"({rtype.kind})")
        obj = copy.deepcopy(body)
        _meta(obj)
        return self.output(rtype, obj)

    def _prepare(self, rtype: ResourceType, obj: Obj, query: Query, *, creating: bool,
                 warnings: list[str]) -> None:
        """Server-side defaulting (built-ins) or pruning + defaulting (custom resources)."""
        if rtype.is_custom and rtype.schema is not None:
            unknown = schema.prune(obj, rtype.schema)
            if unknown:
                directive = query.get("fieldValidation", "Warn")
                listed = [f'unknown field "{path}"' for path in unknown]
                if directive == "Strict":
                    raise bad_request(f'{rtype.kind} in version "{rtype.version}" cannot be '
                                      f"handled as a {rtype.kind}: strict decoding error: "
                                      + ", ".join(listed))
                if directive == "Warn":
                    warnings.extend(listed)
            schema.default(obj, rtype.schema)
        else:
            builtin_kinds.apply_defaults(rtype.group_resource, obj, creating)
        if rtype.group_resource == _CRD:
            self._crd_status(obj)

    def _crd_status(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = dict(spec.get("names") or {})
        storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        previous = crd.get("status") or {}
        since = {c.get("type"): c.get("lastTransitionTime")
                 for c in previous.get("conditions") or []}
        stored = sorted(set(previous.get("storedVersions") or []) | set(storage))
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": stored,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found",
                 "lastTransitionTime": since.get("NamesAccepted") or now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted",
                 "lastTransitionTime": since.get("Established") or now()},
            ],
        }

    def _validate(self, rtype: ResourceType, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        causes: list[Cause] = []
        if old is None:
            causes += builtin_kinds.name_causes(rtype.group_resource, meta["name"])
        causes += builtin_kinds.metadata_causes(obj)
        if rtype.is_custom and rtype.schema is not None:
            causes += schema.validate(obj, rtype.schema, old)
        else:
            causes += builtin_kinds.validation_causes(rtype.group_resource, obj)
        if rtype.group_resource == _CRD:
            causes += crd_causes(obj)
            for index, version in enumerate((obj.get("spec") or {}).get("versions") or []):
                found = (version.get("schema") or {}).get("openAPIV3Schema")
                if isinstance(found, dict):
                    causes += schema.compile_causes(
                        found, f"spec.versions[{index}].schema.openAPIV3Schema")
        if old is not None and meta.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or []
                     if f not in (old["metadata"].get("finalizers") or [])]
            if added:
                causes.append(Cause.forbidden("metadata.finalizers",
                                              "no new finalizers can be added if the object is "
                                              f"being deleted, found new finalizers {added}"))
        if causes:
            raise invalid(rtype.kind, rtype.group, meta.get("name") or "", causes)

    def _namespace_labels(self, namespace: str | None) -> tuple[dict[str, str], Obj | None]:
        if not namespace:
            return {}, None
        found = self.store.get("namespaces", None, namespace)
        return ((found or {}).get("metadata") or {}).get("labels") or {}, found

    async def _admit(self, operation: str, target: Target, obj: Obj | None, old: Obj | None,
                     *, dry_run: bool, mutate: bool, warnings: list[str]) -> Obj | None:
        rtype = target.rtype
        source = obj if obj is not None else old
        assert source is not None
        meta = source["metadata"]
        labels, namespace_object = self._namespace_labels(meta.get("namespace"))
        request = AdmissionRequest(
            operation=operation, rtype=rtype, subresource=target.subresource,
            namespace=meta.get("namespace") or "", name=meta.get("name") or "",
            obj=copy.deepcopy(obj), old=copy.deepcopy(old), namespace_labels=labels,
            namespace_object=namespace_object, dry_run=dry_run)
        try:
            if mutate:
                return await self.admission.mutate(request)
            await self.admission.validate(request)
            return obj
        finally:
            warnings.extend(request.warnings)

    # -- reads -------------------------------------------------------------------------------

    def get(self, target: Target) -> Obj:
        rtype = target.rtype
        assert target.name is not None
        found = self.store.get(rtype.group_resource, target.namespace, target.name)
        if found is None:
            raise not_found(rtype.plural, rtype.group, target.name)
        return self.output(rtype, found)

    def selectors(self, target: Target, query: Query) -> tuple[LabelSelector, FieldSelector]:
        rtype = target.rtype
        return (LabelSelector.parse(query.get("labelSelector")),
                FieldSelector.parse(query.get("fieldSelector"), rtype, rtype.selectable_fields))

    def page(self, target: Target, query: Query) -> tuple[list[Obj], Obj]:
        """The matching objects (one page of them) and the list's metadata."""
        rtype = target.rtype
        labels, fields = self.selectors(target, query)
        items, version = self.store.list_with_version(rtype.group_resource, target.namespace)
        items = [o for o in items if labels.matches(o) and fields.matches(o)]
        token = query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token))
                start, version = tuple(state["start"]), str(state["rv"])
            except (ValueError, KeyError, TypeError) as error:
                raise bad_request(f"continue key is not valid: {error}") from error
            items = [o for o in items
                     if (o["metadata"].get("namespace") or "", o["metadata"]["name"]) > start]
        meta: Obj = {"resourceVersion": version}
        limit = int(query.get("limit") or 0)
        if 0 < limit < len(items):
            last = items[limit - 1]["metadata"]
            state = {"rv": version, "start": [last.get("namespace") or "", last["name"]]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return [self.output(rtype, o) for o in items], meta

    def list_body(self, target: Target, query: Query) -> Obj:
        rtype = target.rtype
        items, meta = self.page(target, query)
        if not rtype.is_custom:  # typed lists do not repeat kind and apiVersion per item
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta,
                "items": items}

    def table_body(self, target: Target, query: Query) -> Obj:
        if target.name is not None:
            obj = self.get(target)
            return table(target.rtype, [obj], obj["metadata"]["resourceVersion"],
                         query.get("includeObject", "Metadata"))
        items, meta = self.page(target, query)
        body = table(target.rtype, items, meta["resourceVersion"],
                     query.get("includeObject", "Metadata"))
        if "continue" in meta:
            body["metadata"]["continue"] = meta["continue"]
        return body

    # -- create ------------------------------------------------------------------------------

    def _check_namespace(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        if not rtype.namespaced or namespace is None:
            return
        found = self.store.get("namespaces", None, namespace)
        if found is None:
            raise not_found("namespaces", "", namespace)
        if found["metadata"].get("deletionTimestamp"):
            raise forbidden(rtype.plural, rtype.group, name,
                            f"unable to create new content in namespace {namespace} because it "
                            "is being terminated")

    async def create(self, target: Target, body: Any, query: Query) -> Reply:
        rtype = target.rtype
        obj = self._incoming(rtype, body)
        meta = obj["metadata"]
        if rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != target.namespace:
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and not meta.get("generateName"):
            raise invalid(rtype.kind, rtype.group, "", [
                Cause.required("metadata.name", "name or generateName is required")])
        self._check_namespace(rtype, target.namespace, meta.get("name") or "")
        for key in _SYSTEM_META:
            meta.pop(key, None)
        if rtype.has_status:
            obj.pop("status", None)
        return await self._create(target, obj, query)

    async def _create(self, target: Target, obj: Obj, query: Query) -> Reply:
        rtype = target.rtype
        warnings: list[str] = []
        dry_run = query.get("dryRun") == "All"
        self._prepare(rtype, obj, query, creating=True, warnings=warnings)
        mutated = await self._admit("CREATE", target, obj, None, dry_run=dry_run, mutate=True,
                                    warnings=warnings)
        if mutated is not None and mutated != obj:
            obj = self.output(rtype, mutated)
            self._prepare(rtype, obj, query, creating=False, warnings=warnings)
        meta = obj["metadata"]
        if not meta.get("name"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice(_NAME_CHARS) for _ in range(5))
        meta["uid"] = str(uuid.uuid4())  # validating webhooks see these; mutating ones do not
        meta["creationTimestamp"] = now()
        if rtype.has_generation:
            meta["generation"] = 1
        self._validate(rtype, obj, None)
        await self._admit("CREATE", target, obj, None, dry_run=dry_run, mutate=False,
                          warnings=warnings)
        if dry_run:
            return Reply(201, self.output(rtype, obj), warnings)
        try:
            stored = self.store.put(rtype.group_resource, obj, ABSENT)
        except StoreConflictError as error:
            raise already_exists(rtype.plural, rtype.group, meta["name"]) from error
        self._after_write(rtype, stored)
        if rtype.group_resource == "namespaces":
            self._seed_namespace(stored["metadata"]["name"])
        return Reply(201, self.output(rtype, stored), warnings)

    def _seed_namespace(self, namespace: str) -> None:
        """The `default` ServiceAccount the serviceaccount controller puts in every namespace."""
        account = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "default", "namespace": namespace,
                                "uid": str(uuid.uuid4()), "creationTimestamp": now()}}
        with contextlib.suppress(StoreConflictError):
            self.store.put("serviceaccounts", account, ABSENT)

    def _after_write(self, rtype: ResourceType, stored: Obj) -> None:
        if rtype.group_resource == _CRD and not stored["metadata"].get("deletionTimestamp"):
            self.registry.replace_crd(stored["metadata"]["name"], crd_types(stored))
            log.debug("serving %s", stored["metadata"]["name"])

    # -- update and patch --------------------------------------------------------------------

    async def update(self, target: Target, body: Any, query: Query) -> Reply:
        rtype = target.rtype
        incoming = self._incoming(rtype, body)
        meta = incoming["metadata"]
        if meta.get("name") != target.name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                              f"name on the URL ({target.name})")
        if rtype.namespaced and meta.get("namespace") not in (None, target.namespace):
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        precondition = meta.get("resourceVersion") or None
        for _ in range(_RETRIES):
            current = self.get(target)
            if precondition and precondition != current["metadata"]["resourceVersion"]:
                raise conflict(rtype.plural, rtype.group, target.name or "")
            try:
                return await self._update(target, current, copy.deepcopy(incoming), query)
            except _RetryError:
                if precondition:
                    raise conflict(rtype.plural, rtype.group, target.name or "") from None
        raise conflict(rtype.plural, rtype.group, target.name or "")

    def _patched(self, target: Target, current: Obj, content_type: str, patch: Any) -> Obj:
        rtype = target.rtype
        if content_type == MERGE:
            if not isinstance(patch, dict):
                raise bad_request("the patch is not a JSON object")
            merged = merge_patch(current, patch)
            assert isinstance(merged, dict)
            return merged
        if content_type == JSON_PATCH:
            return apply_json_patch(current, patch)
        if content_type == STRATEGIC:
            if rtype.is_custom:
                raise unsupported_media_type(content_type, [JSON_PATCH, MERGE, APPLY])
            return strategic_merge_patch(rtype.kind, current, patch)
        applied = self._incoming(rtype, patch)
        if applied["metadata"].get("name") not in (None, target.name):
            raise bad_request(f"the name of the object ({applied['metadata'].get('name')}) does "
                              f"not match the name on the URL ({target.name})")
        return server_side_apply(rtype.kind, not rtype.is_custom, current, applied)

    async def patch(self, target: Target, body: bytes, content_type: str, query: Query) -> Reply:
        rtype = target.rtype
        if content_type not in PATCH_TYPES:
            raise unsupported_media_type(content_type, list(PATCH_TYPES))
        if content_type == APPLY and not query.get("fieldManager"):
            raise invalid("PatchOptions", "meta.k8s.io", "", [
                Cause.required("fieldManager", "is required for apply patch")])
        patch = decode_body(body, "yaml" if content_type == APPLY else "json")
        for _ in range(_RETRIES):
            found = self.store.get(rtype.group_resource, target.namespace, target.name or "")
            if found is None:
                if content_type == APPLY and not target.subresource:
                    created = self._incoming(rtype, patch)
                    created["metadata"]["name"] = target.name
                    return await self.create(target, created, query)
                raise not_found(rtype.plural, rtype.group, target.name or "")
            current = self.output(rtype, found)
            patched = self._patched(target, current, content_type, patch)
            if not isinstance(patched.get("metadata"), dict):
                raise bad_request("metadata must be an object")
            wanted = patched["metadata"].get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise conflict(rtype.plural, rtype.group, target.name or "")
            try:
                return await self._update(target, current, patched, query)
            except _RetryError:
                if wanted:
                    raise conflict(rtype.plural, rtype.group, target.name or "") from None
        raise conflict(rtype.plural, rtype.group, target.name or "")

    async def _update(self, target: Target, current: Obj, new: Obj, query: Query) -> Reply:
        """Write `new` over `current` (the object as read); _RetryError if it changed since."""
        rtype = target.rtype
        warnings: list[str] = []
        dry_run = query.get("dryRun") == "All"
        new = self._restrict(rtype, current, new, target.subresource)
        self._prepare(rtype, new, query, creating=False, warnings=warnings)
        mutated = await self._admit("UPDATE", target, new, current, dry_run=dry_run, mutate=True,
                                    warnings=warnings)
        if mutated is not None and mutated != new:
            new = self._restrict(rtype, current, self.output(rtype, mutated), target.subresource)
            self._prepare(rtype, new, query, creating=False, warnings=warnings)
        self._validate(rtype, new, current)
        await self._admit("UPDATE", target, new, current, dry_run=dry_run, mutate=False,
                          warnings=warnings)
        if rtype.has_generation and _body_changed(rtype, current, new):
            new["metadata"]["generation"] = int(current["metadata"].get("generation") or 0) + 1
        if _comparable(new) == _comparable(current) or dry_run:
            return Reply(200, self.output(rtype, new if dry_run else current), warnings)
        expect = current["metadata"]["resourceVersion"]
        try:
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers") \
                    and not self._holds_content(rtype, new):
                final = self.store.delete(rtype.group_resource, new, expect)
                self._after_delete(rtype, final, "Background")
                return Reply(200, self.output(rtype, final), warnings)
            stored = self.store.put(rtype.group_resource, new, expect)
        except StoreConflictError as error:
            raise _RetryError from error
        self._after_write(rtype, stored)
        return Reply(200, self.output(rtype, stored), warnings)

    def _restrict(self, rtype: ResourceType, current: Obj, new: Obj, subresource: str) -> Obj:
        """Keep what a write may not change: system metadata; status, or all but status."""
        if subresource == "status":
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        meta = new["metadata"]
        old_meta = current["metadata"]
        for key in _KEPT_ON_UPDATE:
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if rtype.has_status:
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        return new

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, target: Target, body: bytes, query: Query) -> Reply:
        rtype = target.rtype
        options: Obj = {}
        if body.strip():
            decoded = decode_body(body, "json")
            options = decoded if isinstance(decoded, dict) else {}
        current = self.get(target)
        preconditions = options.get("preconditions") or {}
        meta = current["metadata"]
        if preconditions.get("uid") not in (None, meta["uid"]):
            raise conflict(rtype.plural, rtype.group, meta["name"],
                           f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                           f"UID in object meta: {meta['uid']}")
        if preconditions.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise conflict(rtype.plural, rtype.group, meta["name"],
                           "Precondition failed: ResourceVersion in precondition: "
                           f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                           f"{meta['resourceVersion']}")
        dry_run = query.get("dryRun") == "All" or options.get("dryRun") == ["All"]
        warnings: list[str] = []
        await self._admit("DELETE", target, None, current, dry_run=dry_run, mutate=False,
                          warnings=warnings)
        if dry_run:
            return Reply(200, current, warnings)
        policy = options.get("propagationPolicy") or query.get("propagationPolicy") or "Background"
        result = self.delete_object(rtype, current, policy)
        if result is not None:
            return Reply(200, self.output(rtype, result), warnings)
        if rtype.group_resource in ("pods", "namespaces"):
            return Reply(200, current, warnings)
        return Reply(200, status_success(rtype.plural, rtype.group, meta["name"], meta["uid"]),
                     warnings)

    def delete_object(self, rtype: ResourceType, current: Obj, policy: str = "Background",
                      ) -> Obj | None:
        """Delete now, or mark for deletion (finalizers, contents); the object if it remains."""
        meta = current["metadata"]
        gr = rtype.group_resource
        container = gr in ("namespaces", _CRD)
        for _ in range(_RETRIES):
            latest = self.store.get(gr, meta.get("namespace"), meta["name"])
            if latest is None:
                return None
            try:
                if (container or latest["metadata"].get("finalizers")) and \
                        not latest["metadata"].get("deletionTimestamp"):
                    latest = self._mark_deleted(rtype, latest)
                if container:
                    self._drain(rtype, latest)
                    self._finish_container(gr, latest["metadata"]["name"])
                    return self.store.get(gr, None, latest["metadata"]["name"])
                if latest["metadata"].get("finalizers"):
                    return latest
                final = self.store.delete(gr, latest, latest["metadata"]["resourceVersion"])
            except StoreConflictError:
                continue
            self._after_delete(rtype, final, policy)
            return None
        raise conflict(rtype.plural, rtype.group, meta["name"])

    def _mark_deleted(self, rtype: ResourceType, obj: Obj) -> Obj:
        meta = obj["metadata"]
        meta["deletionTimestamp"] = now()
        meta["deletionGracePeriodSeconds"] = 0
        if rtype.has_generation and int(meta.get("generation") or 0) > 0:
            meta["generation"] = int(meta["generation"]) + 1
        if rtype.group_resource == "namespaces":
            obj.setdefault("status", {})["phase"] = "Terminating"
        return self.store.put(rtype.group_resource, obj, meta["resourceVersion"])

    def _contents(self, rtype: ResourceType, obj: Obj) -> list[tuple[str, Obj]]:
        """What a namespace contains, or a CRD's custom resources."""
        if rtype.group_resource == "namespaces":
            return self.store.namespaced_in(obj["metadata"]["name"])
        if rtype.group_resource == _CRD:
            served = crd_types(obj)
            if served:
                return [(served[0].group_resource, o)
                        for o in self.store.items(served[0].group_resource)]
        return []

    def _holds_content(self, rtype: ResourceType, obj: Obj) -> bool:
        return bool(self._contents(rtype, obj))

    def _drain(self, rtype: ResourceType, obj: Obj) -> None:
        """Delete everything a terminating namespace or a deleted CRD still holds."""
        for group_resource, item in self._contents(rtype, obj):
            item_type = self.registry.preferred(group_resource)
            if item_type is not None and not item["metadata"].get("deletionTimestamp"):
                self.delete_object(item_type, item)

    def _after_delete(self, rtype: ResourceType, final: Obj, policy: str) -> None:
        meta = final["metadata"]
        if rtype.group_resource == _CRD:
            served = crd_types(final)
            self.registry.replace_crd(meta["name"], [])
            if served:
                self.store.drop_group_resource(served[0].group_resource)
        self._collect_garbage(meta["uid"], policy)
        namespace = meta.get("namespace")
        if namespace:
            self._finish_container("namespaces", namespace)
        if rtype.is_custom:
            self._finish_container(_CRD, rtype.crd_name)

    def _finish_container(self, group_resource: str, name: str) -> None:
        """Remove a terminating namespace or CRD once it is empty and has no finalizers."""
        container = self.store.get(group_resource, None, name)
        container_type = self.registry.preferred(group_resource)
        if container is None or container_type is None:
            return
        meta = container["metadata"]
        if not meta.get("deletionTimestamp") or meta.get("finalizers") or \
                self._holds_content(container_type, container):
            return
        try:
            final = self.store.delete(group_resource, container, meta["resourceVersion"])
        except StoreConflictError:
            return  # changed meanwhile; whoever changed it finishes it
        self._after_delete(container_type, final, "Background")

    def _collect_garbage(self, owner_uid: str, policy: str) -> None:
        """Background garbage collection: dependents whose owners are all gone are deleted."""
        for group_resource, dependent in self.store.dependents(owner_uid):
            dependent_type = self.registry.preferred(group_resource)
            if dependent_type is None:
                continue
            refs = dependent["metadata"].get("ownerReferences") or []
            if policy == "Orphan":
                dependent["metadata"]["ownerReferences"] = [
                    r for r in refs if r.get("uid") != owner_uid]
                try:
                    self.store.put(group_resource, dependent,
                                   dependent["metadata"]["resourceVersion"])
                except StoreConflictError:
                    log.warning("could not orphan %s", dependent["metadata"]["name"])
                continue
            if not any(self.store.uid_exists(r.get("uid", "")) for r in refs):
                self.delete_object(dependent_type, dependent)

    async def delete_collection(self, target: Target, query: Query) -> Reply:
        rtype = target.rtype
        items, meta = self.page(target, query)
        for item in items:
            self.delete_object(rtype, item, query.get("propagationPolicy") or "Background")
        return Reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": meta,
                           "status": "Success"})

    def refuse(self) -> ApiError:
        return method_not_allowed()
