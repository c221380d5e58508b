"""TLS material that follows its files, so a renewed certificate Secret needs no restart.

In a pod, `tls.secretName` is a Secret volume: the kubelet replaces its files at once by
swapping the `..data` symlink. `FollowedTls` keeps what one TLS setting's files make (an
`SSLContext`, or something built on one) and looks at the files again at most every
`check_seconds`: a `stat` of each path, which follows the symlinks to the file projected now,
then, only if that changed, a digest of the bytes (a file projected again with the same bytes
changes nothing). Changed files are built into a new value, handed out from then on; its
`generation` moves so that holders of things built on the old one (HTTP clients) know to
replace them.

New files that cannot be used (half written, a key that does not belong to the certificate)
leave the previous value in use. One warning names the files and why, never their contents,
and they are tried again at the next check. Only the very first build has nothing to fall back
on: its `TlsFileError` goes to the caller.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Generic, TypeVar

from sealtrail.api.export import TLSSpec

__all__ = ["TLS_CHECK_SECONDS", "FollowedTls", "TlsFileError", "client_context"]

log = logging.getLogger("sealtrail.export")

#: How often, at most, one TLS setting's files are looked at for a change.
TLS_CHECK_SECONDS: Final = 1.0

#: Per file: its path, then device, inode, size and mtime of what the path resolves to.
_Stamp = tuple[tuple[str, int, int, int, int], ...]

_SSL_REASONS: Final = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no certificate in it",
}

T = TypeVar("T")


class TlsFileError(Exception):
    """A TLS file is missing, unreadable or not usable; the message names it, never its bytes."""


class FollowedTls(Generic[T]):
    """The value `build` makes of one TLS setting, rebuilt when the setting's files change."""

    def __init__(self, tls: TLSSpec, build: Callable[[TLSSpec], T], *,
                 check_seconds: float = TLS_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Follow `tls`'s files; nothing is read until the first `current()`."""
        self.tls = tls
        self.check_seconds = check_seconds
        self.generation = 0  # moves on every rebuild
        self._build = build
        self._clock = clock
        self._value: T | None = None
        self._stamp: _Stamp = ()
        self._digest = b""
        self._next_check = 0.0
        self._warned: tuple[_Stamp | None, str] | None = None

    def current(self) -> T:
        """The value for the files as they are now (as of the last check).

        Raises `TlsFileError` only if the files have never been usable.
        """
        if self._value is None:
            self._stamp, self._digest = stamp(self.tls), _digest(self.tls)
            self._value = self._build(self.tls)
            self._next_check = self._clock() + self.check_seconds
            self.generation += 1
        elif self._stamp and self._clock() >= self._next_check:
            self._next_check = self._clock() + self.check_seconds
            self._follow()
        return self._value

    def _follow(self) -> None:
        new_stamp: _Stamp | None = None
        try:
            new_stamp = stamp(self.tls)
            if new_stamp == self._stamp:
                return
            digest = _digest(self.tls)
            if digest == self._digest:  # touched or projected again, same bytes
                self._stamp = new_stamp
                return
            value = self._build(self.tls)
        except TlsFileError as error:
            problem = str(error)
            if self._warned != (new_stamp, problem):  # once per state of the files
                self._warned = (new_stamp, problem)
                log.warning("TLS files changed but cannot be used: %s; the previous certificates "
                            "stay in use, and the files are read again in %gs",
                            problem, self.check_seconds)
            return
        self._value, self._stamp, self._digest, self._warned = value, new_stamp, digest, None
        self.generation += 1
        log.info("TLS files changed (%s): new connections use them", ", ".join(files(self.tls)))


def files(tls: TLSSpec) -> list[str]:
    """The files a setting reads (none when verification is off and no client cert is set)."""
    paths = [tls.cert_file, tls.key_file]
    if not tls.insecure_skip_verify:
        paths.insert(0, tls.ca_file)
    return [path for path in paths if path is not None]


def stamp(tls: TLSSpec) -> _Stamp:
    """What the files resolve to now: cheap to take, and changed by any kubelet swap."""
    found = []
    for path in files(tls):
        try:
            info = Path(path).stat()  # follows symlinks: the projected file, not the link
        except OSError as error:
            raise TlsFileError(f"{path}: {error.strerror}") from None
        found.append((path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(found)


def _digest(tls: TLSSpec) -> bytes:
    digest = hashlib.sha256()
    for path in files(tls):
        try:
            content = Path(path).read_bytes()
        except OSError as error:
            raise TlsFileError(f"{path}: {error.strerror}") from None
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


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
            raise TlsFileError(f"CA file {tls.ca_file}: {_reason(error)}") from None
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ValueError) as error:
            raise TlsFileError(f"client certificate {tls.cert_file} with key {tls.key_file}: "
                               f"{_reason(error)}") from None
    return context


def _reason(error: Exception) -> str:
    """Why a file was refused, in words that never quote the file."""
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        return _SSL_REASONS.get(reason, f"not usable PEM ({reason or 'unreadable'})")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
