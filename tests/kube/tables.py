"""Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for.

For custom resources the columns are Name followed by the CRD's `additionalPrinterColumns`
(evaluated with JSONPath, typed as declared, `date` columns shown as an age) or Age when the CRD
declares none — exactly the apiserver's CRD table convertor. Built-in kinds get the familiar
columns (pods: Ready, Status, Restarts, Age; deployments: Ready, Up-to-date, ...).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

from jsonpath_ng.exceptions import JsonPathParserError
from jsonpath_ng.ext.parser import parse as parse_jsonpath

from tests.kube.resources import ResourceType

__all__ = ["age", "jsonpath_values", "table"]

Column = dict[str, Any]
Cells = Callable[[dict[str, Any]], list[Any]]

_NAME = {"name": "Name", "type": "string", "format": "name", "priority": 0,
         "description": "Name must be unique within a namespace. Is required when creating "
                        "resources, although some resources may allow a client to request the "
                        "generation of an appropriate name automatically."}
_AGE_DESCRIPTION = ("CreationTimestamp is a timestamp representing the server time when this "
                    "object was created.")


def _column(name: str, kind: str = "string", priority: int = 0, description: str = "") -> Column:
    return {"name": name, "type": kind, "format": "", "description": description or name,
            "priority": priority}


def _parse_time(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:  # noqa: C901
    # One branch per unit, mirroring Go's duration.HumanDuration line by line.
    """`duration.HumanDuration`, as kubectl's AGE column prints it."""
    parsed = _parse_time(timestamp) if isinstance(timestamp, str) else None
    if parsed is None:
        return "<unknown>"
    seconds = int(((now or dt.datetime.now(dt.UTC)) - parsed).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    if days < 365 * 8:
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{days // 365}y"


@functools.lru_cache(maxsize=256)
def _compiled(path: str) -> Any:
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return parse_jsonpath("$" + text if text.startswith((".", "[")) else "$." + text)


def jsonpath_values(obj: dict[str, Any], path: str) -> list[Any]:
    """Every value a Kubernetes-style JSONPath selects.

    For example `.status.conditions[?(@.type=="Ready")].status`.
    """
    try:
        return [match.value for match in _compiled(path).find(obj)]
    except (JsonPathParserError, Exception):
        return []


def _printer_cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    found = jsonpath_values(obj, column.get("jsonPath", ""))
    if not found or found[0] is None:
        return None
    value = found[0]
    kind = column.get("type", "string")
    result: Any = None
    if kind == "date":
        result = age(value) if isinstance(value, str) else None
    elif kind == "integer":
        result = value if isinstance(value, int) and not isinstance(value, bool) else None
    elif kind == "number":
        result = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    elif kind == "boolean":
        result = value if isinstance(value, bool) else None
    elif isinstance(value, bool):
        result = "true" if value else "false"
    elif isinstance(value, dict | list):
        import json  # noqa: PLC0415

        result = json.dumps(value, separators=(",", ":"))
    else:
        result = str(value)
    return result


def _custom_columns(rtype: ResourceType) -> tuple[list[Column], Cells]:
    printer = list(rtype.printer_columns) or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
         "description": _AGE_DESCRIPTION}]
    columns = [_NAME] + [
        {"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
         "description": c.get("description", ""), "priority": c.get("priority", 0)}
        for c in printer]

    def cells(obj: dict[str, Any]) -> list[Any]:
        return [obj["metadata"]["name"], *(_printer_cell(obj, c) for c in printer)]

    return columns, cells


def _meta(obj: dict[str, Any], key: str) -> Any:
    return (obj.get("metadata") or {}).get(key)


def _created(obj: dict[str, Any]) -> str:
    return age(_meta(obj, "creationTimestamp"))


def _pod_cells(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    phase = status.get("reason") or status.get("phase") or "Unknown"
    if _meta(obj, "deletionTimestamp"):
        phase = "Terminating"
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    return [_meta(obj, "name"), f"{ready}/{len(spec.get('containers') or [])}", phase, restarts,
            _created(obj), status.get("podIP") or "<none>", spec.get("nodeName") or "<none>"]


def _deployment_cells(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    wanted = spec.get("replicas", 1)
    return [_meta(obj, "name"), f"{status.get('readyReplicas', 0)}/{wanted}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0), _created(obj)]


def _service_cells(obj: dict[str, Any]) -> list[Any]:
    spec = obj.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    return [_meta(obj, "name"), spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>",
            ",".join(spec.get("externalIPs") or []) or "<none>", ports or "<none>", _created(obj)]


def _event_cells(obj: dict[str, Any]) -> list[Any]:
    involved = obj.get("involvedObject") or obj.get("regarding") or {}
    seen = obj.get("lastTimestamp") or obj.get("eventTime") or _meta(obj, "creationTimestamp")
    return [age(seen), obj.get("type", ""), obj.get("reason", ""),
            f"{(involved.get('kind') or '').lower()}/{involved.get('name', '')}",
            obj.get("message") or obj.get("note") or ""]


_BUILTIN: dict[str, tuple[list[Column], Cells]] = {
    "pods": ([_NAME, _column("Ready"), _column("Status"), _column("Restarts", "integer"),
              _column("Age"), _column("IP", priority=1), _column("Node", priority=1)],
             _pod_cells),
    "namespaces": ([_NAME, _column("Status"), _column("Age")],
                   lambda o: [_meta(o, "name"), (o.get("status") or {}).get("phase", ""),
                              _created(o)]),
    "deployments.apps": ([_NAME, _column("Ready"), _column("Up-to-date", "integer"),
                          _column("Available", "integer"), _column("Age")], _deployment_cells),
    "statefulsets.apps": ([_NAME, _column("Ready"), _column("Age")],
                          lambda o: [_meta(o, "name"),
                                     (f"{(o.get('status') or {}).get('readyReplicas', 0)}/"
                                      f"{(o.get('spec') or {}).get('replicas', 1)}"),
                                     _created(o)]),
    "services": ([_NAME, _column("Type"), _column("Cluster-IP"), _column("External-IP"),
                  _column("Port(s)"), _column("Age")], _service_cells),
    "configmaps": ([_NAME, _column("Data", "integer"), _column("Age")],
                   lambda o: [_meta(o, "name"), len(o.get("data") or {})
                              + len(o.get("binaryData") or {}), _created(o)]),
    "secrets": ([_NAME, _column("Type"), _column("Data", "integer"), _column("Age")],
                lambda o: [_meta(o, "name"), o.get("type", "Opaque"), len(o.get("data") or {}),
                           _created(o)]),
    "customresourcedefinitions.apiextensions.k8s.io": (
        [_NAME, _column("Created At", "date")],
        lambda o: [_meta(o, "name"), _meta(o, "creationTimestamp")]),
    "leases.coordination.k8s.io": (
        [_NAME, _column("Holder"), _column("Age")],
        lambda o: [_meta(o, "name"), (o.get("spec") or {}).get("holderIdentity", ""),
                   _created(o)]),
    "events": ([_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"),
                _column("Message")], _event_cells),
}


def _columns(rtype: ResourceType) -> tuple[list[Column], Cells]:
    if rtype.is_custom:
        return _custom_columns(rtype)
    return _BUILTIN.get(rtype.group_resource) or (
        [_NAME, _column("Age")], lambda o: [_meta(o, "name"), _created(o)])


def table(rtype: ResourceType, objects: list[dict[str, Any]], resource_version: str,
          include_object: str = "Metadata") -> dict[str, Any]:
    """A `Table` of `objects` (already in the requested version)."""
    columns, cells = _columns(rtype)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": cells(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata") or {}}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": columns, "rows": rows}
