"""Index and stream templates: one rule (`sealtrail.api.destinations`), every caller agreeing.

Covers `sealtrail.api.destinations` and the model validators that use it:

- `AuditExportSpec` (what the operator parses an AuditExport with) refuses an illegal Splunk
  index, Elasticsearch index or CloudWatch log group or stream with a message naming the field
  and the rule, and `AuditPolicySpec` refuses a route `index` that no backend takes;
- a worker config refuses a route `index` the named export's backend does not take, with the
  message the worker has always given;
- property-style: for generated templates, the model accepts exactly what the worker's
  `validate_config` accepts (one rule, two callers), and the regular expressions the CRDs'
  CEL rules use accept exactly what `check_template` accepts.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sealtrail.api.destinations import (
    DESTINATION_RULES,
    KNOWN_VARIABLES_ONLY,
    TemplateError,
    check_template,
    template_pattern,
)
from sealtrail.api.errors import UNKNOWN_SETTING, field_errors
from sealtrail.api.export import ExportsConfig, ExportSpec
from sealtrail.api.resources import AuditExportSpec, AuditPolicySpec
from sealtrail.export.engine import ConfigError, validate_config

SECRET = {"secretKeyRef": {"name": "siem", "key": "token"}}
BLOCKS: dict[str, tuple[str, dict[str, Any]]] = {
    # kind: (the template's field, the rest of the block)
    "splunk": ("index", {"hecUrl": "https://splunk:8088", "token": SECRET}),
    "elastic": ("index", {"url": "https://es:9200"}),
    "cloudwatch": ("logStream", {"logGroup": "/audit/prod"}),
}


def problems(model: Any, data: dict[str, Any]) -> list[str]:
    try:
        model.model_validate(data)
    except ValidationError as error:
        return [str(problem) for problem in field_errors(error, unknown=UNKNOWN_SETTING)]
    return []


def export(kind: str, template: str) -> dict[str, Any]:
    field, block = BLOCKS[kind]
    return {kind: {**block, field: template}}


@pytest.mark.parametrize(("kind", "template", "expected"), [
    ("elastic", "Audit Logs ${tenant:id}",
     ("elastic.index: 'Audit Logs ${tenant:id}' renders 'Audit Logs acme.corp-1', which is not "
     "a legal Elasticsearch index name")),
    ("elastic", "..", ("elastic.index: '..' renders '..', which is not a legal Elasticsearch "
     "index name")),
    ("splunk", "audit.${tenant:id}", ("splunk.index: 'audit.${tenant:id}' renders "
     "'audit.acme_corp-1', which is not a legal Splunk index")),
    ("splunk", "${tenant:id}", ("splunk.index: '${tenant:id}' renders '_system', which is not a "
     "legal Splunk index")),
    ("splunk", "a" * 81, f"splunk.index: Splunk index {'a' * 81!r} is longer than 80"),
    ("cloudwatch", "audit:${tenant:id}", ("cloudwatch.logStream: 'audit:${tenant:id}' renders "
     "'audit:Acme.Corp-1', which is not a legal CloudWatch log stream name")),
    ("cloudwatch", "audit/${tenant}", ("cloudwatch.logStream: unknown variable ${tenant}; use "
     "${tenant:id} or ${event:type}")),
    ("elastic", "a" * 254 + "${event:type}:", ("elastic.index: "
     f"{'a' * 254 + '${event:type}:'!r} holds ':', which no Elasticsearch index name may hold")),
])
def test_an_audit_export_refuses_an_illegal_template(kind: str, template: str,
                                                     expected: str) -> None:
    assert problems(AuditExportSpec, export(kind, template)) == [expected]


def test_an_audit_export_refuses_an_illegal_log_group() -> None:
    spec = {"cloudwatch": {"logGroup": "audit logs"}}
    (problem,) = problems(AuditExportSpec, spec)
    assert problem.startswith("cloudwatch.logGroup: String should match pattern")


@pytest.mark.parametrize(("kind", "template"), [
    ("elastic", "audit-${tenant:id}-${event:type}"), ("elastic", ".sealtrail"),
    ("splunk", "audit_${tenant:id}"), ("splunk", "${event:type}"),
    ("cloudwatch", "Audit/${tenant:id}"), ("cloudwatch", "${tenant:id}"),
])
def test_an_audit_export_takes_a_legal_template(kind: str, template: str) -> None:
    assert problems(AuditExportSpec, export(kind, template)) == []


@pytest.mark.parametrize(("index", "expected"), [
    ("audit_${nope}", ("routes[0]: index: unknown variable ${nope}; use ${tenant:id} or "
     "${event:type}")),
    ("a:b", ("routes[0]: index: no backend takes it: 'a:b' renders 'a:b', which is not a legal "
     "Splunk index; 'a:b' renders 'a:b', which is not a legal Elasticsearch index name; 'a:b' "
     "renders 'a:b', which is not a legal CloudWatch log stream name")),
])
def test_an_audit_policy_refuses_a_route_index_no_backend_takes(index: str,
                                                                expected: str) -> None:
    spec = {"routes": [{"exports": ["es"], "index": index}]}
    assert problems(AuditPolicySpec, spec) == [expected]


def test_a_route_index_only_some_backends_take_waits_for_the_export_kinds() -> None:
    # Legal for CloudWatch, not for Splunk or Elasticsearch: which applies is known only when
    # the policy is rendered with its exports (then the worker config refuses it, below).
    assert problems(AuditPolicySpec, {"routes": [{"exports": ["es"], "index": "Audit"}]}) == []
    assert problems(AuditPolicySpec, {"routes": [{"exports": [], "index": "a:b"}]}) == []


def test_a_worker_config_refuses_a_route_index_its_export_does_not_take() -> None:
    config = {"exports": [{"name": "es", **export("elastic", "audit")},
                          {"name": "hook", "webhook": {"url": "https://h", "secret": {
                              "env": "S"}}}],
              "routes": [{"exports": ["es"], "index": "Audit"}]}
    assert problems(ExportsConfig, config) == [
        ("routes[0].index: 'Audit' renders 'Audit', which is not a legal Elasticsearch index "
        "name (export 'es')")]
    config["routes"] = [{"exports": ["hook"], "index": "audit"}]
    assert problems(ExportsConfig, config) == [
        "routes[0].index: webhook has no index or stream to template (export 'hook')"]


# -- one rule, two callers ------------------------------------------------------------------------

_PIECES = st.sampled_from([
    "${tenant:id}", "${event:type}", "${", "}", "$", "{", "${x}", "a", "Z", "0", ".", "..", "_",
    "-", "+", ":", "*", "/", " ", "\n", "é",
])
TEMPLATES = st.one_of(
    st.lists(_PIECES, max_size=8).map("".join),
    st.tuples(st.integers(75, 260), st.lists(_PIECES, max_size=4)).map(
        lambda drawn: "a" * drawn[0] + "".join(drawn[1])),
)


def worker_accepts(kind: str, template: str) -> bool:
    """The worker's verdict alone: `validate_config` on a config the models did not check."""
    spec = ExportSpec.model_construct(**ExportSpec.model_validate(
        {"name": "x", **export(kind, "ok")}).__dict__)
    backend = getattr(spec, kind).model_copy(update={
        "index" if kind != "cloudwatch" else "log_stream": template})
    config = ExportsConfig.model_construct(
        exports=[spec.model_copy(update={kind: backend})], routes=[])
    try:
        validate_config(config)
    except ConfigError:
        return False
    return True


@settings(max_examples=400, deadline=None, derandomize=True)
@given(kind=st.sampled_from(sorted(BLOCKS)), template=TEMPLATES)
def test_the_model_accepts_exactly_what_the_worker_accepts(kind: str, template: str) -> None:
    assert (not problems(AuditExportSpec, export(kind, template))) == worker_accepts(kind,
                                                                                     template)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(kind=st.sampled_from(sorted(DESTINATION_RULES)), template=TEMPLATES)
def test_the_crd_patterns_accept_exactly_what_check_template_accepts(kind: str,
                                                                     template: str) -> None:
    rule = DESTINATION_RULES[kind]
    try:
        check_template(template, rule)
        accepted = True
    except TemplateError:
        accepted = False
    matched = (re.fullmatch(KNOWN_VARIABLES_ONLY, template) is not None
               and re.fullmatch(template_pattern(rule), template) is not None
               and template not in rule.reserved)
    assert matched == accepted
