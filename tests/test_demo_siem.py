"""The demo's stand-in SIEM and the check a SOC runs on what a SIEM received.

Covers: deliveries with a bad signature are refused and keep nothing; the receiver-side check
passes on a faithful copy (duplicates included) and names the tenant and row when a received row
was changed, is missing, or a checkpoint row is forged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import orjson

from sealtrail.chain.canonical import hash_row
from sealtrail.chain.keys import Signer
from sealtrail.chain.store import ChainStore, CheckpointPolicy
from sealtrail.demo_siem import LocalSiem, check_received

from .conftest import events

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def rows(db: Path, signer: Signer) -> list[bytes]:
    with ChainStore(db, checkpoints=CheckpointPolicy(signer, 10, None)) as store:
        for _ in range(3):
            store.append(events(20, tenants=("acme", "globex")))
        return list(store.rows())


def test_a_faithful_copy_checks_out_even_with_duplicates(db_path: Path, signer: Signer) -> None:
    received = rows(db_path, signer)
    report = check_received(received + received[:7], [signer.public])
    assert report.problems == []
    assert report.rows == len(received)
    assert report.tenants == 2
    assert report.checkpoints >= 4


def test_changed_missing_and_forged_rows_are_named(db_path: Path, signer: Signer) -> None:
    received = rows(db_path, signer)
    changed = orjson.loads(received[5])
    changed["reason"] = "edited inside the SIEM"
    tampered = [*received[:5], orjson.dumps(changed, option=orjson.OPT_SORT_KEYS), *received[6:]]
    problem = check_received(tampered, [signer.public]).problems[0]
    assert problem == (f"{changed['tenant_id']} (store {changed['store_id']}): "
                       f"row {changed['tenant_seq']} does not match its hash")

    gone = orjson.loads(received[3])
    problems = check_received(received[:3] + received[4:], [signer.public]).problems
    assert (f"{gone['tenant_id']} (store {gone['store_id']}): row {gone['tenant_seq']} "
            "never arrived") in problems

    from sealtrail.chain.keys import generate_keypair  # noqa: PLC0415

    other = generate_keypair(db_path.parent / "other.key")
    assert any("checkpoint" in p for p in check_received(received, [other.public]).problems)


def test_unsigned_deliveries_are_refused() -> None:
    siem = LocalSiem(SECRET)
    body = b'[{"a":"b"}]'
    good = base64.b64encode(hmac.new(base64.b64decode(SECRET[6:]), b"id.1." + body,
                                     hashlib.sha256).digest()).decode()
    assert not siem.accept(body, "id", "1", "v1,AAAA")
    assert siem.rows == []
    assert siem.refused == 1
    assert siem.accept(body, "id", "1", f"v1,{good}")
    assert siem.rows == [b'{"a":"b"}']


def test_a_fork_is_named_and_a_duplicate_is_not(db_path: Path, signer: Signer) -> None:
    """Two different rows at one position of a chain: one of them was made up."""
    received = rows(db_path, signer)
    forged = orjson.loads(received[5])
    forged["reason"] = "a second row 6, with its hash recomputed"
    forged["record_hash"] = hash_row({k: v for k, v in forged.items() if k != "record_hash"})
    problems = check_received([*received, orjson.dumps(forged, option=orjson.OPT_SORT_KEYS)],
                              [signer.public]).problems
    assert (f"{forged['tenant_id']} (store {forged['store_id']}): two different rows at "
            f"{forged['tenant_seq']}") in problems
    assert check_received(received + received[5:6], [signer.public]).problems == []
