"""`sealtrail demo`: the whole story on an embedded default, in a few seconds.

Creates a signing key and a local store, appends sample events for several tenants with
checkpoints, shows the state of each chain, verifies it, plays three attacks on copies of the
store (an edited row, a rollback to an old backup, a rewrite with recomputed hashes) to show
which `verify` catches, with and without the checkpoints kept outside the store, and finally
ships the chain to a local signed-webhook receiver and re-checks it from the receiver's copy.
"""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry

from sealtrail import drill
from sealtrail.api.event import Event
from sealtrail.api.export import CredentialRef, ExportsConfig, ExportSpec, WebhookSpec
from sealtrail.chain.checkpoint import Checkpoint, write_checkpoints
from sealtrail.chain.keys import PublicKey, generate_keypair
from sealtrail.chain.store import ChainStore, CheckpointPolicy
from sealtrail.chain.verify import Status, VerifyReport, verify_store
from sealtrail.demo_siem import LocalSiem, SiemCheck, check_received
from sealtrail.export.engine import ExportEngine
from sealtrail.export.loop import LoopStatus

__all__ = ["padded_event_lines", "run_demo", "sample_events"]

TENANTS: Final = ("acme", "globex", "initech")
_FILES: Final = ("checkpoint.key", "checkpoint.key.pub", "checkpoints.json",
                  "siem-webhook-secret")


def sample_events(count: int, *, seed: int = 7, tenants: tuple[str, ...] = TENANTS) -> Iterator[
    dict[str, Any]
]:
    """Plausible audit events (about 500 bytes each), the same for the same seed."""
    pick = random.Random(seed)
    kinds = ("safety.decision", "safety.approval", "safety.policy_change", "safety.violation",
             "system.auth")
    actions = ("tool.call", "job.submit", "policy.update", "key.create", "user.login")
    for number in range(count):
        kind = pick.choice(kinds)
        decision = pick.choice(("allow", "deny", "require_approval", "throttle"))
        yield {
            "event_type": kind,
            "severity": pick.choice(("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO")),
            "tenant_id": pick.choice(tenants),
            "agent_id": f"agent-{pick.randrange(1, 64):02d}",
            "job_id": f"job-{number:08d}",
            "action": pick.choice(actions),
            "decision": decision,
            "matched_rule": f"rule-{pick.randrange(1, 40)}-{decision}",
            "reason": pick.choice((
                "egress to an unapproved host was blocked by the production policy",
                "a human approver accepted the gated job after review",
                "the request exceeded the per-tenant rate limit for tool calls",
                "the policy bundle was updated by the platform team",
            )),
            "risk_tags": pick.sample(["egress", "pii", "prod", "secrets", "finance"], 2),
            "capabilities": pick.sample(["fs.read", "fs.write", "net.egress", "exec"], 2),
            "policy_version": f"2026-11-{pick.randrange(1, 28):02d}.{pick.randrange(1, 9)}",
            "identity": f"user:{pick.choice(('alice', 'bob', 'carol'))}@example.com",
            "extra": {"region": pick.choice(("eu-west-1", "us-east-1")), "route": "/v1/jobs"},
        }


def padded_event_lines(count: int, *, seed: int = 42,
                       tenants: tuple[str, ...] = ("acme", "globex", "initech", "umbrella"),
                       ) -> list[bytes]:
    """`sample_events` as JSON lines padded to about 500 bytes each (`extra.trace_id`).

    The benchmarks' events, and what tests mean by an ordinary client's.
    """
    lines = []
    for raw in sample_events(count, seed=seed, tenants=tenants):
        line = orjson.dumps(raw)
        raw["extra"]["trace_id"] = "t" * max(1, 500 - len(line) - 14)
        lines.append(orjson.dumps(raw))
    return lines


def _append(store: ChainStore, count: int, seed: int) -> None:
    events = [Event.model_validate(raw) for raw in sample_events(count, seed=seed)]
    for start in range(0, len(events), 100):
        store.append(events[start : start + 100])


def _say(title: str) -> None:
    print(f"\n== {title}")


def _show(report: VerifyReport) -> None:
    for tenant in report.tenants:
        bad = tenant.first_bad
        detail = (
            f"intact, {tenant.rows} rows, {tenant.checkpoints_checked} checkpoints checked"
            if bad is None
            else f"{bad.status.name.lower()} at tenant_seq {bad.tenant_seq}: {bad.problem}"
        )
        print(f"   {tenant.tenant_id:<8} {detail}")
    for finding in report.store_findings:
        print(f"   store    {finding.problem}")
    print(f"   verdict: {report.status.name.lower()} (exit code {int(report.status)})")


def run_demo(directory: Path) -> int:
    """Run the demo in `directory`; return 0 when every step turned out as it should."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (*_FILES, "audit.db", "audit.db-wal", "audit.db-shm"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / "attacks", ignore_errors=True)
    (directory / "attacks").mkdir()
    store_path = directory / "audit.db"

    _say("1. a signing key for checkpoints (the public half is what an auditor keeps)")
    signer = generate_keypair(directory / "checkpoint.key")
    print(f"   {directory / 'checkpoint.key'} (key id {signer.key_id}) and .pub")

    _say("2. append 600 sample events for three tenants, a checkpoint every 100 rows")
    backup = directory / "attacks" / "old-backup.db"
    with ChainStore(store_path, checkpoints=CheckpointPolicy(signer, 100, None)) as store:
        _append(store, 300, seed=1)
        _copy_store(store_path, backup)  # a backup taken half way, for the rollback attack
        _append(store, 300, seed=2)
        _say("3. sign the current heads on demand and keep the checkpoints outside the store")
        store.checkpoint(signer)
        latest = store.latest_checkpoints()
        write_checkpoints(directory / "checkpoints.json", latest)
        print(f"   {directory / 'checkpoints.json'}: {len(latest)} checkpoints")

        _say("4. status: the head of each tenant's chain")
        for head in store.heads():
            print(f"   {head.tenant_id:<8} {head.tenant_seq:>4} rows, "
                  f"head {head.record_hash[:16]}…")
        print(f"   {store.last_seq()} rows in all, including the checkpoint rows")
        print("   first row of acme, as it is exported:")
        print("   " + next(store.rows(tenant="acme")).decode())

    keys = [signer.public]
    _say("5. verify the store against the checkpoints")
    intact = verify_store(store_path, checkpoints=latest, public_keys=keys)
    _show(intact)

    _say("6. attack: edit one row (acme row 42: its reason)")
    edited = _copy_store(store_path, directory / "attacks" / "edited.db")
    drill.modify_field(edited, "acme", 42, "reason", "nothing to see here")
    tampered = verify_store(edited, checkpoints=latest, public_keys=keys)
    _show(tampered)

    _say("7. attack: roll the store back to the backup taken half way")
    rolled_back = verify_store(backup, checkpoints=latest, public_keys=keys)
    _show(rolled_back)

    _say("8. attack: rewrite globex from row 10 on, recomputing every later hash")
    rewritten = _copy_store(store_path, directory / "attacks" / "rewritten.db")
    drill.rewrite_from(rewritten, "globex", 10, "reason", "nothing to see here")
    print("   without the checkpoints, the chain alone looks fine:")
    blind = verify_store(rewritten, tenant="globex")
    _show(blind)
    print("   with them:")
    caught = verify_store(rewritten, tenant="globex", checkpoints=_only(latest, "globex"),
                          public_keys=keys)
    _show(caught)

    _say("9. ship the chain to a local SIEM (a signed-webhook receiver on 127.0.0.1)")
    shipped, check = _ship_to_local_siem(directory, store_path, keys)
    print(f"   export 'local-siem': cursor at seq {shipped.cursor}, "
          f"{shipped.delivered_rows} rows delivered, paused: {shipped.paused}")
    print(f"   the SIEM re-checks from what it received alone: {check.rows} rows in "
          f"{check.tenants} tenant chains, {check.checkpoints} signed checkpoints, "
          + ("all valid" if not check.problems else "; ".join(check.problems)))

    expected = [
        (intact, Status.INTACT),
        (tampered, Status.TAMPERED),
        (rolled_back, Status.TRUNCATED),
        (blind, Status.INTACT),
        (caught, Status.TRUNCATED),
    ]
    ok = all(report.status is status for report, status in expected) and (
        not check.problems and check.rows == intact.rows and shipped.cursor == intact.rows)
    _say("done" if ok else "UNEXPECTED RESULT: see above")
    print(f"   try: sealtrail verify --db {store_path} --checkpoints "
          f"{directory / 'checkpoints.json'} --pubkey {directory / 'checkpoint.key.pub'}")
    print(orjson.dumps({"demo": "ok" if ok else "failed", "rows": intact.rows}).decode())
    return 0 if ok else 1


def _ship_to_local_siem(directory: Path, store_path: Path,
                        keys: list[PublicKey]) -> tuple[LoopStatus, SiemCheck]:
    """Run one export to a local receiver until everything is delivered."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    secret_file = directory / "siem-webhook-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    siem = LocalSiem(secret)
    url = siem.start()
    webhook = WebhookSpec(url=url, secret=CredentialRef(file=str(secret_file)))
    config = ExportsConfig(exports=[ExportSpec(name="local-siem", webhook=webhook)])

    async def ship() -> LoopStatus:
        with ChainStore(store_path) as store:
            engine = ExportEngine(store, config, CollectorRegistry())
            try:
                await engine.drain(60)
                return engine.status()[0]
            finally:
                await engine.stop()

    try:
        status = asyncio.run(ship())
    finally:
        siem.stop()
    return status, check_received(siem.rows, keys)


def _only(checkpoints: list[Checkpoint], tenant: str) -> list[Checkpoint]:
    return [checkpoint for checkpoint in checkpoints if checkpoint.tenant_id == tenant]


def _copy_store(source: Path, target: Path) -> Path:
    """Copy a store consistently (SQLite's online backup, so the WAL is included)."""
    import sqlite3  # noqa: PLC0415 - the demo's only direct use of SQLite

    target.unlink(missing_ok=True)
    with sqlite3.connect(source) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)
    origin.close()
    copy.close()
    return target
