"""The syslog backend against the real Debian rsyslog, on loopback.

Covers: the RFC 5424 message as rsyslog parses it (PRI from facility and severity, APP-NAME,
MSGID, the `sealtrail@32473` structured data, the row's timestamp, HOSTNAME); the MSG giving
back the stored row bytes exactly and in order over TCP (RFC 6587 octet counting) and TLS
(RFC 5425, CA and client certificate), with a receiver-side chain check of what rsyslog wrote;
TLS that must fail (an untrusted server CA, a missing or refused client certificate) failing as
RETRYABLE before anything is counted delivered; rsyslog going down (stopped or SIGKILLed) as
RETRYABLE, and the next send after it is back reconnecting and delivering with nothing lost;
UDP delivery, its lossy refusal behaviour and its size limit (PERMANENT, too large, at row
level); the conformance `SyslogCase` (exact `fail_next` through its resetting relay). Pure
formatting rules (escaping, MSGID fitting, framing) are tested without a receiver.

Each test starts its own rsyslogd and stops it by pid in teardown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import orjson
import pytest

from sealtrail.api.export import ExportSpec, RetrySpec, SyslogSpec, TLSSpec
from sealtrail.chain.store import ChainStore
from sealtrail.export.backends.base import ExportRow
from sealtrail.export.backends.syslog import (
    BOM,
    SD_ID,
    SyslogBackend,
    format_message,
    frame,
)
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome, OutcomeKind

from .conftest import events
from .fake_kubelet import swap_in
from .receivers.syslog import Received, RsyslogReceiver, SyslogCase

Transport = Literal["tcp", "tls", "udp"]
HOSTNAME = "sealtrail-test-host"
PRI_BY_SEVERITY = {"CRITICAL": 2, "HIGH": 3, "MEDIUM": 4, "LOW": 5, "INFO": 6}


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[RsyslogReceiver]:
    receiver = RsyslogReceiver(tmp_path / "rsyslog")
    try:
        receiver.start()
        yield receiver
    finally:
        receiver.close()


def stored_rows(db_path: Path, count: int, *, seed: int = 1) -> list[ExportRow]:
    """Append `count` sample events to a real store and read them back as export rows."""
    with ChainStore(db_path) as store:
        store.append(events(count, seed=seed))
        bodies = list(store.rows())
    rows = []
    for body in bodies:
        row = orjson.loads(body)
        rows.append(ExportRow(
            seq=row["seq"], tenant_id=row["tenant_id"], tenant_seq=row["tenant_seq"],
            record_hash=row["record_hash"], event_type=row["event_type"],
            severity=row["severity"], timestamp=row["timestamp"], body=body,
        ))
    return rows


def spec_for(receiver: RsyslogReceiver, transport: Transport, *, tls: TLSSpec | None = None,
             facility: int = 13) -> ExportSpec:
    port = {"tcp": receiver.tcp_port, "tls": receiver.tls_port, "udp": receiver.udp_port}
    if tls is None:
        tls = TLSSpec(ca_file=str(receiver.tls.ca), cert_file=str(receiver.tls.client_cert),
                      key_file=str(receiver.tls.client_key))
    return ExportSpec(
        name="siem",
        syslog=SyslogSpec(host="127.0.0.1", port=port[transport], transport=transport,
                          hostname=HOSTNAME, facility=facility),
        tls=tls,
        retry=RetrySpec(request_timeout_seconds=5),
    )


def send_batches(backend: SyslogBackend, batches: Sequence[Sequence[ExportRow]]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        try:
            return [await backend.send(batch) for batch in batches]
        finally:
            await backend.aclose()

    return asyncio.run(run())


def parse_sd(structured: str) -> dict[str, str]:
    match = re.fullmatch(r"\[(\S+)((?: [^=\s]+=\"(?:[^\"\\]|\\.)*\")*)\]", structured)
    assert match, structured
    assert match.group(1) == SD_ID
    params = re.findall(r" ([^=\s]+)=\"((?:[^\"\\]|\\.)*)\"", match.group(2))
    return {name: re.sub(r"\\(.)", r"\1", value) for name, value in params}


def check_chain(bodies: Sequence[bytes]) -> None:
    """A SIEM-side check per docs/chain-format.md: every hash, every link, no gap."""
    last: dict[str, tuple[int, str]] = {}
    for body in bodies:
        row = json.loads(body)
        claimed = row.pop("record_hash")
        canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == claimed, row["seq"]
        tenant_seq, previous = last.get(row["tenant_id"], (0, "0" * 64))
        assert row["tenant_seq"] == tenant_seq + 1, row
        assert row["prev_hash"] == previous, row
        last[row["tenant_id"]] = (row["tenant_seq"], claimed)


def assert_parsed_as_sent(message: Received, row: ExportRow, facility: int = 13) -> None:
    assert message.pri == facility * 8 + PRI_BY_SEVERITY[row.severity]
    assert message.app_name == "sealtrail"
    assert message.msgid == row.event_type
    assert message.hostname == HOSTNAME
    assert message.timereported == row.timestamp
    assert parse_sd(message.structured_data) == {
        "tenant": row.tenant_id, "seq": str(row.seq), "tenant_seq": str(row.tenant_seq),
        "record_hash": row.record_hash,
    }
    assert message.msg == BOM + row.body  # rsyslog keeps the BOM as the MSG's first bytes
    assert message.row == row.body


# -- against rsyslog: TCP and TLS -----------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_rows_arrive_exact_in_order_and_chain_checks(
    rsyslog: RsyslogReceiver, db_path: Path, transport: Transport
) -> None:
    rows = stored_rows(db_path, 60)
    backend = SyslogBackend(spec_for(rsyslog, transport), HttpClients())
    outcomes = send_batches(backend, [rows[:25], rows[25:50], rows[50:]])
    assert [outcome.kind for outcome in outcomes] == [OutcomeKind.SUCCESS] * 3

    messages = rsyslog.messages(at_least=len(rows))
    assert [message.row for message in messages] == [row.body for row in rows]
    for message, row in zip(messages, rows, strict=True):
        assert_parsed_as_sent(message, row)
    assert {row.severity for row in rows} >= {"HIGH", "INFO"}  # more than one PRI was shown
    check_chain([message.row for message in messages])


def test_large_rows_and_non_ascii_survive(rsyslog: RsyslogReceiver) -> None:
    """A 60 KB row and UTF-8 text come back byte for byte (rsyslog maxMessageSize raised)."""
    bodies = [
        b'{"reason":"' + "égress ✓ 😀 \u2028 \x7f".encode() + b'","seq":1}',
        b'{"reason":"' + b"x" * 60_000 + b'","seq":2}',
    ]
    rows = [ExportRow(seq=i + 1, tenant_id="acme", tenant_seq=i + 1, record_hash="0" * 64,
                      event_type="safety.decision", severity="LOW",
                      timestamp="2026-11-22T10:00:00.000000Z", body=body)
            for i, body in enumerate(bodies)]
    backend = SyslogBackend(spec_for(rsyslog, "tls"), HttpClients())
    assert send_batches(backend, [rows])[0].ok
    assert rsyslog.rows(at_least=2) == bodies


def test_untrusted_server_ca_is_retryable_and_says_why(
    rsyslog: RsyslogReceiver, db_path: Path
) -> None:
    rows = stored_rows(db_path, 3)
    tls = TLSSpec(ca_file=str(rsyslog.tls.other_ca), cert_file=str(rsyslog.tls.client_cert),
                  key_file=str(rsyslog.tls.client_key))
    backend = SyslogBackend(spec_for(rsyslog, "tls", tls=tls), HttpClients())
    [outcome] = send_batches(backend, [rows])
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert "certificate verification failed" in outcome.reason
    assert rsyslog.messages(quiet_seconds=0.2) == []


@pytest.mark.parametrize("client", ["none", "wrong-name"])
def test_refused_client_certificate_is_never_counted_delivered(
    rsyslog: RsyslogReceiver, db_path: Path, client: str
) -> None:
    """A missing or unpermitted client certificate is never counted delivered.

    rsyslog (x509/name) refuses both. With TLS 1.3 it does so after the client's handshake is
    over, so drain() alone would report SUCCESS; the backend must not.
    """
    rows = stored_rows(db_path, 3)
    files = rsyslog.tls
    tls = (TLSSpec(ca_file=str(files.ca)) if client == "none" else
           TLSSpec(ca_file=str(files.ca), cert_file=str(files.server_cert),
                   key_file=str(files.server_key)))  # a valid certificate, not a permitted name
    backend = SyslogBackend(spec_for(rsyslog, "tls", tls=tls), HttpClients())
    outcomes = send_batches(backend, [rows] * 5)
    assert all(outcome.kind is OutcomeKind.RETRYABLE for outcome in outcomes), outcomes
    assert rsyslog.messages(quiet_seconds=0.2) == []


def test_a_renewed_client_certificate_is_used_from_the_next_connection(
    rsyslog: RsyslogReceiver, db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Secret volume's files are swapped as the kubelet does; no new backend, no restart."""
    rows = stored_rows(db_path, 10)
    files = rsyslog.tls
    mount = tmp_path / "tls-secret"
    mount.mkdir()

    def project(cert: Path, key: Path, key_bytes: bytes | None = None) -> None:
        swap_in(mount, {"ca.crt": files.ca.read_bytes(), "tls.crt": cert.read_bytes(),
                        "tls.key": key.read_bytes() if key_bytes is None else key_bytes})

    project(files.server_cert, files.server_key)  # valid, but not a name rsyslog permits
    tls = TLSSpec(ca_file=str(mount / "ca.crt"), cert_file=str(mount / "tls.crt"),
                  key_file=str(mount / "tls.key"))
    backend = SyslogBackend(spec_for(rsyslog, "tls", tls=tls), HttpClients(check_seconds=0.0))

    async def run() -> list[Outcome]:
        try:
            refused = await backend.send(rows[:5])
            project(files.client_cert, files.client_key)  # renewed: a permitted certificate
            delivered = await backend.send(rows[:5])
            half = files.client_key.read_bytes()[:100]  # a broken renewal: the good one stays
            project(files.client_cert, files.client_key, key_bytes=half)
            await backend.aclose()  # force a new connection
            still = await backend.send(rows[5:])
            return [refused, delivered, still]
        finally:
            await backend.aclose()

    refused, delivered, still = asyncio.run(run())
    assert refused.kind is OutcomeKind.RETRYABLE
    assert delivered.ok, delivered
    assert still.ok, still
    assert len(rsyslog.rows(at_least=10)) == 10
    assert f"{mount / 'tls.crt'} with key {mount / 'tls.key'}" in caplog.text
    assert "cannot be used" in caplog.text
    assert files.client_key.read_text().splitlines()[1] not in caplog.text


def test_tls_files_never_usable_are_named_in_the_reason(
    rsyslog: RsyslogReceiver, db_path: Path, tmp_path: Path
) -> None:
    key = tmp_path / "tls.key"
    key.write_bytes(rsyslog.tls.client_key.read_bytes()[:100])
    tls = TLSSpec(ca_file=str(rsyslog.tls.ca), cert_file=str(rsyslog.tls.client_cert),
                  key_file=str(key))
    backend = SyslogBackend(spec_for(rsyslog, "tls", tls=tls), HttpClients())
    [outcome] = send_batches(backend, [stored_rows(db_path, 2)])
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert f"client certificate {rsyslog.tls.client_cert} with key {key}" in outcome.reason


@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_receiver_down_is_retryable_then_reconnects_and_delivers(
    rsyslog: RsyslogReceiver, db_path: Path, transport: Transport, how: str
) -> None:
    rows = stored_rows(db_path, 30)
    first, second, third = rows[:10], rows[10:20], rows[20:]
    backend = SyslogBackend(spec_for(rsyslog, transport), HttpClients())

    async def run() -> list[Outcome]:
        outcomes = [await backend.send(first)]
        rsyslog.messages(at_least=len(first))
        rsyslog.stop() if how == "stop" else rsyslog.kill()
        outcomes.append(await backend.send(second))  # refused: the loop keeps `second`
        rsyslog.start()
        outcomes.append(await backend.send(second))  # what the loop does: send it again
        outcomes.append(await backend.send(third))
        await backend.aclose()
        return outcomes

    outcomes = asyncio.run(run())
    assert [outcome.kind for outcome in outcomes] == [
        OutcomeKind.SUCCESS, OutcomeKind.RETRYABLE, OutcomeKind.SUCCESS, OutcomeKind.SUCCESS
    ], outcomes
    assert "ConnectionRefusedError" in outcomes[1].reason
    # The idle connection the restart closed was noticed and replaced, not written into.
    received = rsyslog.rows(at_least=len(rows))
    assert received == [row.body for row in rows]
    check_chain(received)


# -- against rsyslog: UDP -------------------------------------------------------------------


def test_udp_delivers_one_datagram_per_row(rsyslog: RsyslogReceiver, db_path: Path) -> None:
    rows = stored_rows(db_path, 20)
    backend = SyslogBackend(spec_for(rsyslog, "udp", facility=4), HttpClients())
    assert backend.limits.max_row_bytes == 8 * 1024
    assert all(outcome.ok for outcome in send_batches(backend, [rows[:10], rows[10:]]))
    messages = rsyslog.messages(at_least=len(rows))
    # Loopback does not drop or reorder here, but UDP promises neither: compare as sets.
    assert sorted(message.row for message in messages) == sorted(row.body for row in rows)
    by_body = {row.body: row for row in rows}
    for message in messages:
        assert_parsed_as_sent(message, by_body[message.row], facility=4)


def test_udp_oversize_row_is_permanent_at_row_level(
    rsyslog: RsyslogReceiver, db_path: Path
) -> None:
    rows = stored_rows(db_path, 3)
    big = ExportRow(seq=99, tenant_id="acme", tenant_seq=99, record_hash="0" * 64,
                    event_type="x.y", severity="INFO", timestamp=rows[0].timestamp,
                    body=b'{"reason":"' + b"x" * 9000 + b'"}')
    backend = SyslogBackend(spec_for(rsyslog, "udp"), HttpClients())
    assert backend.row_size(big) > backend.limits.max_row_bytes
    [outcome] = send_batches(backend, [[rows[0], big, rows[1]]])
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.too_large
    assert outcome.rejected_index == 1
    assert rsyslog.messages(quiet_seconds=0.2) == []  # nothing of the batch was sent


def test_udp_to_a_stopped_receiver_is_lossy_then_retryable(
    rsyslog: RsyslogReceiver, db_path: Path
) -> None:
    """UDP cannot know about loss.

    The first send into a closed port "succeeds"; the ICMP refusal it causes is reported on the
    next send, which is RETRYABLE.
    """
    rows = stored_rows(db_path, 4)
    backend = SyslogBackend(spec_for(rsyslog, "udp"), HttpClients())

    async def run() -> list[Outcome]:
        outcomes = [await backend.send(rows[:1])]
        rsyslog.stop()
        outcomes.append(await backend.send(rows[1:2]))  # lost, and reported as written
        await asyncio.sleep(0.1)  # the ICMP port-unreachable comes back
        outcomes.append(await backend.send(rows[2:3]))
        rsyslog.start()
        outcomes.append(await backend.send(rows[2:]))
        await backend.aclose()
        return outcomes

    outcomes = asyncio.run(run())
    assert [outcome.kind for outcome in outcomes] == [
        OutcomeKind.SUCCESS, OutcomeKind.SUCCESS, OutcomeKind.RETRYABLE, OutcomeKind.SUCCESS
    ], outcomes
    received = rsyslog.rows(at_least=3)
    assert received == [rows[0].body, rows[2].body, rows[3].body]


# -- the conformance case -------------------------------------------------------------------


def test_syslog_case_fail_next_is_exact_and_received_reads_back(
    db_path: Path, tmp_path: Path
) -> None:
    case = SyslogCase(tmp_path / "receiver")
    try:
        case.start()
        spec = case.export_spec("siem", tmp_path / "unused")
        assert spec.kind == "syslog"
        assert case.failures == frozenset({"retryable"})
        rows = stored_rows(db_path, 9)
        backend = SyslogBackend(spec, HttpClients())

        async def run() -> list[OutcomeKind]:
            kinds = [(await backend.send(rows[:3])).kind]
            case.fail_next("retryable", 2)
            kinds += [(await backend.send(rows[3:6])).kind for _ in range(3)]
            case.stop()
            kinds.append((await backend.send(rows[6:])).kind)
            case.start()
            kinds.append((await backend.send(rows[6:])).kind)
            await backend.aclose()
            return kinds

        assert asyncio.run(run()) == [
            OutcomeKind.SUCCESS, OutcomeKind.RETRYABLE, OutcomeKind.RETRYABLE,
            OutcomeKind.SUCCESS, OutcomeKind.RETRYABLE, OutcomeKind.SUCCESS,
        ]
        assert case.relay.resets == 2
        received = case.received()
        assert received == [row.body for row in rows]
        check_chain(received)
    finally:
        case.close()


# -- formatting, no receiver ----------------------------------------------------------------


def _row(**changes: object) -> ExportRow:
    fields: dict[str, object] = {
        "seq": 7, "tenant_id": "acme", "tenant_seq": 3, "record_hash": "ab" * 32,
        "event_type": "safety.decision", "severity": "CRITICAL",
        "timestamp": "2026-11-22T10:00:00.123456Z", "body": b'{"a":"b"}',
    }
    fields.update(changes)
    return ExportRow(**fields)  # type: ignore[arg-type]


def test_message_layout() -> None:
    spec = SyslogSpec(host="h", port=1, app_name="audit", hostname="node-1", facility=10)
    message = format_message(_row(), spec, "node-1")
    assert message == (
        b'<82>1 2026-11-22T10:00:00.123456Z node-1 audit - safety.decision '
        b'[sealtrail@32473 tenant="acme" seq="7" tenant_seq="3" record_hash="' + b"ab" * 32
        + b'"] \xef\xbb\xbf{"a":"b"}'
    )
    assert frame(message) == str(len(message)).encode() + b" " + message


def test_sd_values_are_escaped_and_msgid_is_fitted() -> None:
    spec = SyslogSpec(host="h", port=1)
    message = format_message(
        _row(tenant_id='a"b\\c]d', event_type="é" + "x" * 40, severity="SOMETHING",
             timestamp="yesterday"),
        spec, "host",
    ).decode()
    assert 'tenant="a\\"b\\\\c\\]d"' in message
    assert message.startswith("<110>1 - host sealtrail - _" + "x" * 31 + " [")
