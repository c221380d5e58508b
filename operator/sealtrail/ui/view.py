"""What a page shows, read from its URL and written back into links.

Why all of it lives in the URL: a link pasted into an incident channel must open the same
view for the next person (who sees it through their own tenants), and reloading must not lose
a filter. Parsing refuses nothing a person could fix by looking: an unknown severity or a
malformed date is dropped and reported on the page, never a 400 page of JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlencode

from sealtrail.api.event import Decision, Severity, format_timestamp
from sealtrail.chain.query import Search

__all__ = ["PRESETS", "RANGES", "SAVED", "View", "parse_view"]

#: Time range presets: their URL value, label, and length.
RANGES: Final = {
    "15m": ("last 15 minutes", timedelta(minutes=15)),
    "1h": ("last hour", timedelta(hours=1)),
    "24h": ("last 24 hours", timedelta(hours=24)),
    "7d": ("last 7 days", timedelta(days=7)),
    "30d": ("last 30 days", timedelta(days=30)),
}
#: Built-in saved filters (the user's own are kept by their browser): name, query string.
PRESETS: Final = (
    ("Denied decisions, last 24 h", "decision=deny&range=24h"),
    ("Policy changes, last 7 days", "type=safety.policy_change&range=7d"),
    ("Auth failures", "type=system.auth&decision=deny"),
    ("High and critical, last hour", "severity=CRITICAL&severity=HIGH&range=1h"),
)
SAVED: Final = PRESETS
_MINUTE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?")
_UNSIGNED: Final = re.compile(r"[0-9]{1,18}")
_SLUG: Final = re.compile(r"[^A-Za-z0-9_.-]+")
#: Longest free text or actor searched for (a query is not a place to paste a document).
MAX_TEXT: Final = 256


@dataclass(frozen=True, slots=True)
class View:
    """Every filter of the events page, as the URL spells it."""

    tenant: str | None = None
    types: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    decisions: tuple[str, ...] = ()
    actor: str | None = None
    text: str | None = None
    range: str | None = None  # a key of RANGES, or None for all time / a custom range
    start: str | None = None  # custom range, UTC, "YYYY-MM-DDTHH:MM" as the input gives it
    end: str | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)

    def pairs(self) -> list[tuple[str, str]]:
        """The view as URL parameters, in a stable order."""
        pairs: list[tuple[str, str]] = []
        if self.tenant:
            pairs.append(("tenant", self.tenant))
        pairs += [("type", value) for value in self.types]
        pairs += [("severity", value) for value in self.severities]
        pairs += [("decision", value) for value in self.decisions]
        for name, value in (("actor", self.actor), ("q", self.text), ("range", self.range),
                            ("from", self.start), ("to", self.end)):
            if value:
                pairs.append((name, value))
        for name, number in (("seq_from", self.seq_from), ("seq_to", self.seq_to)):
            if number is not None:
                pairs.append((name, str(number)))
        return pairs

    def query(self, **extra: str | int | None) -> str:
        """The URL query string of this view plus `extra` (None values left out)."""
        pairs = self.pairs() + [(name, str(value)) for name, value in extra.items()
                                if value is not None]
        return urlencode(pairs)

    def with_range(self, start: datetime, end: datetime) -> View:
        """This view narrowed to a custom range (a histogram bar)."""
        return replace(self, range=None, start=_minute(start), end=_minute(end, up=True))

    def bounds(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """The time range as moments (None: open on that side)."""
        if self.range in RANGES:
            return now - RANGES[self.range][1], None
        return _moment(self.start), _moment(self.end)

    def search(self, visible: Sequence[str] | None, now: datetime) -> Search:
        """The store search for a person who may see `visible` tenants (None: all)."""
        tenants: Sequence[str] | None = visible
        if self.tenant is not None:
            tenants = [self.tenant] if visible is None or self.tenant in visible else []
        since, until = self.bounds(now)
        return Search(
            tenants=tenants, event_types=self.types, severities=self.severities,
            decisions=self.decisions, actor=self.actor,
            since=None if since is None else format_timestamp(since),
            until=None if until is None else format_timestamp(until),
            text=self.text, seq_from=self.seq_from, seq_to=self.seq_to)

    def slug(self) -> str:
        """The filter, short, for a file name: `acme_deny_24h` ("all" without a filter)."""
        parts = [self.tenant or "", *self.types, *self.severities, *self.decisions,
                 self.actor or "", self.range or "", (self.start or "").replace(":", ""),
                 (self.end or "").replace(":", ""), "q" if self.text else "",
                 f"seq{self.seq_from}-{self.seq_to or ''}" if self.seq_from else ""]
        slug = _SLUG.sub("-", "_".join(part for part in parts if part)).strip("-_")
        return slug[:120] or "all"

    @property
    def active(self) -> int:
        """How many filters are set (shown beside "Clear filters")."""
        return len([pair for pair in self.pairs() if pair[0] != "from" or not self.end])


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _minute(moment: datetime, *, up: bool = False) -> str:
    """A moment as the custom range spells it (to the second: a histogram bar may be 2 s)."""
    if up and moment.microsecond:
        moment += timedelta(seconds=1)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _one(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    return value[:MAX_TEXT] or None


def _edge(query: Mapping[str, str], name: str, problems: list[str]) -> str | None:
    given = _one(query, name)
    if given is None:
        return None
    try:
        valid = _MINUTE.fullmatch(given) is not None and bool(datetime.fromisoformat(given))
    except ValueError:
        valid = False
    if not valid:
        problems.append(f"{name}: {given[:40]!r} is not a UTC date and time (YYYY-MM-DDTHH:MM)")
        return None
    return given


def _number(query: Mapping[str, str], name: str, problems: list[str]) -> int | None:
    given = _one(query, name)
    if given is not None and not _UNSIGNED.fullmatch(given):
        problems.append(f"{name}: must be a whole number")
        return None
    return None if given is None else int(given)


def parse_view(query: Mapping[str, str], values: Sequence[tuple[str, str]]) -> View:
    """The view a URL asks for (`values`: every parameter, repeats included)."""
    problems: list[str] = []

    def listed(name: str, allowed: Sequence[str] | None) -> tuple[str, ...]:
        found = []
        for key, value in values:
            if key != name or not value:
                continue
            if allowed is not None and value not in allowed:
                problems.append(f"{name}: {value[:40]!r} is not one of {', '.join(allowed)}")
                continue
            if value not in found:
                found.append(value[:128])
        return tuple(found)

    chosen = _one(query, "range")
    if chosen is not None and chosen not in RANGES and chosen != "all":
        problems.append(f"range: {chosen[:20]!r} is not one of {', '.join(RANGES)}")
        chosen = None
    edges = {name: _edge(query, name, problems) for name in ("from", "to")}
    if edges["from"] or edges["to"]:
        chosen = None  # a custom range replaces a preset
    numbers = {name: _number(query, name, problems) for name in ("seq_from", "seq_to")}
    return View(
        tenant=_one(query, "tenant"),
        types=listed("type", None),
        severities=listed("severity", [item.value for item in Severity]),
        decisions=listed("decision", [item.value for item in Decision]),
        actor=_one(query, "actor"), text=_one(query, "q"),
        range=None if chosen == "all" else chosen,
        start=edges["from"], end=edges["to"],
        seq_from=numbers["seq_from"], seq_to=numbers["seq_to"],
        problems=tuple(problems))
