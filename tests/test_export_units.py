"""The export engine's pure parts: outcomes, routing, batching, interval, backoff, config.

Covers: every HTTP status class of the failure table; first-match routing with tenant and type
globs and minimum severity, checkpoint rows following their tenant; batches within both the
backend's and the export's limits, in order, with an oversize row alone; the interval widening
to its maximum and collapsing; full-jitter bounds; index templates refused at config time when
they could render an illegal name; config errors named by path.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sealtrail.api.configfile import ConfigFileError, load_config
from sealtrail.api.destinations import (
    DestinationRule,
    TemplateError,
    check_template,
    render_template,
)
from sealtrail.api.export import BatchSpec, ExportsConfig, RouteRule
from sealtrail.export.backends.base import BatchLimits
from sealtrail.export.batching import AdaptiveInterval, full_jitter_seconds, plan_batches
from sealtrail.export.outcome import OutcomeKind, classify_status, parse_retry_after
from sealtrail.export.routing import Route, Router, RoutingError


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, OutcomeKind.SUCCESS), (202, OutcomeKind.SUCCESS), (204, OutcomeKind.SUCCESS),
        (400, OutcomeKind.PERMANENT), (404, OutcomeKind.PERMANENT), (413, OutcomeKind.PERMANENT),
        (410, OutcomeKind.PERMANENT), (301, OutcomeKind.PERMANENT), (501, OutcomeKind.PERMANENT),
        (401, OutcomeKind.AUTH), (403, OutcomeKind.AUTH),
        (408, OutcomeKind.RETRYABLE), (429, OutcomeKind.RETRYABLE), (500, OutcomeKind.RETRYABLE),
        (502, OutcomeKind.RETRYABLE), (503, OutcomeKind.RETRYABLE), (504, OutcomeKind.RETRYABLE),
    ],
)
def test_failure_table(status: int, kind: OutcomeKind) -> None:
    assert classify_status(status) is kind


def test_retry_after_in_seconds_only() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("99999") == 3600.0
    assert parse_retry_after(None) is None


RULES = [
    RouteRule(tenants=["acme"], event_types=["safety.*"], min_severity="HIGH", exports=["splunk"],
              index="audit_${tenant:id}"),
    RouteRule(tenants=["acme", "glob*"], exports=["elastic"]),
    RouteRule(tenants=["*"], min_severity="CRITICAL", exports=["splunk", "elastic"]),
]


def test_first_matching_rule_wins() -> None:
    router = Router(RULES, ["splunk", "elastic"])
    assert router.routes("acme", "safety.decision", "CRITICAL") == (
        Route("splunk", "audit_${tenant:id}"),)
    assert router.routes("acme", "safety.decision", "LOW") == (Route("elastic", None),)
    assert router.routes("acme", "system.auth", "HIGH") == (Route("elastic", None),)
    assert router.routes("globex", "x.y", "INFO") == (Route("elastic", None),)
    assert router.routes("initech", "x.y", "CRITICAL") == (
        Route("splunk", None), Route("elastic", None))
    assert router.routes("initech", "x.y", "HIGH") == ()  # no rule: goes nowhere


def test_checkpoints_follow_their_tenant_everywhere() -> None:
    router = Router(RULES, ["splunk", "elastic"])
    assert {route.export for route in router.routes("acme", "sealtrail.checkpoint", "INFO")} == {
        "splunk", "elastic"}
    assert router.routes("initech", "sealtrail.checkpoint", "INFO") == (
        Route("splunk", None), Route("elastic", None))


def test_no_rules_means_everything_everywhere() -> None:
    assert Router([], ["a", "b"]).routes("t", "x.y", "INFO") == (Route("a", None), Route("b", None))


def test_unknown_export_in_a_rule_is_a_config_error() -> None:
    with pytest.raises(RoutingError, match=r"routes\[0\].exports: no export named 'splunk'"):
        Router([RouteRule(exports=["splunk"])], ["elastic"])


LIMITS = BatchLimits(max_events=4, max_bytes=100, max_row_bytes=60)


def test_batches_keep_order_and_limits() -> None:
    rows = [("a", 10), ("b", 10), ("c", 10), ("d", 10), ("e", 10), ("f", 50), ("g", 50)]
    batches = plan_batches(rows, lambda row: row[1], LIMITS, BatchSpec(max_bytes=1024))
    assert [[name for name, _ in batch] for batch in batches] == [
        ["a", "b", "c", "d"], ["e", "f"], ["g"]]


def test_export_settings_tighten_backend_limits() -> None:
    rows = [(str(n), 10) for n in range(5)]
    batches = plan_batches(rows, lambda row: row[1], LIMITS, BatchSpec(max_events=2))
    assert [len(batch) for batch in batches] == [2, 2, 1]


def test_an_oversize_row_travels_alone() -> None:
    rows = [("a", 10), ("huge", 70), ("b", 10)]
    batches = plan_batches(rows, lambda row: row[1], LIMITS, BatchSpec(max_bytes=1024))
    assert [[name for name, _ in batch] for batch in batches] == [["a"], ["huge"], ["b"]]


def test_interval_widens_to_its_maximum_and_collapses() -> None:
    interval = AdaptiveInterval(100, 1000)
    for _ in range(10):
        interval.widen()
    assert interval.current_ms == 1000
    assert interval.at_max
    interval.collapse()
    assert interval.current_ms == 100
    assert not interval.at_max


def test_full_jitter_stays_within_its_cap() -> None:
    rng = random.Random(1)
    delays = [full_jitter_seconds(attempt, 100, 2000, rng) for attempt in range(50)]
    assert all(0 <= delay <= 2.0 for delay in delays)
    assert max(delays[:2]) <= 0.2
    assert max(delays[10:]) > 1.0  # it does grow


SPLUNKISH = DestinationRule("index", first_chars="a-z0-9", name_chars="a-z0-9_-",
                            fit_chars="a-z0-9_-", lowercase=True, max_length=80)


def test_templates_fit_every_tenant() -> None:
    check_template("audit_${tenant:id}", SPLUNKISH)
    assert render_template("audit_${tenant:id}", "Acme.Corp", "x.y", SPLUNKISH) == "audit_acme_corp"
    assert render_template("${event:type}", "t", "safety.decision", SPLUNKISH) == "safety_decision"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Audit_${tenant:id}", "not a legal index"),
        ("${tenant:id}", "not a legal index"),  # _system would render "_system"
        ("audit_${tenant}", "unknown variable"),
        ("audit idx", "not a legal index"),
        ("audit\n", "not a legal index"),  # `$` alone would let the newline through
    ],
)
def test_bad_templates_are_config_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        check_template(template, SPLUNKISH)


def test_a_misspelt_setting_is_called_one_not_an_event_field(tmp_path: Path) -> None:
    config = tmp_path / "exports.yaml"
    config.write_text("exports:\n  - name: s\n    splunk:\n      hecURL: https://splunk\n"
                      "      token: {file: /t}\n")
    with pytest.raises(ConfigFileError) as raised:
        load_config(config, ExportsConfig)
    assert "exports[0].splunk.hecURL: is not a known setting (check its spelling)" in str(
        raised.value)
    assert "audit event" not in str(raised.value)


def test_config_problems_are_listed_by_path(tmp_path: Path) -> None:
    config = tmp_path / "exports.yaml"
    config.write_text(
        "exports:\n"
        "  - name: ok\n"
        "    webhook: {url: 'http://127.0.0.1:1/', secret: {file: /s}}\n"
        "  - name: Bad_Name\n"
        "    splunk: {hecUrl: 'not a url', token: {env: X, file: /y}}\n"
        "  - name: two\n"
        "    webhook: {url: 'http://x/', secret: {env: S}}\n"
        "    datadog: {apiKey: {env: D}}\n"
        "    batch: {maxEvents: 0, intervalMs: 5000, maxIntervalMs: 10}\n"
    )
    with pytest.raises(ConfigFileError) as caught:
        load_config(config, ExportsConfig)
    problems = caught.value.problems
    assert any(p.startswith("exports[1].splunk.hecUrl: String should match pattern") for p in problems)
    assert any(p.startswith("exports[1].splunk.token: ") and "exactly one" in p for p in problems)
    assert any(p.startswith("exports[2].batch.maxEvents: ") for p in problems)
    assert any(p.startswith("exports[2]: ") and "exactly one backend block" in p for p in problems), problems
    assert not any(p.startswith("exports[0]") for p in problems)
