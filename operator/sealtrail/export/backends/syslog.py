"""Syslog: RFC 5424 messages over TCP (RFC 6587 octet counting), TLS (RFC 5425) or UDP.

One row is one message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [sealtrail@32473 store_id=".." tenant=".."
        seq=".." tenant_seq=".." record_hash=".."] BOM ROW-JSON

- PRI is the export's facility (default 13, "log audit") times 8 plus the severity the row's
  own severity maps to (CRITICAL crit ... INFO info), so a SIEM's syslog routing works on it.
- TIMESTAMP is the row's own timestamp (already RFC 3339 UTC with six fractional digits, the
  most RFC 5424 allows), so the SIEM's event time is the audit time, not the send time.
- MSGID is the event type fitted to 32 printable US-ASCII characters; the dedupe key and the
  record hash travel in the structured data, beside the row and never inside it.
- MSG is the UTF-8 byte order mark followed by the canonical row JSON exactly as stored. RFC
  5424 section 6.4 asks for the BOM on UTF-8 text, and rows are UTF-8 (`é` stays `é`). rsyslog
  8.2302 keeps the BOM as the first three bytes of its `msg` property (its templates can strip
  it with the property replacer); a receiver recovers the stored bytes by removing one leading
  BOM, which is unambiguous because a row always starts with `{`. The tests show this on the
  real rsyslog.

Framing. TCP and TLS use octet counting (`MSG-LEN SP SYSLOG-MSG`, RFC 6587 section 3.4.1, the
only framing RFC 5425 allows): newline framing would be ambiguous for any message holding a
newline, and needs no trust in the content. UDP sends one datagram per message.

What "delivered" means. Syslog has no application-level acknowledgement at any layer. A send
counts as SUCCESS when every framed message was written and flushed (`drain()`, with no
user-space buffer allowance) with no error, on a connection the peer had not closed before or
during the write. On TCP that means every byte is in the kernel's send buffer; on TLS, in the
socket transport beneath the TLS layer, which hands it to the kernel as fast as the kernel
takes it (it holds bytes only while the peer is not reading). That is the most a syslog
sender can know, and it is weaker than the HTTP backends:

- rows written just before a peer dies *silently* (power loss, a SIGKILLed relay whose socket
  the kernel resets only later, a network partition) may be reported delivered and still be
  lost: they sat in the local or remote socket buffer. The window is at most one batch plus the
  socket buffers.
- a peer that closes the connection *cleanly* (restart, idle timeout) is noticed before the next
  write: the backend sees the end of stream and reconnects instead of writing into a dead
  socket.
- any error (refused, reset, timeout, TLS failure) is RETRYABLE and drops the connection; the
  export loop then sends the whole batch again on a new one. Delivery is therefore
  at-least-once on errors: a batch that was partly read before a reset arrives twice. The
  `record_hash` in the structured data lets a SIEM or the chain check drop the copies.
- UDP is lossy by design: a datagram that the network or a full receive buffer drops is never
  known about. A refused port shows up (ICMP, on a connected socket) only as an error on a later
  send. Use UDP only where loss is acceptable; prefer TLS.

Receivers must accept the message size: rows can be up to 64 KiB on TCP and TLS, while rsyslog
defaults to 8 KiB and truncates longer messages. Set `global(maxMessageSize="128k")` at the top
of rsyslog.conf (before any input is loaded), or the equivalent on other receivers. UDP rows
are capped at 8 KiB, which fits rsyslog's default and stays well inside one datagram.

Nothing here is PERMANENT except a row too large for one message (UDP: 8 KiB), and there is no
AUTH: a server certificate we do not trust fails the handshake, and a client certificate the
server refuses shows up as a reset; both are RETRYABLE with a reason that says so. (With TLS
1.3 the server refuses a client certificate only after the client's handshake is over, so a
new TLS 1.3 connection is watched briefly before the first write; see
`_await_tls_acceptance`. Without that wait, a refused client certificate could make a batch
look delivered.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import ssl
from collections.abc import Sequence
from typing import Final

from sealtrail.api.export import ExportSpec, SyslogSpec, TLSSpec
from sealtrail.export.backends.base import Backend, BatchLimits, ExportRow
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind
from sealtrail.export.tls_files import FollowedTls, TlsFileError, client_context

__all__ = ["SD_ID", "SyslogBackend", "format_message", "frame"]

#: The structured-data element that carries the dedupe key. 32473 is the private enterprise
#: number RFC 5612 reserves for documentation; a registered PEN can replace it here alone.
SD_ID: Final = "sealtrail@32473"

#: RFC 5424 section 6.4: a UTF-8 MSG starts with the byte order mark.
BOM: Final = b"\xef\xbb\xbf"

NILVALUE: Final = "-"

#: RFC 5424 severity codes for the row severities.
SEVERITY_CODES: Final = {"CRITICAL": 2, "HIGH": 3, "MEDIUM": 4, "LOW": 5, "INFO": 6}
_DEFAULT_SEVERITY: Final = 6

STREAM_LIMITS: Final = BatchLimits(
    max_events=1000, max_bytes=1024 * 1024, max_row_bytes=64 * 1024
)
#: 8 KiB: rsyslog's default maxMessageSize, and far below the 65,507-byte IPv4 datagram limit,
#: so a datagram is neither truncated by the receiver nor fragmented into many IP packets.
UDP_LIMITS: Final = BatchLimits(max_events=1000, max_bytes=1024 * 1024, max_row_bytes=8 * 1024)

#: How long a new TLS 1.3 connection is watched for a refusal before the first write.
TLS13_ACCEPT_WAIT_SECONDS: Final = 0.25

_MSGID_MAX: Final = 32
_HOSTNAME_MAX: Final = 255
_NOT_PRINTABLE: Final = re.compile(r"[^!-~]")
# RFC 5424 TIMESTAMP: FULL-DATE "T" FULL-TIME with at most six fractional digits.
_TIMESTAMP: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
)
_SD_ESCAPE: Final = re.compile(r'(["\\\]])')
#: Messages kept between sizing and sending, at most (ten full batches).
_ENCODED_LIMIT: Final = 10_000


def _printable(value: str, limit: int) -> str:
    """`value` as printable US-ASCII (others become `_`), cut to `limit`; `-` if empty."""
    fitted = _NOT_PRINTABLE.sub("_", value)[:limit]
    return fitted or NILVALUE


def _sd_value(value: str) -> str:
    r"""An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3)."""
    if '"' not in value and "\\" not in value and "]" not in value:
        return value  # the usual case, without a regular expression's cost
    return _SD_ESCAPE.sub(r"\\\1", value)


@functools.lru_cache(maxsize=4096)
def _msgid(event_type: str) -> str:
    """MSGID: the event type fitted to 32 printable US-ASCII characters (few types, cached)."""
    return _printable(event_type, _MSGID_MAX)


def local_hostname() -> str:
    """This machine's name as HOSTNAME.

    `gethostname()`, not `getfqdn()`: the latter does a DNS lookup that can block for seconds
    in a pod with a slow resolver, and the pod name is what identifies the sender in a cluster.
    Set `hostname` in the spec for anything else.
    """
    return _printable(socket.gethostname(), _HOSTNAME_MAX)


def format_message(row: ExportRow, spec: SyslogSpec, hostname: str) -> bytes:
    """The RFC 5424 SYSLOG-MSG for `row` (without framing)."""
    severity = SEVERITY_CODES.get(row.severity, _DEFAULT_SEVERITY)
    pri = spec.facility * 8 + severity
    timestamp = row.timestamp if _TIMESTAMP.fullmatch(row.timestamp) else NILVALUE
    msgid = _msgid(row.event_type)
    # SD-PARAMs store_id (if any), tenant, seq, tenant_seq, record_hash; numbers need no escape.
    store = f' store_id="{_sd_value(row.store_id)}"' if row.store_id is not None else ""
    structured = (f'[{SD_ID}{store} tenant="{_sd_value(row.tenant_id)}" seq="{row.own_seq}" '
                  f'tenant_seq="{row.tenant_seq}" record_hash="{_sd_value(row.record_hash)}"]')
    header = (
        f"<{pri}>1 {timestamp} {hostname} {spec.app_name} {NILVALUE} {msgid} {structured} "
    )
    return header.encode() + BOM + row.body


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`."""
    return str(len(message)).encode() + b" " + message


def _ssl_context(tls: TLSSpec) -> ssl.SSLContext:
    """A client context from the export's TLS settings, TLS 1.2 at least (RFC 5425)."""
    context = client_context(tls)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _describe(error: BaseException) -> str:
    """A short reason for an I/O error: its class and errno/SSL text, never any row data."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or type(error).__name__}"
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    if isinstance(error, ConnectionError) and error.args:
        return f"{type(error).__name__}: {error.args[0]}"  # our own words, from _check_alive
    return type(error).__name__


async def _settle() -> None:
    """Let the event loop take in whatever the peer sent (an end of stream, a reset).

    A zero sleep is not enough: a task resumed by it runs before the I/O callbacks of the
    same loop iteration, and a reset is reported one callback later still. A millisecond's
    timer runs only after the selector has been polled and its callbacks have run.
    """
    await asyncio.sleep(0.001)


class SyslogBackend(Backend):
    """One persistent connection (or UDP socket) to one syslog receiver.

    The connection is opened on the first send and kept; any error drops it and the next send
    opens a new one. Sends are serialised by a lock: the export loop sends one batch at a time,
    and interleaving two batches on one stream would break their order.
    """

    kind = "syslog"

    def __init__(self, spec: ExportSpec, clients: HttpClients) -> None:
        """Keep the settings; connect on first send."""
        super().__init__(spec, clients)
        if spec.syslog is None:
            raise ValueError("a syslog backend needs a syslog block")
        self.syslog: SyslogSpec = spec.syslog
        self.hostname = spec.syslog.hostname or local_hostname()
        self.timeout = spec.retry.request_timeout_seconds
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: socket.socket | None = None
        self._lock = asyncio.Lock()
        #: What `row_size` encoded, for `send` (the loop sends right after sizing).
        self._encoded: dict[tuple[int, str], bytes] = {}
        #: The TLS context, following the mounted files (used from the next connection).
        self._tls = FollowedTls(spec.tls, _ssl_context, check_seconds=clients.check_seconds)

    @property
    def limits(self) -> BatchLimits:
        """8 KiB rows on UDP (one datagram each), 64 KiB on TCP and TLS."""
        return UDP_LIMITS if self.syslog.transport == "udp" else STREAM_LIMITS

    def message(self, row: ExportRow) -> bytes:
        """The unframed RFC 5424 message for `row`."""
        return format_message(row, self.syslog, self.hostname)

    def _payload(self, row: ExportRow) -> bytes:
        """The framed message (TCP/TLS) or the datagram (UDP) for `row`."""
        message = self.message(row)
        return message if self.syslog.transport == "udp" else frame(message)

    def row_size(self, row: ExportRow) -> int:
        """Bytes on the wire: the framed message (TCP/TLS) or the datagram (UDP).

        The payload is kept for `send`, so that a row is formatted once.
        """
        payload = self._payload(row)
        if len(self._encoded) >= _ENCODED_LIMIT:
            self._encoded.clear()  # rows sized but never sent (a pause): start afresh
        self._encoded[(row.seq, row.record_hash)] = payload
        return len(payload)

    async def send(self, rows: Sequence[ExportRow]) -> Outcome:
        """Write every row, in order, and flush; see the module docstring for what that means."""
        encoded = self._encoded
        payloads = [encoded.pop((row.seq, row.record_hash), b"") or self._payload(row)
                    for row in rows]
        udp = self.syslog.transport == "udp"
        limit = self.limits.max_row_bytes
        for index, payload in enumerate(payloads):
            if len(payload) > limit:
                # Checked before anything is written so that the batch is all or nothing.
                return Outcome(
                    OutcomeKind.PERMANENT,
                    f"row of {len(payload)} bytes exceeds the {limit}-byte syslog "
                    f"{self.syslog.transport} message limit",
                    too_large=True,
                    rejected_index=index,
                )
        if not payloads:
            return Outcome.success()
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    if udp:
                        await self._send_udp(payloads)
                    else:
                        await self._send_stream(b"".join(payloads))
            except TlsFileError as error:
                # The TLS files have never been usable (else the last good ones are used, see
                # `tls_files`); the message names the file and why, never its content.
                return Outcome(OutcomeKind.RETRYABLE, f"syslog {self._where()}: {error}")
            except (OSError, EOFError, ConnectionError, TimeoutError) as error:
                await self._drop()
                return Outcome(OutcomeKind.RETRYABLE, f"syslog {self._where()}: {_describe(error)}")
            except asyncio.CancelledError:
                # A frame may be half written: the stream is unusable for the next message.
                self._forget()
                raise
        return Outcome.success(f"written to {self._where()}")

    def _where(self) -> str:
        return f"{self.syslog.transport}://{self.syslog.host}:{self.syslog.port}"

    async def _send_stream(self, data: bytes) -> None:
        writer = await self._stream()
        writer.write(data)
        await writer.drain()
        await _settle()
        self._check_alive()

    async def _stream(self) -> asyncio.StreamWriter:
        """The open connection, or a new one if there is none or the peer has closed it."""
        if self._writer is not None:
            await _settle()
            try:
                self._check_alive()
            except ConnectionError:
                await self._drop()  # closed while idle: reconnect rather than write into it
        if self._writer is None:
            tls = self.syslog.transport == "tls"
            self._reader, self._writer = await asyncio.open_connection(
                self.syslog.host,
                self.syslog.port,
                ssl=self._tls.current() if tls else None,
                server_hostname=self.syslog.host if tls else None,
            )
            # No user-space buffering allowance: drain() then returns only once every byte
            # has been handed on (for TLS: to the socket transport beneath; see the docstring).
            # The socket transport pauses above `high`, the TLS one at `high` and above (so
            # high=0 there would pause on an empty buffer): 0 and 1 both mean "pause on one
            # byte pending, resume at none".
            self._writer.transport.set_write_buffer_limits(high=1 if tls else 0, low=0)
            if tls:
                await self._await_tls_acceptance()
        return self._writer

    async def _await_tls_acceptance(self) -> None:
        """On TLS 1.3, give the server a moment to refuse our client certificate.

        In TLS 1.2 the client's handshake ends with the server's Finished, sent after the
        server has checked the client certificate, so a refusal fails the handshake. In TLS
        1.3 the client is done before the server has looked at its certificate: a refusal
        (rsyslog: "peer did not provide a certificate", "peer name not authorized") arrives
        only as a reset after the first write, which drain() does not see, and the batch
        would count as delivered. So on a new TLS 1.3 connection wait until the server either
        sends a session ticket (it has accepted us), or closes (it has not), or
        `TLS13_ACCEPT_WAIT_SECONDS` pass with the connection still open (servers that send no
        tickets, rsyslog among them; it refuses within milliseconds). Once per connection.
        """
        writer = self._writer
        ssl_object = writer.get_extra_info("ssl_object") if writer is not None else None
        if not isinstance(ssl_object, ssl.SSLObject) or ssl_object.version() != "TLSv1.3":
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TLS13_ACCEPT_WAIT_SECONDS
        while loop.time() < deadline:
            session = ssl_object.session
            if session is not None and session.has_ticket:
                return
            self._check_alive()
            await asyncio.sleep(0.005)
        self._check_alive()

    def _check_alive(self) -> None:
        """Raise if the peer has closed or reset the connection (a syslog peer never writes)."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise ConnectionError("not connected")
        if reader.exception() is not None:
            raise ConnectionResetError("connection reset by peer")
        if reader.at_eof() or writer.is_closing():
            raise ConnectionAbortedError("connection closed by peer")

    async def _send_udp(self, datagrams: Sequence[bytes]) -> None:
        loop = asyncio.get_running_loop()
        if self._udp is None:
            infos = await loop.getaddrinfo(
                self.syslog.host, self.syslog.port, type=socket.SOCK_DGRAM
            )
            family, kind, proto, _, address = infos[0]
            udp = socket.socket(family, kind, proto)
            try:
                udp.setblocking(False)  # noqa: FBT003 - the socket API's own flag
                # Connected, so that an ICMP "port unreachable" is reported on a later send.
                await loop.sock_connect(udp, address)
            except BaseException:
                udp.close()
                raise
            self._udp = udp
        for datagram in datagrams:
            await loop.sock_sendall(self._udp, datagram)

    def _forget(self) -> asyncio.StreamWriter | None:
        """Close the connection without waiting; return the writer to wait on, if any."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        return writer

    async def _drop(self) -> None:
        """Close the connection; closing errors are of no interest any more."""
        writer = self._forget()
        if writer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def aclose(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._drop()
