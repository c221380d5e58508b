"""The operator's probe port: `/healthz` (alive), `/readyz` (may admit pods), `/metrics`.

Readiness is what keeps the API server from sending a pod to a replica that would answer from
empty indexes: a replica is ready only once it serves a certificate the bundle trusts, kopf has
listed every AuditExport, AuditPolicy and pod, and the Secrets they name have been read once.
Until then its Service endpoint is not ready, so the API server calls another replica.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sealtrail.operator.metrics import OperatorMetrics

__all__ = ["serve_probes"]


async def serve_probes(host: str | None, port: int, ready: Callable[[], str | None],
                       metrics: OperatorMetrics) -> web.AppRunner:
    """Start serving; `ready()` returns None when ready, else what is still missing."""
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(_: web.Request) -> web.Response:
        missing = ready()
        metrics.ready.set(0 if missing else 1)
        if missing:
            return web.json_response({"ready": False, "waiting_for": missing}, status=503)
        return web.json_response({"ready": True})

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/metrics", scrape)])
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
