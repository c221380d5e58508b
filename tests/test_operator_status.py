"""The operator's pure status and certificate planners, without a cluster.

Covers `sealtrail.operator.status` (what an AuditExport's and AuditPolicy's status say, and
when a new status is worth a write) and `sealtrail.operator.certs.plan_certificates` (the
webhook certificate's renewal, in which the API server must trust what every replica serves at
every moment).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509

from sealtrail.operator.certs import CertificateSet, Lifetimes, plan_certificates
from sealtrail.operator.facts import CredentialFacts
from sealtrail.operator.status import (
    WorkerReport,
    export_status,
    transition_events,
    worth_writing,
)

NOW = "2026-12-04T12:00:00Z"
LATER = "2026-12-04T12:00:20Z"
MUCH_LATER = "2026-12-04T12:02:00Z"


def status(lag: int, *, error: str | None = None, paused: bool = False,
           now: str = NOW, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    entry = {"name": "siem", "lag_rows": lag, "last_error": error, "paused": paused,
             "pause_reason": "HTTP 403" if paused else None}
    return export_status(backend="splunk", spec_problem=None, spec_paused=False,
                         credentials=CredentialFacts(), previous=previous or {},
                         reports=[WorkerReport("ns/pod-a", reachable=True, export=entry)],
                         generation=1, now=now)


def written(previous: dict[str, Any], fresh: dict[str, Any], now: str) -> dict[str, Any]:
    patch = worth_writing(previous, fresh, now=now, heartbeat_seconds=60)
    assert patch is not None
    return {**previous, **patch}


def test_a_poll_that_moves_the_lag_less_than_a_doubling_writes_nothing() -> None:
    first = written({}, status(40), NOW)
    assert first["heartbeatTime"] == NOW
    assert first["cursorLag"] == 40
    assert worth_writing(first, status(57, previous=first, now=LATER), now=LATER,
                         heartbeat_seconds=60) is None


@pytest.mark.parametrize(("lag", "error", "paused", "why"), [
    (120, None, False, "the lag more than doubled"),
    (5, None, False, "the lag more than halved"),
    (0, None, False, "the backlog is gone"),
    (12, "HTTP 503 from the SIEM", False, "delivery started failing"),
    (12, None, True, "a worker paused"),
])
def test_what_a_reader_acts_on_is_written_at_once(lag: int, error: str | None, paused: bool,
                                                  why: str) -> None:
    first = written({}, status(12), NOW)
    patch = worth_writing(first, status(lag, error=error, paused=paused, previous=first,
                                        now=LATER), now=LATER, heartbeat_seconds=60)
    assert patch is not None, why
    assert patch["heartbeatTime"] == LATER


def test_the_heartbeat_is_written_even_when_nothing_changed() -> None:
    first = written({}, status(12), NOW)
    patch = worth_writing(first, status(12, previous=first, now=MUCH_LATER), now=MUCH_LATER,
                          heartbeat_seconds=60)
    assert patch == {"heartbeatTime": MUCH_LATER}


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = written({}, status(12), NOW)
    again = status(3000, previous=first, now=MUCH_LATER)
    delivering = next(c for c in again["conditions"] if c["type"] == "Delivering")
    assert delivering["status"] == "True"
    assert delivering["lastTransitionTime"] == NOW


def test_pause_and_resume_are_events_once_per_transition() -> None:
    first = written({}, status(12), NOW)
    paused = written(first, status(12, paused=True, previous=first, now=LATER), LATER)
    assert [e.reason for e in transition_events(first, paused)] == ["Paused"]
    assert transition_events(paused, paused) == []
    resumed = status(12, previous=paused, now=MUCH_LATER)
    assert [e.reason for e in transition_events(paused, resumed)] == ["Resumed"]


def test_an_unreachable_worker_is_counted_and_named() -> None:
    fresh = export_status(backend="splunk", spec_problem=None, spec_paused=False,
                          credentials=CredentialFacts(), previous={},
                          reports=[WorkerReport("ns/pod-b", reachable=False,
                                                error="ConnectTimeout")],
                          generation=1, now=NOW)
    assert fresh["workersUnreachable"] == 1
    assert "ns/pod-b" in fresh["lastError"]
    delivering = next(c for c in fresh["conditions"] if c["type"] == "Delivering")
    assert delivering["status"] == "Unknown"


# -- the webhook certificate ---------------------------------------------------------------------

HOSTS = ["sealtrail.sealtrail.svc"]
LIFE = Lifetimes(ca=dt.timedelta(days=30), leaf=dt.timedelta(days=9))
START = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)


def issuer_of(pem: bytes) -> x509.Name:
    return x509.load_pem_x509_certificate(pem).issuer


def trusted(bundle: bytes) -> set[x509.Name]:
    return {cert.subject for cert in x509.load_pem_x509_certificates(bundle)}


def test_a_new_set_is_a_ca_and_a_leaf_it_signed() -> None:
    made = plan_certificates(None, HOSTS, START, LIFE, bundle_published=False)
    assert issuer_of(made.cert) in trusted(made.bundle)
    assert plan_certificates(made, HOSTS, START + dt.timedelta(days=1), LIFE,
                             bundle_published=True) is made  # nothing due


def test_the_leaf_is_renewed_by_the_same_ca_so_the_bundle_does_not_change() -> None:
    made = plan_certificates(None, HOSTS, START, LIFE, bundle_published=True)
    renewed = plan_certificates(made, HOSTS, START + dt.timedelta(days=7), LIFE,
                                bundle_published=True)
    assert renewed.cert != made.cert
    assert renewed.bundle == made.bundle
    assert renewed.ca == made.ca


def test_a_ca_renewal_trusts_old_and_new_before_anything_new_is_served() -> None:
    made = plan_certificates(None, HOSTS, START, LIFE, bundle_published=True)
    due = START + dt.timedelta(days=21)
    step1 = plan_certificates(made, HOSTS, due, LIFE, bundle_published=True)
    assert step1.next_ca
    assert step1.cert == made.cert
    assert trusted(step1.bundle) == {issuer_of(made.cert),
                                     x509.load_pem_x509_certificate(step1.next_ca).subject}
    # Until the leader has published the two-CA bundle, nothing from the new CA is served.
    assert plan_certificates(step1, HOSTS, due, LIFE, bundle_published=False) is step1
    step2 = plan_certificates(step1, HOSTS, due, LIFE, bundle_published=True)
    assert step2.ca == step1.next_ca
    assert not step2.next_ca
    assert issuer_of(step2.cert) in trusted(step2.bundle)
    assert issuer_of(made.cert) in trusted(step2.bundle)  # replicas not yet reloaded
    # Once the old CA has expired it leaves the bundle.
    gone = plan_certificates(step2, HOSTS, START + dt.timedelta(days=31), LIFE,
                             bundle_published=True)
    assert trusted(gone.bundle) == {x509.load_pem_x509_certificate(step2.ca).subject}


def test_the_set_round_trips_through_the_secrets_data() -> None:
    made = plan_certificates(None, HOSTS, START, LIFE, bundle_published=True)
    assert CertificateSet.from_data(made.to_data()) == made
    assert CertificateSet.from_data({"ca.crt": made.ca}) is None


def test_workers_that_answer_without_the_export_say_it_is_not_loaded_yet() -> None:
    fresh = export_status(backend="splunk", spec_problem=None, spec_paused=False,
                          credentials=CredentialFacts(), previous={},
                          reports=[WorkerReport("ns/pod-c", reachable=True, export=None)],
                          generation=1, now=NOW)
    delivering = next(c for c in fresh["conditions"] if c["type"] == "Delivering")
    assert (delivering["status"], delivering["reason"]) == ("Unknown", "NotLoaded")
    assert fresh["workers"] == 1
    assert fresh["workersUnreachable"] == 0
