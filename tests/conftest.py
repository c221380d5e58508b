"""Shared fixtures: a fresh store path, a signing key, sample events, and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sealtrail.api.event import Event
from sealtrail.chain.keys import Signer, generate_keypair
from sealtrail.demo import sample_events

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return generate_keypair(tmp_path / "signing.key")


def events(count: int, *, seed: int = 1, tenants: tuple[str, ...] = ("acme", "globex")) -> list[
    Event
]:
    return [Event.model_validate(raw) for raw in sample_events(count, seed=seed, tenants=tenants)]


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


CliResult = subprocess.CompletedProcess[bytes]


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Run the installed `sealtrail` command as a user would, in its own process."""

    def run(*args: str | Path, stdin: bytes = b"") -> CliResult:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        return subprocess.run(
            [sys.executable, "-m", "sealtrail", *map(str, args)],
            input=stdin,
            capture_output=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
            check=False,
        )

    return run
