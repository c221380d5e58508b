"""Label and field selectors, as query strings and as structured `LabelSelector`s.

The string forms are `?labelSelector=` and `?fieldSelector=`; the structured form is what
webhooks' `namespaceSelector` and `objectSelector` use.

A selector the apiserver would refuse (bad syntax, or a field it does not index) is refused here
with the same 400, so an operator cannot come to depend on a selector a real cluster rejects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kube.errors import bad_request
from tests.kube.resources import ResourceType

__all__ = ["FieldSelector", "LabelSelector", "matches_label_selector_object"]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_BINARY = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|!=|=|>|<)\s*(?P<value>{_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")

Labels = dict[str, str]
Requirement = Callable[[Labels], bool]


def _split_requirements(text: str) -> list[str]:
    """Split at commas outside parentheses: `a in (x,y),b` -> [`a in (x,y)`, `b`]."""
    parts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _set_requirement(key: str, op: str, listed: str) -> Requirement:
    values = {v.strip() for v in listed.split(",") if v.strip()}
    if not values:
        raise bad_request(f"unable to parse requirement: values for {op!r} must not be empty")
    if op == "in":
        return lambda labels: labels.get(key) in values
    return lambda labels: labels.get(key) not in values


def _binary_requirement(key: str, op: str, value: str) -> Requirement:
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    if not value.lstrip("-").isdigit():
        raise bad_request(f"unable to parse requirement: for 'Gt', 'Lt' operators, the value "
                          f"must be an integer: {value!r}")
    bound = int(value)

    def compare(labels: Labels) -> bool:
        found = labels.get(key)
        if found is None or not found.lstrip("-").isdigit():
            return False
        return int(found) > bound if op == ">" else int(found) < bound

    return compare


def _requirement(text: str) -> Requirement:
    if match := _SET.match(text):
        return _set_requirement(match["key"], match["op"], match["values"])
    if match := _BINARY.match(text):
        return _binary_requirement(match["key"], match["op"], match["value"])
    if match := _EXISTS.match(text):
        key = match["key"]
        if match["neg"]:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: found '{text.strip()}', expected: "
                      "identifier, '!', 'in', 'notin', '=', '==', '!=', 'gt', 'lt'")


@dataclass(frozen=True)
class LabelSelector:
    """A parsed `labelSelector` query: every requirement must hold."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or not text.strip():
            return cls()
        return cls(tuple(_requirement(part) for part in _split_requirements(text)))

    def matches(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement(labels) for requirement in self.requirements)


def matches_label_selector_object(selector: dict[str, Any] | None, labels: Labels) -> bool:
    """The structured `LabelSelector` (matchLabels and matchExpressions); empty or None = all."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_expression_holds(expression, labels)
               for expression in selector.get("matchExpressions") or [])


def _expression_holds(expression: dict[str, Any], labels: Labels) -> bool:
    key, operator = str(expression.get("key")), expression.get("operator")
    values = set(expression.get("values") or [])
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    raise bad_request(f"{operator!r} is not a valid label selector operator")


# Fields the apiserver indexes for field selectors, beyond metadata.name and metadata.namespace.
_FIELDS: dict[str, tuple[str, ...]] = {
    "pods": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
             "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
             "status.nominatedNodeName"),
    "namespaces": ("status.phase",),
    "secrets": ("type",),
    "events": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
               "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"),
    "events.events.k8s.io": ("reason", "regarding.kind", "regarding.name",
                             "regarding.namespace", "regarding.uid", "reportingController", "type"),
    "statefulsets.apps": ("status.successful",),
}
_FIELD_TERM = re.compile(r"^\s*(?P<key>[A-Za-z0-9_.\-/]+)\s*(?P<op>==|!=|=)\s*(?P<value>.*?)\s*$")


def _lookup(obj: dict[str, Any], dotted: str) -> str:
    node: Any = obj
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed `fieldSelector` query over the fields the type supports."""

    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str | None, rtype: ResourceType,
              selectable: tuple[str, ...] = ()) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        known = ("metadata.name", "metadata.namespace",
                 *_FIELDS.get(rtype.group_resource, ()), *selectable)
        terms: list[tuple[str, bool, str]] = []
        for part in text.split(","):
            match = _FIELD_TERM.match(part)
            if not match:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            key = match["key"]
            if key not in known:
                if rtype.is_custom:
                    quoted = ", ".join(f'"{k}"' for k in known)
                    raise bad_request(f'"{key}" is not a known field selector: only {quoted}')
                raise bad_request(f"field label not supported: {key}")
            terms.append((key, match["op"] != "!=", match["value"]))
        return cls(tuple(terms))

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((_lookup(obj, key) == value) == equal for key, equal, value in self.terms)
