"""The operator's own settings, loaded once (from the command line) and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_IMAGE", "OperatorConfig", "WebhookConfig"]

#: The worker image when neither a policy nor the command line names one.
DEFAULT_IMAGE = "sealtrail/sealtrail:0.1.0"


@dataclass(frozen=True)
class WebhookConfig:
    """The admission webhook server the operator runs for sidecar injection."""

    port: int = 9443
    #: None: every address, IPv4 and IPv6, as the pod's may be either (aiohttp then binds
    #: `0.0.0.0` and `::`); not "::", which asyncio binds IPv6-only (`IPV6_V6ONLY`).
    addr: str | None = None
    #: DNS names (and IPs) the certificate must carry: the Service's names in a cluster.
    hosts: tuple[str, ...] = ("localhost",)
    #: A mounted certificate (`tls.crt`, `tls.key`, `ca.crt`; cert-manager); None: self-made.
    cert_dir: Path | None = None
    #: The MutatingWebhookConfiguration whose `caBundle` a self-made CA is written into.
    configuration: str | None = "sealtrail"
    #: The shared certificate's lifetimes and how often replicas re-read it (see certs.py).
    ca_days: float = 5 * 365
    leaf_days: float = 365
    check_seconds: float = 60.0


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the handlers need to know that is not in the cluster."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    poll_seconds: float = 5.0
    policy_resync_seconds: float = 30.0
    watch_timeout_seconds: int = 300
    default_image: str = DEFAULT_IMAGE
    #: Secrets (in each pod's namespace) to pull the worker image with, for every injected pod.
    worker_image_pull_secrets: tuple[str, ...] = ()
    webhook: WebhookConfig | None = field(default_factory=WebhookConfig)
    #: `/healthz`, `/readyz` and `/metrics`.
    liveness_port: int | None = 8080
    #: The operator's own namespace and the release's full name: the Lease and the webhook's
    #: certificate Secret are `<release_name>-leader` and `<release_name>-webhook-tls` there.
    release_namespace: str = "sealtrail"
    release_name: str = "sealtrail"
    heartbeat_seconds: float = 60.0
    secret_refresh_seconds: float = 30.0
    lease_seconds: int = 15
