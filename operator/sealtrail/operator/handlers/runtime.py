"""What runs beside kopf in every replica, built at start-up and stopped at clean-up.

- the Lease campaign (`leader.py`): one replica reconciles at a time;
- the controller (`controller.py`): renders, polls and writes status while leading;
- the Secret reader (`named_secrets.py`): only the Secrets our resources name, by `get`;
- the webhook certificate (`webhook.py`): one shared Secret, reloaded in place;
- the probe port (`probes.py`): `/healthz`, `/readyz`, `/metrics`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry

from sealtrail.api.resources import GROUP
from sealtrail.api.worker_api import credential_digest
from sealtrail.operator import naming
from sealtrail.operator.certs import Lifetimes
from sealtrail.operator.config import OperatorConfig
from sealtrail.operator.controller import Controller, ControllerSettings, Indexes
from sealtrail.operator.kube import Kube, KubeError
from sealtrail.operator.leader import Leadership, LeaseSettings
from sealtrail.operator.metrics import OperatorMetrics
from sealtrail.operator.named_secrets import NamedSecrets
from sealtrail.operator.polling import StatusPoller
from sealtrail.operator.probes import serve_probes
from sealtrail.operator.webhook import CertificateSettings, WebhookCertificates, webhook_server

__all__ = ["Runtime", "register_runtime"]

log = logging.getLogger("sealtrail.operator")


@dataclass
class Runtime:
    """Everything one replica runs beside kopf; kopf's `memo.runtime`."""

    config: OperatorConfig
    kube: Kube
    indexes: Indexes
    leadership: Leadership
    secrets: NamedSecrets
    poller: StatusPoller
    controller: Controller
    metrics: OperatorMetrics
    certificates: WebhookCertificates | None
    #: True once kopf has listed everything (or there was nothing to list at start).
    listed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: The generation each export and policy last woke the controller with.
    generations: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    probes: web.AppRunner | None = None

    def indexed(self) -> None:
        """Kopf calls event hooks only after every index is filled: so they are."""
        self.listed = True

    def missing(self) -> str | None:
        """What this replica still waits for before it may admit pods; None when ready."""
        if self.certificates is not None and not self.certificates.loaded:
            return "the webhook certificate"
        if not self.listed:
            return "kopf's first listing of AuditExports, AuditPolicies and pods"
        if not self.secrets.refreshed:
            return "the first reading of the Secrets the resources name"
        return None


def _webhook_certificates(config: OperatorConfig, kube: Kube,
                          leadership: Leadership) -> WebhookCertificates | None:
    if config.webhook is None:
        return None
    webhook = config.webhook
    return WebhookCertificates(kube, CertificateSettings(
        namespace=config.release_namespace,
        secret=f"{config.release_name}-{naming.WEBHOOK_TLS_SECRET}",
        hosts=webhook.hosts, configuration=webhook.configuration,
        lifetimes=Lifetimes(ca=dt.timedelta(days=webhook.ca_days),
                            leaf=dt.timedelta(days=webhook.leaf_days)),
        check_seconds=webhook.check_seconds, cert_dir=webhook.cert_dir), leadership)


async def _start(config: OperatorConfig, indexes: Indexes) -> Runtime:
    kube = Kube()
    leadership = Leadership(LeaseSettings(
        f"{config.release_name}-{naming.LEASE_NAME}", config.release_namespace,
        duration_seconds=config.lease_seconds,
        renew_deadline_seconds=max(2, config.lease_seconds * 2 // 3),
        retry_seconds=max(1, config.lease_seconds // 7)))
    secrets = NamedSecrets(kube, credential_digest,
                           key_secret=(naming.ADMIN_SECRET, naming.ADMIN_SECRET_KEY))
    poller = StatusPoller()
    metrics = OperatorMetrics(CollectorRegistry())
    controller = Controller(kube, indexes, secrets, poller, leadership, ControllerSettings(
        poll_seconds=config.poll_seconds, resync_seconds=config.policy_resync_seconds,
        heartbeat_seconds=config.heartbeat_seconds,
        secret_refresh_seconds=config.secret_refresh_seconds,
        default_image=config.default_image,
        metrics_secret=(config.release_namespace,
                        f"{config.release_name}-{naming.METRICS_TOKEN_SECRET}")), metrics)
    runtime = Runtime(config, kube, indexes, leadership, secrets, poller, controller, metrics,
                      _webhook_certificates(config, kube, leadership))
    try:
        empty = not any([await asyncio.to_thread(kube.has_any, plural, config.namespaces)
                         for plural in ("auditexports", "auditpolicies")])
    except KubeError as error:
        log.warning("%s; readiness waits for kopf's listing", error)
        empty = False
    runtime.listed = empty
    leadership.start()
    if runtime.certificates is not None:
        await runtime.certificates.load()
        runtime.tasks.append(asyncio.create_task(runtime.certificates.run(),
                                                 name="webhook-certificate"))
    runtime.tasks += [
        asyncio.create_task(controller.run(), name="controller"),
        asyncio.create_task(controller.refresh_secrets(), name="named-secrets"),
    ]
    if config.liveness_port is not None:
        runtime.probes = await serve_probes(None, config.liveness_port, runtime.missing,
                                            metrics)
    return runtime


def register_runtime(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Start-up and clean-up."""

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In-cluster service account, or the kubeconfig, as the kubernetes client finds them.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(*, settings: kopf.OperatorSettings, memo: Any, **indexes: Any) -> None:
        settings.posting.level = logging.INFO
        # Every event hook's success and every poll would be a line: keep warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # No handler needs a finalizer; naming ours lets kopf remove it from objects an
        # earlier version left it on.
        settings.persistence.finalizer = f"{GROUP}/operator"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.watching.server_timeout = config.watch_timeout_seconds
        runtime = await _start(config, Indexes(
            indexes["exports_idx"], indexes["policies_idx"], indexes["workers_idx"],
            indexes["pods_idx"]))
        memo.runtime = runtime
        if runtime.certificates is not None and config.webhook is not None:
            settings.admission.server = webhook_server(config.webhook.addr, config.webhook.port,
                                                       runtime.certificates)

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(*, memo: Any, **_: Any) -> None:
        runtime: Runtime = memo.runtime
        await asyncio.to_thread(runtime.leadership.stop)
        for task in runtime.tasks:
            task.cancel()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)
        await runtime.poller.aclose()
        if runtime.probes is not None:
            await runtime.probes.cleanup()


