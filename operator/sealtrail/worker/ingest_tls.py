"""HTTPS for the ingest listener (`ingest.tls`), following its certificate files.

The listening socket keeps one `SSLContext` for its whole life; what follows the files is the
context each connection ends up with. The listening context's SNI callback, which OpenSSL calls
for every handshake (with no name when the client sends none, as a client connecting to an IP
address does), hands the connection the context `FollowedFiles` built from the files as they
are now. So a certificate the operator re-issues (a new ClusterIP, a renewal) is served to new
connections within a second of the kubelet swapping the Secret's files, and connections already
open keep theirs. Files that cannot be used leave the last good certificate in use, with one
warning naming them (never their contents).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from sealtrail.api.configfile import ConfigFileError
from sealtrail.api.worker_config import IngestTlsSpec, WorkerConfig
from sealtrail.followed import CHECK_SECONDS, FollowedFiles, refusal_reason

__all__ = ["IngestTls", "IngestTlsError", "listening_context", "server_context"]

log = logging.getLogger("sealtrail.worker")


class IngestTlsError(Exception):
    """The ingest certificate or key cannot be used; the message names the files only."""


def server_context(spec: IngestTlsSpec) -> ssl.SSLContext:
    """A server context (TLS 1.2 and later) with the certificate chain and key of `spec`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(spec.cert_file, spec.key_file)
    except (OSError, ValueError) as error:
        raise IngestTlsError(f"ingest certificate {spec.cert_file} with key {spec.key_file}: "
                             f"{refusal_reason(error)}") from None
    return context


class IngestTls:
    """The listening context of `ingest.tls`, serving whatever the files hold now."""

    def __init__(self, spec: IngestTlsSpec, *, check_seconds: float = CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Read the files once (raises `IngestTlsError` if they cannot be used)."""
        self.spec = spec
        self.files: FollowedFiles[ssl.SSLContext] = FollowedFiles(
            [spec.cert_file, spec.key_file], lambda: server_context(spec),
            refused=(IngestTlsError,), what="ingest TLS files",
            kept=lambda _: "the previous certificate is still served",
            announce=lambda *_: (f"ingest TLS files changed ({spec.cert_file}, "
                                 f"{spec.key_file}): new connections get the new certificate"),
            log=log, check_seconds=check_seconds, clock=clock)
        self.context = server_context(spec)
        self.files.current()
        self.context.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, _name: str | None,
                _context: ssl.SSLContext) -> None:
        """Per handshake: give the connection the context of the files as they are now."""
        connection.context = self.files.current()


def listening_context(config_path: Path, config: WorkerConfig) -> ssl.SSLContext | None:
    """The ingest listener's context (None: plain HTTP); unusable files are a config error."""
    if config.ingest.tls is None:
        return None
    try:
        return IngestTls(config.ingest.tls).context
    except IngestTlsError as error:
        raise ConfigFileError(config_path, [f"ingest.tls: {error}"]) from None
