"""A threaded HTTP server on loopback that protocol-faithful SIEM receivers build on.

It can be stopped and started again on the same port (an outage: connections are refused
while it is down), slowed down, and told to answer the next N requests with a given failure,
before the vendor-specific handler sees them. Subclasses implement `handle`.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # as received (still gzip-compressed if it was)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def decoded_body(self) -> bytes:
        if (self.header("content-encoding") or "").lower() == "gzip":
            return gzip.decompress(self.body)
        return self.body


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Injected:
    response: Response
    remaining: int


class _Server(ThreadingHTTPServer):
    """Quiet about connections that end mid-request; loud about any other handler error.

    `stop` cuts connections on purpose, as a crash would, and a client may give up: neither is
    news. Anything else a handler raises still prints its traceback.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):  # ValueError: a closed file
            return
        super().handle_error(request, client_address)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HttpReceiver:
    """Base class: subclasses implement `handle(request) -> Response`."""

    def __init__(self, port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        #: The address it listens on; pods on the tests' node reach the run's namespace at
        #: tests.control_plane.GATEWAY, so receivers for them listen there (set before start).
        self.host = "127.0.0.1"
        self.tls = tls
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.delay_seconds = 0.0
        self._injected: list[_Injected] = []
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: without TCP_NODELAY, Nagle and the
            # client's delayed ACK add ~40 ms to every response.
            disable_nagle_algorithm = True

            def log_message(self, *_: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver.lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path,
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                response = receiver._dispatch(request)
                self.send_response(response.status)
                headers = {"content-type": "application/json", **response.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = _serve  # noqa: N815

        for _ in range(50):  # the port may linger briefly after a stop
            try:
                server = _Server((self.host, self.port), Handler)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"cannot bind {self.host}:{self.port}")
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Go down: refuse new connections and cut the kept-alive ones, as a crash would."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            held, self._connections = self._connections, set()
        for connection in held:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- failure injection -----------------------------------------------------------------

    def fail_next(self, count: int, status: int, body: bytes = b"{}",
                  headers: dict[str, str] | None = None) -> None:
        """Answer the next `count` requests with this response instead of handling them."""
        with self.lock:
            self._injected.append(_Injected(Response(status, body, headers or {}), count))

    def _dispatch(self, request: Request) -> Response:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        with self.lock:
            self.requests.append(request)
            while self._injected and self._injected[0].remaining <= 0:
                self._injected.pop(0)
            if self._injected:
                self._injected[0].remaining -= 1
                return self._injected[0].response
        return self.handle(request)

    def handle(self, request: Request) -> Response:
        raise NotImplementedError
