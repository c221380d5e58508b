"""TLS material for HTTP exports follows its Secret: no restart after a renewal.

Covers, with a Standard Webhooks receiver on loopback that demands a client certificate, and the
export's CA, certificate and key projected the way the kubelet projects a Secret (files behind
a `..data` symlink, swapped atomically): when the SIEM moves to a new CA and the Secret brings
the matching CA and client certificate, the same running export delivers again; new files that
cannot be used (a half-written key, a key of another certificate) leave the working client in
use, with one warning naming the files and never their contents; a replaced client is closed
only once the request still running on it has finished; and the files are looked at no more
often than the check interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from sealtrail.api.export import ExportsConfig, TLSSpec
from sealtrail.chain.store import ChainStore
from sealtrail.export.engine import ExportEngine
from sealtrail.export.http import HttpClients, post

from .conftest import events
from .fake_kubelet import swap_in as project_secret
from .receivers.pki import TlsFiles, make_tls_files
from .receivers.webhook import WebhookReceiver, new_secret
from .test_export_conformance import write_credential
from .test_export_transport import export, server_context

SECRET = new_secret(b"tls-rotation-tests")


@pytest.fixture
def pki_a(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "pki-a")


@pytest.fixture
def pki_b(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "pki-b")


@pytest.fixture
def receiver(pki_a: TlsFiles) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver([SECRET], tls=server_context(pki_a))
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def credential(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    write_credential(path, SECRET)
    return path


def secret_files(pki: TlsFiles, **replace: bytes) -> dict[str, bytes]:
    """The keys of a `kubernetes.io/tls` Secret with a CA, from `pki` unless replaced."""
    files = {"ca.crt": pki.ca.read_bytes(), "tls.crt": pki.client_cert.read_bytes(),
             "tls.key": pki.client_key.read_bytes()}
    return {**files, **{name.replace("_", "."): value for name, value in replace.items()}}


def mounted_secret(tmp_path: Path, pki: TlsFiles) -> Path:
    """A Secret volume holding `pki`, projected as the kubelet does (`..data` symlinks)."""
    mount = tmp_path / "tls-secret"
    mount.mkdir()
    project_secret(mount, secret_files(pki))
    return mount


def mounted_tls(directory: Path) -> TLSSpec:
    return TLSSpec(ca_file=str(directory / "ca.crt"), cert_file=str(directory / "tls.crt"),
                   key_file=str(directory / "tls.key"))


def key_lines(pki: TlsFiles) -> list[str]:
    """The base64 lines of a private key: none may ever reach a log or a status."""
    return [line for line in pki.client_key.read_text().splitlines() if "-----" not in line]


def test_a_new_ca_and_client_certificate_are_used_without_a_restart(
    tmp_path: Path, pki_a: TlsFiles, pki_b: TlsFiles, receiver: WebhookReceiver,
    credential: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    mount = mounted_secret(tmp_path, pki_a)
    spec = export(receiver.url, credential, tls=mounted_tls(mount))
    clients = HttpClients(check_seconds=0.05, retire_idle_seconds=0.1)
    caplog.set_level(logging.INFO, logger="sealtrail.export")

    async def main() -> None:
        with ChainStore(tmp_path / "audit.db") as store:
            engine = ExportEngine(store, ExportsConfig(exports=[spec]), CollectorRegistry(),
                                  clients=clients)
            try:
                store.append(events(10))
                assert await engine.drain(20), engine.status()[0].last_error
                # The SIEM moves to a new CA: its certificate, and the client certificates
                # it accepts. The old material no longer gets through.
                receiver.tls = server_context(pki_b)
                receiver.restart()
                store.append(events(10, seed=2))
                assert not await engine.drain(1.0)
                error = engine.status()[0].last_error
                assert error is not None
                assert "cannot reach the webhook endpoint" in error
                # The Secret is renewed; the kubelet swaps the files. Same engine, same loop.
                project_secret(mount, secret_files(pki_b))
                assert await engine.drain(20), engine.status()[0].last_error
            finally:
                await engine.stop()

    asyncio.run(main())
    assert len(receiver.received()) == 20
    assert "TLS files changed" in caplog.text
    assert str(mount / "tls.crt") in caplog.text


def test_unusable_new_files_keep_the_working_client_and_say_which(
    tmp_path: Path, pki_a: TlsFiles, pki_b: TlsFiles, receiver: WebhookReceiver,
    credential: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    mount = mounted_secret(tmp_path, pki_a)
    spec = export(receiver.url, credential, tls=mounted_tls(mount))
    clients = HttpClients(check_seconds=0.05, retire_idle_seconds=0.1)
    whole_key = pki_a.client_key.read_bytes()
    bad = {
        "a half-written key": secret_files(pki_a, tls_key=whole_key[: len(whole_key) // 2]),
        "a key of another certificate": secret_files(pki_a, tls_key=pki_b.client_key.read_bytes()),
        "a CA file cut short": secret_files(pki_a, ca_crt=pki_a.ca.read_bytes()[:100]),
    }
    warnings: dict[str, list[str]] = {}

    async def main() -> None:
        with ChainStore(tmp_path / "audit.db") as store:
            engine = ExportEngine(store, ExportsConfig(exports=[spec]), CollectorRegistry(),
                                  clients=clients)
            try:
                store.append(events(5))
                assert await engine.drain(20), engine.status()[0].last_error
                for seed, (case, files) in enumerate(bad.items(), start=2):
                    caplog.clear()
                    project_secret(mount, files)
                    await asyncio.sleep(0.1)  # past the check interval: the files are looked at
                    with caplog.at_level(logging.WARNING, logger="sealtrail.export"):
                        store.append(events(5, seed=seed))
                        assert await engine.drain(20), (case, engine.status()[0].last_error)
                        await asyncio.sleep(0.1)
                        store.append(events(5, seed=seed + 10))
                        assert await engine.drain(20), (case, engine.status()[0].last_error)
                    warnings[case] = [record.getMessage() for record in caplog.records
                                      if record.levelno == logging.WARNING]
                    assert engine.status()[0].last_error is None
            finally:
                await engine.stop()

    asyncio.run(main())
    assert len(receiver.received()) == 5 + 10 * len(bad)
    for case, messages in warnings.items():
        assert len(messages) == 1, (case, messages)  # once per state of the files, not per check
        assert "cannot be used" in messages[0]
        assert "the previous certificates stay in use" in messages[0]
    assert str(mount / "tls.key") in warnings["a half-written key"][0]
    assert "the key does not belong to the certificate" in warnings["a key of another certificate"][0]
    assert str(mount / "ca.crt") in warnings["a CA file cut short"][0]
    secrets = key_lines(pki_a) + key_lines(pki_b)
    assert not any(line in caplog.text for line in secrets)
    for messages in warnings.values():
        assert not any(line in message for line in secrets for message in messages)


def test_a_replaced_client_is_closed_only_after_its_request_has_finished(
    tmp_path: Path, pki_a: TlsFiles, pki_b: TlsFiles, receiver: WebhookReceiver,
) -> None:
    mount = mounted_secret(tmp_path, pki_a)
    tls = mounted_tls(mount)
    receiver.delay_seconds = 0.6

    async def main() -> None:
        clients = HttpClients(check_seconds=0.0, retire_idle_seconds=0.05)
        try:
            old = clients.get(tls)
            request = asyncio.create_task(post(old, receiver.url + "/", content=b"[]",
                                               headers={}, timeout_seconds=10, peer="receiver"))
            await asyncio.sleep(0.2)  # the request is on the wire, the receiver is slow
            # A renewed client certificate (the receiver trusts only CA a: the new client
            # would be refused, but this request is the old client's).
            project_secret(mount, secret_files(pki_a, tls_crt=pki_b.client_cert.read_bytes(),
                                               tls_key=pki_b.client_key.read_bytes()))
            new = clients.get(tls)
            assert new is not old
            await asyncio.sleep(0.2)  # well past the grace period, but still in flight
            assert not old.is_closed
            response = await request
            assert isinstance(response, httpx.Response), response  # not cut off
            assert response.status_code == 401  # the receiver's answer to an unsigned body
            for _ in range(250):  # within 5 s
                if old.is_closed:
                    break
                await asyncio.sleep(0.02)
            assert old.is_closed
            assert not new.is_closed
        finally:
            await clients.aclose()

    asyncio.run(main())


def test_files_are_looked_at_no_more_often_than_the_check_interval(
    tmp_path: Path, pki_a: TlsFiles, pki_b: TlsFiles,
) -> None:
    mount = mounted_secret(tmp_path, pki_a)
    tls = mounted_tls(mount)

    async def main() -> None:
        clients = HttpClients(check_seconds=3600)
        try:
            first = clients.get(tls)
            project_secret(mount, secret_files(pki_b))
            assert clients.get(tls) is first
        finally:
            await clients.aclose()

    asyncio.run(main())


def test_a_setting_without_files_never_rebuilds(tmp_path: Path) -> None:
    async def main() -> None:
        clients = HttpClients(check_seconds=0.0)
        try:
            first = clients.get(TLSSpec())
            assert clients.get(TLSSpec()) is first
            skip = clients.get(TLSSpec(insecure_skip_verify=True))
            assert clients.get(TLSSpec(insecure_skip_verify=True)) is skip
        finally:
            await clients.aclose()

    asyncio.run(main())
