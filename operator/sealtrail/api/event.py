"""The audit event as applications send it, and its limits.

An event becomes a chain row once the store adds `seq`, `tenant_seq`, `prev_hash` and
`record_hash`. Everything here is about what a *client* may say: the store's own rows (signed
checkpoints, `sealtrail.*` types) are built by the store and never pass through this model.

Why so strict: a row is hashed as canonical JSON and re-checked inside the SIEM by other
languages, so every value must have exactly one spelling. Strings only (no floats, no
coercion of `1` into `"1"`), timestamps normalised to one RFC 3339 UTC form, and absent,
null, empty-list and empty-map fields all mean "not there" and are left out of the row.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "RESERVED_EVENT_PREFIX",
    "SYSTEM_TENANT",
    "Decision",
    "Event",
    "Severity",
    "format_timestamp",
    "parse_timestamp",
]

#: Largest serialized event (canonical row JSON) the store accepts.
MAX_EVENT_BYTES: Final = 256 * 1024

#: Tenant of chain-wide rows: events that belong to no one tenant.
SYSTEM_TENANT: Final = "_system"

#: Event types under this prefix are written by sealtrail itself (checkpoints); a client that
#: could send one could forge evidence, so the model refuses them.
RESERVED_EVENT_PREFIX: Final = "sealtrail."

#: The well-known types from the product this grew from; any other `domain.name` is allowed.
EVENT_TYPES: Final = (
    "safety.decision",
    "safety.approval",
    "safety.policy_change",
    "safety.violation",
    "system.auth",
)


class Severity(enum.StrEnum):
    """How much a security team should care, highest first."""

    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    INFO = "INFO"

    @property
    def rank(self) -> int:
        """4 for CRITICAL down to 0 for INFO, so that `>=` means "at least as severe"."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK: Final = {
    Severity.CRITICAL: 4,
    Severity.HIGH: 3,
    Severity.MEDIUM: 2,
    Severity.LOW: 1,
    Severity.INFO: 0,
}


class Decision(enum.StrEnum):
    """Outcome of a policy decision."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"
    THROTTLE = "throttle"


# Matched with `fullmatch`, never `match` + `$`: Python's `$` also matches before a trailing
# newline, which would let `acme\n` start a look-alike chain of its own.
_TENANT_RE: Final = re.compile(r"_system|[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_EVENT_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
# Keys of `extra` are identifiers. Keeping them ASCII also makes JCS key order (UTF-16 code
# units) coincide with plain byte order, which is what lets us canonicalize at C speed.
_EXTRA_KEY_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}")


# pydantic-core already refuses unpaired surrogates (they have no UTF-8 form), on both the
# Python and the JSON path; a test holds it to that, since the hash depends on it.
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
MediumText = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=16 * 1024)]
Tag = ShortText


def _check_tenant(value: str) -> str:
    if not _TENANT_RE.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of letters, digits, '_', '.', '-', starting with a "
            "letter or digit (or be exactly '_system')"
        )
    return value


def _check_event_type(value: str) -> str:
    if len(value) > 128 or not _EVENT_TYPE_RE.fullmatch(value):
        raise ValueError(
            "must look like 'domain.name': lowercase words of letters, digits and '_' "
            "joined by dots, at most 128 characters (known types: " + ", ".join(EVENT_TYPES) + ")"
        )
    if value.startswith(RESERVED_EVENT_PREFIX):
        raise ValueError(
            f"types starting with {RESERVED_EVENT_PREFIX!r} are written by sealtrail only"
        )
    return value


def _check_extra_key(value: str) -> str:
    if not _EXTRA_KEY_RE.fullmatch(value):
        raise ValueError(
            "keys must be 1-128 ASCII characters of letters, digits and '_.:/-', "
            "not starting with a punctuation mark"
        )
    return value


ExtraKey = Annotated[str, AfterValidator(_check_extra_key)]
ExtraValue = Annotated[str, StringConstraints(max_length=8 * 1024)]


def format_timestamp(moment: datetime) -> str:
    """Spell a moment the one way rows spell it: UTC, a 4-digit year, microseconds, `Z`.

    The year is zero-padded by hand: `strftime("%Y")` writes year 1 as `1` on glibc. Raises
    ValueError (not OverflowError) for a moment outside years 1-9999 once in UTC.
    """
    if moment.tzinfo is None:
        raise ValueError("a timestamp needs a timezone")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 0001-9999 once converted to UTC") from None
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z"


def parse_timestamp(text: str) -> str:
    """An RFC 3339 timestamp with a timezone, in the one spelling rows use.

    RFC 3339 allows a lowercase `t` and `z`; they mean the same as `T` and `Z`. Digits past
    microseconds (Go's RFC3339Nano sends nine) are cut, not refused. Raises ValueError with a
    message for the field's name to go in front of.
    """
    if len(text) > 64:
        raise ValueError("is not an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(text.replace("t", "T").replace("z", "Z"))
    except ValueError:
        raise ValueError("is not an RFC 3339 timestamp (e.g. 2026-11-22T10:42:25Z)") from None
    if moment.tzinfo is None:
        raise ValueError("needs a timezone ('Z' or an offset such as +02:00)")
    return format_timestamp(moment)


class Event(BaseModel):
    """One audit event as a client sends it (snake_case, as SIEM schemas spell it).

    Unknown fields are refused rather than dropped: a misspelt `decison` silently lost would be
    an audit gap nobody notices.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    event_type: Annotated[str, AfterValidator(_check_event_type)]
    # Strict mode would refuse the plain string for an enum when validating Python objects;
    # lax mode on these two fields accepts exactly the enum's spellings and nothing else.
    severity: Annotated[Severity, Field(strict=False)]
    tenant_id: Annotated[str, AfterValidator(_check_tenant)] | None = None
    timestamp: str | None = Field(
        default=None,
        description="RFC 3339 with a timezone; normalised to UTC. Defaults to the append time.",
    )
    agent_id: ShortText | None = None
    job_id: ShortText | None = None
    action: ShortText | None = None
    decision: Annotated[Decision, Field(strict=False)] | None = None
    matched_rule: MediumText | None = None
    reason: LongText | None = None
    risk_tags: Annotated[list[Tag], Field(max_length=64)] | None = None
    capabilities: Annotated[list[Tag], Field(max_length=64)] | None = None
    policy_version: ShortText | None = None
    identity: MediumText | None = None
    extra: Annotated[dict[ExtraKey, ExtraValue], Field(max_length=64)] | None = None

    @field_validator("timestamp")
    @classmethod
    def _normalise_timestamp(cls, value: str | None) -> str | None:
        return None if value is None else parse_timestamp(value)

    @field_validator("risk_tags", "capabilities", "extra")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        # `[]`, `{}` and a missing field mean the same; one spelling keeps the hash unambiguous.
        return value or None

    def row_fields(self) -> dict[str, Any]:
        """The event's part of a row: the fields that are set, enums as their strings.

        Read straight from the instance (`model_dump` costs three times as much, and this runs
        once per stored event): validation already made every value a str, list or dict.
        """
        fields = {name: value for name, value in self.__dict__.items() if value is not None}
        fields["severity"] = self.severity.value
        if self.decision is not None:
            fields["decision"] = self.decision.value
        return fields
