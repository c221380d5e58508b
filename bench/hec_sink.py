"""A loopback Splunk HEC endpoint for benchmarks: token checked, every envelope parsed.

It counts events and answers as HEC does. Run as its own process so it does not share a GIL
with the exporter: `python bench/hec_sink.py PORT TOKEN COUNTFILE`.

It keeps counts, not events, so that a million-row drain measures the exporter, not the sink.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

SUCCESS = b'{"text":"Success","code":0}'


def main() -> None:
    port, token, count_file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    lock = threading.Lock()
    totals = {"events": 0, "requests": 0, "bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes; without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK stall every response by ~40 ms.
        disable_nagle_algorithm = True

        def log_message(self, *_: Any) -> None:
            pass

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("authorization") != f"Splunk {token}":
                self.answer(403, b'{"text":"Invalid token","code":4}')
                return
            events = 0
            try:
                # sealtrail writes one envelope per line; parse each at C speed.
                for line in body.splitlines():
                    if line.strip():
                        envelope = orjson.loads(line)
                        if "event" not in envelope:
                            self.answer(400, b'{"text":"Event field is required","code":12}')
                            return
                        events += 1
            except orjson.JSONDecodeError:
                self.answer(400, b'{"text":"Invalid data format","code":6}')
                return
            with lock:
                totals["events"] += events
                totals["requests"] += 1
                totals["bytes"] += len(body)
                count_file.write_text(json.dumps(totals))
            self.answer(200, SUCCESS)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
