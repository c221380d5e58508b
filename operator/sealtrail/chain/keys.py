"""Ed25519 signing keys for checkpoints.

The private key signs checkpoints; the public key is what an auditor keeps (outside the
writer's reach) to tell a genuine checkpoint from a forged one. Keys are PEM files: PKCS#8 for
the private key (written with mode 0600), SubjectPublicKeyInfo for the public one (0644; both
modes whatever the umask), so that
`openssl pkey -in KEY.pub -pubin -text` can read them too.

A running worker follows its key file (`ReloadingSigner`): when the Secret behind it is
rotated, the next checkpoint is signed with the new key and names it by its `key_id`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealtrail.followed import CHECK_SECONDS, FollowedFiles

__all__ = [
    "KEY_CHECK_SECONDS",
    "PRIVATE_KEY_MODE",
    "PUBLIC_KEY_MODE",
    "KeyFileError",
    "PublicKey",
    "ReloadingSigner",
    "Signer",
    "generate_keypair",
    "load_public_key",
    "load_signer",
]

log = logging.getLogger("sealtrail.chain")

#: The private key: its owner alone reads it.
PRIVATE_KEY_MODE: Final = 0o600
#: The public key: anyone may read it (it is what auditors are handed); only its owner writes.
PUBLIC_KEY_MODE: Final = 0o644

#: How often, at most, a `ReloadingSigner` looks at its file.
KEY_CHECK_SECONDS: Final = CHECK_SECONDS


class KeyFileError(Exception):
    """A key file is missing, unreadable or not an Ed25519 key."""


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A verifying key and its id (the first 8 bytes of SHA-256 of the raw key, in hex)."""

    key: Ed25519PublicKey
    key_id: str

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """True when `signature` is this key's signature over `message`."""
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A signing key with its public half."""

    key: Ed25519PrivateKey
    public: PublicKey

    @property
    def key_id(self) -> str:
        """Id of the public half, carried in every checkpoint."""
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature over `message`."""
        return self.key.sign(message)


def generate_keypair(out: Path) -> Signer:
    """Write a new key to `out` (mode 0600) and its public half to `out.pub` (mode 0644).

    Refuses to overwrite: losing a signing key silently would orphan every checkpoint made with it.
    """
    pub_path = out.with_name(out.name + ".pub")
    for path in (out, pub_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(out, private_pem, PRIVATE_KEY_MODE)
    _write_new(pub_path, public_pem, PUBLIC_KEY_MODE)
    public = key.public_key()
    return Signer(key, PublicKey(public, _key_id(public)))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never replacing a file or following a link) with exactly `mode`.

    The mode is set with fchmod after creating, so the process umask cannot widen it (umask 0
    would leave a file created 0666 writable by anyone) or narrow it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as error:
        raise KeyFileError(f"cannot create {path}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror}") from None


def load_signer(path: Path) -> Signer:
    """Load a private key written by `generate_keypair`."""
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    public = key.public_key()
    return Signer(key, PublicKey(public, _key_id(public)))


def load_public_key(path: Path) -> PublicKey:
    """Load a public key written by `generate_keypair`."""
    try:
        key = serialization.load_pem_public_key(_read(path))
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return PublicKey(key, _key_id(key))


class ReloadingSigner(FollowedFiles[Signer]):
    """The signing key in a file, followed as the file changes (a rotated Secret).

    `current()` looks at the file at most every `check_seconds` (see `sealtrail.followed`); a
    file that is not a usable key leaves the previous key in use, with a warning naming the
    file (never its contents).
    """

    def __init__(self, path: Path, *, check_seconds: float = KEY_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Load the key now: without one there is nothing to fall back on (`KeyFileError`)."""
        super().__init__(
            [path], lambda: load_signer(path), refused=(KeyFileError,),
            what="checkpoint signing key", log=log,
            kept=lambda old: f"still signing with key {old.key_id}",
            announce=lambda old, new: None if new.key_id == old.key_id else (
                f"checkpoint signing key {new.key_id} loaded from {path}; it signs from now on "
                f"(the previous key was {old.key_id})"),
            check_seconds=check_seconds, clock=clock)
        self.path = path
        self.current()
