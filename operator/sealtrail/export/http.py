"""The one place that builds HTTP clients.

One `httpx.AsyncClient` per distinct TLS and proxy setting, shared by every export that uses the
same settings (in practice: one per process). `HTTPS_PROXY`/`NO_PROXY` from the environment
are honoured unless an export names its own proxy.

TLS files follow their Secret. When a client is asked for, its CA, certificate and key files
are looked at (at most every `TLS_CHECK_SECONDS` per setting: a `stat` of each, which follows
the kubelet's `..data` symlinks to the file it currently projects). If one changed, a new
client with a new `SSLContext` is built and handed out from then on; the old one is closed
once nothing has been in flight on it for `RETIRE_IDLE_SECONDS`, so a batch (or a Splunk ack
wait) that started on it finishes on it. New files that cannot be used (half written, a key
that does not match the certificate) leave the old client in use: a warning names the files,
never their contents, and they are tried again at the next check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from sealtrail.api.export import TLSSpec
from sealtrail.export.outcome import Outcome, OutcomeKind

__all__ = ["RETIRE_IDLE_SECONDS", "TLS_CHECK_SECONDS", "HttpClients", "TlsFileError", "post"]

log = logging.getLogger("sealtrail.export")

#: How often, at most, one TLS setting's files are looked at for a change.
TLS_CHECK_SECONDS: Final = 1.0
#: How long a replaced client must have had nothing in flight before it is closed. Longer than
#: the longest pause inside one delivery: Splunk's ack polls are at most 60 s apart.
RETIRE_IDLE_SECONDS: Final = 120.0

_Key = tuple[TLSSpec, str | None]
#: Per file: its path, then device, inode, size and mtime of what the path resolves to.
_Stamp = tuple[tuple[str, int, int, int, int], ...]

_SSL_REASONS: Final = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no certificate in it",
}


class TlsFileError(Exception):
    """A TLS file is missing, unreadable or not usable; the message names it, never its bytes."""


class _Client(httpx.AsyncClient):
    """An `AsyncClient` that counts the requests in flight on it and knows when it was used."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.in_flight = 0
        self.last_used = time.monotonic()

    async def send(self, request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
        """Send as httpx does, counted (every request of our backends reads its whole body)."""
        self.in_flight += 1
        self.last_used = time.monotonic()
        try:
            return await super().send(request, *args, **kwargs)
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()


@dataclass
class _Entry:
    """The client in use for one setting, and the state of the files it was built from."""

    client: _Client
    stamp: _Stamp
    digest: bytes
    next_check: float
    warned: tuple[_Stamp | None, str] | None = None  # the last warning given


class HttpClients:
    """A cache of clients keyed by (TLS settings, proxy), following the TLS files."""

    def __init__(self, *, check_seconds: float = TLS_CHECK_SECONDS,
                 retire_idle_seconds: float = RETIRE_IDLE_SECONDS) -> None:
        """Start with no clients; they are made on first use."""
        self.check_seconds = check_seconds
        self.retire_idle_seconds = retire_idle_seconds
        self._entries: dict[_Key, _Entry] = {}
        self._retired: list[_Client] = []
        self._closers: set[asyncio.Task[None]] = set()

    def get(self, tls: TLSSpec, proxy: str | None = None) -> httpx.AsyncClient:
        """The client for these settings, rebuilt if their TLS files changed.

        Raises `TlsFileError` only when there is no client yet and the files cannot be used.
        """
        key = (tls, proxy)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None:
            stamp, digest = _stamp(tls), _digest(tls)
            entry = _Entry(_client(_ssl_context(tls), proxy), stamp, digest,
                           now + self.check_seconds)
            self._entries[key] = entry
        elif entry.stamp and now >= entry.next_check:
            entry.next_check = now + self.check_seconds
            self._follow_files(tls, proxy, entry)
        return entry.client

    def _follow_files(self, tls: TLSSpec, proxy: str | None, entry: _Entry) -> None:
        """Swap in a client built from changed TLS files; keep the old one if they are bad."""
        stamp: _Stamp | None = None
        try:
            stamp = _stamp(tls)
            if stamp == entry.stamp:
                return
            digest = _digest(tls)
            if digest == entry.digest:  # touched or projected again, same bytes
                entry.stamp = stamp
                return
            context = _ssl_context(tls)
        except TlsFileError as error:
            problem = str(error)
            if entry.warned != (stamp, problem):  # once per state of the files, not per check
                entry.warned = (stamp, problem)
                log.warning("TLS files changed but cannot be used: %s; requests keep the "
                            "previous certificates, and the files are read again in %gs",
                            problem, self.check_seconds)
            return
        old = entry.client
        entry.client = _client(context, proxy)
        entry.stamp, entry.digest, entry.warned = stamp, digest, None
        log.info("TLS files changed (%s): new requests use them", ", ".join(_files(tls)))
        self._retire(old)

    def _retire(self, client: _Client) -> None:
        """Close `client` once it has been idle long enough (at `aclose` without a loop)."""
        client.last_used = time.monotonic()  # the grace period counts from now at least
        self._retired.append(client)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._close_when_idle(client), name="close-replaced-http-client")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_when_idle(self, client: _Client) -> None:
        while True:
            idle = time.monotonic() - client.last_used
            if client.in_flight == 0 and idle >= self.retire_idle_seconds:
                break
            await asyncio.sleep(max(self.retire_idle_seconds - idle, 0.05))
        await client.aclose()
        self._retired.remove(client)

    async def aclose(self) -> None:
        """Close every client, replaced ones included."""
        for task in list(self._closers):
            task.cancel()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        for client in [*self._retired, *(entry.client for entry in self._entries.values())]:
            await client.aclose()
        self._retired.clear()
        self._entries.clear()


def _client(verify: ssl.SSLContext | bool, proxy: str | None) -> _Client:
    return _Client(
        verify=verify,
        proxy=proxy,
        trust_env=proxy is None,
        timeout=httpx.Timeout(30.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
    )


def _files(tls: TLSSpec) -> list[str]:
    """The files a setting reads (none when verification is off)."""
    if tls.insecure_skip_verify:
        return []
    return [path for path in (tls.ca_file, tls.cert_file, tls.key_file) if path is not None]


def _stamp(tls: TLSSpec) -> _Stamp:
    """What the files resolve to now: cheap to take, and changed by any kubelet swap."""
    stamp = []
    for path in _files(tls):
        try:
            found = Path(path).stat()  # follows symlinks: the projected file, not the link
        except OSError as error:
            raise TlsFileError(f"{path}: {error.strerror}") from None
        stamp.append((path, found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns))
    return tuple(stamp)


def _digest(tls: TLSSpec) -> bytes:
    digest = hashlib.sha256()
    for path in _files(tls):
        try:
            content = Path(path).read_bytes()
        except OSError as error:
            raise TlsFileError(f"{path}: {error.strerror}") from None
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


def _ssl_context(tls: TLSSpec) -> ssl.SSLContext | bool:
    if tls.insecure_skip_verify:
        return False
    if tls.ca_file is None and tls.cert_file is None:
        return True
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


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    timeout_seconds: float,
    peer: str,
) -> httpx.Response | Outcome:
    """POST without following redirects; a transport failure becomes a RETRYABLE outcome.

    Reasons carry the error's class name only: httpx messages can hold the URL, and a URL can
    hold credentials. A timeout may hide a request that landed; resending it is what
    at-least-once means, and the dedupe keys make the copy recognisable.
    """
    try:
        return await client.post(url, content=content, headers=headers,
                                 timeout=timeout_seconds, follow_redirects=False)
    except httpx.TimeoutException as error:
        return Outcome(OutcomeKind.RETRYABLE,
                       f"no answer from {peer} within {timeout_seconds:g}s "
                       f"({type(error).__name__})")
    except (httpx.HTTPError, ssl.SSLError, OSError) as error:
        # httpx wraps most transport errors, but not a TLS 1.3 alert that comes after the
        # handshake (a refused client certificate): that one arrives as a raw SSLError.
        return Outcome(OutcomeKind.RETRYABLE, f"cannot reach {peer} ({type(error).__name__})")
    except httpx.InvalidURL:
        return Outcome(OutcomeKind.PERMANENT, f"invalid URL for {peer}")
