"""The mutating webhook's decision: an `AdmissionReview` (admission.k8s.io/v1) in, one out.

sealtrail never refuses a pod: every answer is `allowed: true`. A pod that matches one of its
namespace's sidecar policies gets the worker as a JSON patch; one that matches none, opted out,
or already has a worker gets no patch. When a policy matches but its config cannot be rendered
(a missing Secret, say) or the worker would clash with the pod, the pod is admitted without a
worker and the answer carries a warning, which `kubectl` shows to whoever created it; the
policy's status says the same to its owner.

Pure: the webhook server gathers the namespace's policies, exports and Secret keys (from its
informers' caches) and writes back what this returns.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sealtrail.api.resources import AuditExportSpec
from sealtrail.operator.inject import has_worker, opted_out, plan_sidecar
from sealtrail.operator.render import Policy, render_worker_config

__all__ = ["matching_policies", "review"]

_API_VERSION: Final = "admission.k8s.io/v1"
_PREFIX: Final = "sealtrail: "


def matching_policies(pod: Mapping[str, Any], namespace: str,
                      policies: Sequence[Policy]) -> list[Policy]:
    """The sidecar policies of `namespace` whose selector matches the pod, by name."""
    labels = {str(key): str(value)
              for key, value in ((pod.get("metadata") or {}).get("labels") or {}).items()}
    return sorted((policy for policy in policies
                   if policy.namespace == namespace and policy.spec.mode == "sidecar"
                   and policy.spec.selector.matches(labels)),
                  key=lambda policy: policy.name)


def _response(review: Mapping[str, Any], uid: str, warnings: list[str],
              patch: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(patch, separators=(",", ":")).encode()).decode("ascii")
    if warnings:
        response["warnings"] = [_PREFIX + warning for warning in warnings]
    return {"apiVersion": str(review.get("apiVersion") or _API_VERSION),
            "kind": "AdmissionReview", "response": response}


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind") or {}
    return (kind.get("group", "") == "" and kind.get("kind") == "Pod"
            and request.get("operation") == "CREATE" and not request.get("subResource"))


def review(admission_review: Mapping[str, Any], *, policies: Sequence[Policy],
           exports: Mapping[str, AuditExportSpec], secret_keys: Mapping[str, frozenset[str]],
           default_image: str) -> dict[str, Any]:
    """The `AdmissionReview` answering `admission_review`, always allowing the pod.

    `policies`, `exports` (by name) and `secret_keys` (Secret name to its keys) are those of
    the pod's namespace.
    """
    request: Mapping[str, Any] = admission_review.get("request") or {}
    uid = str(request.get("uid", ""))
    pod: Mapping[str, Any] = request.get("object") or {}
    if not _is_pod_create(request) or not pod:
        return _response(admission_review, uid, [])
    namespace = str(request.get("namespace") or (pod.get("metadata") or {}).get("namespace")
                    or "")
    matching = matching_policies(pod, namespace, policies)
    if not matching or opted_out(pod) or has_worker(pod):
        return _response(admission_review, uid, [])
    policy, *others = matching
    result = render_worker_config(policy, exports, secret_keys)
    if result.rendered is None:
        why = "; ".join(result.problems)
        return _response(admission_review, uid, [
            (f"auditpolicy/{policy.name} matches this pod, but its worker config cannot be "
             f"rendered, so the pod runs without an audit worker: {why}")])
    plan = plan_sidecar(pod, policy, result.rendered, default_image=default_image)
    if plan.outcome != "injected":
        return _response(admission_review, uid, [
            (f"auditpolicy/{policy.name} matches this pod, but the worker was not injected: "
             f"{plan.reason}")])
    warnings = [f"auditpolicy/{other.name} also matches this pod; a pod gets one worker, "
                f"auditpolicy/{policy.name}'s (the first by name)" for other in others]
    return _response(admission_review, uid, warnings + list(result.problems), plan.patch)
