"""Reading secrets from where a `CredentialRef` says, again whenever they may have changed.

A file is what a Kubernetes Secret becomes when mounted; the kubelet swaps it in place through
a symlink. So a credential is re-read (cheaply: only when the file's identity changed) before
each batch, and on an authentication failure unconditionally. The value never leaves this
object except to the backend that sends it; `version` is a short digest that status can show
to say which rotation is in use.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from sealtrail.api.export import CredentialRef

__all__ = ["Credential", "CredentialError"]


class CredentialError(Exception):
    """A credential cannot be read. The message names where it was looked for, never a value."""


@dataclass
class Credential:
    """One secret, re-read on demand."""

    ref: CredentialRef
    _value: str | None = None
    _identity: tuple[int, int, int, float] | None = None

    def value(self, *, force: bool = False) -> str:
        """The secret, re-read if its file changed (or always, with `force`)."""
        if self.ref.env is not None:
            found = os.environ.get(self.ref.env)
            if not found:
                raise CredentialError(f"environment variable {self.ref.env} is not set")
            return found.strip()
        path = Path(str(self.ref.file))
        try:
            info = path.stat()  # follows the kubelet's ..data symlink to the current file
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime)
            if force or self._value is None or identity != self._identity:
                self._value = path.read_text(encoding="utf-8").strip()
                self._identity = identity
        except OSError as error:
            raise CredentialError(f"cannot read credential file {path}: {error.strerror}") from None
        if not self._value:
            raise CredentialError(f"credential file {path} is empty")
        return self._value

    @property
    def version(self) -> str | None:
        """First 12 hex digits of SHA-256 of the value last read: which rotation is in use."""
        if self.ref.env is not None:
            current = os.environ.get(self.ref.env)
            return hashlib.sha256(current.encode()).hexdigest()[:12] if current else None
        if self._value is None:
            return None
        return hashlib.sha256(self._value.encode()).hexdigest()[:12]
