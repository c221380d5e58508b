"""Mapping the kube-apiserver's audit events (`audit.k8s.io/v1` EventList) onto audit events.

The apiserver's webhook backend POSTs batches of `Event`s. Each becomes one sealtrail event in
the chain of its namespace (cluster-scoped requests go to `_system`), so the cluster's own audit
trail is chained, checkpointed and shipped like everything else.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import ValidationError

from sealtrail.api.errors import field_errors
from sealtrail.api.event import SYSTEM_TENANT, Event, parse_timestamp

__all__ = ["MAX_DEPTH", "K8sAuditError", "check_depth", "map_event_list"]

#: Deepest nesting of arrays and objects an EventList may have (the EventList itself is level
#: 1). Real audit events, with request and response objects, stay far below it; a deeper body
#: is refused with a 400 before anything reads it.
MAX_DEPTH: Final = 64

_SENSITIVE: Final = frozenset({
    "secrets", "roles", "rolebindings", "clusterroles", "clusterrolebindings", "serviceaccounts",
    "certificatesigningrequests", "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
})
#: The audit event's field that each of our fields comes from, to name it in an error.
_SOURCE_FIELD: Final = {"tenant_id": "objectRef.namespace", "identity": "user.username",
                        "reason": "annotations", "action": "verb"}
_WRITES: Final = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class K8sAuditError(ValueError):
    """The body is not an `audit.k8s.io/v1` EventList; `field` names where, if known."""

    def __init__(self, message: str, field: str = "", index: int | None = None) -> None:
        """Say `message`, at the audit event's `field` and the item's `index`, where known."""
        where = f"items[{index}]" if index is not None else ""
        if field:
            where = f"{where}.{field}" if where else field
        super().__init__(f"{where}: {message}" if where else message)
        self.field = field
        self.index = index
        self.message = message


def _severity(verb: str, resource: str, code: int) -> str:
    if code in (401, 403):
        return "HIGH"
    if resource in _SENSITIVE and verb in _WRITES:
        return "HIGH"
    if verb in {"delete", "deletecollection"} or resource in _SENSITIVE:
        return "MEDIUM"
    if verb in _WRITES:
        return "LOW"
    return "INFO"


def check_depth(body: Any, limit: int = MAX_DEPTH) -> None:
    """Raise K8sAuditError if arrays and objects nest deeper than `limit`.

    Level by level, without recursion: the point is to refuse what would exhaust Python's
    stack later (`str()` of a value nested a thousand deep raises RecursionError).
    """
    containers = [body] if isinstance(body, dict | list) else []
    depth = 0
    while containers:
        depth += 1
        if depth > limit:
            raise K8sAuditError(f"the body nests arrays and objects deeper than {limit} levels")
        children: list[Any] = []
        for container in containers:
            children.extend(container.values() if isinstance(container, dict) else container)
        containers = [child for child in children if isinstance(child, dict | list)]


def _text(value: Any, limit: int, name: str) -> str | None:
    """A scalar as text; an array or object where the apiserver sends a scalar is refused."""
    if value is None or value == "":
        return None
    if isinstance(value, dict | list):
        raise K8sAuditError("must be a string", name)
    return str(value)[:limit]


def _status_code(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 999:
        return value
    raise K8sAuditError("must be an HTTP status code (0-999)", "responseStatus.code")


def _timestamp(item: dict[str, Any]) -> str | None:
    """The event's time (`stageTimestamp`, else `requestReceivedTimestamp`), normalised."""
    for name in ("stageTimestamp", "requestReceivedTimestamp"):
        value = item.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise K8sAuditError("must be an RFC 3339 timestamp string", name)
        try:
            return parse_timestamp(value)
        except ValueError as error:
            raise K8sAuditError(str(error), name) from None
    return None


def map_event(item: dict[str, Any]) -> Event:
    """One audit.k8s.io Event as a sealtrail event (raises ValidationError if it cannot be)."""
    parts = {}
    for name in ("objectRef", "user", "responseStatus", "annotations"):
        part = item.get(name) or {}
        if not isinstance(part, dict):
            raise K8sAuditError("must be an object", name)
        parts[name] = part
    ref, user = parts["objectRef"], parts["user"]
    status, annotations = parts["responseStatus"], parts["annotations"]
    verb = _text(item.get("verb"), 64, "verb") or "unknown"
    resource = _text(ref.get("resource"), 128, "objectRef.resource") or ""
    code = _status_code(status.get("code"))
    # The apiserver writes "allow" or "forbid".
    decision = {"allow": "allow", "forbid": "deny", "deny": "deny"}.get(
        str(annotations.get("authorization.k8s.io/decision")))
    extra = {
        "audit_id": _text(item.get("auditID"), 128, "auditID"),
        "stage": _text(item.get("stage"), 64, "stage"),
        "level": _text(item.get("level"), 64, "level"),
        "request_uri": _text(item.get("requestURI"), 2048, "requestURI"),
        "source_ips": _text(",".join(item.get("sourceIPs") or []), 1024, "sourceIPs"),
        "user_agent": _text(item.get("userAgent"), 1024, "userAgent"),
        "response_code": str(code) if code else None,
        "api_group": _text(ref.get("apiGroup"), 256, "objectRef.apiGroup"),
        "name": _text(ref.get("name"), 256, "objectRef.name"),
    }
    raw = {
        "event_type": "k8s.audit",
        "severity": _severity(verb, resource, code),
        "tenant_id": ref.get("namespace") or SYSTEM_TENANT,
        "timestamp": _timestamp(item),
        "action": f"{verb} {resource}".strip()[:256],
        "decision": decision,
        "reason": _text(annotations.get("authorization.k8s.io/reason"), 16_000,
                        "annotations"),
        "identity": _text(user.get("username"), 1024, "user.username"),
        "extra": {key: value for key, value in extra.items() if value},
    }
    return Event.model_validate({key: value for key, value in raw.items() if value is not None})


def map_event_list(body: Any) -> list[Event]:
    """Every event of an EventList, in order; a problem names the item it is in."""
    if not isinstance(body, dict) or body.get("apiVersion") != "audit.k8s.io/v1" or (
        body.get("kind") != "EventList"
    ):
        raise K8sAuditError("expected an audit.k8s.io/v1 EventList")
    check_depth(body)
    items = body.get("items")
    if not isinstance(items, list):
        raise K8sAuditError("items: must be a list")
    events = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise K8sAuditError("must be an object", "", index)
        try:
            events.append(map_event(item))
        except K8sAuditError as error:
            raise K8sAuditError(error.message, error.field, index) from None
        except ValidationError as error:
            first = field_errors(error)[0]
            raise K8sAuditError(f"cannot be mapped: {first.message}",
                                _SOURCE_FIELD.get(first.field, first.field), index) from None
        except (ValueError, TypeError) as error:
            raise K8sAuditError(f"cannot be mapped: {error}", "", index) from None
    return events
