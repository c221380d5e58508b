"""What a send attempt came to, and the one table that classifies HTTP answers.

Four classes, because each calls for a different response from the export loop:

| class      | the loop                                                                    |
|------------|-----------------------------------------------------------------------------|
| SUCCESS    | advances the cursor                                                          |
| RETRYABLE  | backs off (full jitter, capped; `Retry-After` honoured) and tries again      |
| PERMANENT  | records it, backs off, tries again; N in a row pause the export (rows are    |
|            | never skipped); 413 splits the batch first, down to one row                  |
| AUTH       | re-reads the credential and retries at once; a second AUTH counts PERMANENT  |

`delivered` carries partial success (Elastic items, a split batch): the indices of rows the
SIEM has definitely taken, so that only the others are sent again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Outcome", "OutcomeKind", "classify_status", "parse_retry_after"]


class OutcomeKind(enum.Enum):
    """The four classes of the table above."""

    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    AUTH = "auth"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of sending one batch.

    `reason` is short and safe to show anywhere (logs, status, metrics labels never hold it, but
    a person reads it): it must never contain a credential or a row's content.
    """

    kind: OutcomeKind
    reason: str = ""
    status: int | None = None
    delivered: frozenset[int] = field(default_factory=frozenset)
    retry_after_seconds: float | None = None
    too_large: bool = False
    rejected_index: int | None = None

    @classmethod
    def success(cls, reason: str = "delivered", status: int | None = None) -> Outcome:
        """Every row of the batch is delivered."""
        return cls(OutcomeKind.SUCCESS, reason, status)

    @property
    def ok(self) -> bool:
        """True for SUCCESS."""
        return self.kind is OutcomeKind.SUCCESS


# HTTP statuses, as DESIGN.md and the vendors' documentation class them.
_RETRYABLE_STATUSES: Final = frozenset({408, 429})
_AUTH_STATUSES: Final = frozenset({401, 403})


def classify_status(status: int) -> OutcomeKind:
    """The class of a plain HTTP status (backends refine it with what the body says).

    2xx success; 401/403 auth; 408, 429 and 5xx except 501 retryable; everything else
    (400, 404, 413, 501, 3xx...) permanent.
    """
    if 200 <= status < 300:
        return OutcomeKind.SUCCESS
    if status in _AUTH_STATUSES:
        return OutcomeKind.AUTH
    if status in _RETRYABLE_STATUSES or (500 <= status < 600 and status != 501):
        return OutcomeKind.RETRYABLE
    return OutcomeKind.PERMANENT


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header given in seconds (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(0.0, min(seconds, 3600.0))
