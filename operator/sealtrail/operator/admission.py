"""The mutating webhook's decision for a pod being created: the pod as it should be, and warnings.

sealtrail never refuses a pod. A pod that matches one of its namespace's sidecar policies gets
the worker; one that matches none or opted out is left as it is. When a policy matches but its
config cannot be rendered (a missing Secret, say), the worker would clash with the pod, or the
pod runs Windows, the pod is admitted without a worker and the answer carries a warning, which
`kubectl` shows to whoever created it; the policy's status says the same to its owner.

A pod that already has the worker gets no second one: the API server calls again
(`reinvocationPolicy: IfNeeded`) when a later webhook changed the pod, and then the worker only
takes what it lacks of the AWS identity that webhook gave the app, and its pull secrets.

Pure: the webhook handler (kopf's `on.mutate`, which answers the AdmissionReview and only calls
for pod creations) gathers the namespace's policies, exports and Secret keys from its indexes
and applies what this returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sealtrail.api.resources import AuditExportSpec
from sealtrail.operator.inject import has_worker, opted_out, plan_reinvocation, plan_sidecar
from sealtrail.operator.render import Policy, render_worker_config

__all__ = ["Admission", "decide", "matching_policies"]

_PREFIX: Final = "sealtrail: "


@dataclass(frozen=True)
class Admission:
    """What to do with a pod being created: `pod` is the injected pod, or None to leave it."""

    pod: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def matching_policies(pod: Mapping[str, Any], namespace: str,
                      policies: Sequence[Policy]) -> list[Policy]:
    """The sidecar policies of `namespace` whose selector matches the pod, by name."""
    labels = {str(key): str(value)
              for key, value in ((pod.get("metadata") or {}).get("labels") or {}).items()}
    return sorted((policy for policy in policies
                   if policy.namespace == namespace and policy.spec.mode == "sidecar"
                   and policy.spec.selector.matches(labels)),
                  key=lambda policy: policy.name)


def _admit(warnings: list[str], pod: dict[str, Any] | None = None) -> Admission:
    return Admission(pod, [_PREFIX + warning for warning in warnings])


def decide(pod: Mapping[str, Any], namespace: str, *, policies: Sequence[Policy],
           exports: Mapping[str, AuditExportSpec], secret_keys: Mapping[str, frozenset[str]],
           default_image: str, default_pull_secrets: Sequence[str] = ()) -> Admission:
    """The answer for `pod`, created in `namespace`; never a refusal.

    `policies`, `exports` (by name) and `secret_keys` (Secret name to its keys) are those of
    the pod's namespace; `default_pull_secrets` are the operator's image pull secrets for the
    worker (after the policy's own).
    """
    matching = matching_policies(pod, namespace, policies)
    if not matching or opted_out(pod):
        return Admission()
    policy, *others = matching
    if has_worker(pod):  # called again after a later webhook: never a second worker
        again = plan_reinvocation(pod, policy, default_pull_secrets=default_pull_secrets)
        return Admission(again.pod if again.patch else None)
    result = render_worker_config(policy, exports, secret_keys)
    if result.rendered is None:
        why = "; ".join(result.problems)
        return _admit([
            (f"auditpolicy/{policy.name} matches this pod, but its worker config cannot be "
             f"rendered, so the pod runs without an audit worker: {why}")])
    plan = plan_sidecar(pod, policy, result.rendered, default_image=default_image,
                        default_pull_secrets=default_pull_secrets)
    if plan.outcome != "injected":
        return _admit([
            (f"auditpolicy/{policy.name} matches this pod, but the worker was not injected: "
             f"{plan.reason}")])
    warnings = [f"auditpolicy/{other.name} also matches this pod; a pod gets one worker, "
                f"auditpolicy/{policy.name}'s (the first by name)" for other in others]
    return _admit(warnings + list(result.problems), plan.pod)
