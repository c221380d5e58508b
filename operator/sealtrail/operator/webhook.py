"""The admission webhook's serving side: one certificate for every replica, kept current.

Every replica serves the webhook with the certificate in one Secret (`<release>-webhook-tls`
in the operator's namespace), made by whichever replica starts first. Each replica re-reads
the Secret every `check_seconds` and loads a changed pair into the TLS context it serves with
(new handshakes use it; the listener never restarts). The leader also plans renewals
(`certs.plan_certificates`) and keeps the bundle in the MutatingWebhookConfiguration's
`caBundle`, so the bundle the API server trusts and the certificates replicas serve never
disagree.

With cert-manager (`cert_dir`), the mounted files are served the same way and cert-manager's
CA injector keeps the bundle; nothing is published from here.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from sealtrail.operator.certs import CertificateSet, Lifetimes, plan_certificates
from sealtrail.operator.kube import Kube, KubeError
from sealtrail.operator.leader import Leadership

__all__ = ["CertificateSettings", "WebhookCertificates", "webhook_server"]

log = logging.getLogger("sealtrail.operator")


@dataclass(frozen=True)
class CertificateSettings:
    """Where the shared certificate lives and how it is kept."""

    namespace: str
    secret: str
    hosts: tuple[str, ...]
    #: The MutatingWebhookConfiguration whose `caBundle` the leader keeps; None: not ours.
    configuration: str | None
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    check_seconds: float = 60.0
    #: Mounted by the chart from cert-manager (`tls.crt`, `tls.key`); None: the shared Secret.
    cert_dir: Path | None = None


def _decode(data: dict[str, str]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in data.items()}


class WebhookCertificates:
    """The TLS context every replica serves with, and (in the leader) its renewal."""

    def __init__(self, kube: Kube, settings: CertificateSettings,
                 leadership: Leadership) -> None:
        """Nothing is loaded until `load`."""
        self._kube = kube
        self._settings = settings
        self._leadership = leadership
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._served: bytes | None = None
        self._published: bytes | None = None
        self._checked_leading = False  # whether the last check ran as the leader
        self._directory = Path(tempfile.mkdtemp(prefix="sealtrail-webhook-"))

    @property
    def loaded(self) -> bool:
        """True once a certificate is being served."""
        return self._served is not None

    def _serve(self, cert: bytes, key: bytes) -> None:
        if cert == self._served:
            return
        cert_file, key_file = self._directory / "tls.crt", self._directory / "tls.key"
        cert_file.write_bytes(cert)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        self.context.load_cert_chain(cert_file, key_file)  # affects new handshakes only
        key_file.unlink()
        if self._served is not None:
            log.info("the webhook serves a renewed certificate")
        self._served = cert

    def _read(self) -> tuple[CertificateSet | None, dict[str, object] | None]:
        body = self._kube.read_secret(self._settings.namespace, self._settings.secret)
        if body is None:
            return None, None
        return CertificateSet.from_data(_decode(body.get("data") or {})), body

    def _write(self, wanted: CertificateSet, body: dict[str, object] | None) -> bool:
        data = {key: base64.b64encode(value).decode() for key, value in wanted.to_data().items()}
        secret: dict[str, object] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": self._settings.secret, "namespace": self._settings.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "sealtrail"}},
            "data": data,
        }
        if body is None:
            return self._kube.create_secret(self._settings.namespace, secret)
        metadata = body.get("metadata")
        assert isinstance(metadata, dict)  # noqa: S101 - a Secret read from the API has one
        secret["metadata"] = {**metadata, "labels": {**(metadata.get("labels") or {}),
                                                     "app.kubernetes.io/managed-by": "sealtrail"}}
        return self._kube.replace_secret(self._settings.namespace, secret)

    def _check(self, *, leading: bool) -> None:
        """One check (blocking): read, renew if leading and due, publish, serve."""
        if self._settings.cert_dir is not None:
            directory = self._settings.cert_dir
            self._serve((directory / "tls.crt").read_bytes(), (directory / "tls.key").read_bytes())
            return
        current, body = self._read()
        if current is None or leading:
            wanted = plan_certificates(
                current, list(self._settings.hosts), dt.datetime.now(dt.UTC),
                self._settings.lifetimes,
                bundle_published=current is not None and self._published == current.bundle)
            if wanted is not current and not self._write(wanted, body):
                # Another replica wrote first (made it, or renewed it): serve theirs.
                current, body = self._read()
                wanted = current if current is not None else wanted
            current = wanted
        if leading and self._settings.configuration is not None:
            if self._kube.set_webhook_ca(self._settings.configuration, current.bundle):
                self._published = current.bundle
            else:
                log.warning("MutatingWebhookConfiguration %s not found yet; pods are not "
                            "injected until it exists", self._settings.configuration)
        self._serve(current.cert, current.key)

    async def load(self) -> None:
        """Serve a certificate, making the shared one first if no replica has (start-up)."""
        while True:
            self._checked_leading = self._leadership.leading
            try:
                await asyncio.to_thread(self._check, leading=self._checked_leading)
            except (KubeError, OSError, ValueError) as error:
                log.error("cannot load the webhook certificate: %s", error)  # noqa: TRY400
                await asyncio.sleep(2.0)
                continue
            return

    async def run(self) -> None:
        """Forever: check every `check_seconds`, or at once when leadership changes."""
        while True:
            if self._leadership.leading == self._checked_leading:  # else: changed meanwhile
                await self._leadership.wait_changed(timeout=self._settings.check_seconds)
            self._checked_leading = self._leadership.leading
            try:
                await asyncio.to_thread(self._check, leading=self._checked_leading)
            except (KubeError, OSError, ValueError) as error:
                log.error("webhook certificate check failed: %s", error)  # noqa: TRY400


class _ServingContext(kopf.WebhookServer):
    """kopf's server, serving exactly the TLS context it is given.

    kopf 1.45 loads a certificate into any context from `certfile` (or makes a self-signed one
    when there is none), and restarts its listener when those files change: a moment in which
    the API server's calls are refused. Our context already holds the certificate and is
    reloaded in place (`WebhookCertificates._serve`), so this takes it as it is.
    """

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        return None, self.context


def webhook_server(addr: str | None, port: int,
                   certificates: WebhookCertificates) -> kopf.WebhookServer:
    """The webhook server (kopf's) on our TLS context (reloaded in place, never restarted)."""
    return _ServingContext(addr=addr, port=port, context=certificates.context)
