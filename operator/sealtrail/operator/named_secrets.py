"""The Secrets our resources name, read one at a time by name: never listed, never watched.

A cluster-wide watch of Secrets would stream every credential in the cluster into the
operator (service-account tokens, TLS keys, Helm release blobs). sealtrail needs only the
Secrets its AuditExports and AuditPolicies name, and of those only their keys (to say whether a
`secretKeyRef` resolves) and a keyed digest of each value (to say which version the workers
use). So this keeps exactly that, per namespace, and refreshes it every few seconds by `get`.

Every replica keeps its own copy (the webhook needs the keys to render a pod's worker). A
Secret that appears or changes keys is seen at the next refresh; a rotation of values needs
nothing from the operator at all (the kubelet updates the mounted files, the worker re-reads).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import Callable, Mapping

from sealtrail.operator.facts import SecretFact, secret_fact
from sealtrail.operator.kube import Kube, KubeError

__all__ = ["Digest", "NamedSecrets"]

log = logging.getLogger("sealtrail.operator")

#: (value, key) -> the digest a worker holding `key` reports for `value`.
Digest = Callable[[str, bytes], str]


class NamedSecrets:
    """Per namespace, the facts of the Secrets last asked for; refreshed by `refresh`."""

    def __init__(self, kube: Kube, digest: Digest, *, key_secret: tuple[str, str],
                 concurrency: int = 8) -> None:
        """Read through `kube`; digest values as soon as they are read.

        `key_secret` (name, key) is the Secret, in each namespace, whose value keys the
        digests: the workers' admin credential, which only the workers and the operator hold.
        """
        self._kube = kube
        self._digest = digest
        self._key_secret = key_secret
        self._keys: dict[str, bytes] = {}
        self._facts: dict[str, dict[str, SecretFact]] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._keying: dict[str, asyncio.Future[None]] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self.refreshed = False  # True after the first complete refresh

    def of(self, namespace: str) -> dict[str, SecretFact]:
        """The facts of the named Secrets of `namespace` that exist (by name)."""
        return dict(self._facts.get(namespace, {}))

    async def _read(self, namespace: str, name: str) -> SecretFact | None:
        async with self._limit:
            try:
                body = await asyncio.to_thread(self._kube.read_secret, namespace, name)
            except KubeError as error:
                log.warning("%s", error)
                # keep what we knew rather than calling it missing
                return self._facts.get(namespace, {}).get(name)
        if body is None:
            return None
        key = self._keys.get(namespace)
        if key is None:  # no admin credential yet: keys only, no digests to match
            return dataclasses.replace(secret_fact(body, lambda _: ""), digests={})
        return secret_fact(body, lambda value: self._digest(value, key))

    def key(self, namespace: str) -> bytes | None:
        """The namespace's admin credential, once its Secret exists."""
        return self._keys.get(namespace)

    async def read_key(self, namespace: str) -> bytes | None:
        """Read the namespace's admin credential now (the leader has just made it)."""
        await self._read_keys({namespace})
        return self._keys.get(namespace)

    async def _read_keys(self, namespaces: set[str]) -> None:
        name, item = self._key_secret
        for namespace in namespaces:
            async with self._limit:
                try:
                    body = await asyncio.to_thread(self._kube.read_secret, namespace, name)
                except KubeError as error:
                    log.warning("%s", error)
                    continue
            value = ((body or {}).get("data") or {}).get(item)
            if value is None:
                self._keys.pop(namespace, None)
            else:
                self._keys[namespace] = base64.b64decode(value).strip()

    async def ensure(self, namespace: str, names: set[str]) -> bool:
        """Read now those of `names` not known yet (a resource just named them): any found.

        The periodic refresh would see them within seconds; a pod admitted in between would
        get a worker without the export whose Secret was not read yet.
        """
        missing = names - set(self._facts.get(namespace, {}))
        if not missing:
            return False
        # One read per Secret however many ask at once (at start-up, every export's event
        # asks for its namespace's Secrets while the first reads are still in flight).
        reads = []
        for name in sorted(missing):
            key = (namespace, name)
            if key not in self._reading:
                self._reading[key] = asyncio.ensure_future(self._read_into(namespace, name))
            reads.append(self._reading[key])
        found = await asyncio.gather(*reads)
        return any(found)

    async def _read_into(self, namespace: str, name: str) -> bool:
        try:
            if namespace not in self._keys:
                if namespace not in self._keying:
                    self._keying[namespace] = asyncio.ensure_future(
                        self._read_keys({namespace}))
                keying = self._keying[namespace]
                try:
                    await keying
                finally:
                    self._keying.pop(namespace, None)
            fact = await self._read(namespace, name)
            if fact is not None:
                self._facts.setdefault(namespace, {})[name] = fact
            return fact is not None
        finally:
            del self._reading[(namespace, name)]

    async def refresh(self, wanted: Mapping[str, set[str]]) -> set[str]:
        """Read every Secret in `wanted` (namespace -> names); the namespaces that changed."""
        await self._read_keys(set(wanted))
        jobs = [(namespace, name) for namespace, names in wanted.items() for name in names]
        found = await asyncio.gather(*(self._read(namespace, name) for namespace, name in jobs))
        fresh: dict[str, dict[str, SecretFact]] = {namespace: {} for namespace in wanted}
        for (namespace, name), fact in zip(jobs, found, strict=True):
            if fact is not None:
                fresh[namespace][name] = fact
        changed = {namespace for namespace in set(fresh) | set(self._facts)
                   if fresh.get(namespace, {}) != self._facts.get(namespace, {})}
        self._facts = fresh
        self.refreshed = True
        return changed
