"""Reading secrets from where a `CredentialRef` says, again whenever they may have changed.

A file is what a Kubernetes Secret becomes when mounted; the kubelet swaps it in place through
a symlink. So a credential is re-read (cheaply: only when the file's identity changed) before
each batch, and on an authentication failure unconditionally. The value never leaves this
object except to the backend that sends it. `digest(key)` is the keyed digest status shows to
say which rotation is in use (`api.worker_api.credential_digest`); `version` is one keyed with a
random key of this process, for noticing a change within it, and meaningless outside.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote, quote_plus

from sealtrail.api.export import CredentialRef
from sealtrail.api.worker_api import credential_digest

__all__ = ["REDACTED", "Credential", "CredentialError", "redact"]


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

    def digest(self, key: bytes) -> str | None:
        """`credential_digest` of the value last read, keyed with `key` (None: nothing read).

        An environment variable is looked at now; a file is not read for this.
        """
        if self.ref.env is not None:
            current = os.environ.get(self.ref.env)
            return credential_digest(current, key) if current else None
        return None if self._value is None else credential_digest(self._value, key)

    @property
    def version(self) -> str | None:
        """Which rotation is in use, for comparing within this process only.

        Keyed with a random key of this process, so it tells nothing of the value to anyone
        who sees it (status shows `digest(admin key)` instead).
        """
        return self.digest(_PROCESS_KEY)


#: The key of `Credential.version`: random, made once per process, never shown.
_PROCESS_KEY: Final = secrets.token_bytes(32)


#: What a secret is replaced with in text a peer supplied.
REDACTED: Final = "[REDACTED]"
#: Shorter values are not looked for (they would match everywhere); no real credential is.
_MIN_SECRET: Final = 4
# Whatever follows an HTTP auth scheme is a credential, known to us or not (a proxy may echo
# one it added itself).
_AUTH_SCHEME: Final = re.compile(
    r"(?i)\b(ApiKey|Basic|Bearer|Splunk|Token|DSN)(\s+|%20|\+)[A-Za-z0-9+/=._~:%-]{8,}")


def _spellings(secret: str) -> set[str]:
    """The ways a secret can come back in an answer: as is, URL-quoted, and base64'd."""
    raw = secret.encode()
    found = {secret, quote(secret, safe=""), quote_plus(secret),
             base64.b64encode(raw).decode("ascii"),
             base64.urlsafe_b64encode(raw).decode("ascii"),
             base64.b64encode(raw).decode("ascii").rstrip("=")}
    return {spelling for spelling in found if len(spelling) >= _MIN_SECRET}


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` (from a peer, or an error about one) with every spelling of `secrets` removed.

    Each secret is removed as is, URL-quoted and base64-encoded (`Basic` sends
    base64("user:password"): give that pair as a secret too), and anything after an HTTP auth
    scheme (`ApiKey ...`, `Basic ...`, `Bearer ...`, `Splunk ...`) goes as well. The one place
    peer-supplied text passes before status, metrics or logs hold it.
    """
    spellings: set[str] = set()
    for secret in secrets:
        if secret:
            spellings |= _spellings(secret)
    # Longest first, so that a secret inside another's encoding cannot leave a tail behind.
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling, REDACTED)
    return _AUTH_SCHEME.sub(lambda match: f"{match.group(1)} {REDACTED}", text)
