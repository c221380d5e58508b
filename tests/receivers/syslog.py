"""The real Debian rsyslog as a syslog receiver, on loopback, with a private config.

`RsyslogReceiver` writes a config into a temporary directory and runs
`rsyslogd -n -f CONF -i PIDFILE` in the foreground as a child process. It listens on three
free loopback ports:

- `tcp`: `imptcp` with RFC 6587 octet-counted framing;
- `tls`: `imtcp` with the GnuTLS netstream driver (RFC 5425), requiring a client certificate
  signed by the test CA whose name is `client.sealtrail.test` (`x509/name`);
- `udp`: `imudp`.

All three feed one ruleset that writes each message as one JSON line (a list template over
`pri`, `app-name`, `msgid`, `structured-data`, `timereported`, `hostname` and `msg`) with
`omfile`. rsyslog's own status messages go to a separate file, shown when a start fails.

The TLS material (a CA, a server certificate for 127.0.0.1 and localhost, a client
certificate, and an unrelated CA for negative tests) is generated at test time with
`cryptography` and lives only in the temporary directory.

`SyslogCase` adapts it to the conformance suite's `ReceiverCase`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealtrail.api.export import ExportSpec, RetrySpec, SyslogSpec, TLSSpec
from tests.receivers.harness import Failure, ReceiverCase
from tests.receivers.pki import CLIENT_NAME, make_tls_files

RSYSLOGD = "/usr/sbin/rsyslogd"
BOM = b"\xef\xbb\xbf"
#: Large enough for the backend's 64 KiB rows (rsyslog's default is 8 KiB).
MAX_MESSAGE_SIZE = "256k"


# -- ports ---------------------------------------------------------------------------------


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bound(port: int, table: str) -> bool:
    """True if a socket is bound to 127.0.0.1:`port` (TCP: listening), per /proc/net."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if fields[1] == wanted and (table != "tcp" or fields[3] == "0A"):
            return True
    return False


# -- the receiver --------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message as rsyslog parsed and wrote it."""

    pri: int
    app_name: str
    msgid: str
    structured_data: str
    timereported: str
    hostname: str
    msg: bytes  # as rsyslog holds it, BOM included if one was sent

    @property
    def row(self) -> bytes:
        """The row bytes: the MSG without the one leading BOM RFC 5424 puts before UTF-8."""
        return self.msg.removeprefix(BOM)


class RsyslogReceiver:
    """A real rsyslogd on loopback; see the module docstring."""

    def __init__(self, directory: Path | None = None, *, anonymous_tls: bool = False) -> None:
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="sealtrail-rsyslog-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_files(self.dir / "tls")
        self.tcp_port = _free_port(socket.SOCK_STREAM)
        self.tls_port = _free_port(socket.SOCK_STREAM)
        self.udp_port = _free_port(socket.SOCK_DGRAM)
        self.anonymous_tls = anonymous_tls
        self.output = self.dir / "received.jsonl"
        self.internal_log = self.dir / "rsyslogd.log"
        self.console = self.dir / "rsyslogd.console"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.conf = self.dir / "rsyslog.conf"
        (self.dir / "work").mkdir(exist_ok=True)
        self.conf.write_text(self._config())
        self._process: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        tls = self.tls
        auth = (
            'StreamDriver.AuthMode="anon"' if self.anonymous_tls
            else f'StreamDriver.AuthMode="x509/name" PermittedPeer=["{CLIENT_NAME}"]'
        )
        fields = ("pri", "app-name", "msgid", "structured-data", "timereported", "hostname", "msg")
        properties = "\n".join(
            f'  property(name="{name}" format="jsonf" outname="{name}"'
            + (' dateFormat="rfc3339"' if name == "timereported" else "") + ")"
            + ("" if name == fields[-1] else '\n  constant(value=",")')
            for name in fields
        )
        return f"""\
# Written by tests/receivers/syslog.py for one test run.
global(
  workDirectory="{self.dir / "work"}"
  maxMessageSize="{MAX_MESSAGE_SIZE}"
  defaultNetstreamDriverCAFile="{tls.ca}"
  defaultNetstreamDriverCertFile="{tls.server_cert}"
  defaultNetstreamDriverKeyFile="{tls.server_key}"
)
# Direct: the input thread writes each message itself, so a quiet output file means done.
main_queue(queue.type="Direct")

module(load="imptcp")
module(load="imudp")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" {auth})

template(name="sealtrail_json" type="list") {{
  constant(value="{{")
{properties}
  constant(value="}}\\n")
}}

ruleset(name="sealtrail") {{
  action(type="omfile" file="{self.output}" template="sealtrail_json")
}}

input(type="imptcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="sealtrail"
      SupportOctetCountedFraming="on")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="sealtrail")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="sealtrail")

# rsyslog's own messages (start, stop, TLS errors), kept apart from what was received.
*.* action(type="omfile" file="{self.internal_log}")
"""

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start rsyslogd and wait until all three ports are bound."""
        if self.running:
            return
        self.pidfile.unlink(missing_ok=True)
        with self.console.open("ab") as console:
            self._process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"rsyslogd exited at start:\n{self._internal()}")
            if (_bound(self.tcp_port, "tcp") and _bound(self.tls_port, "tcp")
                    and _bound(self.udp_port, "udp")):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"rsyslogd did not listen within {timeout}s\n{self._internal()}")

    def stop(self) -> None:
        """Stop rsyslogd (SIGTERM, then SIGKILL) by its own pid and wait until it is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL rsyslogd: no orderly close of its connections."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _internal(self) -> str:
        """What rsyslogd said about itself, for failure messages."""
        said = []
        for path in (self.console, self.internal_log):
            try:
                said.append(path.read_text(errors="replace"))
            except OSError:
                continue
        return "\n".join(said) or "(rsyslogd said nothing)"

    # -- reading --------------------------------------------------------------------------

    def _lines(self) -> list[bytes]:
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return []
        return data.splitlines(keepends=True)

    def messages(self, *, at_least: int = 0, timeout: float = 5.0,
                 quiet_seconds: float = 0.3) -> list[Received]:
        """Every message written so far, once it is all there.

        That is: the output has at least `at_least` complete lines and has not grown for
        `quiet_seconds` (rsyslog writes in its own time), or `timeout` has passed.
        """
        deadline = time.monotonic() + timeout
        last: tuple[int, int] | None = None
        stable_since = time.monotonic()
        while True:
            lines = self._lines()
            complete = [line for line in lines if line.endswith(b"\n")]
            size = (len(complete), sum(map(len, lines)))
            now = time.monotonic()
            if size != last:
                last, stable_since = size, now
            if len(complete) >= at_least and now - stable_since >= quiet_seconds:
                break
            if now >= deadline:
                break
            time.sleep(0.02)
        return [_parse(line) for line in complete]

    def rows(self, **kwargs: Any) -> list[bytes]:
        return [message.row for message in self.messages(**kwargs)]


def _parse(line: bytes) -> Received:
    fields = json.loads(line)
    return Received(
        pri=int(fields["pri"]),
        app_name=fields["app-name"],
        msgid=fields["msgid"],
        structured_data=fields["structured-data"],
        timereported=fields["timereported"],
        hostname=fields["hostname"],
        msg=fields["msg"].encode(),
    )


# -- the conformance suite's view ----------------------------------------------------------


class ResettingRelay:
    """A byte-for-byte TCP relay in front of rsyslog's TLS port, that can reset connections.

    Syslog has no answer to give, so the only failure a sender can see is the connection
    failing. The relay makes that countable: `reset_next(n)` resets the current connections
    and the next `n` new ones as soon as they are accepted (so the client's TLS handshake, and
    with it the send, fails), then forwards again. TLS runs end to end between the client and
    rsyslog; the relay only copies bytes.
    """

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or _free_port(socket.SOCK_STREAM)
        self.lock = threading.Lock()
        self._to_reset = 0
        self.resets = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()

    def start(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.05)
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.reset_open()

    def reset_next(self, count: int) -> None:
        with self.lock:
            self._to_reset += count
        self.reset_open()

    def reset_open(self) -> None:
        with self.lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            _reset(sock)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                reset = self._to_reset > 0
                if reset:
                    self._to_reset -= 1
                    self.resets += 1
            if reset:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                _reset(client)  # rsyslog is down behind us: the client sees a reset
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self.lock:
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so that the peer gets a RST, not a FIN.

    `shutdown(SHUT_RD)` first wakes a pump thread blocked in `recv` on this socket: until that
    call returns it holds the socket open, and a plain `close()` would send nothing.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    sock.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)  # pass an orderly close on
    except OSError:
        _reset(source)
        _reset(target)


class SyslogCase(ReceiverCase):
    """rsyslog for the conformance suite: TLS with a client certificate, through a relay.

    Syslog has no answer to give, so the only failure is "retryable", in the one form a
    syslog sender ever sees: the connection fails. `fail_next("retryable", n)` resets the open
    connection and the next `n` connection attempts (`ResettingRelay`), which is exact: each
    attempt is one failed send. `stop()` takes rsyslog and the relay down (connections
    refused); `start()` brings both back on the same port.
    """

    kind = "syslog"
    failures: frozenset[Failure] = frozenset({"retryable"})

    def __init__(self, directory: Path | None = None) -> None:
        self.receiver = RsyslogReceiver(directory)
        self.relay = ResettingRelay(self.receiver.tls_port)

    def start(self) -> None:
        self.receiver.start()
        self.relay.start()

    def stop(self) -> None:
        self.relay.stop()
        self.receiver.stop()

    def close(self) -> None:
        self.relay.stop()
        self.receiver.close()

    def export_spec(self, name: str, credential_file: Path) -> ExportSpec:  # noqa: ARG002
        tls = self.receiver.tls
        return ExportSpec(
            name=name,
            syslog=SyslogSpec(host="127.0.0.1", port=self.relay.port, transport="tls"),
            tls=TLSSpec(ca_file=str(tls.ca), cert_file=str(tls.client_cert),
                        key_file=str(tls.client_key)),
            retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200),
        )

    def set_credential(self, value: str) -> None:
        """Nothing to do: syslog has no credential beyond the client certificate."""

    def fail_next(self, failure: Failure, count: int) -> None:
        if failure != "retryable":
            raise NotImplementedError(f"syslog has no {failure} answer to give")
        self.relay.reset_next(count)

    def received(self) -> list[bytes]:
        return self.receiver.rows()
