"""The four PATCH content types, applied as kube-apiserver applies them.

JSON merge (RFC 7386), JSON patch (RFC 6902), strategic merge (built-in kinds only, as on a real
apiserver) and the merging half of server-side apply.

Strategic merge needs each list's patch strategy and merge key, which Kubernetes keeps in Go
struct tags; `_MERGE_KEYS` carries the ones an operator's objects use (containers by `name`,
ports by `containerPort`, volume mounts by `mountPath`, ...). Lists not listed are replaced whole,
which is what the apiserver does for lists without a strategy.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from tests.kube.errors import ApiError, bad_request

__all__ = ["apply_json_patch", "merge_patch", "server_side_apply", "strategic_merge_patch"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902, failing as the apiserver does: 400 for a malformed patch, 422 when it fails."""
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    try:
        patch = jsonpatch.JsonPatch(operations)
    except (jsonpatch.JsonPatchException, TypeError, KeyError) as error:
        raise bad_request(str(error)) from error
    try:
        result = patch.apply(copy.deepcopy(target))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError,
            KeyError, IndexError) as error:
        raise ApiError(422, "Invalid",
                       "the server rejected our request due to an error in our request",
                       {"causes": [{"reason": "UnexpectedServerResponse",
                                    "message": str(error) or type(error).__name__}]}) from error
    if not isinstance(result, dict):
        raise bad_request("the patched object is not a JSON object")
    return result


# Patch strategy per list, by path from the object root ("[]" stands for "each item of").
# A string is the merge key of a list of objects; True marks a merged list of primitives.
_POD_SPEC: dict[str, str | bool] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "containers[].env": "name",
    "containers[].ports": "containerPort",
    "containers[].volumeMounts": "mountPath",
    "containers[].volumeDevices": "devicePath",
    "initContainers[].env": "name",
    "initContainers[].ports": "containerPort",
    "initContainers[].volumeMounts": "mountPath",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
_STATUS_CONDITIONS: dict[str, str | bool] = {"status.conditions": "type"}
_METADATA: dict[str, str | bool] = {"metadata.finalizers": True, "metadata.ownerReferences": "uid"}


def _prefixed(prefix: str, keys: dict[str, str | bool]) -> dict[str, str | bool]:
    return {f"{prefix}.{path}": key for path, key in keys.items()}


_MERGE_KEYS: dict[str, dict[str, str | bool]] = {
    "Pod": {**_prefixed("spec", _POD_SPEC), **_STATUS_CONDITIONS,
            "status.containerStatuses": "name", "status.podIPs": "ip"},
    "Deployment": {**_prefixed("spec.template.spec", _POD_SPEC), **_STATUS_CONDITIONS},
    "StatefulSet": {**_prefixed("spec.template.spec", _POD_SPEC), **_STATUS_CONDITIONS},
    "Service": {"spec.ports": "port", **_STATUS_CONDITIONS},
    "ServiceAccount": {"secrets": "name", "imagePullSecrets": "name"},
    "Namespace": {**_STATUS_CONDITIONS},
    "MutatingWebhookConfiguration": {"webhooks": "name"},
    "ValidatingWebhookConfiguration": {"webhooks": "name"},
}


def _strategy(kind: str, path: str) -> str | bool | None:
    return _MERGE_KEYS.get(kind, {}).get(path) or _METADATA.get(path)


def _merge_keyed_list(kind: str, path: str, original: list[Any], patch: list[Any],
                      key: str) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [item for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {key}")
        position = next((i for i, old in enumerate(result)
                         if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append(_smp(kind, f"{path}[]", {}, item))
        else:
            result[position] = _smp(kind, f"{path}[]", result[position], item)
    return result


def _smp(kind: str, path: str, original: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    if "$retainKeys" in patch:
        keep = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in keep}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue  # element order is a hint this emulator does not need
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in value]
        else:
            _smp_field(kind, f"{path}.{key}" if path else key, result, key, value)
    return result


def _smp_field(kind: str, path: str, result: dict[str, Any], key: str, value: Any) -> None:
    """Patch one field of `result` in place, by the strategy its path has."""
    if value is None:
        result.pop(key, None)
        return
    strategy = _strategy(kind, path)
    current = result.get(key)
    if isinstance(value, list) and isinstance(strategy, str):
        result[key] = _merge_keyed_list(kind, path, current or [], value, strategy)
    elif isinstance(value, list) and strategy is True:
        merged = list(current or [])
        merged += [v for v in value if v not in merged]
        result[key] = merged
    else:
        merged_value = _smp(kind, path, current, value)
        if merged_value is None:
            result.pop(key, None)
        else:
            result[key] = merged_value


def strategic_merge_patch(kind: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Strategic merge patch for a built-in kind (lists merge by their Kubernetes merge key)."""
    if not isinstance(patch, dict):
        raise bad_request("json: cannot unmarshal array into Go value of type "
                          "map[string]interface {}")
    result = _smp(kind, "", target, patch)
    return result if isinstance(result, dict) else {}


def server_side_apply(kind: str, builtin: bool, target: dict[str, Any],
                      applied: dict[str, Any]) -> dict[str, Any]:
    """An approximation of server-side apply: the applied configuration merged over the object.

    Fields the manager applied before and has now left out are kept (the real apiserver would
    remove them using managedFields); lists merge by key for built-in kinds and are replaced for
    custom resources (as `x-kubernetes-list-type: atomic` would).
    """
    if builtin:
        return strategic_merge_patch(kind, target, applied)
    merged = merge_patch(target, applied)
    return merged if isinstance(merged, dict) else {}
