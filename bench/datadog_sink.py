"""A loopback Datadog Logs intake v2 (`POST /api/v2/logs`) for benchmarks.

    .venv/bin/python bench/datadog_sink.py PORT API_KEY COUNTFILE

Run as its own process (aiohttp). It checks what Datadog's documentation says the intake
checks: the `DD-API-KEY` header (403 otherwise), a gzip or deflate body per `Content-Encoding`,
at most 5,000,000 bytes uncompressed (413), a JSON array of at most 1,000 log objects (413, as
Datadog answers a payload it will not take whole) each with a string `message`; it answers 202
`{}`. A message over 1,000,000 bytes is counted as `truncated` (Datadog would cut it and still
answer 202; the benchmark fails on any). Every payload is parsed in full (orjson).
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from aiohttp import web

from export_sink_counts import Counts

MAX_PAYLOAD = 5_000_000
MAX_ENTRIES = 1_000
MAX_ENTRY = 1_000_000


def errors(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"errors": [text]}),
                        content_type="application/json")


def make_app(api_key: str, counts: Counts) -> web.Application:  # noqa: C901 - check a line
    async def intake(request: web.Request) -> web.Response:  # noqa: PLR0911 - one per check
        body = await request.read()
        if request.headers.get("DD-API-KEY") != api_key:
            counts.refused()
            return errors(403, "Forbidden")
        if request.headers.get("Content-Encoding", "") not in ("gzip", "deflate", ""):
            counts.refused()
            return errors(415, "Unsupported content encoding")
        # aiohttp has already inflated the body as `Content-Encoding` says (a broken stream
        # is its 400); `Content-Length` is what came over the wire.
        raw = body
        wire = int(request.headers.get("Content-Length") or len(body))
        if len(raw) > MAX_PAYLOAD:
            counts.refused()
            return errors(413, "Payload Too Large")
        try:
            entries = orjson.loads(raw)
        except orjson.JSONDecodeError:
            counts.refused()
            return errors(400, "Bad Request")
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
            counts.refused()
            return errors(413, "Payload Too Large")
        truncated = 0
        for entry in entries:
            message = entry.get("message") if isinstance(entry, dict) else None
            if not isinstance(message, str):
                counts.refused()
                return errors(400, "Bad Request")
            if len(message) > MAX_ENTRY // 4 and len(message.encode()) > MAX_ENTRY:
                truncated += 1
        counts.note(len(entries), wire, raw_bytes=len(raw), truncated=truncated)
        return web.Response(status=202, body=b"{}", content_type="application/json")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/api/v2/logs", intake)
    app.on_shutdown.append(lambda _: _flush(counts))
    return app


async def _flush(counts: Counts) -> None:
    counts.flush()


def main() -> None:
    port, api_key, count_file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    web.run_app(make_app(api_key, Counts(count_file)), host="127.0.0.1", port=port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
