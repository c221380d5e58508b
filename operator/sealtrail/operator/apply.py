"""The one impure planning step: render a policy's objects and apply them through `kube`.

Blocking (the `kubernetes` client): the controller calls these in a worker thread.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from sealtrail.operator import naming
from sealtrail.operator.collector import (
    cluster_ips,
    collector_status,
    plan_collector,
    stale_objects,
)
from sealtrail.operator.collector_tls import plan_collector_tls
from sealtrail.operator.facts import NamespaceFacts
from sealtrail.operator.kube import Kube, KubeError
from sealtrail.operator.render import (
    Policy,
    RenderedConfig,
    RenderResult,
    config_map,
    render_worker_config,
)

log = logging.getLogger("sealtrail.operator")

__all__ = ["apply_policy", "ensure_admin_secret"]


def apply_policy(kube: Kube, facts: NamespaceFacts, policy: Policy, *, default_image: str,
                 clean_up: bool = True) -> tuple[RenderResult, str | None, dict[str, Any]]:
    """Render and apply one policy's objects.

    `clean_up` also removes what the other mode left (needed once per spec change, not on
    every resync). Returns the render result, any apply failure, and what a collector adds to
    the status.
    """
    result = render_worker_config(policy, facts.valid_exports, facts.secret_keys)
    extra: dict[str, Any] = {}
    if result.rendered is None:
        return result, None, extra
    try:
        for ref in stale_objects(policy) if clean_up else ():  # never volume claims
            kube.delete_owned(ref, policy.uid)
        if policy.spec.mode == "collector":
            extra["collector"] = _apply_collector(kube, policy, result.rendered, default_image)
        else:
            kube.apply(config_map(policy, result.rendered))
    except KubeError as error:
        return result, str(error), extra
    return result, None, extra


def _apply_collector(kube: Kube, policy: Policy, rendered: RenderedConfig,
                     default_image: str) -> dict[str, Any]:
    """The collector's objects, in the order each needs the one before.

    The Service first (its ClusterIP goes into the serving certificate), the certificate
    before the StatefulSet (its pods mount it); a StatefulSet change the API server cannot
    update (storage size or class) is re-created with its pods and claims orphaned, not
    failed forever.
    """
    plan = plan_collector(policy, rendered, default_image=default_image)
    namespace, name = policy.namespace, naming.collector_name(policy.name)
    kube.apply(plan.config_map)
    kube.apply_recreating(plan.service)
    ips = cluster_ips(kube.read_object("Service", namespace, name))
    tls = plan_collector_tls(
        policy, ips,
        ca_secret=kube.read_object("Secret", namespace, naming.collector_ca_name(policy.name)),
        serving_secret=kube.read_object("Secret", namespace,
                                        naming.collector_tls_name(policy.name)),
        now=dt.datetime.now(dt.UTC))
    if tls.issued:
        log.info("auditpolicy %s/%s: collector certificate issued: %s", namespace, policy.name,
                 tls.issued)
    for obj in (tls.ca_secret, tls.serving_secret, tls.ca_config_map):
        kube.apply(obj)
    if kube.apply_recreating(plan.stateful_set) == "recreated":
        log.warning("auditpolicy %s/%s: StatefulSet %s re-created for a change it cannot take "
                    "in place; existing volume claims keep their old size", namespace,
                    policy.name, name)
    kube.apply(plan.pod_disruption_budget)
    return collector_status(policy, ips)


def ensure_admin_secret(kube: Kube, namespace: str, policies: Sequence[Policy],
                        metrics_token: str | None = None) -> None:
    """The namespace's worker admin credential: made once, owned by its policies.

    Workers require it on their admin API (status, metrics, resume), and key the credential
    digests they report with it; the operator reads it back by name to do the same. It is
    created with a random value when missing and kept as it is afterwards (a new value would
    lock the operator out of workers still holding the old one until their files update),
    except that its owners follow the namespace's policies, so it goes when they all do.
    Beside it, `metrics-token` follows `metrics_token` (the chart's, which its PodMonitor
    scrapes with), or is random when there is none (then nobody scrapes without the admin
    token).
    """
    if not policies:
        return
    # Several owners, none of them the controller (only one may be), none blocking deletion.
    owners = [naming.owner_reference(policy.name, policy.uid)
              | {"controller": False, "blockOwnerDeletion": False} for policy in policies]
    current = kube.read_secret(namespace, naming.ADMIN_SECRET)
    scrape = base64.b64encode(
        (metrics_token or secrets.token_urlsafe(32)).encode()).decode()
    if current is None:
        token = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
        kube.create_secret(namespace, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": naming.ADMIN_SECRET, "namespace": namespace,
                         "labels": {naming.NAME_LABEL: naming.APP_NAME,
                                    naming.MANAGED_BY_LABEL: naming.MANAGED_BY},
                         "ownerReferences": owners},
            "data": {naming.ADMIN_SECRET_KEY: token, naming.METRICS_TOKEN_KEY: scrape},
        })
        return
    had = {ref.get("uid") for ref in current["metadata"].get("ownerReferences") or []}
    data = current.setdefault("data", {})
    stale_scrape = (data.get(naming.METRICS_TOKEN_KEY) is None
                    or (metrics_token is not None and data[naming.METRICS_TOKEN_KEY] != scrape))
    if had != {owner["uid"] for owner in owners} or stale_scrape:
        current["metadata"]["ownerReferences"] = owners
        if stale_scrape:
            data[naming.METRICS_TOKEN_KEY] = scrape
        kube.replace_secret(namespace, current)
