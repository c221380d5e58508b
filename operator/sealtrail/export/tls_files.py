"""TLS material that follows its files, so a renewed certificate Secret needs no restart.

`FollowedTls` is `followed.FollowedFiles` over one TLS setting's CA, certificate and key files:
what `build` makes of them (an `SSLContext`, or httpx's `verify`) is built again when the
kubelet swaps in new files, and new files that cannot be used leave the last good ones in use
with a warning naming them (see `sealtrail.followed`).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Final, TypeVar

from sealtrail.api.export import TLSSpec
from sealtrail.followed import CHECK_SECONDS, FollowedFiles, refusal_reason

__all__ = ["TLS_CHECK_SECONDS", "FollowedTls", "TlsFileError", "client_context"]

log = logging.getLogger("sealtrail.export")

#: How often, at most, one TLS setting's files are looked at for a change.
TLS_CHECK_SECONDS: Final = CHECK_SECONDS


T = TypeVar("T")


class TlsFileError(Exception):
    """A TLS file is missing, unreadable or not usable; the message names it, never its bytes."""


class FollowedTls(FollowedFiles[T]):
    """What `build` makes of one TLS setting, built again when the setting's files change."""

    def __init__(self, tls: TLSSpec, build: Callable[[TLSSpec], T], *,
                 check_seconds: float = TLS_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Follow `tls`'s files; nothing is read until the first `current()`."""
        names = _files(tls)
        super().__init__(
            names, lambda: build(tls), refused=(TlsFileError,), what="TLS files",
            kept=lambda _: "the previous certificates stay in use", log=log,
            announce=lambda *_: f"TLS files changed ({', '.join(names)}): new connections "
                                "use them",
            check_seconds=check_seconds, clock=clock)


def _files(tls: TLSSpec) -> list[str]:
    """The files a setting reads (the CA only when the server is verified)."""
    paths = [tls.cert_file, tls.key_file]
    if not tls.insecure_skip_verify:
        paths.insert(0, tls.ca_file)
    return [path for path in paths if path is not None]


def client_context(tls: TLSSpec) -> ssl.SSLContext:
    """A client context: the CA file (or the system's CAs) and the client certificate, if set.

    With `insecure_skip_verify` the server is not verified (tests only); a client certificate
    is still presented.
    """
    if tls.insecure_skip_verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=tls.ca_file)
        except (OSError, ValueError) as error:
            raise TlsFileError(f"CA file {tls.ca_file}: {refusal_reason(error)}") from None
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ValueError) as error:
            raise TlsFileError(f"client certificate {tls.cert_file} with key {tls.key_file}: "
                               f"{refusal_reason(error)}") from None
    return context


