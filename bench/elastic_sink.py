"""A loopback Elasticsearch `_bulk` endpoint for benchmarks: counts documents, bytes and events.

    .venv/bin/python bench/elastic_sink.py PORT

Run as its own process (aiohttp, one event loop) so that it shares no GIL with the load or the
shipper under test. `POST /_bulk` and `POST /{index}/_bulk` take NDJSON as Elasticsearch does:
pairs of an action line (`index` or `create`, parsed) and a source line; a body that is not
newline-terminated, an unknown action or an action without its source is answered 400 as
Elasticsearch would. The answer is a 200 with `"errors": false` and one item per action (status
201), so a shipper that parses items (sealtrail, rsyslog's omelasticsearch) finds what it expects.
Any other `GET` (`/`, rsyslog's `/_cat/health` check) answers 200 with the cluster banner.

Why it does not parse every source line: at 200,000 documents/s a full JSON parse of each would
cost the sink a third of a core on a two-core machine shared with the shipper; it checks each
source is a `{...}` object and finds the benchmark's event number (`"bench_seq":"N"`, unique per
event) with one regular-expression pass over the body, which is what the loss count needs.

`GET /stats` answers counts (documents, bytes, requests, distinct events, first and last arrival
as `time.time()`); `GET /seen` the bitmap of event numbers seen (one byte each); `POST /reset`
clears everything between runs.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import orjson
from aiohttp import web

SEQ = re.compile(rb'"bench_seq":"(\d+)"')
BANNER = orjson.dumps({"name": "bench-sink", "cluster_name": "bench", "version": {
    "number": "8.11.0", "lucene_version": "9.8.0"}, "tagline": "You Know, for Search"})
ACTIONS = (b"index", b"create")


class Counts:
    """What has arrived since the last reset."""

    def __init__(self) -> None:
        """Nothing yet."""
        self.reset()

    def reset(self) -> None:
        """Forget every document."""
        self.documents = 0
        self.bytes = 0
        self.requests = 0
        self.distinct = 0
        self.first = 0.0
        self.last = 0.0
        self.seen = bytearray(1 << 20)
        self.seq_no = 0


def bad_request(reason: str) -> web.Response:
    body = orjson.dumps({"error": {"root_cause": [{"type": "illegal_argument_exception",
                                                   "reason": reason}],
                                   "type": "illegal_argument_exception", "reason": reason},
                         "status": 400})
    return web.Response(status=400, body=body, content_type="application/json")


def parse_bulk(body: bytes, path_index: str, counts: Counts) -> list[Any] | web.Response:
    """The items of the answer, one per action, or the 400 Elasticsearch would give."""
    if not body.endswith(b"\n"):
        return bad_request("The bulk request must be terminated by a newline [\\n]")
    lines = body[:-1].split(b"\n")
    if len(lines) % 2:
        return bad_request("The bulk request has an action line without its source")
    items = []
    for number in range(0, len(lines), 2):
        try:
            ((op, meta),) = orjson.loads(lines[number]).items()
        except (orjson.JSONDecodeError, ValueError, AttributeError):
            return bad_request(f"Malformed action/metadata line [{number + 1}]")
        if op.encode() not in ACTIONS or not isinstance(meta, dict):
            return bad_request(f"Malformed action/metadata line [{number + 1}], "
                               f"expected [create] or [index] but found [{op}]")
        source = lines[number + 1]
        if not (source.startswith(b"{") and source.rstrip().endswith(b"}")):
            return bad_request(f"failed to parse source of line [{number + 2}]")
        counts.seq_no += 1
        items.append({op: {"_index": meta.get("_index", path_index),
                           "_id": meta.get("_id") or f"bench{counts.seq_no}",
                           "_version": 1, "result": "created",
                           "_shards": {"total": 2, "successful": 1, "failed": 0},
                           "_seq_no": counts.seq_no, "_primary_term": 1, "status": 201}})
    return items


def note_events(body: bytes, counts: Counts) -> None:
    """Mark each `bench_seq` in the body as seen."""
    seen = counts.seen
    for match in SEQ.findall(body):
        seq = int(match)
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
        if not seen[seq]:
            counts.distinct += 1
            seen[seq] = 1


def make_app(counts: Counts) -> web.Application:
    """The routes, over one `Counts`."""

    async def bulk(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except ConnectionResetError:  # a shipper SIGKILLed mid-request: nothing to answer
            raise web.HTTPBadRequest from None
        items = parse_bulk(body, request.match_info.get("index", ""), counts)
        if isinstance(items, web.Response):
            return items
        now = time.time()
        counts.first = counts.first or now
        counts.last = now
        counts.documents += len(items)
        counts.bytes += len(body)
        counts.requests += 1
        note_events(body, counts)
        answer = orjson.dumps({"took": 1, "errors": False, "items": items})
        return web.Response(body=answer, content_type="application/json")

    async def banner(_: web.Request) -> web.Response:
        return web.Response(body=BANNER, content_type="application/json")

    async def stats(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({
            "documents": counts.documents, "bytes": counts.bytes, "requests": counts.requests,
            "distinct": counts.distinct, "first": counts.first, "last": counts.last}),
            content_type="application/json")

    async def seen(_: web.Request) -> web.Response:
        return web.Response(body=bytes(counts.seen))

    async def reset(_: web.Request) -> web.Response:
        counts.reset()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/_bulk", bulk)
    app.router.add_post("/{index}/_bulk", bulk)
    app.router.add_get("/", banner)
    app.router.add_get("/stats", stats)
    app.router.add_get("/seen", seen)
    app.router.add_post("/reset", reset)
    app.router.add_get("/{tail:.*}", banner)  # omelasticsearch's `_cat/health` check, and such
    return app


def main() -> None:
    port = int(sys.argv[1])
    web.run_app(make_app(Counts()), host="127.0.0.1", port=port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
