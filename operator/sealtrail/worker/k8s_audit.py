"""Mapping the kube-apiserver's audit events (`audit.k8s.io/v1` EventList) onto audit events.

The apiserver's webhook backend POSTs batches of `Event`s. Each becomes one sealtrail event in
the chain of its namespace (cluster-scoped requests go to `_system`), so the cluster's own audit
trail is chained, checkpointed and shipped like everything else.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import ValidationError

from sealtrail.api.event import SYSTEM_TENANT, Event

__all__ = ["K8sAuditError", "map_event_list"]

_SENSITIVE: Final = frozenset({
    "secrets", "roles", "rolebindings", "clusterroles", "clusterrolebindings", "serviceaccounts",
    "certificatesigningrequests", "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
})
_WRITES: Final = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class K8sAuditError(ValueError):
    """The body is not an `audit.k8s.io/v1` EventList."""


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


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None


def map_event(item: dict[str, Any]) -> Event:
    """One audit.k8s.io Event as a sealtrail event (raises ValidationError if it cannot be)."""
    parts = {}
    for name in ("objectRef", "user", "responseStatus", "annotations"):
        part = item.get(name) or {}
        if not isinstance(part, dict):
            raise K8sAuditError(f"{name}: must be an object")
        parts[name] = part
    ref, user = parts["objectRef"], parts["user"]
    status, annotations = parts["responseStatus"], parts["annotations"]
    verb = str(item.get("verb") or "unknown")
    resource = str(ref.get("resource") or "")
    code = int(status.get("code") or 0)
    # The apiserver writes "allow" or "forbid".
    decision = {"allow": "allow", "forbid": "deny", "deny": "deny"}.get(
        str(annotations.get("authorization.k8s.io/decision")))
    extra = {
        "audit_id": _text(item.get("auditID"), 128),
        "stage": _text(item.get("stage"), 64),
        "level": _text(item.get("level"), 64),
        "request_uri": _text(item.get("requestURI"), 2048),
        "source_ips": _text(",".join(item.get("sourceIPs") or []), 1024),
        "user_agent": _text(item.get("userAgent"), 1024),
        "response_code": str(code) if code else None,
        "api_group": _text(ref.get("apiGroup"), 256),
        "name": _text(ref.get("name"), 256),
    }
    raw = {
        "event_type": "k8s.audit",
        "severity": _severity(verb, resource, code),
        "tenant_id": ref.get("namespace") or SYSTEM_TENANT,
        "timestamp": item.get("stageTimestamp") or item.get("requestReceivedTimestamp"),
        "action": f"{verb} {resource}".strip()[:256],
        "decision": decision,
        "reason": _text(annotations.get("authorization.k8s.io/reason"), 16_000),
        "identity": _text(user.get("username"), 1024),
        "extra": {key: value for key, value in extra.items() if value},
    }
    return Event.model_validate({key: value for key, value in raw.items() if value is not None})


def map_event_list(body: Any) -> list[Event]:
    """Every event of an EventList, in order; a problem names the item it is in."""
    if not isinstance(body, dict) or body.get("apiVersion") != "audit.k8s.io/v1" or (
        body.get("kind") != "EventList"
    ):
        raise K8sAuditError("expected an audit.k8s.io/v1 EventList")
    items = body.get("items")
    if not isinstance(items, list):
        raise K8sAuditError("items: must be a list")
    events = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise K8sAuditError(f"items[{index}]: must be an object")
        try:
            events.append(map_event(item))
        except (ValidationError, ValueError, TypeError) as error:
            raise K8sAuditError(f"items[{index}]: cannot be mapped: {error}") from None
    return events
