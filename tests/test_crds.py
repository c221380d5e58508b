"""The CRDs in crds/: generated from the models, structural, faithful to the models, valid.

Covers `sealtrail.crd.generate` and `sealtrail.crd.schema`:

- the committed `crds/*.yaml` and `docs/crd-reference.md` are what the generator makes now;
- each schema is structural as the API server demands (typed nodes, nothing but the keywords a
  CRD allows, list-map keys required, defaults that validate, RE2 patterns, cheap CEL);
- faithfulness: a table of valid and invalid specs, and hypothesis-generated ones, get the same
  verdict from the pydantic model (`model_validate_json(strict=True)`, JSON being what a CR is)
  and from the CRD schema, checked with `jsonschema` the way the API server checks it (nulls
  pruned, defaults filled in, unknown fields refused as `kubectl apply` does by default). The
  CEL rules are evaluated with `celpy` when cel-python is installed; without it, a case that
  only a rule refuses is checked to pass the schema and to have that rule, and evaluating the
  rules is left to the real API server (below);
- every model validator is expressed by the schema or a rule;
- kubernetes-validate accepts the manifests for Kubernetes 1.37, the real kubectl reads them,
  and every printer column points at a field the schema has;
- the real kube-apiserver, with the CRDs the chart installs, gives every table case, every
  example and hypothesis-generated specs the model's verdict (server-side dry runs: its
  OpenAPI validation, defaulting and CEL rules), and its defaults read back as the model's.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ValidationError

from sealtrail.api.export import ExportSpec
from sealtrail.api.resources import (
    AuditExportSpec,
    AuditExportStatus,
    AuditPolicySpec,
    AuditPolicyStatus,
    Condition,
)
from sealtrail.crd import generate as crdgen
from sealtrail.crd.schema import (
    Json,
    SchemaError,
    apply_defaults,
    model_classes,
    structural,
    validators_of,
)

from .control_plane import ControlPlane

try:
    import celpy
except ImportError:  # cel-python is not a dependency yet; see the module docstring
    celpy = None

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
MANIFESTS = {crd.kind: crdgen.crd_manifest(crd) for crd in crdgen.CRDS}
MODELS: dict[str, type[BaseModel]] = {"AuditExport": AuditExportSpec,
                                      "AuditPolicy": AuditPolicySpec}
FIX = f"regenerate with `.venv/bin/{crdgen.COMMAND}`"


def root_schema(kind: str) -> Json:
    return MANIFESTS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: Json, path: str = "") -> Iterator[tuple[str, Json]]:
    """Every schema node, with its path (`spec.routes[].exports`)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}".lstrip("."))
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


# --- The API server's view, emulated -----------------------------------------------------------


def to_json_schema(node: Json) -> Json:
    """An OpenAPI v3.0 CRD schema as JSON Schema 2020-12, validating as the API server does.

    Boolean `exclusiveMinimum` becomes numeric; objects with properties refuse other fields
    (`kubectl apply` asks for strict field validation by default); `$` ends the string, as in
    RE2, not before a trailing newline as in Python.
    """
    out: Json = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
            out["additionalProperties"] = False
        elif key in ("items", "additionalProperties"):
            out[key] = to_json_schema(value)
        elif key == "pattern":
            out[key] = re.sub(r"(?<!\\)\$$", r"\\Z", value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value:
                out[key] = node[bound]
        elif key in ("minimum", "maximum"):
            exclusive = "exclusiveMinimum" if key == "minimum" else "exclusiveMaximum"
            if not node.get(exclusive):
                out[key] = value
        else:
            out[key] = value
    return out


# Integers are JSON integers: 5.0 is not one (pydantic's strict mode agrees).
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


@functools.cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    return _Validator(to_json_schema(root_schema(kind)))


def prune_nulls(value: Any) -> Any:
    """The API server drops `null`s of fields that are not `nullable` before defaulting."""
    if isinstance(value, dict):
        return {key: prune_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [prune_nulls(item) for item in value]
    return value


@dataclass(frozen=True)
class _Quantity:
    """A value of the API server's CEL quantity library (`quantity('1Gi')`), for celpy."""

    value: Any


def _quantity_library() -> dict[str, Callable[..., Any]]:
    """The API server's CEL quantity library, as much as the rules use.

    `quantity(text)` and `q.compareTo(other)`, exact, through the kubernetes client's own
    `parse_quantity` (not the models' parser, so the two are checked against each other).
    """

    def quantity(text: Any) -> _Quantity:
        return _Quantity(parse_quantity(str(text)))

    def compare_to(left: _Quantity, right: _Quantity) -> Any:
        return celpy.celtypes.IntType((left.value > right.value) - (left.value < right.value))

    return {"quantity": quantity, "compareTo": compare_to}


def _cel_programs() -> dict[str, Any]:
    """Every rule, compiled once up front (celpy raises the recursion limit as it starts)."""
    if celpy is None:
        return {}
    environment = celpy.Environment()
    return {rule["rule"]: environment.program(environment.compile(rule["rule"]),
                                              functions=_quantity_library())
            for kind in MANIFESTS for _, node in walk(root_schema(kind))
            for rule in node.get("x-kubernetes-validations", ())}


CEL_PROGRAMS = _cel_programs()


def cel_failures(value: Any, node: Json, path: str = "") -> list[str]:
    """The messages of the rules `value` breaks, evaluated where the API server would."""
    failures = []
    for rule in node.get("x-kubernetes-validations", ()):
        try:
            holds = bool(CEL_PROGRAMS[rule["rule"]].evaluate({"self": celpy.json_to_cel(value)}))
        except Exception as error:  # an evaluation error refuses the object too
            failures.append(f"{path}: {rule['message']} (evaluation error: {error})")
            continue
        if not holds:
            failures.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for name, item in value.items():
            sub = node.get("properties", {}).get(name)
            if sub is None and isinstance(node.get("additionalProperties"), dict):
                sub = node["additionalProperties"]
            if sub is not None:
                failures += cel_failures(item, sub, f"{path}.{name}".lstrip("."))
    elif isinstance(value, list) and "items" in node:
        for number, item in enumerate(value):
            failures += cel_failures(item, node["items"], f"{path}[{number}]")
    return failures


def as_resource(kind: str, spec: Any, name: str = "audit-1") -> Json:
    return {"apiVersion": "sealtrail.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name}, "spec": spec}


def schema_errors(kind: str, spec: Any, *, name: str = "audit-1", cel: bool = True) -> list[str]:
    """What the API server says: schema errors, then (with celpy) broken rules."""
    resource = apply_defaults(prune_nulls(as_resource(kind, spec, name)), root_schema(kind))
    errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator(kind).iter_errors(resource)]
    if cel and celpy is not None and not errors:
        errors += cel_failures(resource, root_schema(kind))
    return errors


def model_errors(kind: str, spec: Any) -> list[str]:
    """What the model says, reading the spec as JSON (as a custom resource is)."""
    try:
        MODELS[kind].model_validate_json(json.dumps(spec), strict=True)
    except ValidationError as error:
        return [f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()]
    return []


# --- Generated files ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(crdgen.outputs()))
def test_committed_file_is_what_the_models_generate(path: str) -> None:
    committed = ROOT / path
    assert committed.is_file(), f"{path} is missing: {FIX}"
    assert committed.read_text(encoding="utf-8") == crdgen.outputs()[path], \
        f"{path} is out of date with the models: {FIX}"


def test_generation_is_deterministic() -> None:
    assert crdgen.outputs() == crdgen.outputs()
    for name, text in crdgen.render_crds().items():
        assert text.startswith("# Generated by `python -m sealtrail.crd.generate --write`"), name


def test_check_names_the_stale_file_and_write_fixes_it(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "crds").mkdir()
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    stale = tmp_path / "crds" / "sealtrail.dev_auditpolicies.yaml"
    stale.write_text(stale.read_text() + "# edited\n")
    capsys.readouterr()
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "crds/sealtrail.dev_auditpolicies.yaml is out of date: "
        f"run `{crdgen.COMMAND}`\n")
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert crdgen.stale(tmp_path) == []


def test_main_refuses_a_folder_that_is_not_the_repository(tmp_path: Path) -> None:
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


def test_the_reference_lists_every_field_and_rule() -> None:
    reference = crdgen.render_reference()
    for kind in MANIFESTS:
        for part in ("spec", "status"):
            for path, node in walk(root_schema(kind)["properties"][part], part):
                if path.endswith(("[]", ".*")) and not node.get("x-kubernetes-validations"):
                    continue  # a list's or map's items are described in its own row
                assert f"| `{path}` |" in reference, f"{kind} {path} is not in the reference"
                for rule in node.get("x-kubernetes-validations", ()):
                    assert rule["message"] in reference


def test_the_reference_tables_are_well_formed() -> None:
    """Each row has as many cells as its header: every `|` in a cell is escaped."""
    columns = 0
    for line in crdgen.render_reference().splitlines():
        if not line.startswith("|"):
            columns = 0
            continue
        cells = len(re.findall(r"(?<!\\)\|", line)) - 1
        columns = columns or cells
        assert cells == columns, line


# --- Structural ---------------------------------------------------------------------------------

#: The JSONSchemaProps keys this generator may write (the apiextensions.k8s.io/v1 subset).
ALLOWED = {
    "description", "type", "format", "enum", "default", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems",
    "maxItems", "items", "properties", "additionalProperties", "required",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_schema_is_structural(kind: str) -> None:
    root = root_schema(kind)
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["required"] == ["spec"]
    metadata = root["properties"]["metadata"]
    assert metadata["type"] == "object"
    assert set(metadata.get("properties", {})) <= {"name", "generateName"}, \
        "a CRD may restrict only metadata.name and metadata.generateName"
    for path, node in walk(root):
        where = path or "<root>"
        assert node.get("type") in {"object", "array", "string", "integer", "number",
                                    "boolean"}, f"{where}: every node needs a type"
        assert set(node) <= ALLOWED, f"{where}: {sorted(set(node) - ALLOWED)}"
        assert not ("properties" in node and "additionalProperties" in node), where
        if node["type"] == "object" and where != "metadata":
            assert "properties" in node or isinstance(node.get("additionalProperties"), dict), \
                f"{where}: a free-form object would need x-kubernetes-preserve-unknown-fields"
        if node["type"] == "array":
            assert isinstance(node["items"], dict), where
        assert set(node.get("required", ())) <= set(node.get("properties", {})), where
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, False), bool), f"{where}: OpenAPI v3.0 {key}"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", ())), where
        if "enum" in node:
            assert len(node["enum"]) == len(set(node["enum"])), where


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_defaults_validate_where_they_stand(kind: str) -> None:
    """The API server refuses a CRD whose defaults do not validate (after pruning)."""
    for path, node in walk(root_schema(kind)):
        if "default" in node:
            value = apply_defaults(copy.deepcopy(node["default"]), node)
            errors = [error.message for error in _Validator(to_json_schema(node))
                      .iter_errors(value)]
            assert not errors, f"{path}: default {node['default']!r}: {errors}"
    assert "default" not in json.dumps(root_schema(kind)["properties"]["status"]), \
        "status publishes no defaults: the operator writes it whole"


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_patterns_are_re2(kind: str) -> None:
    try:
        import re2  # noqa: PLC0415 - google-re2 comes with cel-python, when installed
    except ImportError:
        re2 = None
    for path, node in walk(root_schema(kind)):
        if "pattern" in node:
            assert not re.search(r"\(\?[=!<]|\\[1-9]", node["pattern"]), path
            re.compile(node["pattern"])
            if re2 is not None:
                re2.compile(node["pattern"])


def _rules(kind: str) -> Iterator[tuple[str, Json, Json, bool]]:
    """Each rule, the node it stands on, and whether that node is an item of a list."""
    def visit(node: Json, path: str, in_list: bool) -> Iterator[tuple[str, Json, Json, bool]]:
        for rule in node.get("x-kubernetes-validations", ()):
            yield path, node, rule, in_list
        for name, sub in node.get("properties", {}).items():
            yield from visit(sub, f"{path}.{name}", in_list)
        if "items" in node:
            yield from visit(node["items"], f"{path}[]", in_list or "maxItems" not in node)

    yield from visit(root_schema(kind), "", in_list=False)


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_rules_name_fields_that_exist_and_stay_cheap(kind: str) -> None:
    for path, node, rule, unbounded in _rules(kind):
        assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, path
        assert rule["message"], path
        assert not rule["message"].endswith("."), path
        fields = set(re.findall(r"self\.(\w+)", rule["rule"]))
        assert fields <= set(node["properties"]), f"{path}: {rule['rule']}"
        if "fieldPath" in rule:
            assert rule["fieldPath"].lstrip(".") in node["properties"], path
        if "reason" in rule:
            assert rule["reason"] in {"FieldValueInvalid", "FieldValueRequired",
                                      "FieldValueForbidden", "FieldValueDuplicate"}
        if unbounded:
            # The API server multiplies a rule's cost by the most items a 3 MB request could
            # hold; under an unbounded list, a rule must cost a few operations, not a loop.
            assert not re.search(r"\.(all|exists|exists_one|map|filter)\(|\[|matches\(",
                                 rule["rule"]), f"{path}: {rule['rule']}"


# --- Every validator is expressed ---------------------------------------------------------------


def test_every_model_validator_is_a_schema_constraint_or_a_rule() -> None:
    expressed = {rule.stands_for for rules in crdgen.RULES.values() for rule in rules}
    expressed |= {name for narrowing in crdgen.NARROWINGS.values()
                  for name in narrowing.stands_for}
    validators: set[str] = set()
    for crd in crdgen.CRDS:
        for model in [*model_classes(crd.spec_model).values(),
                      *model_classes(crd.status_model).values()]:
            validators.update(validators_of(model))
    assert validators - expressed == set(), "say how the CRD schema expresses these"
    assert expressed - validators == set(), "these validators are gone from the models"


def test_narrowings_keep_fields_the_models_have() -> None:
    for model, narrowing in crdgen.NARROWINGS.items():
        aliases = [info.alias or name for name, info in model.model_fields.items()]
        assert set(narrowing.keep) | set(narrowing.required) <= set(aliases), model.__name__


def test_the_converter_refuses_what_a_structural_schema_cannot_say() -> None:
    class Free(BaseModel):
        anything: dict[str, Any]

    class Either(BaseModel):
        value: int | str

    for model in (Free, Either):
        with pytest.raises(SchemaError, match=r"free-form|union"):
            structural(model, crdgen.SPEC_PROFILE)


# --- Faithfulness: the same verdict as the models ------------------------------------------------

SECRET = {"secretKeyRef": {"name": "siem-creds", "key": "token"}}
WEBHOOK = {"webhook": {"url": "https://siem.example/hook", "secret": SECRET}}
SPLUNK = {"splunk": {"hecUrl": "https://splunk:8088", "token": SECRET}}
ROUTES = {"routes": [{"exports": ["splunk-main"]}]}

#: (kind, spec, rule message or None): None when a schema keyword refuses it (or nothing does),
#: the message when only a CEL rule can.
EXPORT_CASES: list[tuple[str, Json, str | None, bool]] = [
    # (id, spec, expected message of the refusing rule, valid)
    ("webhook", WEBHOOK, None, True),
    ("url-with-credentials", {"splunk": {**SPLUNK["splunk"], "hecUrl": "https://u:p@splunk"}},
     None, False),
    ("url-at-in-path", {"splunk": {**SPLUNK["splunk"], "hecUrl": "https://splunk/a@b"}},
     None, True),
    ("splunk-full", {"splunk": {**SPLUNK["splunk"], "index": "audit", "sourcetype": "x:y",
                                "indexerAck": True, "ackTimeoutSeconds": 0.5,
                                "ackPollMs": 10}, "paused": True}, None, True),
    ("elastic-api-key", {"elastic": {"url": "http://es:9200", "dataStream": True,
                                     "pipeline": "ts", "auth": {"apiKey": SECRET}}}, None, True),
    ("elastic-basic", {"elastic": {"url": "https://es", "auth": {
        "basic": {"username": "u", "password": SECRET}}}}, None, True),
    ("elastic-no-auth", {"elastic": {"url": "https://es/prefix"}}, None, True),
    ("datadog", {"datadog": {"apiKey": SECRET, "site": "datadoghq.eu", "tags": ["a:b"]}},
     None, True),
    ("syslog-udp", {"syslog": {"host": "rsyslog", "port": 514, "transport": "udp",
                               "facility": 23, "appName": "x", "hostname": "h"}}, None, True),
    ("cloudwatch", {"cloudwatch": {"logGroup": "/audit/prod", "region": "eu-west-1",
                                   "endpointUrl": "http://127.0.0.1:5000"}}, None, True),
    ("batch-equal", {**WEBHOOK, "batch": {"intervalMs": 5000, "maxIntervalMs": 5000}},
     None, True),
    ("retry-bounds", {**WEBHOOK, "retry": {"requestTimeoutSeconds": 600,
                                           "initialBackoffMs": 600_000,
                                           "maxBackoffMs": 600_000}}, None, True),
    ("retry-disordered", {**WEBHOOK, "retry": {"initialBackoffMs": 60_000}},
     "maxBackoffMs must be at least initialBackoffMs", False),
    ("tls-secret", {**WEBHOOK, "tls": {"secretName": "siem-ca", "insecureSkipVerify": True}},
     None, True),
    ("proxy", {**WEBHOOK, "proxyUrl": "http://proxy.internal:3128/"}, None, True),
    ("null-backend-is-absent", {**WEBHOOK, "splunk": None}, None, True),
    ("no-backend", {"paused": True}, "give exactly one backend block", False),
    ("two-backends", {**WEBHOOK, **SPLUNK}, "give exactly one backend block", False),
    ("credential-env", {"webhook": {**WEBHOOK["webhook"], "secret": {"env": "TOKEN"}}},
     None, False),
    ("credential-file-and-ref", {"webhook": {**WEBHOOK["webhook"],
                                             "secret": {**SECRET, "file": "/x"}}}, None, False),
    ("credential-empty", {"webhook": {**WEBHOOK["webhook"], "secret": {}}}, None, False),
    ("secret-name", {"webhook": {**WEBHOOK["webhook"], "secret": {
        "secretKeyRef": {"name": "Siem_Creds", "key": "token"}}}}, None, False),
    ("secret-key", {"webhook": {**WEBHOOK["webhook"], "secret": {
        "secretKeyRef": {"name": "siem", "key": "a/b"}}}}, None, False),
    ("tls-files", {**WEBHOOK, "tls": {"caFile": "/etc/ca.crt"}}, None, False),
    ("elastic-auth-none", {"elastic": {"url": "https://es", "auth": {}}},
     "give exactly one of apiKey, basic or bearer", False),
    ("elastic-auth-two", {"elastic": {"url": "https://es", "auth": {
        "apiKey": SECRET, "bearer": SECRET}}}, "give exactly one of apiKey, basic or bearer", False),
    ("batch-disordered", {**WEBHOOK, "batch": {"intervalMs": 5000, "maxIntervalMs": 4999}},
     "maxIntervalMs must be at least intervalMs", False),
    ("batch-beyond-default-max", {**WEBHOOK, "batch": {"intervalMs": 60_000}},
     "maxIntervalMs must be at least intervalMs", False),
    ("url-scheme", {"webhook": {**WEBHOOK["webhook"], "url": "ftp://siem"}}, None, False),
    ("url-no-host", {"splunk": {**SPLUNK["splunk"], "hecUrl": "https://"}}, None, False),
    ("url-space", {"elastic": {"url": "https://es host"}}, None, False),
    ("proxy-path", {**WEBHOOK, "proxyUrl": "http://proxy:3128/path"}, None, False),
    ("port-zero", {"syslog": {"host": "h", "port": 0}}, None, False),
    ("port-high", {"syslog": {"host": "h", "port": 65536}}, None, False),
    ("transport", {"syslog": {"host": "h", "port": 6514, "transport": "tcp+tls"}}, None, False),
    ("app-name-empty", {"syslog": {"host": "h", "port": 1, "appName": ""}}, None, False),
    ("app-name-space", {"syslog": {"host": "h", "port": 1, "appName": "a b"}}, None, False),
    ("facility", {"syslog": {"host": "h", "port": 1, "facility": 24}}, None, False),
    ("timeout-zero", {**WEBHOOK, "retry": {"requestTimeoutSeconds": 0}}, None, False),
    ("timeout-high", {**WEBHOOK, "retry": {"requestTimeoutSeconds": 600.5}}, None, False),
    ("site", {"datadog": {"apiKey": SECRET, "site": "datadoghq.de"}}, None, False),
    ("log-group", {"cloudwatch": {"logGroup": "a b"}}, None, False),
    ("elastic-index-template", {"elastic": {"url": "https://es",
                                            "index": "Audit Logs ${tenant:id}"}},
     "index: must render a legal Elasticsearch index name", False),
    ("elastic-index-reserved", {"elastic": {"url": "https://es", "index": ".."}},
     "index: must render a legal Elasticsearch index name", False),
    ("splunk-index-template", {"splunk": {**SPLUNK["splunk"], "index": "${tenant:id}"}},
     "index: must render a legal Splunk index", False),
    ("splunk-index-variable", {"splunk": {**SPLUNK["splunk"], "index": "a_${tenant}"}},
     "index: a template may use no variable but", False),
    ("cloudwatch-stream-template", {"cloudwatch": {"logGroup": "/a",
                                                   "logStream": "a:${tenant:id}"}},
     "logStream: must render a legal CloudWatch log stream name", False),
    ("cloudwatch-stream-legal", {"cloudwatch": {"logGroup": "/a",
                                                "logStream": "Audit/${event:type}"}},
     None, True),
    ("missing-required", {"splunk": {"hecUrl": "https://s"}}, None, False),
    ("unknown-field", {**WEBHOOK, "retries": 3}, None, False),
    ("string-for-bool", {**WEBHOOK, "paused": "true"}, None, False),
    ("string-for-int", {"syslog": {"host": "h", "port": "514"}}, None, False),
    ("max-events", {**WEBHOOK, "batch": {"maxEvents": 0}}, None, False),
    ("max-bytes", {**WEBHOOK, "batch": {"maxBytes": 100 * 1024 * 1024 + 1}}, None, False),
]

POLICY_CASES: list[tuple[str, Json, str | None, bool]] = [
    ("minimal", ROUTES, None, True),
    ("full", {
        "mode": "collector",
        "selector": {"matchLabels": {"app": "payments"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["api", "worker"]},
            {"key": "audit.sealtrail.dev/skip", "operator": "DoesNotExist"},
            {"key": "team", "operator": "NotIn", "values": ["x"]},
            {"key": "env", "operator": "Exists", "values": []}]},
        "routes": [{"tenants": ["acme-*"], "eventTypes": ["safety.*"], "minSeverity": "HIGH",
                    "exports": ["splunk-main", "es"], "index": "audit_${tenant:id}",
                    "sourcetype": "sealtrail:high"}, {"exports": ["es"]}],
        "defaultTenant": "_system",
        "checkpoints": {"signingKey": SECRET, "everyRows": 1, "everySeconds": 0.5},
        "worker": {"image": "sealtrail:1", "port": 1024, "adminPort": 65535, "processes": 32,
                   "synchronous": "NORMAL", "storeSize": "2Gi", "cpuRequest": "0.5",
                   "memoryRequest": "1.5Gi", "memoryLimit": "2G", "drainTimeoutSeconds": 0,
                   "backpressure": {"highWatermarkRows": 1, "lowWatermarkRows": 0,
                                    "mode": "block", "blockTimeoutSeconds": 3600}},
        "collector": {"replicas": 20, "storageSize": "1Ti", "storageClassName": "fast.ssd",
                      "ingestToken": SECRET},
    }, None, True),
    ("namespace-tenant", {**ROUTES, "defaultTenant": "${namespace}"}, None, True),
    ("no-routes", {"mode": "sidecar"}, None, False),
    ("empty-routes", {"routes": []}, None, False),
    ("too-many-routes", {"routes": [{"exports": ["a"]}] * 65}, None, False),
    ("route-to-nowhere", {"routes": [{"exports": []}]}, None, True),
    ("route-without-exports", {"routes": [{"tenants": ["*"]}]}, None, False),
    ("route-to-too-many", {"routes": [{"exports": [f"e{n}" for n in range(33)]}]}, None, False),
    ("route-no-tenants", {"routes": [{"exports": ["a"], "tenants": []}]}, None, False),
    ("severity", {"routes": [{"exports": ["a"], "minSeverity": "SEVERE"}]}, None, False),
    ("sourcetype-empty", {"routes": [{"exports": ["a"], "sourcetype": ""}]}, None, False),
    ("route-index-no-backend", {"routes": [{"exports": ["a"], "index": "a:b*"}]},
     "index: must render a name some backend takes", False),
    ("route-index-variable", {"routes": [{"exports": ["a"], "index": "${x}"}]},
     "index: a template may use no variable but", False),
    ("route-index-some-backend", {"routes": [{"exports": ["a"], "index": "Audit"}]},
     None, True),
    ("mode", {**ROUTES, "mode": "daemonset"}, None, False),
    ("in-without-values", {**ROUTES, "selector": {"matchExpressions": [
        {"key": "tier", "operator": "In"}]}}, "In and NotIn need at least one value", False),
    ("notin-empty-values", {**ROUTES, "selector": {"matchExpressions": [
        {"key": "tier", "operator": "NotIn", "values": []}]}},
     "In and NotIn need at least one value", False),
    ("exists-with-values", {**ROUTES, "selector": {"matchExpressions": [
        {"key": "tier", "operator": "Exists", "values": ["x"]}]}},
     "Exists and DoesNotExist take no values", False),
    ("operator", {**ROUTES, "selector": {"matchExpressions": [
        {"key": "tier", "operator": "Equals", "values": ["x"]}]}}, None, False),
    ("key-empty", {**ROUTES, "selector": {"matchExpressions": [
        {"key": "", "operator": "Exists"}]}}, None, False),
    ("label-value-type", {**ROUTES, "selector": {"matchLabels": {"a": 1}}}, None, False),
    ("watermarks-equal", {**ROUTES, "worker": {"backpressure": {
        "highWatermarkRows": 10, "lowWatermarkRows": 10}}},
     "lowWatermarkRows must be below highWatermarkRows", False),
    ("watermark-below-default-low", {**ROUTES, "worker": {"backpressure": {
        "highWatermarkRows": 10}}}, "lowWatermarkRows must be below highWatermarkRows", False),
    ("tenant", {**ROUTES, "defaultTenant": "bad tenant"}, None, False),
    ("signing-key-file", {**ROUTES, "checkpoints": {"signingKey": {"file": "/k.pem"}}},
     None, False),
    ("ingest-token-env", {**ROUTES, "collector": {"ingestToken": {"env": "T"}}}, None, False),
    ("worker-port", {**ROUTES, "worker": {"port": 80}}, None, False),
    ("quantity", {**ROUTES, "worker": {"storeSize": "1 GB"}}, None, False),
    ("every-seconds", {**ROUTES, "checkpoints": {"everySeconds": 0}}, None, False),
    ("replicas", {**ROUTES, "collector": {"replicas": 21}}, None, False),
    ("storage-class", {**ROUTES, "collector": {"storageClassName": "Fast"}}, None, False),
    ("synchronous", {**ROUTES, "worker": {"synchronous": "OFF"}}, None, False),
    # Requests above limits: the API server would refuse every pod such a worker joins.
    ("limits-settable", {**ROUTES, "worker": {
        "cpuRequest": "2", "cpuLimit": "2", "memoryRequest": "1Gi", "memoryLimit": "1Gi",
        "ephemeralStorageRequest": "128Mi", "ephemeralStorageLimit": "1Gi",
        "imagePullSecrets": ["registry-creds", "mirror.example"]}}, None, True),
    ("memory-request-above-default-limit", {**ROUTES, "worker": {"memoryRequest": "512Mi"}},
     "memoryRequest must not be above memoryLimit", False),
    ("cpu-request-above-limit", {**ROUTES, "worker": {"cpuRequest": "1500m",
                                                      "cpuLimit": "1.2"}},
     "cpuRequest must not be above cpuLimit", False),
    ("ephemeral-request-above-default-limit", {**ROUTES, "worker": {
        "ephemeralStorageRequest": "1Gi"}},
     "ephemeralStorageRequest must not be above ephemeralStorageLimit", False),
    ("quantities-compared-by-value", {**ROUTES, "worker": {"memoryRequest": "1G",
                                                           "memoryLimit": "1Gi"}}, None, True),
    ("quantities-compared-by-value-not-text", {**ROUTES, "worker": {
        "memoryRequest": "1Gi", "memoryLimit": "1G"}},
     "memoryRequest must not be above memoryLimit", False),
    ("ports-equal", {**ROUTES, "worker": {"port": 8471}}, "port and adminPort must differ",
     False),
    ("ports-equal-both-set", {**ROUTES, "worker": {"port": 9000, "adminPort": 9000}},
     "port and adminPort must differ", False),
    ("pull-secret-name", {**ROUTES, "worker": {"imagePullSecrets": ["Registry_Creds"]}},
     None, False),
]

CASES = [pytest.param("AuditExport", spec, rule, valid, id=f"export-{name}")
         for name, spec, rule, valid in EXPORT_CASES]
CASES += [pytest.param("AuditPolicy", spec, rule, valid, id=f"policy-{name}")
          for name, spec, rule, valid in POLICY_CASES]


@pytest.mark.parametrize(("kind", "spec", "rule", "valid"), CASES)
def test_schema_and_model_agree(kind: str, spec: Json, rule: str | None, valid: bool) -> None:
    from_model = model_errors(kind, spec)
    assert (not from_model) == valid, from_model
    structure = schema_errors(kind, spec, cel=False)
    if rule is None:
        # A schema keyword refuses it (or, for a valid spec, nothing does).
        assert (not structure) == valid, structure
    else:
        assert structure == [], f"only the rule should refuse this: {structure}"
        messages = [entry["message"] for _, _, entry, _ in _rules(kind)]
        assert any(message.startswith(rule) for message in messages)
    if celpy is not None:
        full = schema_errors(kind, spec)
        assert (not full) == valid, full
        if rule is not None:
            assert any(rule in failure for failure in full), full


@pytest.mark.parametrize(("kind", "spec", "rule", "valid"),
                         [case for case in CASES if case.values[3]])
def test_published_defaults_are_the_models_defaults(kind: str, spec: Json, rule: str | None,
                                                    valid: bool) -> None:
    """What the API server stores (defaults filled in) reads back as the same model."""
    stored = apply_defaults(prune_nulls(spec), root_schema(kind)["properties"]["spec"])
    model = MODELS[kind]
    assert model.model_validate(stored) == model.model_validate(prune_nulls(spec))


def test_the_schema_is_stricter_only_in_spelling() -> None:
    """Pydantic also takes snake_case names (`populate_by_name`); a custom resource does not."""
    spec = {"splunk": {"hec_url": "https://splunk", "token": SECRET}}
    assert model_errors("AuditExport", spec) == []
    assert any("hec_url" in error for error in schema_errors("AuditExport", spec))


@pytest.mark.parametrize(("name", "valid"), [
    ("splunk-main", True), ("a", True), ("x" * 63, True), ("x" * 64, False),
    ("splunk.main", False), ("Splunk", False), ("-splunk", False), ("splunk-", False),
])
def test_an_export_name_is_what_a_worker_config_accepts(name: str, valid: bool) -> None:
    """An AuditExport's name becomes `ExportSpec.name` in the worker config it renders."""
    try:
        ExportSpec.model_validate({"name": name, **WEBHOOK})
        from_model = True
    except ValidationError:
        from_model = False
    assert from_model == valid
    assert (not schema_errors("AuditExport", WEBHOOK, name=name)) == valid


def _example_resources() -> list[Any]:
    found = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind") in MANIFESTS:
                name = f"{path.relative_to(ROOT / 'examples')}:{document['metadata']['name']}"
                found.append(pytest.param(document, id=name))
    return found


@pytest.mark.parametrize("resource", _example_resources())
def test_every_example_resource_is_accepted(resource: Json) -> None:
    """The examples are what users copy: the API server and the model both take them."""
    kind, spec = resource["kind"], resource["spec"]
    assert resource["apiVersion"] == "sealtrail.dev/v1alpha1"
    assert schema_errors(kind, spec, name=resource["metadata"]["name"]) == []
    assert model_errors(kind, spec) == []


# --- Faithfulness, property-style ----------------------------------------------------------------

_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _mutant(node: Json) -> st.SearchStrategy[Any]:
    """A value that is wrong for `node` in one way, or (by chance) right after all."""
    wrong_type = st.sampled_from([None, "x", 7, 1.5, True, [], {}])
    kind = node["type"]
    if kind in ("integer", "number"):
        low, high = node.get("minimum", 0), node.get("maximum", 10**9)
        return st.one_of(wrong_type, st.sampled_from([low - 1, low, high, high + 1, low + 0.5]))
    if kind == "string":
        longest = node.get("maxLength", 8)
        return st.one_of(wrong_type, st.text(_PRINTABLE, max_size=6),
                         st.sampled_from(["", "x" * (longest + 1), "bogus"]))
    if kind == "object":
        return st.one_of(wrong_type, st.just({"unknownField": "x"}), st.just({}))
    return wrong_type


def _valid_number(node: Json) -> st.SearchStrategy[Any]:
    low, high = node.get("minimum", 0), node.get("maximum", node.get("minimum", 0) + 10**6)
    exclusive_low, exclusive_high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if node["type"] == "integer":
        edges = [low + bool(exclusive_low), high - bool(exclusive_high)]
        return st.one_of(st.sampled_from(edges), st.integers(edges[0], edges[1]))
    edges = [edge for edge, open_ in ((low, exclusive_low), (high, exclusive_high)) if not open_]
    floats = st.floats(low, high, exclude_min=bool(exclusive_low),
                       exclude_max=bool(exclusive_high), allow_nan=False)
    return st.one_of(st.sampled_from(edges), floats) if edges else floats


def _valid_string(node: Json) -> st.SearchStrategy[str]:
    if "enum" in node:
        return st.sampled_from(node["enum"])
    low, high = node.get("minLength", 0), node.get("maxLength", 10**6)
    if "pattern" in node:
        matching = st.from_regex(node["pattern"], fullmatch=True, alphabet=_PRINTABLE)
        return matching.filter(lambda text: low <= len(text) <= high)
    return st.text(_PRINTABLE, min_size=low, max_size=min(high, low + 8))


@st.composite
def instances(draw: st.DrawFn, node: Json, depth: int = 0) -> Any:
    """A value for `node`: well-formed, but one node in forty is wrong in some way."""
    # Hypothesis leans to the smallest draw (0), so the rare branches are on the largest.
    if draw(st.integers(0, 39)) == 39:
        return draw(_mutant(node))
    kind = node["type"]
    if kind == "boolean":
        return draw(st.booleans())
    if kind in ("integer", "number"):
        return draw(_valid_number(node))
    if kind == "string":
        return draw(_valid_string(node))
    if kind == "array":
        low = node.get("minItems", 0)
        size = draw(st.integers(low, min(node.get("maxItems", 3), low + 2)))
        return [draw(instances(node["items"], depth + 1)) for _ in range(size)]
    if "additionalProperties" in node:
        keys = draw(st.lists(st.text("abcxyz./-", min_size=1, max_size=5), max_size=2))
        return {key: draw(instances(node["additionalProperties"], depth + 1)) for key in keys}
    # Optional fields one time in four: exactly one of six backend blocks about a third of
    # the time, so valid and invalid specs both come up often.
    return {name: draw(instances(sub, depth + 1)) for name, sub in node["properties"].items()
            if name in node.get("required", ()) or (depth < 5 and draw(st.integers(0, 3)) == 3)}


def _property(kind: str, spec: Any) -> None:
    # The API server drops a `null` before it validates (and fills in the default), so the
    # model's verdict that matters is on what is stored: the spec without its nulls.
    spec_as_stored = prune_nulls(spec)
    from_model = not model_errors(kind, spec_as_stored)
    if celpy is not None:
        from_schema = not schema_errors(kind, spec)
        assert from_model == from_schema, (spec, model_errors(kind, spec_as_stored),
                                           schema_errors(kind, spec))
    else:
        # Without a CEL evaluator: the schema accepts all the model does, and what it refuses
        # the model refuses too; the rules' part is the real API server's to check (below).
        assert not from_model or not schema_errors(kind, spec, cel=False), spec
    if from_model:
        stored = apply_defaults(spec_as_stored, root_schema(kind)["properties"]["spec"])
        assert MODELS[kind].model_validate(stored) == MODELS[kind].model_validate(spec_as_stored)


_SETTINGS = settings(max_examples=250, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_SETTINGS
@given(instances(root_schema("AuditExport")["properties"]["spec"]))
def test_generated_exports_get_the_models_verdict(spec: Any) -> None:
    _property("AuditExport", spec)


@_SETTINGS
@given(instances(root_schema("AuditPolicy")["properties"]["spec"]))
def test_generated_policies_get_the_models_verdict(spec: Any) -> None:
    _property("AuditPolicy", spec)


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_generated_specs_are_a_useful_mix(kind: str) -> None:
    """The strategies above produce valid and invalid specs both, not only one kind."""
    verdicts = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(instances(root_schema(kind)["properties"]["spec"]))
    def collect(spec: Any) -> None:
        verdicts.append(not model_errors(kind, spec))

    collect()
    assert 0.1 < sum(verdicts) / len(verdicts) < 0.9, sum(verdicts) / len(verdicts)


# --- Status -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status"), [
    ("AuditExport", AuditExportStatus()),
    ("AuditExport", AuditExportStatus(
        observed_generation=3, backend="splunk", cursor_lag=12, paused=True,
        pause_reason="NonRetryableFailures", workers=2, workers_unreachable=1,
        last_error="HEC code 6", credential_version="812",
        conditions=[Condition(type="Ready", status="False", reason="Paused",
                              message="5 non-retryable failures",
                              last_transition_time="2026-01-02T03:04:05Z",
                              observed_generation=3)])),
    ("AuditPolicy", AuditPolicyStatus(
        observed_generation=1, config_map="sealtrail-default", matched_exports=["a"],
        unknown_exports=["b"], injected_pods=4, uninjected_pods=["web-1"],
        conditions=[Condition(type="Ready", status="True", reason="Injected",
                              last_transition_time="2026-01-02T03:04:05Z")])),
])
def test_what_the_operator_writes_fits_the_status_schema(kind: str,
                                                         status: BaseModel) -> None:
    for written in (status.model_dump(mode="json", by_alias=True),
                    status.model_dump(mode="json", by_alias=True, exclude_none=True)):
        schema = to_json_schema(root_schema(kind)["properties"]["status"])
        errors = [error.message for error in _Validator(schema).iter_errors(prune_nulls(written))]
        assert errors == []


def test_conditions_are_a_map_keyed_by_type() -> None:
    for kind in MANIFESTS:
        conditions = root_schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert {"type", "status", "reason", "lastTransitionTime"} <= set(
            conditions["items"]["required"])


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_kubernetes_validate_accepts_the_manifest(kind: str) -> None:
    text = (ROOT / "crds" / f"sealtrail.dev_{MANIFESTS[kind]['spec']['names']['plural']}.yaml")
    document = yaml.safe_load(text.read_text())
    kubernetes_validate.validate(document, "1.37.0", strict=True)


def test_kubectl_reads_the_folder() -> None:
    """The real kubectl decodes crds/ (`--local`: `apply --dry-run=client` needs a server)."""
    if not KUBECTL.exists():
        pytest.skip("no kubectl in .tools/bin (scripts/setup.sh installs it)")
    result = subprocess.run(
        [str(KUBECTL), "label", "--local", "--dry-run=client", "-o", "yaml", "-f",
         str(ROOT / "crds"), "sealtrail.dev/read=true"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"HOME": "/nonexistent", "KUBECONFIG": "/dev/null"})
    assert result.returncode == 0, result.stderr
    # kubectl prints the objects one after the other, without `---` between them.
    texts = re.split(r"^(?=apiVersion: )", result.stdout, flags=re.MULTILINE)
    read = {item["spec"]["names"]["kind"]: item
            for item in (yaml.safe_load(text) for text in texts if text.strip())}
    assert set(read) == set(MANIFESTS)
    for kind, item in read.items():
        assert item["metadata"]["labels"].pop("sealtrail.dev/read") == "true"
        assert item == MANIFESTS[kind]


_FILTER = re.compile(r'\[\?\(@\.(\w+)=="[^"]*"\)\]')


def _column_target(root: Json, path: str) -> Json:
    """The schema node a printer column's JSONPath reaches (`.a.b[?(@.c=="x")].d`)."""
    node = root
    for part in re.findall(r'\.\w+|\[\?\(@\.\w+=="[^"]*"\)\]', path):
        if part.startswith("["):
            assert node["type"] == "array", path
            node = node["items"]
            assert _FILTER.fullmatch(part)[1] in node["properties"], path  # type: ignore[index]
        elif node is root["properties"]["metadata"]:
            assert part in (".creationTimestamp", ".name", ".namespace"), path
            return {"type": "string", "format": "date-time"}
        else:
            node = node["properties"][part[1:]]
    assert "".join(re.findall(r'\.\w+|\[\?\(@\.\w+=="[^"]*"\)\]', path)) == path, path
    return node


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_printer_columns_point_at_fields_that_exist(kind: str) -> None:
    version = MANIFESTS[kind]["spec"]["versions"][0]
    names = [column["name"] for column in version["additionalPrinterColumns"]]
    assert len(names) == len(set(names))
    for column in version["additionalPrinterColumns"]:
        target = _column_target(root_schema(kind), column["jsonPath"])
        expected = {"date": {"string"}, "integer": {"integer"}, "boolean": {"boolean"},
                    "string": {"string", "array"}, "number": {"number", "integer"}}
        assert target["type"] in expected[column["type"]], column


def test_names_and_columns_are_as_designed() -> None:
    export, policy = (MANIFESTS[kind]["spec"] for kind in ("AuditExport", "AuditPolicy"))
    for spec, plural in ((export, "auditexports"), (policy, "auditpolicies")):
        assert spec["group"] == "sealtrail.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural
        assert spec["names"]["categories"] == ["sealtrail"]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == (
            "v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
    assert export["names"]["shortNames"] == ["aex"]
    assert policy["names"]["shortNames"] == ["apol"]

    def columns(spec: Json) -> list[str]:
        return [column["name"] for column in spec["versions"][0]["additionalPrinterColumns"]
                if not column.get("priority")]

    assert columns(export) == ["Backend", "Ready", "Paused", "Lag", "Workers", "Seen", "Age"]
    assert columns(policy) == ["Mode", "Exports", "Injected", "Seen", "Age"]


# --- The real API server's verdict ---------------------------------------------------------------
#
# The CRDs as the chart installs them, on the run's real kube-apiserver: each spec is sent as a
# server-side dry run (`dryRun=All`, `fieldValidation=Strict`, as `kubectl apply` sends it), so
# the server's OpenAPI validation, defaulting and CEL rules judge it and nothing is stored.

VERDICT_NAMESPACE = "crd-verdicts"
PLURALS = {"AuditExport": "auditexports", "AuditPolicy": "auditpolicies"}


@dataclass
class ApiVerdict:
    accepted: bool
    message: str
    stored: Json


@pytest.fixture(scope="module")
def api(sealtrail_release: ControlPlane) -> Iterator[Callable[..., ApiVerdict]]:
    with sealtrail_release.client() as client:
        answer = client.post("/api/v1/namespaces", json={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": VERDICT_NAMESPACE}})
        assert answer.status_code in (201, 409), answer.text

        def verdict(kind: str, spec: Any, name: str = "audit-1") -> ApiVerdict:
            answer = client.post(
                f"/apis/sealtrail.dev/v1alpha1/namespaces/{VERDICT_NAMESPACE}/{PLURALS[kind]}",
                params={"dryRun": "All", "fieldValidation": "Strict"},
                json=as_resource(kind, spec, name))
            assert answer.status_code < 500, answer.text  # never the server's own failure
            body = answer.json()
            if answer.status_code == 201:
                return ApiVerdict(accepted=True, message="", stored=body)
            return ApiVerdict(accepted=False, message=str(body.get("message", "")), stored={})

        yield verdict


@pytest.mark.parametrize(("kind", "spec", "rule", "valid"), CASES)
def test_the_api_server_gives_the_models_verdict(api: Callable[..., ApiVerdict], kind: str,
                                                 spec: Json, rule: str | None,
                                                 valid: bool) -> None:
    found = api(kind, spec)
    assert found.accepted == valid, found.message
    if rule is not None:
        assert rule in found.message, found.message
    if valid:
        stored = found.stored["spec"]
        assert MODELS[kind].model_validate(stored) == MODELS[kind].model_validate(
            prune_nulls(spec))  # the server's defaults are the model's


@pytest.mark.parametrize(("name", "valid"), [
    ("splunk-main", True), ("x" * 63, True), ("x" * 64, False), ("splunk.main", False),
    ("Splunk", False),
])
def test_the_api_server_takes_the_export_names_a_worker_config_takes(
        api: Callable[..., ApiVerdict], name: str, valid: bool) -> None:
    assert api("AuditExport", WEBHOOK, name=name).accepted == valid


@pytest.mark.parametrize("resource", _example_resources())
def test_the_api_server_accepts_every_example_resource(api: Callable[..., ApiVerdict],
                                                       resource: Json) -> None:
    found = api(resource["kind"], resource["spec"], name=resource["metadata"]["name"])
    assert found.accepted, found.message


_SERVER_SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                            suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large,
                                                   HealthCheck.function_scoped_fixture])


def _server_property(api: Callable[..., ApiVerdict], kind: str, spec: Any) -> None:
    spec_as_stored = prune_nulls(spec)
    model = model_errors(kind, spec_as_stored)
    found = api(kind, spec)
    assert found.accepted == (not model), (spec, model, found.message)
    if found.accepted:
        assert MODELS[kind].model_validate(found.stored["spec"]) == MODELS[
            kind].model_validate(spec_as_stored)


@_SERVER_SETTINGS
@given(spec=instances(root_schema("AuditExport")["properties"]["spec"]))
def test_generated_exports_get_the_models_verdict_from_the_api_server(
        api: Callable[..., ApiVerdict], spec: Any) -> None:
    _server_property(api, "AuditExport", spec)


@_SERVER_SETTINGS
@given(spec=instances(root_schema("AuditPolicy")["properties"]["spec"]))
def test_generated_policies_get_the_models_verdict_from_the_api_server(
        api: Callable[..., ApiVerdict], spec: Any) -> None:
    _server_property(api, "AuditPolicy", spec)
