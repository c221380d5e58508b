"""The one place that builds HTTP clients.

One `httpx.AsyncClient` per distinct TLS and proxy setting, shared by every export that uses the
same settings (in practice: one per process). `HTTPS_PROXY`/`NO_PROXY` from the environment
are honoured unless an export names its own proxy.

TLS files follow their Secret (`tls_files.FollowedTls`): when a client is asked for and its
setting's files have changed, a new client with the new `SSLContext` is handed out from then
on. The old one is closed once nothing has been in flight on it for `RETIRE_IDLE_SECONDS`, so a
batch (or a Splunk ack wait) that started on it finishes on it. New files that cannot be used
leave the old client in use, with a warning naming them.

httpx logs every request at INFO with its URL; a URL's query string can hold a token (some
receivers take one there). While clients built here exist, the `httpx` logger carries
`RedactUrls`, which cuts query strings, fragments and any `user:password@` from what it logs.
httpcore, at DEBUG, logs each response's headers: a peer can put anything there, an echoed
`Authorization` header included, so its loggers carry `RedactUrls` too, which drops the
`return_value=` part of their records.

A response that has been read is cut loose from its stream (`_Client.send`): httpx binds the
two to each other (`Response.stream` is a `BoundAsyncStream` holding the response), a reference
cycle that keeps the response, its request and the request body (a whole batch, up to 10 MB)
alive until the cyclic garbage collector runs. Cut, they go as soon as the backend drops the
response, and the collector has nothing of ours to find.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from sealtrail.api.export import TLSSpec
from sealtrail.export.outcome import Outcome, OutcomeKind
from sealtrail.export.tls_files import (
    TLS_CHECK_SECONDS,
    FollowedTls,
    TlsFileError,
    client_context,
)

__all__ = [
    "RETIRE_IDLE_SECONDS",
    "TLS_CHECK_SECONDS",
    "HttpClients",
    "RedactUrls",
    "TlsFileError",
    "post",
    "safe_url",
]

#: How long a replaced client must have had nothing in flight before it is closed. Longer than
#: the longest pause inside one delivery: Splunk's ack polls are at most 60 s apart.
RETIRE_IDLE_SECONDS: Final = 120.0

_Key = tuple[TLSSpec, str | None]

log = logging.getLogger("sealtrail.export")


def safe_url(url: str | httpx.URL) -> str:
    """`url` fit for a log: no `user:password@`, and a query string or fragment only as `?...`."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<unparsable URL>"
    shown = parsed.copy_with(username=None, password=None, query=None, fragment=None)
    return str(shown) + ("?[REDACTED]" if parsed.query else "")


#: httpcore's loggers (a filter on a parent logger does not see its children's records).
_HTTPCORE_LOGGERS: Final = ("httpcore.connection", "httpcore.http11", "httpcore.http2",
                            "httpcore.proxy", "httpcore.socks", "httpcore.connection_pool")


class RedactUrls(logging.Filter):
    """Makes httpx's and httpcore's records safe: URLs via `safe_url`, no peer headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, its URLs made safe and what a peer sent left out."""
        if record.name.startswith("httpcore") and isinstance(record.msg, str) \
                and "return_value=" in record.msg:
            record.msg = record.msg.split(" return_value=", 1)[0] + " (return value not logged)"
            record.args = ()
        if isinstance(record.args, tuple) and any(
                isinstance(arg, httpx.URL) for arg in record.args):
            record.args = tuple(safe_url(arg) if isinstance(arg, httpx.URL) else arg
                                for arg in record.args)
        return True


def _redact_httpx_logs() -> None:
    for name in ("httpx", *_HTTPCORE_LOGGERS):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactUrls) for existing in logger.filters):
            logger.addFilter(RedactUrls())


#: What a read and closed response holds as its stream instead of httpx's `BoundAsyncStream`.
_SPENT: Final = httpx.ByteStream(b"")


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
            response = await super().send(request, *args, **kwargs)
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()
        if response.is_closed:
            # Read whole and closed (`stream=False`): its stream is spent, and holding httpx's
            # `BoundAsyncStream` would keep the cycle described in the module docstring.
            response.stream = _SPENT
        return response


@dataclass
class _Entry:
    """The client in use for one setting, and the generation of TLS material it was built on."""

    tls: FollowedTls[ssl.SSLContext | bool]
    client: _Client
    generation: int


class HttpClients:
    """A cache of clients keyed by (TLS settings, proxy), following the TLS files."""

    def __init__(self, *, check_seconds: float = TLS_CHECK_SECONDS,
                 retire_idle_seconds: float = RETIRE_IDLE_SECONDS) -> None:
        """Start with no clients; they are made on first use."""
        _redact_httpx_logs()
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
        if entry is None:
            followed = FollowedTls(tls, _verify, check_seconds=self.check_seconds)
            entry = _Entry(followed, _client(followed.current(), proxy), followed.generation)
            self._entries[key] = entry
            return entry.client
        verify = entry.tls.current()
        if entry.tls.generation != entry.generation:
            old = entry.client
            entry.client, entry.generation = _client(verify, proxy), entry.tls.generation
            self._retire(old)
        return entry.client

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
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closers.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("closing a replaced HTTP client failed: %s", type(error).__name__)

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


def _verify(tls: TLSSpec) -> ssl.SSLContext | bool:
    """What httpx takes as `verify`: off, the system's CAs, or a context with our files."""
    if tls.insecure_skip_verify and tls.cert_file is None:
        return False
    if tls.ca_file is None and tls.cert_file is None:
        return True
    return client_context(tls)


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
