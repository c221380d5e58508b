"""`sealtrail.api.worker_api`, the contract between worker and operator, without a process.

Covered: `credential_digest` is keyed (another key, or none, gives another digest; the plain
SHA-256 is never it), strips the value as a credential file is read, keeps 16 hex digits and
refuses an empty key; `LIVE_FIELDS` names real config paths, and `without_live_fields` /
`restart_changes` say what needs a restart; `admin.token` is a `{file:}`/`{env:}` reference
and the resource's `secretKeyRef` form is refused naming the field. The worker's real status
document is parsed in tests/test_worker_api.py.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import ValidationError

from sealtrail.api.worker_api import (
    DIGEST_HEX_CHARS,
    LIVE_FIELDS,
    RESUME_PATH,
    credential_digest,
    restart_changes,
    resume_path,
    without_live_fields,
)
from sealtrail.api.worker_config import WorkerConfig


def test_the_digest_is_keyed_stripped_and_short() -> None:
    digest = credential_digest("hunter2", b"admin-token")
    assert len(digest) == DIGEST_HEX_CHARS
    assert all(char in "0123456789abcdef" for char in digest)
    assert credential_digest("  hunter2\n", b"admin-token") == digest
    assert credential_digest("hunter2", b"another-token") != digest
    assert credential_digest("hunter3", b"admin-token") != digest
    plain = hashlib.sha256(b"hunter2").hexdigest()
    assert not plain.startswith(digest)
    # Not a bare HMAC of the value either: a context keeps it apart from other uses of the key.
    assert not hmac.new(b"admin-token", b"hunter2", hashlib.sha256).hexdigest().startswith(digest)


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty key"):
        credential_digest("hunter2", b"")


def test_the_resume_path_fills_in_the_export() -> None:
    assert resume_path("splunk-prod") == "/v1/exports/splunk-prod/resume"
    assert RESUME_PATH == "/v1/exports/{name}/resume"


def test_every_live_field_is_a_config_path() -> None:
    document = WorkerConfig.model_validate({
        "admin": {"token": {"file": "/t"}},
        "nats": {"url": "nats://n:4222", "stream": "S", "subject": "s"},
    }).model_dump(mode="json", by_alias=True)
    for path in LIVE_FIELDS:
        at = document
        for key in path:
            assert key in at, path
            at = at[key]


def test_only_what_is_not_live_needs_a_restart() -> None:
    before = WorkerConfig().model_dump(mode="json", by_alias=True)
    live = WorkerConfig.model_validate({
        "ingest": {"tokens": [{"token": {"file": "/t"}}],
                   "backpressure": {"highWatermarkRows": 10, "lowWatermarkRows": 5}},
        "admin": {"token": {"file": "/a"}},
        "routes": [{"exports": ["x"]}],
        "exports": [{"name": "x", "syslog": {"host": "h", "port": 514}}],
    }).model_dump(mode="json", by_alias=True)
    assert restart_changes(before, live) == []
    assert without_live_fields(live) == without_live_fields(before)
    restart = WorkerConfig.model_validate({
        "store": {"path": "/elsewhere.db"}, "admin": {"listen": "0.0.0.0:8471"},
        "ingest": {"processes": 2},
    }).model_dump(mode="json", by_alias=True)
    assert restart_changes(before, restart) == ["admin.listen", "ingest.processes", "store.path"]
    assert "tokens" not in without_live_fields(restart)["ingest"]
    assert "token" not in without_live_fields(restart)["admin"]


def test_the_admin_token_is_a_reference_and_never_the_resources_form() -> None:
    config = WorkerConfig.model_validate({"admin": {"token": {"env": "ADMIN_TOKEN"}}})
    assert config.admin.token is not None
    assert config.admin.token.env == "ADMIN_TOKEN"
    with pytest.raises(ValidationError, match=r"admin\.token\.secretKeyRef: a worker reads"):
        WorkerConfig.model_validate(
            {"admin": {"token": {"secretKeyRef": {"name": "admin", "key": "token"}}}})
    with pytest.raises(ValidationError):
        WorkerConfig.model_validate({"admin": {"token": "st-inline-token"}})
