"""Which exports a row goes to, and under which index or stream.

Rules are tried in order and the first match wins, like the kube-apiserver audit policy: a rule
matches a row when its tenant matches one of `tenants` (globs), its type one of `eventTypes`
(globs), and its severity is at least `minSeverity`. With no rules at all, every row goes to
every export. A row no rule matches goes nowhere.

Checkpoint rows are the exception, because they are the evidence a SIEM needs to check a
tenant's chain: one goes to every export that any rule matching its tenant sends to, whatever
the rules say about types and severities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

from sealtrail.api.event import Severity
from sealtrail.api.export import RouteRule
from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE

__all__ = ["Route", "Router", "RoutingError"]

_CACHE_LIMIT: Final = 4096


class RoutingError(ValueError):
    """The rules name an export that does not exist."""


@dataclass(frozen=True, slots=True)
class Route:
    """One destination of a row: an export, and the index and sourcetype the rule gave."""

    export: str
    index: str | None
    sourcetype: str | None = None


class Router:
    """Decides routes; pure, cached by (tenant, type, severity)."""

    def __init__(self, rules: Sequence[RouteRule], exports: Sequence[str]) -> None:
        """Check that every rule names known exports."""
        known = set(exports)
        for number, rule in enumerate(rules):
            unknown = [name for name in rule.exports if name not in known]
            if unknown:
                raise RoutingError(
                    f"routes[{number}].exports: no export named {unknown[0]!r}"
                    f" (exports: {', '.join(sorted(known)) or 'none'})"
                )
        self.rules = tuple(rules)
        self.exports = tuple(exports)
        self._cache: dict[tuple[str, str, str], tuple[Route, ...]] = {}

    def routes(self, tenant: str, event_type: str, severity: str) -> tuple[Route, ...]:
        """Where a row with these attributes goes."""
        key = (tenant, event_type, severity)
        found = self._cache.get(key)
        if found is None:
            found = self._decide(tenant, event_type, severity)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _decide(self, tenant: str, event_type: str, severity: str) -> tuple[Route, ...]:
        if not self.rules:
            return tuple(Route(name, None) for name in self.exports)
        tenant_rules = [rule for rule in self.rules
                        if any(fnmatchcase(tenant, glob) for glob in rule.tenants)]
        if event_type == CHECKPOINT_EVENT_TYPE:
            routes: dict[str, Route] = {}
            for rule in tenant_rules:
                for name in rule.exports:
                    routes.setdefault(name, Route(name, rule.index, rule.sourcetype))
            return tuple(routes.values())
        rank = Severity(severity).rank
        for rule in tenant_rules:
            if rank >= rule.min_severity.rank and any(
                fnmatchcase(event_type, glob) for glob in rule.event_types
            ):
                return tuple(Route(name, rule.index, rule.sourcetype) for name in rule.exports)
        return ()

    def route_for(self, export: str, tenant: str, event_type: str, severity: str) -> Route | None:
        """This export's route for the row, or None if the row does not go there."""
        for route in self.routes(tenant, event_type, severity):
            if route.export == export:
                return route
        return None
