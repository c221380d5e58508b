"""The chart's Grafana dashboard and Prometheus alerts, against a real worker and the operator.

What is checked:

* `helm/sealtrail/files/dashboard.json` loads as a Grafana dashboard model
  (grafana-foundation-sdk's `Dashboard.from_json`, with Grafana's panel and data-source plugins
  registered) and every key in it survives the model's round trip, so nothing in it is unknown
  to Grafana's schema; `docs/grafana-dashboard.json` is a byte-identical copy;
* its panels cover ingest rate, export rate per export, cursor lag, back-pressure, failures by
  class, batch interval and paused exports; each has a description and a Grafana unit; grid
  positions stay within 24 columns and never overlap; the `${datasource}` variable (type
  prometheus) is used everywhere, and namespace, pod and export come from `label_values`;
* every panel query and alert expression parses as PromQL (promql-parser, after Grafana's
  variables are substituted), and every metric, label name and label value it names is one a
  real worker exports: the worker (`tests.worker_process`) runs with an export delivering to a
  loopback Splunk HEC receiver, one to a port nothing listens on and one whose rows the
  receiver refuses for good, so that each labelled series exists; `/metrics` is parsed with
  prometheus_client's parser. An alert expression may also name what the operator exports:
  its probe port (`sealtrail.operator.probes.serve_probes`, the code the operator serves its
  `/metrics` with, on a fresh `OperatorMetrics`) is scraped the same way. `up` and the target
  labels (job, namespace, pod, ...) are Prometheus's own; a label value in an `=~` alternation
  (`outcome=~"error|not_ready"`) must exist like one after `=`;
* `metric_names`, the small PromQL tokenizer that finds metric names, is tested on its own and
  agrees with promql-parser's syntax tree on every expression shipped;
* each alert has `for`, a severity, summary, description and a runbook, a heading that exists in
  docs/operations.md; with `promtool` (skipped when it is not installed: Debian's `prometheus`
  package has it) the rule file checks, and `promtool test rules` shows each alert firing on the
  series it is about and staying quiet on healthy ones (an interval at its maximum under plain
  steady load, a paused export's lag, a Lease handover, a new operator replica whose counters
  start at 0, a worker's `up` for the operator's alert).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus as grafana_prometheus
from grafana_foundation_sdk.models import units as grafana_units
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sealtrail.demo import sample_events
from sealtrail.operator.metrics import ADMISSION_OUTCOMES, OperatorMetrics
from sealtrail.operator.probes import serve_probes

from .receivers.splunk import SplunkReceiver
from .test_docs_and_image import anchors
from .worker_process import ROOT, running_worker

pytestmark = pytest.mark.timeout(60)

DASHBOARD = ROOT / "helm" / "sealtrail" / "files" / "dashboard.json"
DASHBOARD_DOCS = ROOT / "docs" / "grafana-dashboard.json"
ALERTS = ROOT / "helm" / "sealtrail" / "files" / "alerts.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
HEC_TOKEN = "0b6e2f4a-93c1-4d57-8e2a-7f1c5d3b9a60"  # noqa: S105 - the test receiver's

# Labels Prometheus adds to every scraped series (a PodMonitor/ServiceMonitor's target labels).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint",
                           "service"})
# Series Prometheus makes itself for each target, not the worker.
PROMETHEUS_SERIES = frozenset({"up"})
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum"), "gauge": ("",), "untyped": ("",),
            "info": ("_info",), "stateset": ("",), "gaugehistogram": ("_bucket",)}


# -- the PromQL tokenizer -------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<punct>[(){}\[\],])
  | (?P<other>\S)
""", re.VERBOSE)

AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                          "count_values", "bottomk", "topk", "quantile", "limitk",
                          "limit_ratio"})
# Followed by a parenthesised list of label names, never metrics.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left",
                                 "group_right"})
KEYWORDS = AGGREGATIONS | LABEL_LIST_KEYWORDS | frozenset({
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"})
_CLOSING = {"{": "}", "[": "]", "(": ")"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(match.lastgroup or "", match.group()) for match in _TOKEN.finditer(expr)
            if match.lastgroup not in {"string", "variable", "number", "other"}]


def _skip_group(tokens: list[tuple[str, str]], start: int) -> int:
    """The index after the bracketed group that opens at `start`."""
    opening = tokens[start][1]
    depth = 0
    for index in range(start, len(tokens)):
        text = tokens[index][1]
        if text == opening:
            depth += 1
        elif text == _CLOSING[opening]:
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError(f"unbalanced {opening!r} in PromQL")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Skips string literals (label values), Grafana variables (`$pod`, `${datasource}`),
    numbers and durations, label matchers (`{...}`), ranges (`[...]`), function names (an
    identifier followed by `(`), aggregation operators and keywords, and the label lists
    after `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
    """
    tokens = _tokens(expr)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text in {"{", "["}:
            index = _skip_group(tokens, index)
            continue
        index += 1
        if kind != "ident":
            continue
        if text in LABEL_LIST_KEYWORDS:
            if following == "(":
                index = _skip_group(tokens, index)
            continue
        if following != "(" and text not in KEYWORDS:  # not a function, operator or keyword
            names.add(text)
    return names


@pytest.mark.parametrize(("expr", "expected"), [
    ("up", {"up"}),
    ('up{job="sealtrail-worker"} == 0', {"up"}),
    ('sum by (namespace, pod) (rate(a_total{pod=~"$pod"}[$__rate_interval]))', {"a_total"}),
    ("sum(rate(a_total[5m])) by (export) / ignoring(x) group_left(y) b", {"a_total", "b"}),
    ('histogram_quantile(0.99, sum by (le) (rate(h_bucket{export=~"$export"}[1h30m])))',
     {"h_bucket"}),
    ("a - ignoring(export) group_right b > 10000 unless c == 1", {"a", "b", "c"}),
    ("increase(f{retryable='false'}[10m]) > 0 or (f unless f offset 10m)", {"f"}),
    ("count(up == 0) or vector(0)", {"up"}),
    ("max_over_time((a - b)[15m:1m]) and on(pod) c", {"a", "b", "c"}),
    ('sum without (instance) (x{name="sum by (fake)"}) * 1e3 + ${datasource_var}', {"x"}),
    ("topk(3, sum by (ns) (rate(requests_total{code!~`5..`}[5m] offset 1h)))",
     {"requests_total"}),
    ("sum by (job) (a:recorded:rate5m) and bool on () b", {"a:recorded:rate5m", "b"}),
])
def test_metric_names_tokenizer(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_metric_names_rejects_unbalanced_brackets() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(rate(a{job='x'[5m]))")


# -- what the dashboard and the rules say -----------------------------------------------------

def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target."""
    return [(f"panel {panel['title']!r} target {target['refId']}", target["expr"])
            for panel in _panels(dashboard) for target in panel.get("targets", [])]


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in groups for rule in group["rules"]]


def _alert_exprs() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in _alert_rules()]


_GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}


def as_promql(expr: str) -> str:
    """A Grafana query as Prometheus receives it (variables in matchers become `.*`)."""
    for variable, value in _GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{\w+\}|\$\w+", ".*", expr)


def _selectors(expr: str) -> tuple[list[promql_parser.VectorSelector], set[str]]:
    """The vector selectors of a parsed expression, and the label names its modifiers use."""
    selectors: list[promql_parser.VectorSelector] = []
    modifier_labels: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            modifier_labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                modifier_labels.update(node.modifier.matching.labels)
            modifier_labels.update(node.modifier.group_labels or ())

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selectors, modifier_labels


ALL_EXPRS = [*_queries(_dashboard()), *_alert_exprs()]


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[where for where, _ in ALL_EXPRS])
def test_each_expression_parses_and_the_tokenizer_agrees_with_the_parser(where: str,
                                                                          expr: str) -> None:
    promql = as_promql(expr)
    selectors, _ = _selectors(promql)  # raises on a syntax error
    assert selectors, f"{where} selects no metric"
    assert metric_names(expr) == {selector.name for selector in selectors}, where


# -- the dashboard ----------------------------------------------------------------------------

def test_the_two_dashboard_copies_are_identical() -> None:
    assert DASHBOARD.read_bytes() == DASHBOARD_DOCS.read_bytes(), (
        "docs/grafana-dashboard.json must be a copy of helm/sealtrail/files/dashboard.json")


def _lost_keys(written: Any, loaded: Any, path: str = "$") -> list[str]:
    """Keys (with their paths) present in `written` but not in the model's re-encoding."""
    if isinstance(written, dict):
        if not isinstance(loaded, dict):
            return [f"{path}: became {type(loaded).__name__}"]
        lost = [f"{path}.{key}" for key in written if key not in loaded]
        return lost + [item for key, value in written.items() if key in loaded
                       for item in _lost_keys(value, loaded[key], f"{path}.{key}")]
    if isinstance(written, list):
        if not isinstance(loaded, list) or len(loaded) != len(written):
            return [f"{path}: list changed"]
        return [item for index, (value, again) in enumerate(zip(written, loaded, strict=True))
                for item in _lost_keys(value, again, f"{path}[{index}]")]
    return [] if written == loaded else [f"{path}: {written!r} became {loaded!r}"]


def test_the_dashboard_loads_as_a_grafana_dashboard_model() -> None:
    register_default_plugins()
    data = _dashboard()
    model = Dashboard.from_json(data)
    assert model.title
    assert model.uid
    assert model.schema_version >= 36
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _lost_keys(data, again) == [], "keys or values Grafana's dashboard model does not know"
    for panel in model.panels or []:
        if isinstance(panel, RowPanel):
            continue
        assert isinstance(panel, Panel)
        assert panel.grid_pos is not None
        assert not isinstance(panel.options, dict), f"{panel.title}: unknown panel type"
        for target in panel.targets or []:
            assert isinstance(target, grafana_prometheus.Dataquery), panel.title


def test_the_datasource_and_the_filter_variables() -> None:
    data = _dashboard()
    variables = {variable["name"]: variable for variable in data["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    for name, metric in (("namespace", "sealtrail_audit_last_seq"),
                         ("pod", "sealtrail_audit_last_seq"),
                         ("export", "sealtrail_audit_export_last_seq")):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        match = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", variable["query"])
        assert match is not None, variable["query"]
        assert (match[1], match[3]) == (metric, name)
    for panel in _panels(data):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            for variable in ("$job", "$namespace", "$pod"):
                assert variable in target["expr"], f"{panel['title']}: not filtered by it"
            # `$export` is checked against the worker's labels, below


def _panel_metrics(panel: dict[str, Any]) -> set[str]:
    return {name for target in panel.get("targets", []) for name in metric_names(target["expr"])}


REQUIRED_TOPICS = {
    "ingest rate": {"sealtrail_audit_ingested_events_total"},
    "export rate per export": {"sealtrail_audit_export_events_total"},
    "cursor lag": {"sealtrail_audit_last_seq", "sealtrail_audit_export_last_seq"},
    "back-pressure": {"sealtrail_audit_backpressure_paused_total"},
    "failures by class": {"sealtrail_audit_export_outcomes_total"},
    "batch interval": {"sealtrail_audit_batch_interval_ms"},
    "paused exports": {"sealtrail_audit_export_paused"},
    "store bytes against the limit": {"sealtrail_audit_store_used_bytes",
                                      "sealtrail_audit_store_limit_bytes"},
    "rows handed off and abandoned": {"sealtrail_audit_handoff_rows_total",
                                      "sealtrail_audit_rows_abandoned_total"},
}


@pytest.mark.parametrize("topic", REQUIRED_TOPICS)
def test_a_time_series_panel_covers_each_required_topic(topic: str) -> None:
    needed = REQUIRED_TOPICS[topic]
    panels = [panel for panel in _panels(_dashboard())
              if panel["type"] in {"timeseries", "state-timeline"}
              and needed <= _panel_metrics(panel)]
    assert panels, f"no panel over time shows {topic} ({sorted(needed)})"
    legends = " ".join(target.get("legendFormat", "") for panel in panels
                       for target in panel["targets"])
    if topic in {"export rate per export", "cursor lag", "batch interval", "paused exports"}:
        assert "{{export}}" in legends, f"{topic} is not shown per export"
    if topic == "rows handed off and abandoned":
        assert "{{export}}" in legends, "abandoned rows are not shown per export"
    if topic == "failures by class":
        assert "{{outcome}}" in legends, "failures are not shown by class"


GRAFANA_UNITS = frozenset(value for value in vars(grafana_units).values()
                          if isinstance(value, str))


def test_every_panel_has_a_description_and_a_grafana_unit() -> None:
    for panel in _panels(_dashboard()):
        if panel["type"] == "row":
            continue
        assert len(panel.get("description", "")) >= 80, f"{panel['title']}: say what to do"
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in GRAFANA_UNITS, f"{panel['title']}: {unit!r} is no Grafana unit"


def test_grid_positions_fit_and_do_not_overlap() -> None:
    panels = list(_dashboard()["panels"])  # top level: what is laid out on the grid
    ids = [panel["id"] for panel in _panels(_dashboard())]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["y"] >= 0
        assert grid["w"] >= 1
        assert grid["h"] >= 1
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


# -- what a real worker exports ---------------------------------------------------------------

@dataclass
class Exported:
    """The metric names, label names and label values a worker's /metrics shows."""

    names: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    values: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def parse(cls, text: str) -> Exported:
        exported = cls()
        for family in text_string_to_metric_families(text):
            family_names = [family.name + suffix for suffix in SUFFIXES[family.type]]
            exported.names.update(family_names)
            for sample in family.samples:
                exported.names.add(sample.name)
                for name in {sample.name, *family_names}:
                    exported.labels[name].update(sample.labels)
                    for label, value in sample.labels.items():
                        exported.values[name, label].add(value)
        return exported

    def merged(self, other: Exported) -> Exported:
        """What either of two processes exports."""
        both = Exported(names=self.names | other.names)
        for source in (self, other):
            for name, labels in source.labels.items():
                both.labels[name] |= labels
            for key, values in source.values.items():
                both.values[key] |= values
        return both


def _scrape(client: httpx.Client) -> str:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return answer.text


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A worker's /metrics once each kind of labelled series exists."""
    directory = tmp_path_factory.mktemp("metrics-worker")
    token = directory / "hec-token"
    token.write_text(HEC_TOKEN + "\n", encoding="utf-8")
    good = SplunkReceiver(HEC_TOKEN)
    strict = SplunkReceiver(HEC_TOKEN, allowed_indexes={"main"})  # refuses index "audit"
    credential = {"file": str(token)}
    fast_retry = {"initialBackoffMs": 20, "maxBackoffMs": 50, "pauseAfterFailures": 2}
    exports = [
        {"name": "hec", "splunk": {"hecUrl": good.url, "token": credential},
         "batch": {"intervalMs": 20}},
        {"name": "down", "splunk": {"hecUrl": "http://127.0.0.1:9", "token": credential},
         "retry": fast_retry},
        {"name": "refused", "splunk": {"hecUrl": strict.url, "token": credential,
                                       "index": "audit"}, "retry": fast_retry},
    ]
    expected = ('sealtrail_audit_export_events_total{export="hec"}',
                'sealtrail_audit_export_failures_total{export="down",retryable="true"}',
                'sealtrail_audit_export_failures_total{export="refused",retryable="false"}',
                'sealtrail_audit_export_rejected_rows_total{export="refused"}',
                'sealtrail_audit_export_paused{export="refused"} 1.0')
    events = [orjson.loads(orjson.dumps(event))
              for event in sample_events(5, seed=3, tenants=("acme",))]
    good.start()
    strict.start()
    try:
        (directory / "handoff-token").write_text("handoff-" + HEC_TOKEN, encoding="utf-8")
        accept = {"accept": {"tokens": [{"file": str(directory / "handoff-token")}]}}
        with running_worker(directory, exports=exports, handoff=accept) as worker, \
                worker.client() as client:
            posted = client.post("/v1/events", json=events)
            assert posted.status_code == 200, posted.text
            deadline = time.monotonic() + 15
            text = _scrape(client)
            while not all(series in text for series in expected):
                assert time.monotonic() < deadline, f"series never appeared:\n{text}"
                time.sleep(0.05)
                text = _scrape(client)
    finally:
        good.stop()
        strict.stop()
    return Exported.parse(text)


async def _scrape_operator_probes() -> str:
    """The operator's /metrics as its probe port serves it, before any admission or round."""
    metrics = OperatorMetrics(CollectorRegistry())
    runner = await serve_probes("127.0.0.1", 0, lambda: None, metrics)
    try:
        host, port = runner.addresses[0][:2]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            answer = await client.get("/metrics")
    finally:
        await runner.cleanup()
    assert answer.status_code == 200
    return answer.text


@pytest.fixture(scope="module")
def operator_exported() -> Exported:
    """The operator's /metrics: every series exists from the start (outcomes at 0)."""
    return Exported.parse(asyncio.run(_scrape_operator_probes()))


# A label value in an alternation such as `outcome=~"error|not_ready"`, checked like `=`.
_ALTERNATION = re.compile(r"\w+(?:\|\w+)*")


def _check_against(where: str, expr: str, exported: Exported, *,
                   by_export: bool = False) -> None:
    selectors, modifier_labels = _selectors(as_promql(expr))
    names = metric_names(expr)
    unknown = names - exported.names - PROMETHEUS_SERIES
    assert not unknown, f"{where} names metrics nothing exports: {sorted(unknown)}"
    known_labels = set(TARGET_LABELS)
    for name in names:
        known_labels |= exported.labels.get(name, set())
    for selector in selectors:
        for matcher in selector.matchers.matchers:
            assert matcher.name in known_labels, f"{where}: no label {matcher.name!r}"
            own = matcher.name not in TARGET_LABELS and selector.name not in PROMETHEUS_SERIES
            if own and matcher.op in (promql_parser.MatchOp.Equal,  # unhashable: a tuple
                                      promql_parser.MatchOp.NotEqual):
                assert matcher.value in exported.values[selector.name, matcher.name], (
                    f"{where}: {selector.name} never has {matcher.name}={matcher.value!r}")
            if (own and matcher.op == promql_parser.MatchOp.Re
                    and _ALTERNATION.fullmatch(matcher.value)):
                for value in matcher.value.split("|"):
                    assert value in exported.values[selector.name, matcher.name], (
                        f"{where}: {selector.name} never has {matcher.name}={value!r}")
        if by_export and "export" in exported.labels.get(selector.name, set()):
            assert "export" in {matcher.name for matcher in selector.matchers.matchers}, (
                f"{where}: {selector.name} is not filtered by the $export variable")
    unknown_labels = modifier_labels - known_labels
    assert not unknown_labels, f"{where} groups or matches by unknown labels {unknown_labels}"


DASHBOARD_QUERIES = _queries(_dashboard())
ALERT_EXPRS = _alert_exprs()


@pytest.mark.parametrize(("where", "expr"), DASHBOARD_QUERIES,
                         ids=[where for where, _ in DASHBOARD_QUERIES])
def test_every_panel_query_names_what_the_worker_exports(where: str, expr: str,
                                                         exported: Exported) -> None:
    _check_against(where, expr, exported, by_export=True)


@pytest.mark.parametrize(("where", "expr"), ALERT_EXPRS, ids=[where for where, _ in ALERT_EXPRS])
def test_every_alert_expression_names_what_the_worker_or_the_operator_exports(
        where: str, expr: str, exported: Exported, operator_exported: Exported) -> None:
    _check_against(where, expr, exported.merged(operator_exported))


def test_the_worker_exports_the_metrics_the_docs_promise(exported: Exported) -> None:
    # The dashboard and alerts lean on these; DESIGN.md and docs/exporting.md name them.
    for name in ("sealtrail_audit_last_seq", "sealtrail_audit_export_last_seq",
                 "sealtrail_audit_backpressure_paused_total",
                 "sealtrail_audit_export_failures_total", "sealtrail_audit_batch_interval_ms",
                 "sealtrail_audit_batch_interval_max_ms", "sealtrail_audit_export_paused",
                 "sealtrail_audit_export_lag_rows", "sealtrail_audit_ingested_events_total",
                 "sealtrail_audit_export_outcomes_total",
                 "sealtrail_audit_export_request_seconds_bucket"):
        assert name in exported.names, name


def test_the_operator_exports_the_metrics_its_alerts_use(operator_exported: Exported) -> None:
    assert {"sealtrail_operator_leader", "sealtrail_operator_admissions_total",
            "sealtrail_operator_ready"} <= operator_exported.names
    # Made at 0 when the operator starts, so an alert's increase() sees the first admission.
    assert operator_exported.values["sealtrail_operator_admissions_total", "outcome"] == set(
        ADMISSION_OUTCOMES)


# -- the alerts -------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "SealtrailBackpressureSustained": {"sealtrail_audit_backpressure_paused_total"},
    "SealtrailExportNonRetryableFailure": {"sealtrail_audit_export_failures_total"},
    "SealtrailExportIntervalAtMaximum": {"sealtrail_audit_batch_interval_ms",
                                         "sealtrail_audit_batch_interval_max_ms"},
    "SealtrailExportCursorLagHigh": {"sealtrail_audit_last_seq",
                                     "sealtrail_audit_export_last_seq"},
    "SealtrailWorkerUnreachable": {"up"},
    "SealtrailOperatorNoLeader": {"sealtrail_operator_leader"},
    "SealtrailPodsAdmittedWithoutWorker": {"sealtrail_operator_admissions_total"},
    "SealtrailOperatorUnreachable": {"up"},
    "SealtrailStoreNearLimit": {"sealtrail_audit_store_used_bytes",
                                "sealtrail_audit_store_limit_bytes"},
    "SealtrailStoreFull": {"sealtrail_audit_store_full"},
    "SealtrailRowsAbandoned": {"sealtrail_audit_rows_abandoned_total"},
}


def test_every_alert_is_complete() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        where = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{where}: no `for`"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, where
        annotations = rule["annotations"]
        assert len(annotations.get("summary", "")) >= 20, f"{where}: no summary"
        assert len(annotations.get("description", "")) >= 80, f"{where}: no description"
        assert re.fullmatch(r"docs/operations\.md#[a-z0-9-]+", annotations["runbook_url"])
    by_name = {rule["alert"]: rule for rule in rules}
    for alert, needed in REQUIRED_ALERTS.items():
        assert alert in by_name, f"missing alert {alert}"
        assert needed <= metric_names(by_name[alert]["expr"]), alert
    assert by_name["SealtrailBackpressureSustained"]["for"] == "5m"
    assert "10000" in by_name["SealtrailExportCursorLagHigh"]["expr"]
    assert 'retryable="false"' in by_name["SealtrailExportNonRetryableFailure"]["expr"]
    assert 'job="sealtrail-worker"' in by_name["SealtrailWorkerUnreachable"]["expr"]
    assert 'job="sealtrail-operator"' in by_name["SealtrailOperatorUnreachable"]["expr"]
    assert 'job="sealtrail-operator"' in by_name["SealtrailOperatorNoLeader"]["expr"]
    assert 'outcome=~"error|not_ready"' in by_name["SealtrailPodsAdmittedWithoutWorker"]["expr"]


def test_every_runbook_is_a_heading_in_operations() -> None:
    headings = anchors(OPERATIONS)
    for rule in _alert_rules():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in headings, f"{rule['alert']}: no heading #{anchor} in {OPERATIONS.name}"


# -- the alerts in Prometheus's own rule engine (promtool) -----------------------------------

def _promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    local = ROOT / ".tools" / "bin" / "promtool"
    if found is None and local.exists():
        found = str(local)
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def _run_promtool(*args: str) -> None:
    done = subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": yaml.safe_load(ALERTS.read_text())}))
    _run_promtool("check", "rules", str(rules))  # also parses the annotation templates


TARGET = {"job": "sealtrail-worker", "namespace": "shop", "pod": "shop-0",
          "instance": "10.0.0.7:8471"}


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ", ".join(f'{key}="{value}"' for key, value in {**TARGET, **labels}.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def _firing(severity: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {**TARGET, **labels, "severity": severity}}


FAILURES = "sealtrail_audit_export_failures_total"
INTERVAL = "sealtrail_audit_batch_interval_ms"
INTERVAL_MAX = "sealtrail_audit_batch_interval_max_ms"
PAUSED = "sealtrail_audit_export_paused"
LEADER = "sealtrail_operator_leader"
ADMISSIONS = "sealtrail_operator_admissions_total"


def _operator_target(replica: str) -> dict[str, str]:
    """The target labels of operator replica `a`, `b`, ... (the chart's operator PodMonitor's)."""
    return {"job": "sealtrail-operator", "namespace": "sealtrail", "pod": f"sealtrail-{replica}",
            "instance": f"10.0.1.{ord(replica) - ord('a') + 1}:8080"}


def _operator_series(name: str, values: str, replica: str, **labels: str) -> dict[str, str]:
    return _series(name, values, **_operator_target(replica), **labels)


# alert: (input series, [(minute, exports or pods expected firing)]): each in its own test
# group, so that one scenario's series never set off another's alert.
SCENARIOS: dict[str, tuple[list[dict[str, str]], list[tuple[int, list[dict[str, Any]]]]]] = {
    "SealtrailWorkerUnreachable": (
        [_series("up", "0x10", pod="shop-1"), _series("up", "1x10", pod="shop-2")],
        [(4, []), (6, [_firing("critical", pod="shop-1")])],
    ),
    "SealtrailBackpressureSustained": (
        [_series("sealtrail_audit_backpressure_paused_total", "0+10x15", pod="shop-1"),
         _series("sealtrail_audit_backpressure_paused_total", "7x15", pod="shop-2")],
        [(4, []), (8, [_firing("critical", pod="shop-1")])],
    ),
    "SealtrailStoreNearLimit": (
        [_series("sealtrail_audit_store_used_bytes", "0+10x20", pod="shop-1"),  # 10 MiB/min
         _series("sealtrail_audit_store_limit_bytes", "100x20", pod="shop-1"),
         _series("sealtrail_audit_store_used_bytes", "60x20", pod="shop-2"),
         _series("sealtrail_audit_store_limit_bytes", "100x20", pod="shop-2")],
        [(12, []), (19, [_firing("warning", pod="shop-1")])],  # over 70 % from minute 8
    ),
    "SealtrailStoreFull": (
        [_series("sealtrail_audit_store_full", "0x3 1x10", pod="shop-1"),
         _series("sealtrail_audit_store_full", "0x3 1 0x10", pod="shop-2")],  # a blip
        [(4, []), (7, [_firing("critical", pod="shop-1")])],
    ),
    "SealtrailRowsAbandoned": (
        [_series("sealtrail_audit_rows_abandoned_total", "0x10 40x10", pod="shop-1",
                 export="hec"),
         _series("sealtrail_audit_rows_abandoned_total", "0x20", pod="shop-2", export="hec"),
         _series("sealtrail_audit_rows_abandoned_total", "_x5 12x10", pod="shop-3",
                 export="hec")],  # a restarted container, first scraped above 0
        [(4, []),
         (7, [_firing("critical", pod="shop-3", export="hec")]),
         (12, [_firing("critical", pod="shop-1", export="hec"),
               _firing("critical", pod="shop-3", export="hec")])],
    ),
    "SealtrailExportNonRetryableFailure": (
        [_series(FAILURES, "_x19 1x30", export="new", retryable="false"),  # first at 20m
         _series(FAILURES, "1x30 2x10", export="grows", retryable="false"),  # again at 31m
         _series(FAILURES, "0+3x40", export="flaky", retryable="true")],
        [(15, []),
         (22, [_firing("warning", export="new", retryable="false")]),
         (35, [_firing("warning", export="grows", retryable="false")]),
         (45, [])],
    ),
    "SealtrailExportSelfPaused": (
        [_series(PAUSED, "0x3 1x10", export="refused"),
         _series(FAILURES, "1x14", export="refused", retryable="false"),
         _series(PAUSED, "1x14", export="paused-by-spec")],
        [(3, []), (6, [_firing("critical", export="refused")])],
    ),
    "SealtrailExportIntervalAtMaximum": (
        [*(_series(name, "30000x30", export=export) for export in ("slow", "busy", "held")
           for name in (INTERVAL, INTERVAL_MAX)),
         _series(PAUSED, "0x30", export="slow"),
         _series(FAILURES, "0+5x30", export="slow", retryable="true"),
         _series(FAILURES, "3x30", export="busy", retryable="true"),  # steady load: no push-back
         _series(PAUSED, "1x30", export="held"),
         _series(FAILURES, "0+5x30", export="held", retryable="true"),
         _series(INTERVAL, "1000x30", export="widening"),
         _series(INTERVAL_MAX, "30000x30", export="widening"),
         _series(FAILURES, "0+5x30", export="widening", retryable="true")],
        [(10, []), (20, [_firing("warning", export="slow")])],
    ),
    "SealtrailExportCursorLagHigh": (
        [_series("sealtrail_audit_last_seq", "100000x10"),
         *(_series("sealtrail_audit_export_last_seq", seq, export=export)
           for export, seq in (("far", "80000x10"), ("near", "99990x10"), ("held", "0x10"))),
         _series(PAUSED, "0x10", export="far"), _series(PAUSED, "0x10", export="near"),
         _series(PAUSED, "1x10", export="held")],
        [(4, []), (6, [_firing("warning", export="far")])],
    ),
    "SealtrailOperatorNoLeader": (
        # a leads until 5m; b takes over at 8m (a 2-minute handover: quiet) and leads until 12m;
        # nobody leads from 13m to 20m; b again from 21m; then both replicas are gone.
        [_operator_series(LEADER, "1x5 0x20", "a"),
         _operator_series(LEADER, "0x7 1x4 0x7 1x6", "b")],
        [(11, []), (16, []),
         (19, [{"exp_labels": {"job": "sealtrail-operator", "namespace": "sealtrail",
                               "severity": "warning"}}]),
         (30, []), (35, []),  # gone: the last samples stay visible for 5 minutes
         (42, [{"exp_labels": {"job": "sealtrail-operator", "severity": "warning"}}])],
    ),
    "SealtrailPodsAdmittedWithoutWorker": (
        # a: an error at 11m; b: a replica first scraped at 15m, its not_ready admissions (made
        # while it started) already counted; its other outcomes start at 0, as they do.
        [_operator_series(ADMISSIONS, "0x10 1x20", "a", outcome="error"),
         _operator_series(ADMISSIONS, "0x30", "a", outcome="not_ready"),
         _operator_series(ADMISSIONS, "0+4x30", "a", outcome="injected"),
         _operator_series(ADMISSIONS, "0+1x30", "a", outcome="refused"),
         _operator_series(ADMISSIONS, "_x15 2x15", "b", outcome="not_ready"),
         _operator_series(ADMISSIONS, "_x15 0x15", "b", outcome="error"),
         _operator_series(ADMISSIONS, "_x15 0+3x15", "b", outcome="injected")],
        [(5, []),
         (12, [{"exp_labels": {**_operator_target("a"), "outcome": "error",
                               "severity": "warning"}}]),
         (18, [{"exp_labels": {**_operator_target("a"), "outcome": "error",
                               "severity": "warning"}},
               {"exp_labels": {**_operator_target("b"), "outcome": "not_ready",
                               "severity": "warning"}}]),
         (29, [])],
    ),
    "SealtrailOperatorUnreachable": (
        [_operator_series("up", "0x10", "a"), _operator_series("up", "1x10", "b"),
         _series("up", "0x10", pod="shop-1")],  # a worker: its own alert
        [(4, []), (6, [{"exp_labels": {**_operator_target("a"), "severity": "critical"}}])],
    ),
}


def test_each_alert_fires_on_its_condition_and_not_on_healthy_series(tmp_path: Path) -> None:
    rules = _alert_rules()
    assert {rule["alert"] for rule in rules} == set(SCENARIOS), "every alert needs a scenario"
    for rule in rules:
        rule.pop("annotations")  # promtool compares rendered annotations; `check` parses them
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [
        {"name": "sealtrail", "rules": rules}]}))
    tests = [{"interval": "1m", "input_series": series,
              "alert_rule_test": [{"eval_time": f"{minute}m", "alertname": alert,
                                   "exp_alerts": firing} for minute, firing in checks]}
             for alert, (series, checks) in SCENARIOS.items()]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    _run_promtool("test", "rules", str(tmp_path / "tests.yaml"))
