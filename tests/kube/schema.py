"""A CRD's structural `openAPIV3Schema` applied to custom resources, with the apiserver's messages.

Pruning, defaulting and validation, including `x-kubernetes-validations` CEL rules.

Order as in kube-apiserver: unknown fields are pruned (and reported, for `fieldValidation=Strict`
or `Warn`), defaults are filled in, then the object is validated; every failure becomes a `Cause`
whose `field` is the dotted path (`spec.splunk.hecUrl`) and whose text matches kube-openapi's
wording, so that tests asserting on kubectl's output would pass against a real cluster too.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.kube import cel
from tests.kube.errors import Cause

__all__ = ["default", "prune", "rule_causes", "validate"]

_ROOT_KEPT = ("apiVersion", "kind", "metadata")


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# -- pruning -----------------------------------------------------------------------------------


def prune(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Drop, in place, the fields the schema does not declare; the dropped paths, in order."""
    unknown: list[str] = []
    _prune(obj, schema, "", unknown, root=True)
    return unknown


def _field_schema(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema of one field of an object: from `properties` or `additionalProperties`."""
    properties: dict[str, dict[str, Any]] = schema.get("properties") or {}
    if key in properties:
        return properties[key]
    additional = schema.get("additionalProperties")
    return additional if isinstance(additional, dict) else None


def _untouched(schema: dict[str, Any], key: str, *, root: bool) -> bool:
    """apiVersion, kind and metadata of the object itself, or of an embedded resource."""
    if key not in _ROOT_KEPT:
        return False
    return root or (bool(schema.get("x-kubernetes-embedded-resource"))
                    and key not in (schema.get("properties") or {}))


def _prune(value: Any, schema: dict[str, Any], path: str, unknown: list[str], *,
           root: bool = False) -> None:
    if isinstance(value, list):
        items = schema.get("items")
        for index, item in enumerate(value if isinstance(items, dict) else []):
            _prune(item, items, f"{path}[{index}]", unknown)  # type: ignore[arg-type]
        return
    if not isinstance(value, dict):
        return
    keeps_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or \
        schema.get("additionalProperties") is True
    for key in list(value):
        if _untouched(schema, key, root=root):
            continue
        sub = _field_schema(schema, key)
        if sub is not None:
            _prune(value[key], sub, _child(path, key), unknown)
        elif not keeps_unknown:
            unknown.append(_child(path, key))
            del value[key]


# -- defaulting --------------------------------------------------------------------------------


def default(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    """Fill in `default` values, in place, for absent fields; drop nulls that are not nullable."""
    _default(obj, schema, root=True)


def _default(value: Any, schema: dict[str, Any], *, root: bool = False) -> None:
    if isinstance(value, list):
        items = schema.get("items")
        for item in value if isinstance(items, dict) else []:
            _default(item, items)  # type: ignore[arg-type]
        return
    if not isinstance(value, dict):
        return
    for key, sub in (schema.get("properties") or {}).items():
        if root and key == "metadata":
            continue
        if key in value and value[key] is None and not sub.get("nullable"):
            del value[key]  # the apiserver drops nulls that are not nullable (then defaults)
        if "default" in sub and key not in value:
            value[key] = copy.deepcopy(sub["default"])
    for key, item in value.items():
        sub = _field_schema(schema, key)
        if sub is not None and not (root and key == "metadata"):
            _default(item, sub)


# -- validation --------------------------------------------------------------------------------

_FORMATS: dict[str, Callable[[str], object]] = {
    "date-time": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "uuid": uuid.UUID,
}


@dataclass
class _Walk:
    """One validation pass: the causes so far, and whether this is an update (old is set)."""

    causes: list[Cause] = field(default_factory=list)
    updating: bool = False
    structural_ok: bool = True

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.causes.append(Cause.invalid(path, value, detail))


_MISSING = object()


def validate(obj: dict[str, Any], schema: dict[str, Any],
             old: dict[str, Any] | None = None) -> list[Cause]:
    """Every way `obj` violates the schema; transition rules run only when `old` is given."""
    walk = _Walk(updating=old is not None)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    body_schema = dict(schema)
    body_schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items()
                                 if k != "metadata"}
    rules = body_schema.pop("x-kubernetes-validations", None)
    _validate(body, body_schema, "", walk, old if old is not None else _MISSING)
    if rules:
        # Root-level rules see the whole object (metadata included), as on the apiserver.
        _run_rules(rules, obj, schema, "", walk, old if old is not None else _MISSING)
    return walk.causes


def _check_type(value: Any, schema: dict[str, Any], path: str, walk: _Walk) -> bool:
    if value is None:
        if schema.get("nullable"):
            return False  # nothing further to check on a null
        if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
            return False
        walk.invalid(path, "null", f"{path} in body must be of type "
                                   f"{schema.get('type', 'integer-or-string')}: \"null\"")
        return False
    actual = _type_name(value)
    wanted: str | None
    if schema.get("x-kubernetes-int-or-string"):
        wanted_ok = actual in ("integer", "string")
        wanted = "integer-or-string"
    else:
        wanted = schema.get("type")
        wanted_ok = (wanted is None or actual == wanted
                     or (wanted == "number" and actual == "integer")
                     or (wanted == "integer" and isinstance(value, float) and value.is_integer()))
    if not wanted_ok:
        walk.invalid(path, actual, f'{path} in body must be of type {wanted}: "{actual}"')
    return wanted_ok


def _validate(value: Any, schema: dict[str, Any], path: str, walk: _Walk, old: Any) -> None:
    if not _check_type(value, schema, path, walk):
        return
    if "enum" in schema and value not in schema["enum"]:
        walk.causes.append(Cause.not_supported(path, value, schema["enum"]))
    if isinstance(value, str):
        _validate_string(value, schema, path, walk)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, path, walk)
    elif isinstance(value, list):
        _validate_array(value, schema, path, walk, old)
    elif isinstance(value, dict):
        _validate_object(value, schema, path, walk, old)
    _validate_combinators(value, schema, path, walk)
    if schema.get("x-kubernetes-validations"):
        _run_rules(schema["x-kubernetes-validations"], value, schema, path, walk, old)


def _validate_string(value: str, schema: dict[str, Any], path: str, walk: _Walk) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        walk.causes.append(Cause.too_long(path, schema["maxLength"]))
    if "minLength" in schema and len(value) < schema["minLength"]:
        walk.invalid(path, value,
                     f"{path} in body should be at least {schema['minLength']} chars long")
    pattern = schema.get("pattern")
    if pattern is not None and not re.search(pattern, value):
        walk.invalid(path, value, f"{path} in body should match '{pattern}'")
    checker = _FORMATS.get(schema.get("format", ""))
    if checker is not None:
        try:
            checker(value)
        except ValueError:
            walk.invalid(path, value, f"{path} in body must be of type {schema['format']}: "
                                      f'"{value}"')


def _validate_number(value: float, schema: dict[str, Any], path: str, walk: _Walk) -> None:
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    if minimum is not None:
        if schema.get("exclusiveMinimum") and value <= minimum:
            walk.invalid(path, value, f"{path} in body should be greater than {minimum}")
        elif value < minimum:
            walk.invalid(path, value,
                         f"{path} in body should be greater than or equal to {minimum}")
    if maximum is not None:
        if schema.get("exclusiveMaximum") and value >= maximum:
            walk.invalid(path, value, f"{path} in body should be less than {maximum}")
        elif value > maximum:
            walk.invalid(path, value, f"{path} in body should be less than or equal to {maximum}")
    multiple = schema.get("multipleOf")
    if multiple and (value / multiple) != int(value / multiple):
        walk.invalid(path, value, f"{path} in body should be a multiple of {multiple}")


def _list_key(item: Any, keys: list[str]) -> Any:
    if not isinstance(item, dict):
        return repr(item)
    return tuple(repr(item.get(k)) for k in keys)


def _validate_array(value: list[Any], schema: dict[str, Any], path: str, walk: _Walk,
                    old: Any) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        walk.causes.append(Cause.too_many(path, len(value), schema["maxItems"]))
    if "minItems" in schema and len(value) < schema["minItems"]:
        walk.invalid(path, value, f"{path} in body should have at least {schema['minItems']} items")
    list_type = schema.get("x-kubernetes-list-type")
    if schema.get("uniqueItems") or list_type in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[Any] = set()
        for index, item in enumerate(value):
            marker = _list_key(item, keys) if list_type == "map" else repr(item)
            if marker in seen:
                shown = {k: item.get(k) for k in keys} if list_type == "map" else item
                walk.causes.append(Cause.duplicate(f"{path}[{index}]", shown))
            seen.add(marker)
    items = schema.get("items")
    if isinstance(items, dict):
        old_by_key = _correlate_list(old, schema)
        for index, item in enumerate(value):
            old_item = old_by_key.get(_list_key(item, schema.get("x-kubernetes-list-map-keys")
                                                or []), _MISSING) if old_by_key else _MISSING
            _validate(item, items, f"{path}[{index}]", walk, old_item)


def _correlate_list(old: Any, schema: dict[str, Any]) -> dict[Any, Any]:
    """Old items by map key: only `x-kubernetes-list-type: map` lists correlate across updates."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old, list):
        return {}
    keys = schema.get("x-kubernetes-list-map-keys") or []
    return {_list_key(item, keys): item for item in old}


def _validate_object(value: dict[str, Any], schema: dict[str, Any], path: str, walk: _Walk,
                     old: Any) -> None:
    for key in schema.get("required") or []:
        if key not in value:
            walk.causes.append(Cause.required(_child(path, key)))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        walk.causes.append(Cause.too_many(path, len(value), schema["maxProperties"]))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        walk.invalid(path, value,
                     f"{path} in body should have at least {schema['minProperties']} properties")
    properties: dict[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        old_item = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
        if key in properties:
            _validate(item, properties[key], _child(path, key), walk, old_item)
        elif isinstance(additional, dict):
            _validate(item, additional, _child(path, key), walk, old_item)
        elif additional is False and not schema.get("x-kubernetes-preserve-unknown-fields"):
            walk.causes.append(Cause.forbidden(_child(path, key), "field not declared in schema"))


def _validate_combinators(value: Any, schema: dict[str, Any], path: str, walk: _Walk) -> None:
    def passes(sub: dict[str, Any]) -> bool:
        trial = _Walk()
        _validate(value, {"type": schema.get("type"), **sub} if "type" not in sub else sub,
                  path, trial, _MISSING)
        return not trial.causes

    for sub in schema.get("allOf") or []:
        _validate(value, sub, path, walk, _MISSING)
    if "anyOf" in schema and not any(passes(sub) for sub in schema["anyOf"]):
        walk.invalid(path, value, f"{path} in body must validate at least one schema (anyOf)")
    if "oneOf" in schema and sum(passes(sub) for sub in schema["oneOf"]) != 1:
        walk.invalid(path, value, f"{path} in body must validate one and only one schema (oneOf)")
    if "not" in schema and passes(schema["not"]):
        walk.invalid(path, value, f"{path} in body must not validate the schema (not)")


# -- CEL rules ---------------------------------------------------------------------------------

_RULE_REASONS: dict[str, Callable[[str, str], Cause]] = {
    "FieldValueRequired": Cause.required,
    "FieldValueForbidden": Cause.forbidden,
    "FieldValueDuplicate": lambda p, m: Cause("FieldValueDuplicate", p, f"Duplicate value: {m}"),
}


def _rule_field(path: str, field_path: str | None) -> str:
    if not field_path:
        return path
    return f"{path}{field_path}" if path else field_path.lstrip(".")


def _run_rules(rules: list[dict[str, Any]], value: Any, schema: dict[str, Any], path: str,
               walk: _Walk, old: Any) -> None:
    walk.causes.extend(rule_causes(rules, value, schema, path, old))


def rule_causes(rules: list[dict[str, Any]], value: Any, schema: dict[str, Any], path: str,
                old: Any = _MISSING) -> list[Cause]:
    """The causes for every failing `x-kubernetes-validations` rule at one schema node."""
    causes: list[Cause] = []
    type_name = schema.get("type") or _type_name(value)
    shown_path = path or "<nil>"
    for rule in rules:
        expression = rule.get("rule", "")
        variables: dict[str, Any] = {"self": value}
        if cel.is_transition_rule(expression):
            if old is _MISSING:
                continue  # transition rules only run on updates, where the old value exists
            variables["oldSelf"] = old
        try:
            result = cel.evaluate(expression, variables)
        except cel.CelError as error:
            causes.append(Cause.invalid(shown_path, type_name,
                                        f"{error} evaluating rule: {expression}"))
            continue
        if result is True:
            continue
        if result is not False:
            causes.append(Cause.invalid(shown_path, type_name,
                                        f"rule did not evaluate to a bool: {expression}"))
            continue
        message = _rule_message(rule, variables)
        where = _rule_field(path, rule.get("fieldPath")) or shown_path
        make: Callable[[str, str], Cause] | None = _RULE_REASONS.get(rule.get("reason") or "")
        causes.append(make(where, message) if make
                      else Cause.invalid(where, type_name, message))
    return causes


def _rule_message(rule: dict[str, Any], variables: dict[str, Any]) -> str:
    if rule.get("messageExpression"):
        try:
            text = cel.evaluate(rule["messageExpression"], variables)
        except cel.CelError:
            text = None
        if isinstance(text, str) and text.strip():
            return text
    return rule.get("message") or f"failed rule: {rule.get('rule', '')}"


def compile_causes(schema: dict[str, Any], path: str) -> list[Cause]:
    """Rules in the schema that do not compile, as the CRD's validation reports them."""
    causes: list[Cause] = []
    for index, rule in enumerate(schema.get("x-kubernetes-validations") or []):
        for key in ("rule", "messageExpression"):
            if key not in rule:
                continue
            try:
                cel.compile_rule(rule[key])
            except cel.CelError as error:
                causes.append(Cause.invalid(f"{path}.x-kubernetes-validations[{index}].{key}",
                                            rule[key], str(error)))
    for key, sub in (schema.get("properties") or {}).items():
        causes += compile_causes(sub, f"{path}.properties[{key}]")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            causes += compile_causes(schema[key], f"{path}.{key}")
    return causes
