"""The operator's Secret reader: only what resources name, each Secret read once at a time.

Covers `sealtrail.operator.named_secrets.NamedSecrets` against a stand-in for the one method
it calls (`Kube.read_secret`), which counts reads and answers slowly, as an API server under
load does. The cluster tests read through the real API server (test_operator_e2e's
`test_the_operator_reads_only_the_secrets_resources_name`); these pin what those cannot
provoke on purpose: many asks at once for the same Secrets.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import Counter
from typing import Any

from sealtrail.api.worker_api import credential_digest
from sealtrail.operator import naming
from sealtrail.operator.named_secrets import NamedSecrets

ADMIN = b"admin-token-for-digests"


class SlowSecrets:
    """`read_secret` over a dict of Secrets, 20 ms per call, counting calls by name."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self.reads[name] += 1
        time.sleep(0.02)
        data = self.secrets.get(name)
        if data is None:
            return None
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"},
                "data": {key: base64.b64encode(value.encode()).decode()
                         for key, value in data.items()}}


def reader(kube: SlowSecrets) -> NamedSecrets:
    return NamedSecrets(kube, credential_digest,  # type: ignore[arg-type]
                        key_secret=(naming.ADMIN_SECRET, naming.ADMIN_SECRET_KEY))


def test_many_asks_at_once_read_each_secret_once() -> None:
    names = {f"secret-{n}" for n in range(20)}
    kube = SlowSecrets({name: {"token": f"value-{name}"} for name in names}
                       | {naming.ADMIN_SECRET: {naming.ADMIN_SECRET_KEY: ADMIN.decode()}})
    secrets = reader(kube)

    async def asks() -> list[bool]:
        return await asyncio.gather(*(secrets.ensure("ns", names) for _ in range(200)))

    assert any(asyncio.run(asks()))
    assert {name: kube.reads[name] for name in names} == dict.fromkeys(names, 1)
    assert kube.reads[naming.ADMIN_SECRET] == 1
    known = secrets.of("ns")
    assert set(known) == names
    fact = known["secret-3"]
    assert fact.keys == frozenset({"token"})
    assert fact.digests["token"] == credential_digest("value-secret-3", ADMIN)  # keyed, no value


def test_known_secrets_are_not_read_again_and_a_missing_one_is_retried() -> None:
    kube = SlowSecrets({"hec": {"token": "t"},
                        naming.ADMIN_SECRET: {naming.ADMIN_SECRET_KEY: ADMIN.decode()}})
    secrets = reader(kube)
    assert asyncio.run(secrets.ensure("ns", {"hec", "not-yet"}))
    assert not asyncio.run(secrets.ensure("ns", {"hec"}))  # known: no read
    assert kube.reads["hec"] == 1
    kube.secrets["not-yet"] = {"key": "v"}
    assert asyncio.run(secrets.ensure("ns", {"hec", "not-yet"}))
    assert kube.reads["not-yet"] == 2
    assert set(secrets.of("ns")) == {"hec", "not-yet"}


def test_a_refresh_reads_only_what_is_wanted_and_forgets_what_went() -> None:
    kube = SlowSecrets({"a": {"k": "1"}, "b": {"k": "2"}, "decoy": {"k": "3"},
                        naming.ADMIN_SECRET: {naming.ADMIN_SECRET_KEY: ADMIN.decode()}})
    secrets = reader(kube)
    assert asyncio.run(secrets.refresh({"ns": {"a", "b"}})) == {"ns"}
    del kube.secrets["b"]
    assert asyncio.run(secrets.refresh({"ns": {"a", "b"}})) == {"ns"}  # "b" went
    assert set(secrets.of("ns")) == {"a"}
    assert kube.reads["decoy"] == 0
    assert secrets.refreshed
