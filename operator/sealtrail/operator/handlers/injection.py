"""The mutating webhook: add the matching policy's worker to a pod being created.

It never refuses a pod and never waits: it answers from this replica's indexes (no API call),
so admission never queues behind anything else the operator does. A replica that does not yet
know the cluster admits the pod unchanged with a warning (its readiness keeps the API server
from calling it, so this is the rare race), and an error in the planner admits the pod
unchanged with a warning too: an audit gap is counted and shown, an outage of someone else's
workload never happens. Every answer is counted by outcome (`metrics.py`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Final

import kopf

from sealtrail.operator import naming
from sealtrail.operator.admission import decide
from sealtrail.operator.config import OperatorConfig
from sealtrail.operator.facts import namespace_facts, secrets_named
from sealtrail.operator.handlers.runtime import Runtime

__all__ = ["register_injection"]

log = logging.getLogger("sealtrail.operator")

NOT_READY: Final = ("sealtrail: the pod was admitted without an audit worker: this operator "
                    "replica was still starting ({missing}); recreate the pod to get one")
FAILED: Final = ("sealtrail: the pod was admitted without an audit worker because the "
                 "webhook failed ({error}); see the operator's log")


def register_injection(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """The webhook handler (only when the operator runs one)."""

    @kopf.on.mutate("", "v1", "pods", id=naming.WEBHOOK_ID, operation="CREATE",
                    registry=registry)
    async def inject(*, body: kopf.Body, patch: kopf.Patch, namespace: str | None,
                     warnings: list[str], memo: Any, **_: Any) -> None:
        runtime: Runtime = memo.runtime
        counted = runtime.metrics.admissions
        pod_namespace = namespace or body.get("metadata", {}).get("namespace") or "default"
        missing = runtime.missing()
        if missing is not None:
            warnings.append(NOT_READY.format(missing=missing))
            counted.labels("not_ready").inc()
            return
        try:
            indexes = runtime.indexes
            exports, policies = (indexes.exports_of(pod_namespace),
                                 indexes.policies_of(pod_namespace))
            if policies:  # a Secret named a moment ago may not have been read yet
                await runtime.secrets.ensure(pod_namespace, secrets_named(exports, policies))
            facts = namespace_facts(pod_namespace, exports, policies,
                                    runtime.secrets.of(pod_namespace))
            admission = decide(dict(body), pod_namespace, policies=facts.valid_policies,
                               exports=facts.valid_exports, secret_keys=facts.secret_keys,
                               default_image=config.default_image,
                               default_pull_secrets=config.worker_image_pull_secrets)
        except Exception as error:  # a bug here must never refuse someone's pod
            log.exception("admission of a pod in %s failed; admitted unchanged", pod_namespace)
            warnings.append(FAILED.format(error=type(error).__name__))
            counted.labels("error").inc()
            return
        warnings.extend(admission.warnings)
        if admission.pod is None:
            counted.labels("refused" if admission.warnings else "skipped").inc()
            return
        mutated = admission.pod

        def become(raw: Any) -> None:  # kopf's RawBody: the pod as the API server sent it
            raw.clear()
            raw.update(copy.deepcopy(mutated))

        patch.fns.append(become)
        counted.labels("injected").inc()
