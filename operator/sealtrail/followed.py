"""Something built from mounted files, built again when the files change (a rotated Secret).

In a pod a Secret volume's files are replaced at once by the kubelet, which swaps the `..data`
symlink. `FollowedFiles` keeps the value its files make (a TLS context, a signing key) and looks
at them again at most every `check_seconds`: a `stat` of each path, which follows the symlinks to
the file projected now, then, only if that changed, a digest of the bytes (files projected again
with the same bytes change nothing). Changed files are built into a new value, handed out from
then on, and `generation` moves so that holders of things made from the old value (HTTP
clients) know to replace them.

New files that cannot be used (half written, a key that does not belong to its certificate)
leave the previous value in use. One warning per state of the files names them and why, never
their contents, and they are tried again at the next check. Only the first build has nothing to
fall back on: its error goes to the caller.

Used by `export.tls_files` and `chain.keys`; it imports nothing of sealtrail's.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Generic, TypeVar

__all__ = ["CHECK_SECONDS", "FollowedFiles", "refusal_reason"]

#: How often, at most, one set of files is looked at for a change.
CHECK_SECONDS: Final = 1.0

T = TypeVar("T")

#: Per file: device, inode, size and mtime of what the path resolves to (None: unreadable).
_Stamp = tuple[tuple[int, int, int, int] | None, ...]


class FollowedFiles(Generic[T]):
    """The value `build` makes of some files, built again when they change."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        build: Callable[[], T],
        *,
        refused: tuple[type[Exception], ...],
        what: str,
        kept: Callable[[T], str],
        announce: Callable[[T, T], str | None],
        log: logging.Logger,
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Follow `paths`; nothing is read until the first `current()`.

        `refused` are the errors `build` raises for unusable files (their message must name the
        file, never quote it); `what` names the files in messages; `kept(old)` says what stays
        in use when new files are refused; `announce(old, new)` is the line logged when new
        files are taken (None: say nothing).
        """
        self.paths = [Path(path) for path in paths]
        self.generation = 0  # moves on every build
        self.check_seconds = check_seconds
        self._build = build
        self._refused = refused
        self._what = what
        self._kept = kept
        self._announce = announce
        self._log = log
        self._clock = clock
        self._value: T | None = None
        self._stamp: _Stamp = ()
        self._digest = b""
        self._next_check = 0.0
        self._warned: tuple[_Stamp, str] | None = None

    def current(self) -> T:
        """The value for the files as they were at the last check (building it the first time).

        Raises one of `refused` only if the files have never been usable.
        """
        if self._value is None:
            stamp, digest = self._look(), self._read()
            self._value = self._build()
            self._stamp, self._digest = stamp, digest
            self._next_check = self._clock() + self.check_seconds
            self.generation += 1
        elif self.paths and self._clock() >= self._next_check:
            self._next_check = self._clock() + self.check_seconds
            self._follow(self._value)
        return self._value

    def _follow(self, old: T) -> None:
        stamp = self._look()
        if stamp == self._stamp and None not in stamp:
            return
        digest = self._read()
        if digest == self._digest:  # touched or projected again, same bytes
            self._stamp = stamp
            return
        try:
            value = self._build()
        except self._refused as error:
            if self._warned != (stamp, str(error)):  # once per state of the files
                self._warned = (stamp, str(error))
                self._log.warning("%s changed but cannot be used: %s; %s, and the files are "
                                  "read again in %gs", self._what, error, self._kept(old),
                                  self.check_seconds)
            return
        self._value, self._stamp, self._digest, self._warned = value, stamp, digest, None
        self.generation += 1
        message = self._announce(old, value)
        if message is not None:
            self._log.info("%s", message)

    def _look(self) -> _Stamp:
        stamp: list[tuple[int, int, int, int] | None] = []
        for path in self.paths:
            try:
                found = path.stat()  # follows symlinks: the projected file, not the link
            except OSError:
                stamp.append(None)
                continue
            stamp.append((found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns))
        return tuple(stamp)

    def _read(self) -> bytes:
        digest = hashlib.sha256()
        for path in self.paths:
            try:
                content = path.read_bytes()
            except OSError as error:  # `build` says why, naming the file
                content = f"unreadable: {error.errno}".encode()
            digest.update(len(content).to_bytes(8, "big") + content)
        return digest.digest()


_SSL_REASONS: Final = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no certificate in it",
    "NO_START_LINE": "not PEM",
}


def refusal_reason(error: Exception) -> str:
    """Why a certificate or key file was refused, in words that never quote the file."""
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        return _SSL_REASONS.get(reason, f"not usable PEM ({reason or 'unreadable'})")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
