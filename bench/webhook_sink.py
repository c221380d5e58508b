"""A loopback Standard Webhooks consumer for benchmarks: every signature checked.

    .venv/bin/python bench/webhook_sink.py PORT SECRET COUNTFILE

Run as its own process (aiohttp). It verifies as the Standard Webhooks specification says a
consumer must: `webhook-id`, `webhook-timestamp` (no more than five minutes off) and
`webhook-signature`, one of whose `v1,` signatures must equal the HMAC-SHA256 of
`{id}.{timestamp}.{raw body}` under the secret (`whsec_` + base64, else raw bytes), compared
in constant time; anything else is 401. The body must be a JSON array (parsed in full); each
element is one row. It answers 204.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import time
from pathlib import Path

import orjson
from aiohttp import web

from export_sink_counts import Counts

TOLERANCE_SECONDS = 5 * 60


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    return secret.encode("utf-8")


def make_app(key: bytes, counts: Counts) -> web.Application:
    async def deliver(request: web.Request) -> web.Response:
        body = await request.read()
        message_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        signatures = request.headers.get("webhook-signature", "").split()
        if not (message_id and stamp.isdigit() and signatures) or \
                abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
            counts.refused()
            return web.Response(status=401)
        expected = "v1," + base64.b64encode(hmac.new(
            key, f"{message_id}.{stamp}.".encode() + body, hashlib.sha256).digest()).decode()
        if not any(hmac.compare_digest(expected, given) for given in signatures):
            counts.refused()
            return web.Response(status=401)
        try:
            rows = orjson.loads(body)
        except orjson.JSONDecodeError:
            rows = None
        if not isinstance(rows, list):
            counts.refused()
            return web.Response(status=400)
        counts.note(len(rows), len(body))
        return web.Response(status=204)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/{tail:.*}", deliver)
    app.on_shutdown.append(lambda _: _flush(counts))
    return app


async def _flush(counts: Counts) -> None:
    counts.flush()


def main() -> None:
    port, secret, count_file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    web.run_app(make_app(secret_key(secret), Counts(count_file)), host="127.0.0.1",
                port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
