"""Listeners on IPv6-only and dual-stack pods: every address means IPv6 and IPv4 alike.

Covers `sealtrail.worker.processes.listen_socket` and the operator's webhook address:

- a real worker process (`tests.worker_process`) told `[::]:port` (what the operator renders
  for the admin listener, and the collector's ingest) answers on `::1` and `127.0.0.1`, on the
  admin and the ingest listener, with one ingest process or several (`SO_REUSEPORT`);
- `[::]` is one dual-stack IPv6 socket, falls back to `0.0.0.0` on a kernel without IPv6, and
  an IPv4 address stays IPv4;
- kopf's `WebhookServer` with `WebhookConfig().addr` (the operator's default) accepts on both
  `127.0.0.1` and `::1`, which `"::"` would not: asyncio binds `::` IPv6-only.

The worker's config accepts bracketed IPv6 listen addresses and refuses bare ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kopf
import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from sealtrail.api.worker_config import AdminSpec
from sealtrail.demo import sample_events
from sealtrail.operator.config import WebhookConfig
from sealtrail.worker import processes
from sealtrail.worker.processes import listen_socket

from .worker_process import free_port, running_worker

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not socket.has_ipv6 or not socket.has_dualstack_ipv6(),
                       reason="needs a dual-stack kernel with ::1"),
]

LOOPBACKS = ("127.0.0.1", "[::1]")


def answers(host: str, port: int, path: str) -> int:
    with httpx.Client(timeout=10.0) as client:
        return client.get(f"http://{host}:{port}{path}").status_code


@pytest.mark.parametrize("processes_", [1, 2])
def test_a_worker_on_every_address_answers_on_ipv6_and_ipv4(tmp_path: Path,
                                                            processes_: int) -> None:
    ingest, admin = free_port(), free_port()
    with running_worker(tmp_path, ingest={"listen": f"[::]:{ingest}", "processes": processes_},
                        admin={"listen": f"[::]:{admin}"}) as worker:
        for host in LOOPBACKS:
            assert answers(host, admin, "/readyz") == 200, host
            assert answers(host, ingest, "/readyz") == 200, host
            with httpx.Client(timeout=10.0) as client:
                posted = client.post(f"http://{host}:{ingest}/v1/events", json=[
                    orjson.loads(orjson.dumps(event)) for event in sample_events(3, seed=7)])
            assert posted.status_code == 200, (host, posted.text, worker.log())


def test_every_address_is_one_dual_stack_socket() -> None:
    with listen_socket("[::]:0", shared=False) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as client:
                client.settimeout(5)
                client.connect((host, port))


@pytest.mark.parametrize(("listen", "family"), [
    ("0.0.0.0:0", socket.AF_INET), ("127.0.0.1:0", socket.AF_INET),
    ("[::1]:0", socket.AF_INET6), ("localhost:0", socket.AF_INET),
])
def test_other_addresses_bind_as_written(listen: str, family: int) -> None:
    with listen_socket(listen, shared=True) as sock:
        assert sock.family == family


def test_without_ipv6_every_address_falls_back_to_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.create_server

    def no_ipv6(address: Any, **options: Any) -> socket.socket:
        if options.get("family") == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(address, **options)

    monkeypatch.setattr(processes.socket, "create_server", no_ipv6)
    with listen_socket("[::]:0", shared=False) as sock:
        assert sock.family == socket.AF_INET
        assert sock.getsockname()[0] == "0.0.0.0"  # noqa: S104 - what the fallback binds


@pytest.mark.parametrize(("listen", "valid"), [
    ("[::]:8471", True), ("[::1]:8470", True), ("[fd00::2]:1", True), ("0.0.0.0:8471", True),
    ("::1:8470", False), ("[::]:65536", False), ("[host]:1", False), ("[::]", False),
])
def test_the_config_takes_bracketed_ipv6(listen: str, valid: bool) -> None:
    try:
        AdminSpec(listen=listen)
    except ValidationError:
        assert not valid
    else:
        assert valid


# --- the operator's webhook server --------------------------------------------------------------


async def _connects(host: str, port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def _webhook_server(addr: str | None, port: int) -> AsyncIterator[None]:
    async def review(*_args: Any, **_kwargs: Any) -> Any:  # pragma: no cover - never called
        return {}

    server = kopf.WebhookServer(addr=addr, port=port, insecure=True)
    configs = server(review)
    await anext(configs)  # listening now
    try:
        yield
    finally:
        await configs.aclose()


def test_the_operators_webhook_server_accepts_ipv4_and_ipv6() -> None:
    async def check() -> tuple[bool, bool]:
        port = free_port()
        async with _webhook_server(WebhookConfig().addr, port):
            return await _connects("127.0.0.1", port), await _connects("::1", port)

    assert asyncio.run(check()) == (True, True)


def test_colons_alone_would_be_ipv6_only() -> None:
    """Why the default is None and not "::": asyncio sets IPV6_V6ONLY on `::`."""
    async def check() -> tuple[bool, bool]:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        port = free_port()
        try:
            await web.TCPSite(runner, "::", port).start()
            return await _connects("127.0.0.1", port), await _connects("::1", port)
        finally:
            await runner.cleanup()

    assert asyncio.run(check()) == (False, True)
