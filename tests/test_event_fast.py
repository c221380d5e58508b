"""The msgspec fast path against pydantic: never looser, never different, and actually taken.

The contract of `event_fast` is one-sided: rows from it must be exactly what
`Event.model_validate_json(...).row_fields()` gives (same keys in the same order, same values,
same types), and whatever pydantic refuses it must answer None. Hypothesis generates events
from every field's valid values, its limits at +-1 and its wrong types, then serializes them as
one object, an array or NDJSON, with duplicate keys, surrogate escapes and stray bytes mixed
in. Other tests hold the fast path to being taken for ordinary events (else it saves nothing).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from sealtrail.api import event_fast
from sealtrail.api.event import (
    _EVENT_TYPE_RE,
    _EXTRA_KEY_RE,
    _TENANT_RE,
    SYSTEM_TENANT,
    Decision,
    Event,
    Severity,
)
from sealtrail.api.event_fast import rows_from_json, rows_from_ndjson
from sealtrail.demo import padded_event_lines

EVENTS = TypeAdapter(list[Event])
SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BASE: dict[str, Any] = {"event_type": "safety.decision", "severity": "HIGH"}
YEAR_1900, YEAR_2100 = datetime(1900, 1, 1), datetime(2100, 1, 1)  # noqa: DTZ001


# -- the reference: what the worker's pydantic path does with the same bytes -----------------


def pydantic_rows(text: bytes) -> list[dict[str, Any]] | None:
    """`_parse_events` on an already stripped JSON body: rows, or None for a refusal."""
    try:
        if text[:1] == b"[":
            return [event.row_fields() for event in EVENTS.validate_json(text)]
        return [Event.model_validate_json(text).row_fields()]
    except ValidationError:
        return None


def pydantic_ndjson_rows(raw: bytes) -> list[dict[str, Any]] | None:
    """`_parse_ndjson`: rows, or None for a refusal."""
    try:
        return [Event.model_validate_json(line).row_fields()
                for line in raw.splitlines() if line.strip()]
    except ValidationError:
        return None


def exact(rows: list[dict[str, Any]] | None) -> Any:
    """Rows with key order and value types made visible to `==`."""
    if rows is None:
        return None
    return [[(key, type(value), value) for key, value in row.items()] for row in rows]


def agrees(fast: list[dict[str, Any]] | None, slow: list[dict[str, Any]] | None) -> bool:
    """The contract: no rows, or exactly pydantic's (which then accepted)."""
    if fast is None:
        return True
    assert slow is not None, f"fast path accepted what pydantic refuses: {fast!r}"
    assert exact(fast) == exact(slow)
    return True


def outcome(fast: list[dict[str, Any]] | None, slow: list[dict[str, Any]] | None) -> str:
    """For `--hypothesis-show-statistics`: how much of each kind the generators made."""
    if fast is not None:
        return "fast path"
    return "refused by both" if slow is None else "left to pydantic, which accepts"


def check_json(body: bytes, *, tally: bool = False) -> list[dict[str, Any]] | None:
    text = body.strip()
    if text[:1] not in (b"[", b"{"):
        assert rows_from_json(text) is None
        if tally:
            event("neither an object nor an array")
        return None
    return compared(rows_from_json(text), pydantic_rows(text), tally=tally)


def check_ndjson(raw: bytes, *, tally: bool = False) -> list[dict[str, Any]] | None:
    return compared(rows_from_ndjson(raw), pydantic_ndjson_rows(raw), tally=tally)


def compared(fast: list[dict[str, Any]] | None, slow: list[dict[str, Any]] | None, *,
             tally: bool) -> list[dict[str, Any]] | None:
    """The fast path's rows, once held to pydantic's: never looser, never different."""
    assert agrees(fast, slow)
    if slow is None:
        assert fast is None
    if tally:
        event(outcome(fast, slow))
    return fast


# -- what a client might send, field by field -------------------------------------------------

ASTRAL = "\U0001f600"  # one code point, four UTF-8 bytes, two UTF-16 units
WIDE = "\u00e9"  # one code point, two UTF-8 bytes
LONE_SURROGATES = ("\ud800", "\udfff", "a\udc00b", "\udbff", "\ude00\ud83d")
# Two lone surrogates in a Python str; escaped with ensure_ascii they spell one valid pair.
PAIR_AS_SURROGATES = "\ud83d\ude00"


def rarely(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in `one_in` draws (`integers` would favour the 0 end far more)."""
    return st.sampled_from([False] * (one_in - 1) + [True])


def around(limit: int, *, minimum: int = 1) -> st.SearchStrategy[str]:
    """Strings at a length limit and one past it, counted in code points of every width."""
    lengths = sorted({0, minimum - 1, minimum, limit - 1, limit, limit + 1} - {-1})
    return st.builds(lambda length, char: char * length,
                     st.sampled_from(lengths), st.sampled_from(["x", WIDE, ASTRAL, "\x7f"]))


def text(limit: int, *, minimum: int = 1) -> st.SearchStrategy[Any]:
    """A text field's values: ordinary, at the bounds, odd characters, and wrong types."""
    return st.one_of(
        st.text(min_size=minimum, max_size=min(limit, 40)),
        around(limit, minimum=minimum),
        st.sampled_from([*LONE_SURROGATES, PAIR_AS_SURROGATES, "tab\there", "nul\x00",
                         "line\nbreak", "\u2028", 'quote"back\\slash']),
        wrong_type(),
    )


def wrong_type() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.integers(-3, 3), st.booleans(),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.just([]), st.just({}), st.just(["x"]), st.just({"a": "b"}))


def regex_values(pattern: re.Pattern[str], edges: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.from_regex(pattern, fullmatch=True),
                     st.sampled_from(edges),
                     st.text(alphabet="aZ0_.-:/\n ", min_size=0, max_size=8),
                     wrong_type())


EVENT_TYPES = regex_values(_EVENT_TYPE_RE, [
    *(kind for kind in ("safety.decision", "safety.approval", "system.auth")),
    "a." + "b" * 126, "a." + "b" * 127, "sealtrail.checkpoint", "sealtrail.x",
    "sealtrails.x", "Safety.decision", "safety", "safety.decision\n", "safety..decision",
    "safety.decision.", "", ".a.b", "a.b_c.d9",
])
TENANTS = regex_values(_TENANT_RE, [
    "acme", SYSTEM_TENANT, "_systemx", "_sys", "acme\n", "\nacme", "a" * 63, "a" * 64,
    "-acme", ".acme", "Acme.Corp-1_x", "", "acm\u00e9",
])
SEVERITIES = st.one_of(st.sampled_from([*Severity, "high", "Critical", "HIGH ", "", "INFO\n"]),
                       wrong_type())
DECISIONS = st.one_of(st.sampled_from([*Decision, "ALLOW", "Deny", "", "allow "]),
                      wrong_type())
TIMESTAMPS = st.one_of(
    st.sampled_from([
        "2026-11-22T10:42:25Z", "2026-11-22t10:42:25z", "2026-11-22T12:42:25+02:00",
        "2026-11-22T10:42:25.123456789Z", "2026-11-22T10:42:25.5-07:30",
        "2026-11-22T10:42:25", "2026-11-22", "2026-11-22 10:42:25Z", "20261122T104225Z",
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-02-30T00:00:00Z",
        "2026-11-22T10:42:25.1" + "0" * 43 + "Z", "2026-11-22T10:42:25.1" + "0" * 42 + "Z",
        "", " 2026-11-22T10:42:25Z", "2026-11-22T10:42:25Z\n", "2026-11-22T10:42:25+24:00",
        "2026-11-22T10:42:25\u0660Z",
    ]),
    st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat()),
    st.text(alphabet="0123456789-:TtZz+. ", max_size=30),
    wrong_type(),
)
TAG_LISTS = st.one_of(
    st.lists(text(256), max_size=3),
    st.lists(st.sampled_from(["pii", "prod"]), min_size=63, max_size=65),
    wrong_type(),
)
EXTRA_KEYS = st.one_of(
    st.from_regex(_EXTRA_KEY_RE, fullmatch=True),
    st.sampled_from(["region", "k8s.io/namespace", "a" * 128, "a" * 129, "", "-a", ".a",
                     "a\n", "caf\u00e9", "a b", "_x:y/z-1"]),
)
EXTRA_VALUES = st.one_of(st.text(max_size=20), around(8 * 1024, minimum=0),
                         st.sampled_from(LONE_SURROGATES), wrong_type())
EXTRAS = st.one_of(
    st.dictionaries(EXTRA_KEYS, EXTRA_VALUES, max_size=4),
    st.integers(63, 65).map(lambda count: {f"k{number}": "v" for number in range(count)}),
    wrong_type(),
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_type": EVENT_TYPES,
    "severity": SEVERITIES,
    "tenant_id": TENANTS,
    "timestamp": TIMESTAMPS,
    "agent_id": text(256),
    "job_id": text(256),
    "action": text(256),
    "decision": DECISIONS,
    "matched_rule": text(1024),
    "reason": text(16 * 1024),
    "risk_tags": TAG_LISTS,
    "capabilities": TAG_LISTS,
    "policy_version": text(256),
    "identity": text(1024),
    "extra": EXTRAS,
}


def good_text(limit: int, *, minimum: int = 1) -> st.SearchStrategy[str]:
    """Text `Event` accepts, its bounds included, in characters of every UTF-8 width."""
    return st.one_of(
        st.text(min_size=minimum, max_size=min(limit, 30)),
        st.builds(lambda length, char: char * length, st.sampled_from([minimum, limit]),
                  st.sampled_from(["x", WIDE, ASTRAL, "\x7f", "\n"])).filter(
            lambda value: len(value) >= 1 or minimum == 0),
    )


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(values, st.none())


GOOD_TAGS = maybe(st.one_of(st.lists(good_text(256), max_size=3),
                            st.lists(st.sampled_from(["pii", "prod"]), min_size=64, max_size=64)))
GOOD_EXTRA_KEYS = st.one_of(st.from_regex(_EXTRA_KEY_RE, fullmatch=True),
                            st.sampled_from(["region", "k8s.io/namespace", "a" * 128]))
# Only values `Event` accepts, to hold the fast path to being taken.
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_type": st.one_of(
        st.from_regex(_EVENT_TYPE_RE, fullmatch=True).filter(
            lambda kind: len(kind) <= 128 and not kind.startswith("sealtrail.")),
        st.sampled_from(["safety.decision", "system.auth", "a." + "b" * 126, "sealtrails.x"])),
    "severity": st.sampled_from(list(Severity)),
    "tenant_id": maybe(st.one_of(st.from_regex(_TENANT_RE, fullmatch=True),
                                 st.sampled_from([SYSTEM_TENANT, "a" * 63, "acme"]))),
    "timestamp": maybe(st.one_of(
        st.datetimes(YEAR_1900, YEAR_2100, timezones=st.timezones()).map(
            lambda moment: moment.isoformat()),
        st.sampled_from(["2026-11-22T10:42:25Z", "2026-11-22t10:42:25.123456789z",
                         "2026-11-22T12:42:25+02:00", "2026-11-22 10:42:25-07:30",
                         "2026-11-22T10:42:25.1" + "0" * 42 + "Z"]))),
    "agent_id": maybe(good_text(256)),
    "job_id": maybe(good_text(256)),
    "action": maybe(good_text(256)),
    "decision": maybe(st.sampled_from(list(Decision))),
    "matched_rule": maybe(good_text(1024)),
    "reason": maybe(good_text(16 * 1024)),
    "risk_tags": GOOD_TAGS,
    "capabilities": GOOD_TAGS,
    "policy_version": maybe(good_text(256)),
    "identity": maybe(good_text(1024)),
    "extra": maybe(st.one_of(
        st.dictionaries(GOOD_EXTRA_KEYS, good_text(8 * 1024, minimum=0), max_size=4),
        st.just({f"k{number}": "v" for number in range(64)}))),
}
# Mostly good values, sometimes a hostile one: most events then have one thing wrong at most.
MIXED_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    name: rarely(10).flatmap(lambda hostile, name=name: FIELDS[name] if hostile
                             else VALID_FIELDS[name])
    for name in FIELDS
}


@st.composite
def pairs(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]],
          absent_one_in: int = 2, *, valid: bool = False) -> list[tuple[str, Any]]:
    """An event as key/value pairs (so that a key may come twice), in a random order."""
    chosen = []
    for name, values in fields.items():
        keep = name in ("event_type", "severity") or not draw(rarely(absent_one_in))
        if name in ("event_type", "severity") and not valid and draw(rarely(30)):
            keep = False  # a required field missing
        if keep:
            chosen.append((name, draw(values)))
    return draw(st.permutations(chosen))


@st.composite
def mutated_pairs(draw: st.DrawFn) -> list[tuple[str, Any]]:
    event = list(draw(pairs(MIXED_FIELDS)))
    if draw(rarely(10)):
        event.append((draw(st.sampled_from(["decison", "Severity", "seq", "extra "])), "x"))
    if event and draw(rarely(5)):  # a key given twice
        name = draw(st.sampled_from([name for name, _ in event]))
        event.insert(draw(st.integers(0, len(event))), (name, draw(MIXED_FIELDS.get(name, text(9)))))
    return event


def dumps(value: Any, *, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=False)


def encode(document: str) -> bytes:
    # A lone surrogate that is not escaped becomes CESU-8 bytes: not UTF-8, which both refuse.
    return document.encode("utf-8", "surrogatepass")


def serialize(event: list[tuple[str, Any]], *, ascii_only: bool, spaced: bool) -> str:
    colon, comma = (": ", ", ") if spaced else (":", ",")
    return "{" + comma.join(dumps(key, ascii_only=ascii_only) + colon
                            + dumps(value, ascii_only=ascii_only) for key, value in event) + "}"


JUNK = [b"\\", b'"', b",", b"}", b"{", b"]", b"\x00", b"\xff", b"\xef\xbb\xbf", b" ", b"\t",
        b"\x0c", b"\n", b"\r", b"\\ud800", b"null", b",}", b"1"]


@st.composite
def stray_bytes(draw: st.DrawFn, body: bytes) -> bytes:
    """The body, or the body with a little garbage put in, taken out or put in front."""
    choice = draw(st.sampled_from(["keep"] * 6 + ["insert", "cut"]))
    if choice == "keep" or not body:
        return body
    at = draw(st.integers(0, len(body)))
    if choice == "insert":
        return body[:at] + draw(st.sampled_from(JUNK)) + body[at:]
    return body[:at] + body[at + draw(st.integers(1, 3)):]


@st.composite
def json_bodies(draw: st.DrawFn, events: st.SearchStrategy[list[tuple[str, Any]]]) -> bytes:
    ascii_only, spaced = draw(st.booleans()), draw(st.booleans())
    if draw(st.booleans()):
        body = serialize(draw(events), ascii_only=ascii_only, spaced=spaced)
    else:
        items = draw(st.lists(st.one_of(
            events.map(lambda event: serialize(event, ascii_only=ascii_only, spaced=spaced)),
            st.sampled_from(['"x"', "1", "null", "[]", "[{}]"]) if draw(st.booleans())
            else st.nothing()), max_size=4))
        body = "[" + (",\n " if spaced else ",").join(items) + "]"
    return encode(body)


# -- the differential tests -------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_json_bodies_agree_with_pydantic(data: st.DataObject) -> None:
    body = data.draw(json_bodies(mutated_pairs()))
    check_json(data.draw(stray_bytes(body)), tally=True)


@SETTINGS
@given(st.data())
def test_ndjson_bodies_agree_with_pydantic(data: st.DataObject) -> None:
    ascii_only = data.draw(st.booleans())
    lines = [encode(serialize(event, ascii_only=ascii_only, spaced=data.draw(st.booleans())))
             for event in data.draw(st.lists(mutated_pairs(), max_size=4))]
    separators = st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", b"\n \t\n", b"\n\x0c\n"])
    raw = b"".join(line + data.draw(separators) for line in lines)
    check_ndjson(data.draw(stray_bytes(raw)), tally=True)


@SETTINGS
@given(st.data())
def test_valid_events_take_the_fast_path(data: st.DataObject) -> None:
    events = data.draw(st.lists(pairs(VALID_FIELDS, 3, valid=True), min_size=1, max_size=4))
    ascii_only, spaced = data.draw(st.booleans()), data.draw(st.booleans())
    objects = [encode(serialize(event, ascii_only=ascii_only, spaced=spaced))
               for event in events]
    one = check_json(objects[0])
    many = check_json(b"[" + b",".join(objects) + b"]")
    lines = check_ndjson(b"\n".join(objects))
    assert one is not None
    assert many is not None
    assert lines is not None
    assert exact(many) == exact(lines)
    assert exact(many[:1]) == exact(one)


# -- the fast path is taken for what ordinary clients send --------------------------------------


def ordinary_lines(count: int) -> list[bytes]:
    """The benchmarks' events (sample events padded to about 500 bytes)."""
    return padded_event_lines(count)


def test_ordinary_events_take_the_fast_path_as_an_object_an_array_and_ndjson() -> None:
    lines = ordinary_lines(50)
    for line in lines:
        assert check_json(line) is not None
    rows = check_json(b"[" + b",".join(lines) + b"]")
    assert rows is not None
    assert len(rows) == 50
    assert exact(check_ndjson(b"\n".join(lines) + b"\n")) == exact(rows)
    assert exact(check_ndjson(b"\r\n".join(lines))) == exact(rows)


def test_pretty_printed_and_python_json_dumps_bodies_take_the_fast_path() -> None:
    event = {**BASE, "tenant_id": "acme", "reason": f'caf{WIDE} {ASTRAL} "quoted"\n',
             "timestamp": "2026-11-22T12:42:25.123456789+02:00", "risk_tags": [],
             "extra": {}, "decision": None}
    for body in (json.dumps(event).encode(), json.dumps([event, event], indent=2).encode(),
                 json.dumps(event, ensure_ascii=False).encode()):
        rows = check_json(body)
        assert rows is not None
        assert rows[0] == {**BASE, "tenant_id": "acme", "reason": event["reason"],
                           "timestamp": "2026-11-22T10:42:25.123456Z"}


def test_an_empty_array_is_no_rows() -> None:
    assert rows_from_json(b"[]") == []
    assert rows_from_ndjson(b"\n \n") == []


# -- odd corners, named ---------------------------------------------------------------------------


def body_with(**fields: Any) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


@pytest.mark.parametrize(("body", "fast"), [
    (body_with(tenant_id="acme\n"), False),
    (body_with(tenant_id=SYSTEM_TENANT), True),
    (body_with(tenant_id="a" * 63), True),
    (body_with(tenant_id="a" * 64), False),
    (body_with(event_type="sealtrail.checkpoint"), False),
    (body_with(event_type="a." + "b" * 126), True),
    (body_with(event_type="a." + "b" * 127), False),
    (body_with(event_type="safety.decision\n"), False),
    (body_with(severity="high"), False),
    (body_with(decision="ALLOW"), False),
    (body_with(agent_id=1), False),
    (body_with(tenant_id=1), False),
    (body_with(tenant_id=True), False),
    (body_with(event_type=1), False),
    (body_with(severity=None), False),
    (body_with(timestamp=1), False),
    (body_with(extra=["k"]), False),
    (body_with(risk_tags="pii"), False),
    (body_with(agent_id=""), False),
    (body_with(agent_id=None, risk_tags=[], capabilities=None, extra={}), True),
    (body_with(risk_tags=["x"] * 64), True),
    (body_with(risk_tags=["x"] * 65), False),
    (body_with(risk_tags=[""]), False),
    (body_with(risk_tags=[None]), False),
    (body_with(extra={"k": ""}), True),
    (body_with(extra={"k": 1}), False),
    (body_with(extra={"k\n": "v"}), False),
    (body_with(extra={"a" * 128: "v"}), True),
    (body_with(extra={"a" * 129: "v"}), False),
    (body_with(extra={f"k{number}": "v" for number in range(65)}), False),
    (body_with(reason=ASTRAL * 16 * 1024), True),
    (body_with(reason=ASTRAL * (16 * 1024 + 1)), False),
    (body_with(extra={"k": ASTRAL * 8 * 1024}), True),
    (body_with(extra={"k": WIDE * (8 * 1024 + 1)}), False),
    (body_with(timestamp="2026-11-22t10:42:25.123456789z"), True),
    (body_with(timestamp="2026-11-22T10:42:25"), False),
    (body_with(timestamp=""), False),
    (body_with(timestamp="0001-01-01T00:00:00+01:00"), False),
    (body_with(timestamp="2026-11-22T10:42:25.1" + "0" * 42 + "Z"), True),
    (body_with(timestamp="2026-11-22T10:42:25.1" + "0" * 43 + "Z"), False),
    (body_with(decison="allow"), False),
    (b'{"event_type":"a.b","severity":"HIGH","reason":"\\ud800"}', False),
    (b'{"event_type":"a.b","severity":"HIGH","reason":"\\udc00\\ud800"}', False),
    (b'{"event_type":"a.b","severity":"HIGH","extra":{"k":"\\uDBFF"}}', False),
    (b'{"event_type":"a.b","severity":"HIGH","reason":"\\ud83d\\ude00"}', True),
    (b'{"event_type":"a.b","severity":"HIGH","reason":"\xed\xa0\x80"}', False),
    (b'{"event_type":"a.b","severity":"HIGH","reason":"\xff"}', False),
    (b'{"event_type":"a.b","severity":"HIGH","reason":"a\tb"}', False),
    (b'\xef\xbb\xbf{"event_type":"a.b","severity":"HIGH"}', False),
    (b'{"event_type":"a.b","severity":"HIGH",}', False),
    (b'{"event_type":"a.b","severity":"HIGH"} {}', False),
    (b'[{"event_type":"a.b","severity":"HIGH"},]', False),
    (b'[{"event_type":"a.b","severity":"HIGH"},"x"]', False),
    (b'{"event_type":"a.b","severity":"LOW","severity":"HIGH"}', True),
    (b'{"event_type":"a.b","severity":"HIGH","agent_id":"x","agent_id":null}', True),
    (b'{"event_type":"a.b","severity":"HIGH","agent_id":1,"agent_id":"y"}', False),
    (b'[{"event_type":"a.b","severity":"HIGH"}, [] ]', False),
    (b'{"event_\\u0074ype":"a.b","severity":"\\u0048IGH"}', True),
    (b'{"event_type":"a.b","severity":"HIGH","extra":{"k\\u000a":"v"}}', False),
])
def test_odd_corners(body: bytes, fast: bool) -> None:
    assert (check_json(body) is not None) is fast
    assert (check_ndjson(body) is not None) is fast


TEXT_LIMITS = {"agent_id": 256, "job_id": 256, "action": 256, "policy_version": 256,
               "matched_rule": 1024, "identity": 1024, "reason": 16 * 1024}


@pytest.mark.parametrize(("name", "limit"), TEXT_LIMITS.items())
def test_text_limits_are_the_models(name: str, limit: int) -> None:
    """Lengths in code points, as pydantic counts them; both ends refused by both."""
    for char in ("x", WIDE, ASTRAL):
        assert check_json(body_with(**{name: char * limit})) is not None
        for refused in (body_with(**{name: char * (limit + 1)}), body_with(**{name: ""})):
            assert pydantic_rows(refused) is None
            assert rows_from_json(refused) is None
    assert check_json(body_with(risk_tags=[ASTRAL * 256], capabilities=[WIDE])) is not None
    assert pydantic_rows(body_with(capabilities=[ASTRAL * 257])) is None
    assert rows_from_json(body_with(capabilities=[ASTRAL * 257])) is None


@pytest.mark.parametrize("body", [b'"x"', b"1", b"null", b" {}"])
def test_anything_but_an_object_or_an_array_is_left_to_pydantic(body: bytes) -> None:
    assert rows_from_json(body) is None


def test_ndjson_lines_must_each_be_one_event() -> None:
    line = body_with()
    assert check_ndjson(line + b"\n" + line) is not None
    assert check_ndjson(b"[" + line + b"]") is None
    assert check_ndjson(line + b"," + line) is None
    assert check_ndjson(line + b"\n\x0c" + line) is None


def test_refused_names_are_not_remembered_and_the_memory_is_bounded() -> None:
    for _ in range(2):
        assert check_json(body_with(tenant_id="acme\n")) is None
    known = event_fast._Known(event_fast._check_tenant)
    for number in range(event_fast._Known._LIMIT + 10):
        known.require(f"t{number}")
    assert len(known._values) == event_fast._Known._LIMIT
    known.require("t-new")  # checked, not stored
    with pytest.raises(ValueError, match="letters, digits"):
        known.require("t\n")


def test_a_surrogate_that_got_through_the_decoder_would_still_be_refused() -> None:
    # msgspec 0.20 refuses unpaired surrogates itself (the tests above hold it to that); this
    # is the check behind it, for a decoder that one day would not.
    escaped = b'{"reason":"\\ud800"}'
    assert not event_fast._surely_utf8(escaped, [{"reason": "\ud800"}])
    assert event_fast._surely_utf8(escaped, [{"reason": ASTRAL}])
    assert event_fast._surely_utf8(b'{"reason":"\\n"}', [{"reason": "\ud800"}])  # no escape, no surrogate


def test_the_spellings_are_the_enums() -> None:
    assert get_args(event_fast._SeverityName) == tuple(severity.value for severity in Severity)
    assert get_args(event_fast._DecisionName) == tuple(decision.value for decision in Decision)
    assert event_fast._Event.__struct_fields__ == tuple(Event.model_fields)
