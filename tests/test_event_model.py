"""The event model: what a client may send, how it is normalised, and how bad input is named.

Covers every field's type and bound, the reserved `sealtrail.` types, tenant and extra-key
syntax, timestamp normalisation, the one spelling of "absent", and error messages that name
the field by the path a user would write.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sealtrail.api.errors import field_errors
from sealtrail.api.event import Event

BASE: dict[str, Any] = {"event_type": "safety.decision", "severity": "HIGH"}


def problems(raw: dict[str, Any] | str) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        if isinstance(raw, str):
            Event.model_validate_json(raw)
        else:
            Event.model_validate(raw)
    return [str(problem) for problem in field_errors(caught.value)]


def test_minimal_event_has_only_what_was_given() -> None:
    assert Event.model_validate(BASE).row_fields() == BASE


def test_every_field_round_trips_as_strings() -> None:
    raw = {
        **BASE,
        "tenant_id": "acme",
        "timestamp": "2026-11-22T10:00:00Z",
        "agent_id": "agent-1",
        "job_id": "job-1",
        "action": "tool.call",
        "decision": "require_approval",
        "matched_rule": "r1",
        "reason": "because",
        "risk_tags": ["pii"],
        "capabilities": ["fs.read"],
        "policy_version": "v3",
        "identity": "user:alice",
        "extra": {"k8s.io/namespace": "prod"},
    }
    fields = Event.model_validate(raw).row_fields()
    assert fields == {**raw, "timestamp": "2026-11-22T10:00:00.000000Z"}
    assert Event.model_validate_json(str.encode(repr(raw).replace("'", '"'))).row_fields() == fields


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-11-22T12:00:00+02:00", "2026-11-22T10:00:00.000000Z"),
        ("2026-11-22T10:00:00.5Z", "2026-11-22T10:00:00.500000Z"),
        ("2026-11-22T10:00:00.123456789Z", "2026-11-22T10:00:00.123456Z"),  # Go's RFC3339Nano
        ("2026-11-22 10:00:00Z", "2026-11-22T10:00:00.000000Z"),
        # RFC 3339 allows a lowercase t and z; years before 1000 keep four digits.
        ("2026-11-22t10:00:00z", "2026-11-22T10:00:00.000000Z"),
        ("0999-12-31T23:00:00-02:00", "1000-01-01T01:00:00.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
        ("0042-06-01T12:00:00.25+00:00", "0042-06-01T12:00:00.250000Z"),
        # Outside years 1-9999 once in UTC: refused, not an OverflowError.
        ("0001-01-01T00:00:00+01:00", None),
        ("9999-12-31T23:59:59-01:00", None),
    ],
)
def test_timestamps_are_normalised_to_one_utc_spelling(given: str, stored: str | None) -> None:
    if stored is None:
        assert problems({**BASE, "timestamp": given})[0].startswith("timestamp: ")
    else:
        assert Event.model_validate({**BASE, "timestamp": given}).row_fields()["timestamp"] == stored


@pytest.mark.parametrize("empty", [[], {}, None])
def test_empty_and_null_mean_absent(empty: Any) -> None:
    field = "extra" if empty == {} else "risk_tags"
    assert field not in Event.model_validate({**BASE, field: empty}).row_fields()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"severity": "high"}, "severity: Input should be 'CRITICAL', 'HIGH', 'MEDIUM', 'LOW'"),
        ({"severity": 3}, "severity: Input should be"),
        ({"decision": "maybe"}, "decision: Input should be 'allow', 'deny'"),
        ({"event_type": "login"}, "event_type: must look like 'domain.name'"),
        ({"event_type": "Safety.Decision"}, "event_type: must look like 'domain.name'"),
        ({"event_type": "sealtrail.checkpoint"}, "event_type: types starting with 'sealtrail.'"),
        ({"tenant_id": "acme corp"}, "tenant_id: must be 1-63 characters"),
        ({"tenant_id": "_other"}, "tenant_id: must be 1-63 characters"),
        ({"tenant_id": "a" * 64}, "tenant_id: must be 1-63 characters"),
        # Python's `$` matches before a trailing newline; the patterns must not.
        ({"tenant_id": "acme\n"}, "tenant_id: must be 1-63 characters"),
        ({"tenant_id": "_system\n"}, "tenant_id: must be 1-63 characters"),
        ({"event_type": "safety.decision\n"}, "event_type: must look like 'domain.name'"),
        ({"extra": {"region\n": "v"}}, "extra.region\n.[key]: keys must be 1-128 ASCII"),
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, "timestamp: is outside the years"),
        ({"timestamp": "2026-11-22T10:00:00"}, "timestamp: needs a timezone"),
        ({"timestamp": "yesterday"}, "timestamp: is not an RFC 3339 timestamp"),
        ({"agent_id": 42}, "agent_id: Input should be a valid string"),
        ({"agent_id": ""}, "agent_id: String should have at least 1 character"),
        ({"agent_id": "x" * 257}, "agent_id: String should have at most 256 characters"),
        ({"reason": "x" * (16 * 1024 + 1)}, "reason: String should have at most 16384"),
        ({"risk_tags": ["ok", 1.5]}, "risk_tags[1]: Input should be a valid string"),
        ({"risk_tags": "pii"}, "risk_tags: Input should be a valid list"),
        ({"risk_tags": ["t"] * 65}, "risk_tags: List should have at most 64 items"),
        ({"extra": {"n": 1}}, "extra.n: Input should be a valid string"),
        ({"extra": {"n": 1.5}}, "extra.n: Input should be a valid string"),
        ({"extra": {"bad key": "v"}}, "extra.bad key.[key]: keys must be 1-128 ASCII"),
        ({"extra": {"ключ": "v"}}, "extra.ключ.[key]: keys must be 1-128 ASCII"),
        ({"extra": {f"k{i}": "v" for i in range(65)}}, "extra: Dictionary should have at most 64"),
        ({"decison": "deny"}, "decison: is not a field of an audit event"),
        ({"reason": "bad \ud800 text"}, "reason: Input should be a valid string"),
    ],
)
def test_bad_input_names_the_field(change: dict[str, Any], expected: str) -> None:
    found = problems({**BASE, **change})
    assert any(problem.startswith(expected) for problem in found), found


def test_missing_required_fields_are_named() -> None:
    assert problems({}) == ["event_type: is required", "severity: is required"]


def test_unpaired_surrogates_in_json_are_refused() -> None:
    # They have no UTF-8 form, so such a row could be neither hashed nor shipped.
    assert problems('{"event_type":"a.b","severity":"INFO","reason":"x\\ud800y"}')[0].startswith(
        "Invalid JSON"
    )


def test_malformed_json_is_an_error_not_a_crash() -> None:
    assert problems('{"event_type": "a.b", ') [0].startswith("Invalid JSON")
    assert problems("[1, 2]")[0].startswith("Input should be an object")


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"event_type": "x", "severity": "loud", "extra": {"a": 1}})
    assert [problem.split(":")[0] for problem in found] == ["event_type", "severity", "extra.a"]
