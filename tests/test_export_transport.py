"""How HTTP exports reach their SIEM: TLS with a private CA and client certificates, and proxies.

Covers, with a Standard Webhooks receiver on loopback: HTTPS to a server whose certificate only
a private CA vouches for, and that demands a client certificate, delivers when the export names
the CA and its certificate; without the client certificate, or trusting another CA, every attempt
fails as retryable and nothing is delivered; an export's `proxyUrl` is used, and so is
`HTTPS_PROXY` from the environment when it names none (CONNECT through the proxy); a finished
request leaves no reference cycle behind that would hold its body until a collection.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sealtrail.api.export import ExportsConfig, ExportSpec, TLSSpec
from sealtrail.chain.store import ChainStore
from sealtrail.export.engine import ExportEngine
from sealtrail.export.http import HttpClients, post
from sealtrail.export.outcome import Outcome

from .conftest import events
from .receivers.pki import TlsFiles, make_tls_files
from .receivers.proxy import ForwardProxy
from .receivers.webhook import WebhookCase, WebhookReceiver, new_secret
from .test_export_conformance import write_credential

SECRET = new_secret(b"transport-tests")


@pytest.fixture
def pki(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "pki")


def server_context(pki: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no service
    return context


@pytest.fixture
def https_receiver(pki: TlsFiles) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver([SECRET], tls=server_context(pki))
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def export(url: str, credential: Path, **changes: object) -> ExportSpec:
    spec = WebhookCase().export_spec("hook", credential)  # receiver unused: only the spec
    assert spec.webhook is not None
    webhook = spec.webhook.model_copy(update={"url": url + "/"})
    return spec.model_copy(update={"webhook": webhook, **changes})


def deliver(tmp_path: Path, spec: ExportSpec, seconds: float) -> tuple[bool, str | None]:
    db = tmp_path / "audit.db"
    if not db.exists():
        with ChainStore(db) as store:
            store.append(events(25))

    async def main() -> tuple[bool, str | None]:
        with ChainStore(db) as store:
            engine = ExportEngine(store, ExportsConfig(exports=[spec]), CollectorRegistry())
            try:
                drained = await engine.drain(seconds)
                status = engine.status()[0]
                return drained, status.last_error
            finally:
                await engine.stop()

    return asyncio.run(main())


@pytest.fixture
def credential(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    write_credential(path, SECRET)
    return path


def test_mutual_tls_with_a_private_ca(tmp_path: Path, pki: TlsFiles, credential: Path,
                                      https_receiver: WebhookReceiver) -> None:
    tls = TLSSpec(ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                  key_file=str(pki.client_key))
    drained, error = deliver(tmp_path, export(https_receiver.url, credential, tls=tls), 20)
    assert drained, error
    assert sum(len(d.rows) for d in https_receiver.deliveries) == 25


@pytest.mark.parametrize("missing", ["client certificate", "the right CA"])
def test_tls_failures_deliver_nothing_and_stay_retryable(
    tmp_path: Path, pki: TlsFiles, credential: Path, https_receiver: WebhookReceiver,
    missing: str,
) -> None:
    tls = (TLSSpec(ca_file=str(pki.ca)) if missing == "client certificate" else
           TLSSpec(ca_file=str(pki.other_ca), cert_file=str(pki.client_cert),
                   key_file=str(pki.client_key)))
    drained, error = deliver(tmp_path, export(https_receiver.url, credential, tls=tls), 1.5)
    assert not drained
    assert error is not None
    assert "cannot reach the webhook endpoint" in error
    assert https_receiver.deliveries == []


def test_an_exports_own_proxy_is_used(tmp_path: Path, credential: Path) -> None:
    receiver = WebhookReceiver([SECRET])
    proxy = ForwardProxy()
    receiver.start()
    proxy.start()
    try:
        drained, error = deliver(tmp_path, export(receiver.url, credential, proxy_url=proxy.url),
                                 20)
        assert drained, error
        assert proxy.seen
        assert all(line.startswith(f"POST {receiver.url}/ ") for line in proxy.seen)
        assert sum(len(d.rows) for d in receiver.deliveries) == 25
    finally:
        proxy.close()
        receiver.stop()


def test_https_proxy_from_the_environment_is_honoured(
    tmp_path: Path, pki: TlsFiles, credential: Path, https_receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = ForwardProxy()
    proxy.start()
    try:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        tls = TLSSpec(ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                      key_file=str(pki.client_key))
        drained, error = deliver(tmp_path, export(https_receiver.url, credential, tls=tls), 20)
        assert drained, error
        assert proxy.seen == [f"CONNECT 127.0.0.1:{https_receiver.port} HTTP/1.1"]
        assert sum(len(d.rows) for d in https_receiver.deliveries) == 25
    finally:
        proxy.close()


def test_a_finished_request_leaves_no_cycle_holding_its_body() -> None:
    """A response and its stream hold each other in httpx; `HttpClients` cuts that cycle.

    Left, it keeps the response, its request and the request body (a whole batch) alive until
    the cyclic collector runs. Cut, a request leaves the collector nothing to find.
    """
    receiver = WebhookReceiver([SECRET])
    receiver.start()
    body = b"[" + b",".join([b'{"row":"' + b"x" * 500 + b'"}'] * 200) + b"]"

    async def main() -> int:
        clients = HttpClients()
        client = clients.get(TLSSpec())
        try:
            await post(client, receiver.url + "/", content=body, headers={}, timeout_seconds=10,
                       peer="test")  # connections and caches made, once
            gc.collect()
            gc.disable()
            try:
                for _ in range(5):
                    answer = await post(client, receiver.url + "/", content=bytes(body),
                                        headers={}, timeout_seconds=10, peer="test")
                    assert not isinstance(answer, Outcome)
                    assert answer.status_code == 401  # unsigned: read whole all the same
                    del answer
                return gc.collect()
            finally:
                gc.enable()
        finally:
            await clients.aclose()

    try:
        assert asyncio.run(main()) == 0
    finally:
        receiver.stop()
