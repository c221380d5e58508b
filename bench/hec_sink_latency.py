"""A loopback Splunk HEC endpoint that also records when each tagged event arrived.

`bench/hec_sink.py` with one addition, for end-to-end latency: every event whose row carries
`extra.bench_id` (`<request id>.<index>`) and `extra.sent_ns` (wall clock, ns, when the ingest
request was started) is counted per ingest request together with the moment its HEC request was
received (after the body was read). Run as its own process so it shares no GIL with the worker:

    python bench/hec_sink_latency.py PORT TOKEN

`GET /stats` answers `{"events", "requests", "untagged", "deliveries": [[received_ns,
request_id, sent_ns, events], ...]}`; `GET /stats?reset=1` also starts the record afresh. It
keeps one entry per (HEC request, ingest request), not one per event, so that a long run stays
small and the sink stays fast.
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

SUCCESS = b'{"text":"Success","code":0}'


def read_envelopes(body: bytes) -> tuple[int, int, dict[str, list[int]]]:
    """Events, untagged events, and {ingest request id: [sent_ns, events]} of one HEC body."""
    events = untagged = 0
    per_request: dict[str, list[int]] = {}
    for line in body.splitlines():  # sealtrail writes one envelope per line
        if not line.strip():
            continue
        row = orjson.loads(line)["event"]
        events += 1
        extra = row.get("extra") or {}
        bench_id, sent = extra.get("bench_id"), extra.get("sent_ns")
        if bench_id is None or sent is None:
            untagged += 1
            continue
        entry = per_request.setdefault(bench_id.rpartition(".")[0], [int(sent), 0])
        entry[1] += 1
    return events, untagged, per_request


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    lock = threading.Lock()
    totals: dict[str, Any] = {"events": 0, "requests": 0, "untagged": 0, "deliveries": []}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # see bench/hec_sink.py

        def log_message(self, *_: Any) -> None:
            pass

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if not self.path.startswith("/stats"):
                self.answer(404, b'{"text":"Not found","code":404}')
                return
            with lock:
                body = orjson.dumps(totals)
                if "reset=1" in self.path:
                    totals.update(events=0, requests=0, untagged=0, deliveries=[])
            self.answer(200, body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            received_ns = time.time_ns()
            if self.headers.get("authorization") != f"Splunk {token}":
                self.answer(403, b'{"text":"Invalid token","code":4}')
                return
            try:
                events, untagged, per_request = read_envelopes(body)
            except KeyError:
                self.answer(400, b'{"text":"Event field is required","code":12}')
                return
            except (orjson.JSONDecodeError, AttributeError, ValueError):
                self.answer(400, b'{"text":"Invalid data format","code":6}')
                return
            with lock:
                totals["events"] += events
                totals["requests"] += 1
                totals["untagged"] += untagged
                totals["deliveries"].extend(
                    [received_ns, request_id, sent, count]
                    for request_id, (sent, count) in per_request.items())
            self.answer(200, SUCCESS)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
