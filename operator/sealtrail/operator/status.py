"""From what the workers say to an `AuditExport`'s status: pure, so it is tested without a cluster.

Status tells delivery truth, not "config accepted": `Delivering` is False while any worker's
export is failing or paused, `cursorLag` is the worst worker's, and a worker that cannot be
reached is counted and named, never left out. Conditions keep their `lastTransitionTime`
unless their status flips (what `kubectl wait` and alerting rely on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "ConditionStatus",
    "CredentialFacts",
    "WorkerReport",
    "condition",
    "credential_digest",
    "export_status",
    "merge_conditions",
    "status_changes",
]

ConditionStatus = Literal["True", "False", "Unknown"]

#: Longest `lastError` we copy into status (a SIEM's error body can be long).
MAX_ERROR_CHARS: Final = 512


def credential_digest(value: str) -> str:
    """The short digest a worker reports as `credential_version` for a secret value.

    The worker hashes the value it read (stripped); the operator hashes the Secret's key the
    same way, so the two can be matched without either side ever showing the secret.
    """
    return hashlib.sha256(value.strip().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class WorkerReport:
    """One worker's answer for one export (or why there is none)."""

    pod: str
    reachable: bool
    error: str | None = None  # why it could not be asked, when not reachable
    export: Mapping[str, Any] | None = None  # its entry in the worker's /v1/status


@dataclass(frozen=True)
class CredentialFacts:
    """What the operator knows of the Secrets an export names."""

    problems: tuple[str, ...] = ()  # e.g. 'Secret "hec" has no key "token"'
    #: digest of a current Secret value -> "secret/key@resourceVersion"
    versions: Mapping[str, str] = field(default_factory=dict)


def condition(kind: str, status: ConditionStatus, reason: str, message: str, *,
              now: str, generation: int | None) -> dict[str, Any]:
    """A `metav1.Condition`-shaped dict."""
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "observedGeneration": generation,
    }


def merge_conditions(previous: Sequence[Mapping[str, Any]],
                     fresh: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fresh conditions, each keeping its old `lastTransitionTime` if its status is unchanged."""
    before = {item.get("type"): item for item in previous}
    merged = []
    for item in fresh:
        old = before.get(item["type"])
        kept = dict(item)
        if old is not None and old.get("status") == item["status"]:
            kept["lastTransitionTime"] = old.get("lastTransitionTime", item["lastTransitionTime"])
        merged.append(kept)
    return merged


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


@dataclass(frozen=True)
class _Reading:
    """The workers' reports, sorted by what they say."""

    reports: Sequence[WorkerReport]

    @property
    def answered(self) -> list[WorkerReport]:
        return [r for r in self.reports if r.reachable and r.export is not None]

    @property
    def unreachable(self) -> list[WorkerReport]:
        return [r for r in self.reports if not r.reachable]

    @property
    def paused(self) -> list[WorkerReport]:
        return [r for r in self.answered if (r.export or {}).get("paused")]

    @property
    def failing(self) -> list[WorkerReport]:
        return [r for r in self.answered if (r.export or {}).get("last_error")
                and not (r.export or {}).get("paused")]

    @property
    def lags(self) -> list[int]:
        return [int((r.export or {}).get("lag_rows", 0)) for r in self.answered]


def _readiness(spec_problem: str | None,
               credentials: CredentialFacts) -> list[tuple[str, ConditionStatus, str, str]]:
    problems = "; ".join(credentials.problems)
    if spec_problem is not None:
        ready: tuple[str, ConditionStatus, str, str] = (
            "Ready", "False", "InvalidSpec", spec_problem)
    elif problems:
        ready = ("Ready", "False", "CredentialsInvalid", problems)
    else:
        ready = ("Ready", "True", "Reconciled", "the spec is valid and its Secrets resolve")
    valid: tuple[str, ConditionStatus, str, str] = (
        ("CredentialsValid", "False", "SecretUnresolved", problems) if problems else
        ("CredentialsValid", "True", "Resolved", "every secretKeyRef resolves"))
    return [ready, valid]


def _pause(spec_paused: bool, reading: _Reading) -> tuple[str | None, tuple[
        str, ConditionStatus, str, str]]:
    if spec_paused:
        reason = "spec.paused is true"
        return reason, ("Paused", "True", "SpecPaused", reason)
    if reading.paused:
        reason = str((reading.paused[0].export or {}).get("pause_reason") or "paused")
        return reason, ("Paused", "True", "PermanentFailures",
                        (f"{len(reading.paused)} of {len(reading.reports)} workers paused: "
                        f"{reason} (fix the cause, then resume: set spec.paused to true and "
                        "back to false)"))
    return None, ("Paused", "False", "NotPaused", "delivery is not paused")


def _delivering(pause_reason: str | None,
                reading: _Reading) -> tuple[str, ConditionStatus, str, str]:
    total = len(reading.reports)
    if pause_reason is not None:
        return ("Delivering", "False", "Paused", pause_reason)
    if reading.failing:
        first = reading.failing[0]
        return ("Delivering", "False", "DeliveryFailing",
                _clip(f"{len(reading.failing)} of {total} workers failing; {first.pod}: "
                      f"{(first.export or {}).get('last_error')}"))
    if not reading.reports:
        return ("Delivering", "Unknown", "NoWorkers", "no worker routes rows to this export yet")
    if not reading.answered:
        first = reading.unreachable[0]
        return ("Delivering", "Unknown", "WorkersUnreachable",
                _clip(f"no worker answered; {first.pod}: {first.error}"))
    return ("Delivering", "True", "Delivering",
            f"{len(reading.answered)} workers delivering, lag {max(reading.lags)} rows")


def _last_error(reading: _Reading) -> str | None:
    if reading.failing:
        first = reading.failing[0]
        return _clip(f"{first.pod}: {(first.export or {}).get('last_error')}")
    if reading.unreachable:
        first = reading.unreachable[0]
        return _clip(f"{first.pod}: unreachable: {first.error}")
    return None


def export_status(
    *, backend: str | None, spec_problem: str | None, spec_paused: bool,
    credentials: CredentialFacts, reports: Sequence[WorkerReport],
    previous: Mapping[str, Any], generation: int | None, now: str,
) -> dict[str, Any]:
    """The whole `status` of an AuditExport, from its spec's facts and its workers' reports."""
    reading = _Reading(reports)
    pause_reason, paused = _pause(spec_paused, reading)
    facts = [*_readiness(spec_problem, credentials), paused, _delivering(pause_reason, reading)]
    conditions = [condition(*fact, now=now, generation=generation) for fact in facts]
    lags = reading.lags
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous.get("conditions") or [], conditions),
        "backend": backend,
        "cursorLag": max(lags) if lags else None,
        "paused": pause_reason is not None,
        "pauseReason": pause_reason,
        "workers": len(reports),
        "workersUnreachable": len(reading.unreachable),
        "lastError": _last_error(reading),
        "credentialVersion": _credential_version(credentials, reading.answered),
    }


def _credential_version(credentials: CredentialFacts,
                        answered: Sequence[WorkerReport]) -> str | None:
    """Which Secret version the workers use, as `secret/key@resourceVersion`."""
    used = {str((r.export or {}).get("credential_version")) for r in answered
            if (r.export or {}).get("credential_version")}
    if not used:
        return None
    known = sorted(credentials.versions[digest] for digest in used
                   if digest in credentials.versions)
    stale = len(used) - len(known)
    if not known:
        return "an earlier version (the workers have not read the current Secret yet)"
    text = ", ".join(known)
    return text if not stale else f"{text} (and {stale} workers on an earlier version)"


def status_changes(previous: Mapping[str, Any], fresh: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `fresh` that differ from `previous`: write status only when it changed."""
    return {key: value for key, value in fresh.items() if previous.get(key) != value}
