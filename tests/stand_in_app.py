"""Stands in for an application container on the tests' node (tests/fake_kubelet.py).

The node has no image but sealtrail's, so an app container runs this instead, with the
container's env. It does what the app beside a sealtrail worker does: with `STAND_IN_EVENTS`
set to N, it posts N sample audit events (`STAND_IN_SEED` picks them) to `$SEALTRAIL_URL`
in batches of `STAND_IN_BATCH`, retrying while the worker is not up yet or pushes back
(connection refused, 429, 503); then it waits for SIGTERM and exits 0, as a well-behaved app
does (`STAND_IN_STOP_SECONDS` after it, to play an app slow to shut down). Progress goes to stdout (the container's log).

Like an application's own API, it also answers on port `STAND_IN_PORT` (8080) of the pod:
`POST /emit` with `{"count": N, "seed": S}` makes it post those N sample events to its worker
at once and answers with the worker's answer (status and body). That is how a test makes the
app write: the sidecar's ingest API listens on the pod's loopback only, as it should.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson

from sealtrail.demo import sample_events


def post_events(url: str, count: int, seed: int, batch: int, stop: threading.Event) -> int:
    events = list(sample_events(count, seed=seed))
    sent = 0
    while sent < count and not stop.is_set():
        chunk = events[sent:sent + batch]
        try:
            answer = httpx.post(f"{url}/v1/events", content=orjson.dumps(chunk),
                                headers={"Content-Type": "application/json"}, timeout=10)
        except httpx.HTTPError as error:
            print(f"stand-in app: {url} not answering ({type(error).__name__}); retrying",
                  flush=True)
            stop.wait(0.5)
            continue
        if answer.status_code in (429, 503):
            stop.wait(float(answer.headers.get("Retry-After", "0.5") or 0.5))
            continue
        if answer.status_code != 200:
            print(f"stand-in app: refused with {answer.status_code}: {answer.text[:300]}",
                  flush=True)
            return 1
        sent += len(chunk)
    print(f"stand-in app: {sent} events acknowledged by {url}", flush=True)
    return 0


class _Emit(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != "/emit" or not os.environ.get("SEALTRAIL_URL"):
            self.send_error(404, "POST /emit, with SEALTRAIL_URL set")
            return
        asked = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        events = list(sample_events(int(asked["count"]), seed=int(asked.get("seed", 1))))
        try:
            answer = httpx.post(f"{os.environ['SEALTRAIL_URL']}/v1/events",
                                content=orjson.dumps(events),
                                headers={"Content-Type": "application/json"}, timeout=30)
            status, body = answer.status_code, answer.content
        except httpx.HTTPError as error:
            status, body = 502, orjson.dumps({"error": f"worker: {error}"})
        self.send_response(200)
        reply = orjson.dumps({"status": status, "body": orjson.loads(body or b"null")})
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_: object) -> None:
        pass


def main() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("STAND_IN_PORT", "8080"))),  # noqa: S104 - the pod's own address
                                 _Emit)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    count = int(os.environ.get("STAND_IN_EVENTS", "0"))
    status = 0
    if count and os.environ.get("SEALTRAIL_URL"):
        status = post_events(os.environ["SEALTRAIL_URL"], count,
                             int(os.environ.get("STAND_IN_SEED", "1")),
                             int(os.environ.get("STAND_IN_BATCH", "50")), stop)
    print("stand-in app: running until SIGTERM", flush=True)
    while not stop.wait(1):
        pass
    server.shutdown()
    linger = float(os.environ.get("STAND_IN_STOP_SECONDS", "0"))
    print(f"stand-in app: SIGTERM, exiting{f' in {linger:g} s' if linger else ''}", flush=True)
    time.sleep(max(0.05, linger))  # a slow shutdown, for tests of the pod's grace
    return status


if __name__ == "__main__":
    sys.exit(main())
