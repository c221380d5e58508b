"""What the cluster holds, kept current by kopf's watches; events wake the controller.

Index functions run on every event of every watched object, so they only parse. Terminal pods
(a finished Job's, an evicted one) and pods being deleted are not indexed: they run no worker
to poll and no app to count, and an IP they held may already be another pod's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from sealtrail.api.resources import GROUP, VERSION
from sealtrail.operator import facts, naming
from sealtrail.operator.handlers.runtime import Runtime

__all__ = ["EXPORTS", "POLICIES", "register_indexes"]

EXPORTS = (GROUP, VERSION, "auditexports")
POLICIES = (GROUP, VERSION, "auditpolicies")


def register_indexes(registry: kopf.OperatorRegistry) -> None:
    """The four indexes, and the hooks that tell the controller a namespace changed."""

    @kopf.index(*EXPORTS, id="exports_idx", registry=registry)
    def exports_idx(*, namespace: str | None, name: str, body: kopf.Body,
                    **_: Any) -> dict[str | None, facts.ExportFact]:
        return {namespace: facts.export_fact(name, body)}

    @kopf.index(*POLICIES, id="policies_idx", registry=registry)
    def policies_idx(*, namespace: str | None, name: str, body: kopf.Body,
                     **_: Any) -> dict[str | None, facts.PolicyFact]:
        return {namespace: facts.policy_fact(name, body)}

    @kopf.index("", "v1", "pods", labels={naming.POLICY_LABEL: kopf.PRESENT},
                id="workers_idx", registry=registry)
    def workers_idx(*, namespace: str | None, name: str, labels: Mapping[str, str],
                    body: kopf.Body, **_: Any) -> dict[str | None, tuple[
                        str, facts.WorkerAddress]] | None:
        if facts.is_terminal(body):
            return None
        address = facts.worker_address(str(namespace), name, body)
        return {namespace: (str(labels[naming.POLICY_LABEL]), address)}

    @kopf.index("", "v1", "pods", id="pods_idx", registry=registry)
    def pods_idx(*, namespace: str | None, name: str, body: kopf.Body,
                 **_: Any) -> dict[str | None, facts.PodFact] | None:
        if facts.is_terminal(body):
            return None
        return {namespace: facts.pod_fact(name, body)}

    # Event hooks run only after kopf has listed every indexed kind (so the first one also
    # says the indexes are complete); they write nothing to the object.

    @kopf.on.event(*EXPORTS, id="export-event", registry=registry)
    async def export_event(*, namespace: str | None, name: str, type: str | None,  # noqa: A002 - kopf's name
                           body: kopf.Body, memo: Any, **_: Any) -> None:
        await _changed(memo.runtime, "auditexport", str(namespace), name, type, body)

    @kopf.on.event(*POLICIES, id="policy-event", registry=registry)
    async def policy_event(*, namespace: str | None, name: str, type: str | None,  # noqa: A002 - kopf's name
                           body: kopf.Body, memo: Any, **_: Any) -> None:
        await _changed(memo.runtime, "auditpolicy", str(namespace), name, type, body)


async def _changed(runtime: Runtime, kind: str, namespace: str, name: str,  # noqa: PLR0917 - what an event is
                   event: str | None, body: kopf.Body) -> None:
    """An export or policy changed: read any Secret it newly names, wake the leader.

    A change that leaves `metadata.generation` alone is a status write (often the leader's own)
    or a label: nothing to render, so it wakes nobody.
    """
    runtime.indexed()
    key = (kind, namespace, name)
    generation = body.get("metadata", {}).get("generation")
    if event == "DELETED":
        runtime.generations.pop(key, None)
    elif event == "MODIFIED" and runtime.generations.get(key) == generation:
        return
    else:
        runtime.generations[key] = generation
    if event != "DELETED":  # read what this object newly names (the others are known)
        named = (facts.secrets_named([facts.export_fact(name, body)], [])
                 if kind == "auditexport" else
                 facts.secrets_named([], [facts.policy_fact(name, body)]))
        await runtime.secrets.ensure(namespace, named)
    runtime.controller.changed(namespace)
