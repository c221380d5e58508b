"""The checkpoint signing key follows its Secret: a running worker signs with the new key.

Covers, with the real `sealtrail worker` process and its key projected the way the kubelet
projects a Secret (a `..data` symlink swapped atomically): checkpoints are signed with key A;
a half-written new key file leaves the worker signing with A and logs one warning naming the
file, never key material; once key B is in the file, the next checkpoints carry B's key_id,
`/v1/status` shows it, and `sealtrail verify` accepts the chain given both public keys (and
only then). `ReloadingSigner` itself: it looks at the file at most once per check interval.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sealtrail.chain.keys import KeyFileError, ReloadingSigner, generate_keypair

from .conftest import CliResult
from .fake_kubelet import swap_in as project_secret
from .worker_process import Worker, running_worker

KEY = "checkpoint.key"


def key_lines(path: Path) -> list[str]:
    """The base64 lines of a private key file: none may ever reach a log."""
    return [line for line in path.read_text().splitlines() if "-----" not in line]


def key_id_in_status(client: httpx.Client, tenant: str) -> str | None:
    status = client.get("/v1/status").json()
    for item in status["tenants"]:
        if item["tenant_id"] == tenant and item["last_checkpoint"] is not None:
            return str(item["last_checkpoint"]["key_id"])
    return None


def append_until(client: httpx.Client, worker: Worker, done: Any, what: str) -> None:
    """Append checkpoint-sized batches until `done()` holds (10 s at most)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = [{"event_type": "safety.decision", "severity": "INFO", "tenant_id": "acme"}
                 for _ in range(5)]
        assert client.post("/v1/events", json=batch).status_code == 200
        if done():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen; worker log:\n{worker.log()[-3000:]}")


def test_a_running_worker_signs_with_the_rotated_key(
    tmp_path: Path, cli: Any,
) -> None:
    (tmp_path / "keys").mkdir()
    key_a = generate_keypair(tmp_path / "keys" / "a.key")
    key_b = generate_keypair(tmp_path / "keys" / "b.key")
    mount = tmp_path / "checkpoint-key"
    mount.mkdir()
    project_secret(mount, {KEY: (tmp_path / "keys" / "a.key").read_bytes()})
    whole_b = (tmp_path / "keys" / "b.key").read_bytes()
    checkpoints = {"signingKey": {"file": str(mount / KEY)}, "everyRows": 5,
                   "everySeconds": 3600}

    with running_worker(tmp_path / "worker", checkpoints=checkpoints) as worker, \
            worker.client() as client:
        append_until(client, worker, lambda: key_id_in_status(client, "acme") is not None,
                     "a first checkpoint")
        assert key_id_in_status(client, "acme") == key_a.key_id

        # A half-written key: the worker keeps signing with A and says why, once.
        project_secret(mount, {KEY: whole_b[: len(whole_b) // 2]})
        append_until(client, worker, lambda: "cannot be used" in worker.log(),
                     "a warning about the unusable key file")
        append_until(client, worker, lambda: True, "one more checkpoint")
        assert key_id_in_status(client, "acme") == key_a.key_id

        # The whole new key: the next checkpoints are B's, with no restart.
        project_secret(mount, {KEY: whole_b})
        append_until(client, worker, lambda: key_id_in_status(client, "acme") == key_b.key_id,
                     "a checkpoint signed with key B")
        pid = worker.pid
        log = worker.log()

    assert worker.pid == pid
    warnings = [line for line in log.splitlines() if "cannot be used" in line]
    assert len(warnings) == 1, warnings
    assert str(mount / KEY) in warnings[0]
    assert key_a.key_id in warnings[0]  # which key it still signs with
    secrets = key_lines(tmp_path / "keys" / "a.key") + key_lines(tmp_path / "keys" / "b.key")
    assert not any(line in log for line in secrets)
    assert f"checkpoint signing key {key_b.key_id} loaded" in log

    both = verify(cli, worker.db, tmp_path / "keys" / "a.key.pub", tmp_path / "keys" / "b.key.pub")
    assert both.returncode == 0, both.stdout + both.stderr
    [tenant] = orjson.loads(both.stdout)["tenants"]
    assert tenant["checkpoints_checked"] >= 3
    # B's checkpoints verify with B's key only: without it they do not.
    only_a = verify(cli, worker.db, tmp_path / "keys" / "a.key.pub")
    assert only_a.returncode != 0
    assert f"signed by key {key_b.key_id}" in only_a.stdout.decode()


def verify(cli: Any, db: Path, *pubkeys: Path) -> CliResult:
    keys = [arg for key in pubkeys for arg in ("--pubkey", key)]
    result: CliResult = cli("verify", "--db", db, "--json", *keys)
    return result


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reloading_signer_checks_at_most_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    key_a = generate_keypair(tmp_path / "a.key")
    key_b = generate_keypair(tmp_path / "b.key")
    mount = tmp_path / "mount"
    mount.mkdir()
    project_secret(mount, {KEY: (tmp_path / "a.key").read_bytes()})
    clock = Clock()
    signer = ReloadingSigner(mount / KEY, check_seconds=1.0, clock=clock)
    assert signer.current().key_id == key_a.key_id

    project_secret(mount, {KEY: (tmp_path / "b.key").read_bytes()})
    clock.now = 0.5
    assert signer.current().key_id == key_a.key_id  # not looked at yet
    clock.now = 1.0
    assert signer.current().key_id == key_b.key_id

    with caplog.at_level(logging.WARNING, logger="sealtrail.chain"):
        project_secret(mount, {KEY: b"-----BEGIN PRIVATE KEY-----\n"})
        for step in range(2, 6):
            clock.now = float(step)
            assert signer.current().key_id == key_b.key_id
        (mount / KEY).unlink()  # gone altogether: still B, one more warning
        clock.now = 6.0
        assert signer.current().key_id == key_b.key_id
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert all(str(mount / KEY) in message for message in messages)
    assert "No such file or directory" in messages[1]


def test_a_missing_key_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read key file"):
        ReloadingSigner(tmp_path / "nothing.key")
