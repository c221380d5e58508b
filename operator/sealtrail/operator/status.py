"""From what the workers say to an `AuditExport`'s status: pure, so it is tested without a cluster.

Status tells delivery truth, not "config accepted": `Delivering` is False while any worker's
export is failing or paused, `cursorLag` is the worst worker's, and a worker that cannot be
reached is counted and named, never left out. Conditions keep their `lastTransitionTime`
unless their status flips (what `kubectl wait` and alerting rely on).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from sealtrail.operator import naming
from sealtrail.operator.facts import CredentialFacts, PodFact, PolicyFact
from sealtrail.operator.render import RenderResult

__all__ = [
    "ConditionStatus",
    "Event",
    "WorkerReport",
    "condition",
    "export_status",
    "merge_conditions",
    "now",
    "policy_status",
    "status_changes",
    "transition_events",
    "worth_writing",
]

ConditionStatus = Literal["True", "False", "Unknown"]

#: Longest `lastError` we copy into status (a SIEM's error body can be long).
MAX_ERROR_CHARS: Final = 512

_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    """The time as Kubernetes writes it (RFC 3339, UTC, seconds)."""
    return dt.datetime.now(dt.UTC).strftime(_TIME_FORMAT)


@dataclass(frozen=True)
class WorkerReport:
    """One worker's answer for one export (or why there is none)."""

    pod: str
    reachable: bool
    error: str | None = None  # why it could not be asked, when not reachable
    export: Mapping[str, Any] | None = None  # its entry in the worker's /v1/status


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
    if not reading.answered and reading.unreachable:
        first = reading.unreachable[0]
        return ("Delivering", "Unknown", "WorkersUnreachable",
                _clip(f"no worker answered; {first.pod}: {first.error}"))
    if not reading.answered:  # they answered, but none has this export in its config yet
        return ("Delivering", "Unknown", "NotLoaded",
                "the workers have not loaded this export yet")
    # The lag itself is in `cursorLag`: a message that changed with every poll would make
    # every poll a status write.
    return ("Delivering", "True", "Delivering", f"{len(reading.answered)} workers delivering")


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


def _lag_bucket(lag: Any) -> int | None:
    """0, 1, 2-3, 4-7, 8-15, ...: a lag that halves or doubles is news, one that wobbles is not."""
    return None if lag is None else max(0, int(lag)).bit_length()


def _essence(status: Mapping[str, Any]) -> dict[str, Any]:
    """What of a status a reader acts on: all but the times and the lag within its power of 2."""
    kept = {key: value for key, value in status.items()  # absent and null are the same
            if key not in {"heartbeatTime", "cursorLag"} and value is not None}
    kept["conditions"] = [{key: value for key, value in (item or {}).items()
                           if key != "lastTransitionTime"}
                          for item in status.get("conditions") or []]
    kept["cursorLag"] = _lag_bucket(status.get("cursorLag"))
    return kept


def _age_seconds(stamp: Any, now: str) -> float | None:
    try:
        then = dt.datetime.strptime(str(stamp), _TIME_FORMAT).replace(tzinfo=dt.UTC)
        current = dt.datetime.strptime(now, _TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return (current - then).total_seconds()


def worth_writing(previous: Mapping[str, Any], fresh: Mapping[str, Any], *, now: str,
                  heartbeat_seconds: float) -> dict[str, Any] | None:
    """The status patch to write, or None when nothing a reader acts on has changed.

    Writes are what an operator at scale pays for (each one is an etcd write and a watch event
    to every watcher), so a poll that moved the lag by less than a doubling or a halving, or
    reworded an error, writes nothing. The heartbeat is the exception: `heartbeatTime` is
    refreshed every `heartbeat_seconds`, so a status whose heartbeat is old says the operator
    stopped looking (the SEEN printer column shows its age).
    """
    age = _age_seconds(previous.get("heartbeatTime"), now)
    due = age is None or age >= heartbeat_seconds
    if not due and _essence(previous) == _essence(fresh):
        return None
    changes = status_changes(previous, fresh)
    changes["heartbeatTime"] = now
    return changes


# -- AuditPolicy ---------------------------------------------------------------------------------


def policy_status(fact: PolicyFact, result: RenderResult | None, failure: str | None,
                  pods: Sequence[PodFact], *, previous: Mapping[str, Any],
                  now: str) -> dict[str, Any]:
    """The whole status of an AuditPolicy, from its render, its apply and the namespace's pods.

    `result` is None when the spec itself is invalid (`fact.problem` says why).
    """
    def cond(kind: str, status: ConditionStatus, reason: str, message: str) -> dict[str, Any]:
        return condition(kind, status, reason, message, now=now, generation=fact.generation)

    if fact.policy is None or result is None:
        return {"observedGeneration": fact.generation, "conditions": merge_conditions(
            previous.get("conditions") or [],
            [cond("Ready", "False", "InvalidSpec", fact.problem or "invalid spec")])}
    policy = fact.policy
    problems = list(result.problems)
    conditions = []
    if result.rendered is None:
        conditions.append(cond("Ready", "False", "RenderFailed", "; ".join(problems)))
    elif failure is not None:
        conditions.append(cond("Ready", "False", "ApplyFailed", failure))
    else:
        conditions.append(cond("Ready", "True", "Rendered",
                               f"worker config in ConfigMap {naming.config_map_name(policy.name)}"
                               if policy.spec.mode == "sidecar" else
                               f"collector {naming.collector_name(policy.name)} applied"))
    conditions.append(
        cond("ExportsResolved", "False", "ExportsMissing", "; ".join(problems)) if problems
        else cond("ExportsResolved", "True", "Resolved", "every export the routes name is used"))
    label = naming.policy_label_value(policy.name)
    injected = [pod.name for pod in pods if pod.has_worker
                and pod.labels.get(naming.POLICY_LABEL) == label]
    missing = sorted(pod.name for pod in pods if policy.spec.mode == "sidecar"
                     and not pod.has_worker and not pod.opted_out
                     and policy.spec.selector.matches(dict(pod.labels)))
    return {
        "observedGeneration": fact.generation,
        "conditions": merge_conditions(previous.get("conditions") or [], conditions),
        "configMap": naming.config_map_name(policy.name),
        "matchedExports": list(result.matched_exports),
        "unknownExports": list(result.unknown_exports),
        "injectedPods": len(injected),
        "uninjectedPods": missing[:50],
    }


# -- Events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the object."""

    type: str
    reason: str
    message: str


def _state(status: Mapping[str, Any], kind: str) -> str | None:
    return next((str(c.get("status")) for c in status.get("conditions") or []
                 if c.get("type") == kind), None)


def transition_events(previous: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[Event]:
    """Events for pause, resume and credential failures, once per transition."""
    events = []
    before, after = _state(previous, "Paused"), _state(fresh, "Paused")
    if after == "True" and before != "True":
        events.append(Event("Warning", "Paused", str(fresh.get("pauseReason") or "paused")))
    elif after == "False" and before == "True":
        events.append(Event("Normal", "Resumed", "delivery resumed"))
    if _state(fresh, "CredentialsValid") == "False" and _state(
            previous, "CredentialsValid") != "False":
        message = next((str(c.get("message")) for c in fresh.get("conditions") or []
                        if c.get("type") == "CredentialsValid"), "")
        events.append(Event("Warning", "CredentialsInvalid", message))
    return events
