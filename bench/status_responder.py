"""Stand-in for 2,000 workers' admin APIs: one process answers `GET /v1/status` for every pod.

    python bench/status_responder.py --kubeconfig K --namespace bench --exports 1000 \
        --policies 50 --stats-port P

Run by bench/operator_bench.py, inside scripts/netns.sh. Pod `n` of the benchmark has the pod
IP `pod_ip(n)`, an address of 127.0.0.0/8 (which Linux delivers to the loopback device
without any set-up), and this process listens on 0.0.0.0:8471, so it receives every pod's
requests and tells them apart by the address they were sent to (`pod_number`).

Each answer is a `sealtrail.api.worker_api.WorkerStatus` document for the exports that pod's
policy routes to (`routed_exports`), as the worker would write it: a lag that moves at random
within its decade at every poll, and every `--flip-seconds` a `--flip-fraction` of the exports
moves to the other decade (100-999 or 1,000-9,999 rows), which is a change a status reader
acts on. Credential versions are `credential_digest` of the Secret value keyed with the
namespace's admin token, so they match what the operator computes. Requests without that
token (read from the Secret `sealtrail-worker-admin` once the operator has made it) get 401,
as from a real worker.

`GET http://127.0.0.1:<stats-port>/stats` gives the counts so far (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import ssl
import time
from pathlib import Path
from typing import Any, Final

import httpx
from aiohttp import web

from sealtrail.api.worker_api import (
    ADMIN_REALM,
    STATUS_PATH,
    WorkerStatus,
    credential_digest,
)

__all__ = ["ADMIN_PORT", "SECRET_VALUE", "backend_kind", "pod_ip", "pod_number",
           "routed_exports"]

#: The worker's default admin port, and the port every benchmark pod names `st-admin`.
ADMIN_PORT: Final = 8471
#: The value of every export's Secret key (`c2VjcmV0LXZhbHVl` in the Secret's data).
SECRET_VALUE: Final = "secret-value"  # noqa: S105 - a benchmark's stand-in
BACKENDS: Final = ("splunk", "elastic", "datadog", "webhook", "syslog", "cloudwatch")
#: The backends whose spec names a Secret (see `backend` in operator_bench.py).
WITH_SECRET: Final = frozenset({"splunk", "elastic", "datadog", "webhook"})
_PODS_PER_OCTET: Final = 250


def backend_kind(export: int) -> str:
    """The backend of export `export` (the benchmark cycles through the six)."""
    return BACKENDS[export % len(BACKENDS)]


def pod_ip(pod: int) -> str:
    """Pod `pod`'s IP: 127.10.a.b, b never 0 or 255."""
    return f"127.10.{pod // _PODS_PER_OCTET}.{pod % _PODS_PER_OCTET + 1}"


def pod_number(ip: str) -> int | None:
    """The pod a `pod_ip` address belongs to, or None."""
    parts = ip.split(".")
    if len(parts) != 4 or parts[:2] != ["127", "10"]:
        return None
    return int(parts[2]) * _PODS_PER_OCTET + int(parts[3]) - 1


def routed_exports(policy: int, exports: int, policies: int) -> list[int]:
    """The exports policy `policy` routes to: every `policies`-th, so all are routed once."""
    return list(range(policy, exports, policies))


class Responder:
    """The answers, the token and the counts."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Lags start in the hundreds."""
        self.args = args
        self.random = random.Random(args.seed)
        self.decade = dict.fromkeys(range(args.exports), 2)
        self.token: str | None = None
        self.digest: str | None = None
        self.counts = {"requests": 0, "ok": 0, "unauthorized": 0, "unknown_pod": 0,
                       "flips": 0}
        self.first_ok: float | None = None
        self.seq = 1_000_000

    def entry(self, export: int) -> dict[str, Any]:
        """One export's entry in a worker's status document."""
        decade = self.decade[export]
        lag = self.random.randint(10 ** decade, 10 ** (decade + 1) - 1)
        kind = backend_kind(export)
        self.seq += 1
        return {
            "name": f"export-{export}", "kind": kind, "cursor": self.seq - lag,
            "paused": False, "pause_reason": None, "last_error": None,
            "consecutive_failures": 0, "interval_ms": 200, "interval_at_max": False,
            "credential_version": self.digest if kind in WITH_SECRET else None,
            "delivered_rows": self.seq - lag, "rejected_row": None,
            "last_stored_seq": self.seq, "acked_seq": self.seq - lag, "lag_rows": lag,
            "lag_seconds": round(lag / 500, 3),
        }

    def document(self, pod: int) -> dict[str, Any]:
        """Pod `pod`'s whole `/v1/status`."""
        exports = routed_exports(pod % self.args.policies, self.args.exports,
                                 self.args.policies)
        return {
            "store_id": f"bench-{pod}", "last_seq": self.seq, "ready": True,
            "backpressure": {"state": "open", "lag_rows": 0},
            "background_errors": {},
            "exports": [self.entry(export) for export in exports],
            "tenants": [],
        }

    async def status(self, request: web.Request) -> web.Response:
        """`GET /v1/status` for the pod whose address the request was sent to."""
        self.counts["requests"] += 1
        if self.token is None or request.headers.get("Authorization") != f"Bearer {self.token}":
            self.counts["unauthorized"] += 1
            return web.json_response({"error": "unauthorized"}, status=401, headers={
                "WWW-Authenticate": f'Bearer realm="{ADMIN_REALM}"'})
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        pod = pod_number(str(sockname[0])) if sockname else None
        if pod is None:
            self.counts["unknown_pod"] += 1
            return web.json_response({"error": "no such pod"}, status=404)
        self.counts["ok"] += 1
        if self.first_ok is None:
            self.first_ok = time.time()
        return web.Response(body=json.dumps(self.document(pod)).encode(),
                            content_type="application/json")

    async def stats(self, _: web.Request) -> web.Response:
        """The counts so far."""
        return web.json_response({**self.counts, "token_known": self.token is not None,
                                  "first_ok_at": self.first_ok, "now": time.time()})

    async def flip(self) -> None:
        """Forever: move a fraction of the exports to the other decade."""
        count = max(1, round(self.args.exports * self.args.flip_fraction))
        while True:
            await asyncio.sleep(self.args.flip_seconds)
            for export in self.random.sample(range(self.args.exports), count):
                self.decade[export] = 5 - self.decade[export]  # 2 <-> 3
            self.counts["flips"] += count

    async def follow_token(self, client: httpx.AsyncClient) -> None:
        """Read the namespace's admin token: every second until it exists, then every 10 s."""
        path = f"/api/v1/namespaces/{self.args.namespace}/secrets/sealtrail-worker-admin"
        while True:
            try:
                answer = await client.get(path)
                if answer.status_code == 200:
                    value = (answer.json().get("data") or {}).get("token")
                    self.token = base64.b64decode(value).decode().strip() if value else None
            except httpx.HTTPError:
                pass
            if self.token is not None:
                self.digest = credential_digest(SECRET_VALUE, self.token.encode())
            await asyncio.sleep(10.0 if self.token else 1.0)


def api_client(kubeconfig: Path) -> httpx.AsyncClient:
    """An async client from the control plane's (JSON) administrator kubeconfig."""
    config = json.loads(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    return httpx.AsyncClient(base_url=cluster["server"], verify=context, timeout=10)


async def serve(args: argparse.Namespace) -> None:
    """Serve until killed."""
    responder = Responder(args)
    # What the operator reads must be what a worker writes: check the document's shape once.
    responder.token, responder.digest = "check", "0" * 16
    WorkerStatus.model_validate(responder.document(0))
    responder.token = responder.digest = None
    responder.counts["ok"] = 0
    app = web.Application()
    app.add_routes([web.get(STATUS_PATH, responder.status)])
    stats = web.Application()
    stats.add_routes([web.get("/stats", responder.stats)])
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(stats, access_log=None)]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], "0.0.0.0", ADMIN_PORT, backlog=1024).start()  # noqa: S104
    await web.TCPSite(runners[1], "127.0.0.1", args.stats_port).start()
    async with api_client(args.kubeconfig) as client:
        await asyncio.gather(responder.flip(), responder.follow_token(client))


def main() -> None:
    """Parse and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--exports", type=int, required=True)
    parser.add_argument("--policies", type=int, required=True)
    parser.add_argument("--stats-port", type=int, required=True)
    parser.add_argument("--flip-seconds", type=float, default=10.0)
    parser.add_argument("--flip-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
