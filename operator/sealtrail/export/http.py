"""The one place that builds HTTP clients.

One `httpx.AsyncClient` per distinct TLS and proxy setting, shared by every export that uses the
same settings (in practice: one per process). `HTTPS_PROXY`/`NO_PROXY` from the environment
are honoured unless an export names its own proxy.
"""

from __future__ import annotations

import ssl

import httpx

from sealtrail.api.export import TLSSpec
from sealtrail.export.outcome import Outcome, OutcomeKind

__all__ = ["HttpClients", "post"]


class HttpClients:
    """A cache of clients keyed by (TLS settings, proxy)."""

    def __init__(self) -> None:
        """Start with no clients; they are made on first use."""
        self._clients: dict[tuple[TLSSpec, str | None], httpx.AsyncClient] = {}

    def get(self, tls: TLSSpec, proxy: str | None = None) -> httpx.AsyncClient:
        """The shared client for these settings."""
        key = (tls, proxy)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                verify=_ssl_context(tls),
                proxy=proxy,
                trust_env=proxy is None,
                timeout=httpx.Timeout(30.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _ssl_context(tls: TLSSpec) -> ssl.SSLContext | bool:
    if tls.insecure_skip_verify:
        return False
    if tls.ca_file is None and tls.cert_file is None:
        return True
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


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
