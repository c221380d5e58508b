"""A local stand-in SIEM for `sealtrail demo`, and the check a SOC runs on what it received.

The receiver takes Standard Webhooks deliveries on 127.0.0.1, refuses any whose signature does
not verify, and keeps the rows. `check_received` is what a security team can do with those rows
alone, without access to the store: recompute every hash and link per tenant, and check every
checkpoint row's signature and the head it vouches for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from sealtrail.chain.canonical import GENESIS_HASH, hash_row
from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE, Checkpoint
from sealtrail.chain.keys import PublicKey

__all__ = ["LocalSiem", "SiemCheck", "chain_name", "check_received"]


class LocalSiem:
    """A signed-webhook endpoint on loopback that keeps the rows it accepts."""

    def __init__(self, secret: str) -> None:
        """Trust `secret` (`whsec_` + base64)."""
        self._key = base64.b64decode(secret.removeprefix("whsec_"))
        self.rows: list[bytes] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self, host: str = "127.0.0.1") -> str:
        """Listen on a free port of `host` (loopback unless told otherwise); return the URL."""
        siem = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                accepted = siem.accept(body, self.headers.get("webhook-id", ""),
                                       self.headers.get("webhook-timestamp", ""),
                                       self.headers.get("webhook-signature", ""))
                self.send_response(204 if accepted else 401)
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://{host}:{self._server.server_address[1]}/"

    def accept(self, body: bytes, webhook_id: str, timestamp: str, signatures: str) -> bool:
        """Keep the rows of a delivery whose signature verifies."""
        expected = base64.b64encode(hmac.new(
            self._key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
        if not any(hmac.compare_digest(expected, given.removeprefix("v1,").encode())
                   for given in signatures.split()):
            with self._lock:
                self.refused += 1
            return False
        rows = [orjson.dumps(row, option=orjson.OPT_SORT_KEYS) for row in orjson.loads(body)]
        with self._lock:
            self.rows.extend(rows)
        return True

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class SiemCheck:
    """What the received rows prove."""

    rows: int = 0
    tenants: int = 0
    chains: int = 0  # (store, tenant) pairs: every replica keeps its own chain per tenant
    stores: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)


def chain_name(store_id: str | None, tenant: str) -> str:
    """How a chain is named in messages: its tenant, and its store when rows carry one."""
    return tenant if store_id is None else f"{tenant} (store {store_id})"


def check_received(received: list[bytes], keys: list[PublicKey]) -> SiemCheck:
    """Re-check each chain from received rows alone (duplicates are fine).

    Rows are grouped by `(store_id, tenant_id)`: two replicas each write a row 1 of the same
    tenant, and only the store id tells their chains apart.
    """
    chains: dict[tuple[str | None, str], dict[int, dict[str, Any]]] = {}
    forks: list[str] = []
    for body in received:
        row = orjson.loads(body)
        chain = chains.setdefault((row.get("store_id"), row["tenant_id"]), {})
        seen = chain.setdefault(row["tenant_seq"], row)
        if seen != row:  # a duplicate (at least once) is the same row; a fork is not
            forks.append(f"{chain_name(row.get('store_id'), row['tenant_id'])}: two different "
                         f"rows at {row['tenant_seq']}")
    report = SiemCheck(
        tenants=len({tenant for _, tenant in chains}),
        chains=len(chains),
        stores=len({store for store, _ in chains}),
        problems=forks,
    )
    for (store_id, tenant), rows in sorted(chains.items(), key=lambda item: str(item[0])):
        name = chain_name(store_id, tenant)
        previous = GENESIS_HASH
        for tenant_seq in range(1, max(rows) + 1):
            row = rows.get(tenant_seq)
            if row is None:
                report.problems.append(f"{name}: row {tenant_seq} never arrived")
                break
            claimed = row["record_hash"]
            if hash_row({k: v for k, v in row.items() if k != "record_hash"}) != claimed:
                report.problems.append(f"{name}: row {tenant_seq} does not match its hash")
                break
            if row["prev_hash"] != previous:
                report.problems.append(f"{name}: row {tenant_seq} does not link")
                break
            if row["event_type"] == CHECKPOINT_EVENT_TYPE:
                checkpoint = Checkpoint.from_row(row)
                key = next((k for k in keys if k.key_id == checkpoint.key_id), None)
                head = rows.get(checkpoint.tenant_seq, {}).get("record_hash")
                if key is None or not checkpoint.signature_valid(key) or (
                        head != checkpoint.head_hash):
                    report.problems.append(f"{name}: checkpoint at {tenant_seq} is not valid")
                    break
                report.checkpoints += 1
            previous = claimed
            report.rows += 1
    return report
