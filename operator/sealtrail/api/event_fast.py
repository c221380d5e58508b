r"""A fast path for ingest: request bytes straight to row fields, for events surely fine.

pydantic spends most of what ingest costs per event (`Event.model_validate_json`). msgspec
decodes and checks the same shape several times faster, so ingest tries it first. The contract
is one-sided: a result from here is exactly what `Event.model_validate_json(...).row_fields()`
would give, and `None` means only "not sure" - the caller then runs pydantic, which either
accepts (and its result is used) or names the problem precisely. So everything here may be
stricter than `Event`, never looser; msgspec's errors are never shown to anyone.

What this leaves to pydantic although pydantic accepts it:
- an object key given twice whose earlier value is invalid (pydantic keeps the last value and
  never looks at the earlier one; msgspec checks both, then also keeps the last). A key given
  twice with valid values takes the fast path and keeps the last value, as pydantic does.
- anything `rows_from_json` is given that does not start with `[` or `{` (the caller's
  pydantic path explains why a scalar is no event).
Unpaired surrogates (`\ud800`, escaped or as CESU-8 bytes) are refused by msgspec and pydantic
alike; a check behind msgspec's holds it to that, since the chain hashes UTF-8. Escaped pairs
(what `json.dumps` sends for an emoji) take the fast path.

Limits are restated from `sealtrail.api.event` (a test holds them to it); the syntax of event
types, tenants and `extra` keys is checked by `event`'s own check functions, and timestamps go
through its `parse_timestamp`, so there is one spelling of a row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

import msgspec

from sealtrail.api.event import (
    _check_event_type,
    _check_extra_key,
    _check_tenant,
    parse_timestamp,
)

__all__ = ["rows_from_json", "rows_from_ndjson"]

# The spellings `Severity` and `Decision` accept (a test holds them equal to the enums).
_SeverityName = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO"]
_DecisionName = Literal["allow", "deny", "require_approval", "throttle"]

# Only lengths and types here: msgspec runs a `pattern` through Python's `re` for every value,
# which costs more than the rest of decoding. Syntax is checked once per distinct value below.
_EventType = Annotated[str, msgspec.Meta(max_length=128)]
# `parse_timestamp` refuses "" and anything over 64 characters; so does this, so that "" can
# never read as "absent" below.
_Timestamp = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_MediumText = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
_LongText = Annotated[str, msgspec.Meta(min_length=1, max_length=16 * 1024)]
_Tags = Annotated[list[_ShortText], msgspec.Meta(max_length=64)]
_ExtraValue = Annotated[str, msgspec.Meta(max_length=8 * 1024)]
_Extra = Annotated[dict[str, _ExtraValue], msgspec.Meta(max_length=64)]


class _Event(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`Event`'s fields in `Event`'s order, so that rows list their keys in the same order.

    `omit_defaults`: `to_builtins` then leaves out the fields that are None, as rows do.
    """

    event_type: _EventType
    severity: _SeverityName
    tenant_id: str | None = None
    timestamp: _Timestamp | None = None
    agent_id: _ShortText | None = None
    job_id: _ShortText | None = None
    action: _ShortText | None = None
    decision: _DecisionName | None = None
    matched_rule: _MediumText | None = None
    reason: _LongText | None = None
    risk_tags: _Tags | None = None
    capabilities: _Tags | None = None
    policy_version: _ShortText | None = None
    identity: _MediumText | None = None
    extra: _Extra | None = None


_ONE: Final = msgspec.json.Decoder(_Event)
_MANY: Final = msgspec.json.Decoder(list[_Event])
# Where an escape could spell a surrogate (`\uD800`-`\uDFFF`), and then some.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD]")


class _Known:
    """Values that passed one of `event`'s syntax checks; a set lookup instead of a regex.

    A worker sees a handful of tenants, types and `extra` keys again and again. Bounded, so a
    client sending ever new names costs a regex per value (as without the cache), not memory.
    """

    __slots__ = ("_check", "_values")
    _LIMIT: Final = 4096

    def __init__(self, check: Callable[[str], str]) -> None:
        self._check = check
        self._values: set[str] = set()

    def require(self, value: str) -> None:
        """Return if `value` passes the check; raise ValueError (the check's) if it does not."""
        if value not in self._values:
            self._check(value)
            if len(self._values) < self._LIMIT:
                self._values.add(value)

    def require_all(self, values: dict[str, str]) -> None:
        """`require` for every key of `values`; one C-level pass when they are all known."""
        if not self._values.issuperset(values):
            for value in values:
                self.require(value)


_EVENT_TYPES: Final = _Known(_check_event_type)
_TENANTS: Final = _Known(_check_tenant)
_EXTRA_KEYS: Final = _Known(_check_extra_key)


def _rows(events: list[_Event]) -> list[dict[str, Any]]:
    """Row fields of decoded events; raises ValueError for what only `event`'s checks refuse."""
    rows: list[dict[str, Any]] = msgspec.to_builtins(events)
    for row in rows:
        _EVENT_TYPES.require(row["event_type"])
        if "tenant_id" in row:
            _TENANTS.require(row["tenant_id"])
        if "timestamp" in row:
            row["timestamp"] = parse_timestamp(row["timestamp"])
        # `[]` and `{}` mean "absent", as they do to `Event`.
        if "risk_tags" in row and not row["risk_tags"]:
            del row["risk_tags"]
        if "capabilities" in row and not row["capabilities"]:
            del row["capabilities"]
        if "extra" in row:
            if row["extra"]:
                _EXTRA_KEYS.require_all(row["extra"])
            else:
                del row["extra"]
    return rows


def _surely_utf8(text: bytes, rows: list[dict[str, Any]]) -> bool:
    r"""Whether no string in `rows` holds an unpaired surrogate (which has no UTF-8 form).

    msgspec refuses `\ud800` and friends itself; this holds it to that, since the chain hashes
    UTF-8 and pydantic refuses them. Only bodies that escape a surrogate pay for the check, and
    only bodies with a backslash pay for looking: a one-byte `in` is a memchr, nearly free,
    where searching every body for `\ud` would cost a quarter of the fast path.
    """
    if b"\\" not in text or _SURROGATE_ESCAPE.search(text) is None:
        return True
    try:
        msgspec.json.encode(rows)
    except UnicodeEncodeError:
        return False
    return True


def rows_from_json(text: bytes) -> list[dict[str, Any]] | None:
    """The rows of a JSON body, or None when pydantic must decide (see the module's doc).

    `text`: a stripped body starting with b'[' (an array of events) or b'{' (one event).
    Anything else is None: the caller's pydantic path owns every message about bad input.
    """
    first = text[:1]
    try:
        if first == b"[":
            events = _MANY.decode(text)
        elif first == b"{":
            events = [_ONE.decode(text)]
        else:
            return None
        rows = _rows(events)
    except (msgspec.MsgspecError, ValueError):
        # ValueError: parse_timestamp's refusals, and UnicodeDecodeError for bytes that are
        # not UTF-8 (msgspec raises that rather than a DecodeError).
        return None
    return rows if _surely_utf8(text, rows) else None


def rows_from_ndjson(raw: bytes) -> list[dict[str, Any]] | None:
    """The rows of an NDJSON body, or None when pydantic must decide (see the module's doc).

    Lines are split and blank lines skipped exactly as the worker's `_parse_ndjson` does, so
    that a result here has the same rows in the same order; every other line must be one event.
    """
    try:
        rows = _rows([_ONE.decode(line) for line in raw.splitlines() if line.strip()])
    except (msgspec.MsgspecError, ValueError):
        return None
    return rows if _surely_utf8(raw, rows) else None
