"""Pydantic models as structural OpenAPI v3 schemas, the dialect a CustomResourceDefinition speaks.

pydantic describes a model in JSON Schema 2020-12: `$defs` and `$ref`, `anyOf: [X, null]` for an
optional field, a numeric `exclusiveMinimum`, `additionalProperties: false` for `extra="forbid"`.
The Kubernetes API server wants a *structural* schema instead: every node typed, everything
inlined, no unions, a boolean `exclusiveMinimum`, `additionalProperties` only for maps, and
`x-kubernetes-validations` (CEL) for what a schema cannot say. `structural()` converts one into
the other and refuses anything it cannot say exactly, so that a model change the CRDs cannot
follow fails the generator rather than loosening the schema.

Two things a custom resource needs that the shared models do not carry are given by a
`Profile`: *narrowings* (a model shared with the worker's config file, of which a resource may
set only some fields, such as a credential that must be a `secretKeyRef`) and *rules* (CEL
standing for a model validator). Each names the validators it stands for, so a test can hold
every validator of every model to a schema constraint, a rule, or a stated reason.

Descriptions come from the model docstrings and from the `#:` comments above fields (the Sphinx
convention the models use), so `kubectl explain` says what the code says.
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, cast, get_args

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

__all__ = [
    "Json",
    "Narrowing",
    "Profile",
    "Rule",
    "SchemaError",
    "apply_defaults",
    "attribute_docs",
    "model_classes",
    "structural",
    "validators_of",
]

Json = dict[str, Any]

#: Keys of a converted node, in the order they are written (what a reader wants first).
_KEY_ORDER: Final = (
    "description", "type", "format", "enum", "default",
    "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "items", "additionalProperties", "properties", "required", "x-kubernetes-validations",
)

#: pydantic keys this converter understands; anything else is refused, not dropped.
_KNOWN: Final = frozenset({
    "type", "title", "description", "default", "enum", "const", "properties", "required",
    "additionalProperties", "items", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
})

#: What RE2 (the API server's regexp engine) and ECMAScript do not share with Python:
#: lookarounds, backreferences, possessive and atomic groups, named groups in Python's spelling.
_NOT_RE2: Final = re.compile(r"\(\?[=!<>P]|\\[1-9]|\(\?>|[*+?}]\+")


class SchemaError(ValueError):
    """A model says something a structural schema cannot (named by its path)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One `x-kubernetes-validations` entry, and the model validator it stands for."""

    rule: str
    message: str
    #: The validator this rule expresses, as `Class._method`.
    stands_for: str
    #: Where the error points, relative to the node (`.maxIntervalMs`).
    field_path: str | None = None
    #: `FieldValueInvalid` (the API server's default), `FieldValueRequired`,
    #: `FieldValueForbidden` or `FieldValueDuplicate`.
    reason: str | None = None

    def manifest(self) -> Json:
        """The entry as the CRD holds it."""
        entry: Json = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


@dataclass(frozen=True, slots=True)
class Narrowing:
    """The part of a shared model that a custom resource may set.

    The worker's config file and the custom resources share models; where a resource accepts
    less (a credential is a `secretKeyRef`, never `env` or `file`), the schema lists only what
    it accepts, so a bad field is refused at apply time by name.
    """

    #: The properties (wire names) a custom resource may set, in the model's order.
    keep: tuple[str, ...]
    #: Properties that become required (beyond the model's own required ones).
    required: tuple[str, ...] = ()
    #: Replaces the model docstring, which speaks of the fields left out.
    description: str | None = None
    #: The validators this narrowing expresses, as `Class._method`.
    stands_for: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """What one schema adds to the models: narrowings, rules, list keys, and defaults or not."""

    narrowings: Mapping[type[BaseModel], Narrowing] = field(default_factory=dict)
    #: CEL rules by model; a rule given for a model applies to its subclasses too.
    rules: Mapping[type[BaseModel], Sequence[Rule]] = field(default_factory=dict)
    #: Lists whose items are this model are `x-kubernetes-list-type: map` on these keys.
    list_map_keys: Mapping[type[BaseModel], tuple[str, ...]] = field(default_factory=dict)
    #: Publish the models' defaults (the API server then writes them into stored objects).
    defaults: bool = True

    def narrowing(self, model: type[BaseModel] | None) -> Narrowing | None:
        """The narrowing of `model`, if any."""
        return None if model is None else self.narrowings.get(model)

    def rules_for(self, model: type[BaseModel] | None) -> list[Rule]:
        """The rules of `model` and of every class it inherits from, base classes first."""
        if model is None:
            return []
        rules = cast("Mapping[type, Sequence[Rule]]", self.rules)
        return [rule for base in reversed(model.__mro__) for rule in rules.get(base, ())]


class _FactoryDefaults(GenerateJsonSchema):
    """pydantic's generator, but a `default_factory` gives a default too (`BatchSpec()`)."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return cast("Callable[[], Any]", factory)()
        return super().get_default_value(schema)


def model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root` through its fields, by class name (`$defs` keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            known = found.get(annotation.__name__)
            if known is annotation:
                return
            if known is not None:
                raise SchemaError(f"two models are named {annotation.__name__}")
            found[annotation.__name__] = annotation
            for info in annotation.model_fields.values():
                visit(info.annotation)
            return
        for argument in get_args(annotation):
            visit(argument)

    visit(root)
    return found


def validators_of(model: type[BaseModel]) -> list[str]:
    """The model's own and inherited validators, as `DefiningClass._method`, sorted."""
    decorators = model.__pydantic_decorators__
    names = [*decorators.model_validators, *decorators.field_validators]
    qualified = set()
    for name in names:
        owner = next(base for base in model.__mro__ if name in vars(base))
        qualified.add(f"{owner.__name__}.{name}")
    return sorted(qualified)


@cache
def attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """The `#:` comments above the model's fields (its own and inherited), by wire name."""
    docs: dict[str, str] = {}
    for base in reversed(model.__mro__):
        if not issubclass(base, BaseModel) or base is BaseModel:
            continue
        try:
            lines, _ = inspect.getsourcelines(base)
        except (OSError, TypeError):  # pragma: no cover - models always have their source here
            continue
        tree = ast.parse(textwrap.dedent("".join(lines)))
        body = cast("ast.ClassDef", tree.body[0]).body
        for statement in body:
            if not (isinstance(statement, ast.AnnAssign)
                    and isinstance(statement.target, ast.Name)):
                continue
            name = statement.target.id
            if name not in model.model_fields:
                continue
            comment: list[str] = []
            number = statement.lineno - 2  # the line above, 0-based
            while number >= 0 and lines[number].strip().startswith("#:"):
                comment.insert(0, lines[number].strip().removeprefix("#:").strip())
                number -= 1
            if comment:
                info = model.model_fields[name]
                docs[info.alias or name] = " ".join(comment)
    return docs


def _clean(text: str) -> str:
    """A docstring as paragraphs, each on one line (YAML and Markdown wrap them anew)."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(part.split()) for part in paragraphs if part.strip())


def apply_defaults(value: Any, schema: Json) -> Any:
    """`value` with `schema`'s defaults filled in, as the API server does before validating.

    An absent property with a `default` gets a copy of it, and the copy is defaulted in turn,
    so `default: {}` on an object fills in the object's own defaults.
    """
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties is not None:
            filled = dict(value)
            for name, sub in properties.items():
                if name not in filled and "default" in sub:
                    filled[name] = copy.deepcopy(sub["default"])
            return {name: apply_defaults(item, properties[name]) if name in properties else item
                    for name, item in filled.items()}
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            return {name: apply_defaults(item, values) for name, item in value.items()}
        return value
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def _without_nulls(value: Any) -> Any:
    """A dumped default without its `None`s: an optional field left out is absent."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _without_empties(value: Any) -> Any:
    """`value` without `None`s, empty lists and empty maps, which all mean "not given"."""
    if isinstance(value, dict):
        kept = {key: _without_empties(item) for key, item in value.items()}
        return {key: item for key, item in kept.items() if item not in (None, [], {})}
    if isinstance(value, list):
        return [_without_empties(item) for item in value]
    return value


def _ordered(node: Json) -> Json:
    unknown = set(node) - set(_KEY_ORDER)
    if unknown:  # pragma: no cover - a programming error in this module
        raise SchemaError(f"no place in the key order for {sorted(unknown)}")
    return {key: node[key] for key in _KEY_ORDER if key in node}


class _Converter:
    def __init__(self, model: type[BaseModel], profile: Profile) -> None:
        raw = model.model_json_schema(by_alias=True, mode="validation",
                                      schema_generator=_FactoryDefaults)
        self.defs: dict[str, Json] = raw.pop("$defs", {})
        self.root = raw
        self.profile = profile
        self.models = model_classes(model)
        self.root_name = model.__name__

    def convert(self) -> Json:
        return self._node(self.root, self.root_name, "")

    def _resolve(self, node: Json, path: str) -> tuple[Json, str | None]:
        """Inline `$ref`s and drop the `null` of optional fields; the field's keys win."""
        node = dict(node)
        name: str | None = None
        while True:
            if "$ref" in node:
                name = node.pop("$ref").rsplit("/", 1)[-1]
                target = dict(self.defs[name])
                narrowing = self.profile.narrowing(self.models.get(name))
                if narrowing is not None and narrowing.description is not None:
                    target["description"] = narrowing.description
                node = {**target, **node}
            elif "anyOf" in node or "allOf" in node:
                options = [option for option in node.pop("anyOf", None) or node.pop("allOf")
                           if option != {"type": "null"}]
                if len(options) != 1:
                    raise SchemaError(f"{path or '<root>'}: a union of {len(options)} types has "
                                      "no structural schema; use one type (None is absence)")
                if "default" in node and node["default"] is None:
                    del node["default"]
                node = {**options[0], **node}
            else:
                return node, name

    def _node(self, node: Json, model_name: str | None, path: str) -> Json:
        node, resolved = self._resolve(node, path)
        model_name = resolved or model_name
        unknown = set(node) - _KNOWN
        if unknown:
            raise SchemaError(f"{path or '<root>'}: cannot say {sorted(unknown)} in a "
                              "structural schema")
        if "const" in node:
            node["enum"] = [node.pop("const")]
        out: Json = {"type": node.get("type") or _type_of_enum(node.get("enum"), path)}
        if node.get("description"):
            out["description"] = _clean(node["description"])
        if "enum" in node:
            out["enum"] = list(node["enum"])
        model = self.models.get(model_name) if model_name is not None else None
        shape = {"object": lambda: self._object(node, model, out, path),
                 "array": lambda: self._array(node, out, path),
                 "string": lambda: self._string(node, out, path),
                 "integer": lambda: self._number(node, out, path),
                 "number": lambda: self._number(node, out, path),
                 "boolean": lambda: None}.get(out["type"])
        if shape is None:
            raise SchemaError(f"{path}: type {out['type']!r} has no structural schema")
        shape()
        if "default" in node and self.profile.defaults:
            default = self._default(node["default"], out)
            if default is not None:
                out["default"] = default
        return _ordered(out)

    def _object(self, node: Json, model: type[BaseModel] | None, out: Json, path: str) -> None:
        properties: Json | None = node.get("properties")
        extra = node.get("additionalProperties")
        if properties is not None:
            if extra not in (None, False):
                raise SchemaError(f"{path}: both properties and additionalProperties")
            narrowing = self.profile.narrowing(model)
            docs = attribute_docs(model) if model is not None else {}
            converted: Json = {}
            for name, sub in properties.items():
                if narrowing is not None and name not in narrowing.keep:
                    continue
                sub_node = dict(sub)
                if name in docs and "description" not in sub_node:
                    sub_node["description"] = docs[name]
                converted[name] = self._node(sub_node, None, f"{path}.{name}".lstrip("."))
            out["properties"] = converted
            required = [name for name in node.get("required", []) if name in converted]
            if narrowing is not None:
                required += [name for name in narrowing.required if name not in required]
            if required:
                out["required"] = required
            rules = self.profile.rules_for(model)
            if rules:
                out["x-kubernetes-validations"] = [rule.manifest() for rule in rules]
        elif isinstance(extra, dict):
            out["additionalProperties"] = self._node(extra, None, f"{path}.*")
        else:
            raise SchemaError(f"{path}: an object with no properties needs a value type "
                              "(dict[str, X]); free-form objects are not for custom resources")

    def _array(self, node: Json, out: Json, path: str) -> None:
        items, item_model = self._resolve(node["items"], path)
        out["items"] = self._node(items, item_model, f"{path}[]")
        for key in ("minItems", "maxItems"):
            if key in node:
                out[key] = node[key]
        model = self.models.get(item_model) if item_model is not None else None
        keys = self.profile.list_map_keys.get(model) if model is not None else None
        if keys is not None:
            missing = [key for key in keys if key not in out["items"].get("required", [])]
            if missing:
                raise SchemaError(f"{path}: list-map keys {missing} must be required")
            out["x-kubernetes-list-type"] = "map"
            out["x-kubernetes-list-map-keys"] = list(keys)

    @staticmethod
    def _string(node: Json, out: Json, path: str) -> None:
        for key in ("minLength", "maxLength"):
            if key in node:
                out[key] = node[key]
        pattern = node.get("pattern")
        if pattern is not None:
            if _NOT_RE2.search(pattern):
                raise SchemaError(f"{path}: pattern {pattern!r} is not RE2 (no lookarounds, "
                                  "backreferences or possessive quantifiers)")
            out["pattern"] = pattern

    @staticmethod
    def _number(node: Json, out: Json, path: str) -> None:
        for key in ("minimum", "maximum"):
            if key in node:
                out[key] = node[key]
        # JSON Schema 2020-12 says `exclusiveMinimum: 0`; OpenAPI v3.0 says
        # `minimum: 0, exclusiveMinimum: true`.
        for bound, exclusive in (("minimum", "exclusiveMinimum"),
                                 ("maximum", "exclusiveMaximum")):
            if exclusive in node:
                if bound in node:
                    raise SchemaError(f"{path}: both {bound} and {exclusive}; keep one")
                out[bound] = node[exclusive]
                out[exclusive] = True

    @staticmethod
    def _default(value: Any, out: Json) -> Any:
        value = _without_nulls(value)
        if value in ([], {}):
            return None  # an empty list or map says nothing an absent one does not
        if out["type"] == "object" and "properties" in out and isinstance(value, dict) \
                and _without_empties(value) == _without_empties(apply_defaults({}, out)):
            return {}  # the properties' own defaults fill in the rest
        return value


def _type_of_enum(values: list[Any] | None, path: str) -> str:
    if not values:
        raise SchemaError(f"{path}: no type")
    kinds = {type(value) for value in values}
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if len(kinds) != 1 or next(iter(kinds)) not in names:
        raise SchemaError(f"{path}: an enum of mixed or unknown types")
    return names[next(iter(kinds))]


def structural(model: type[BaseModel], profile: Profile) -> Json:
    """The structural OpenAPI v3 schema of `model` (by wire names), as `profile` narrows it."""
    return _Converter(model, profile).convert()
