"""The leader's loop: render policies, poll workers, write status. Level-triggered.

kopf keeps indexes of what the cluster holds (in every replica); this loop, in the replica that
holds the Lease, makes the cluster match them. Each round works on the namespaces that changed
since the last (an AuditExport or AuditPolicy event, a named Secret that appeared, changed keys
or went), and every `resync_seconds` on all of them, so a missed event costs a delay, never a
wrong state. Workers are polled every `poll_seconds` (jittered, so that restarts do not
synchronise), each worker once however many exports it serves.

Why not kopf's change handlers and timers: they keep their progress in annotations and add a
finalizer to every object that has a timer, so `helm uninstall` would leave AuditExports that
no namespace deletion can remove, and two replicas would fight over the annotations. This loop
writes only `status` (and the objects it renders), so it needs neither.

Status is written when something a reader acts on changed (`status.worth_writing`), plus a
heartbeat every `heartbeat_seconds`: the API server sees a few writes a minute per object, not
one per poll.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sealtrail.operator.apply import apply_policy, ensure_admin_secret
from sealtrail.operator.facts import (
    ExportFact,
    NamespaceFacts,
    PodFact,
    PolicyFact,
    WorkerAddress,
    credential_facts,
    namespace_facts,
    secrets_named,
    values_of,
    workers_of_export,
)
from sealtrail.operator.kube import Kube, KubeError
from sealtrail.operator.leader import Leadership
from sealtrail.operator.metrics import OperatorMetrics
from sealtrail.operator.named_secrets import NamedSecrets
from sealtrail.operator.polling import Answer, StatusPoller, reports
from sealtrail.operator.status import (
    export_status,
    now,
    policy_status,
    transition_events,
    worth_writing,
)

__all__ = ["Controller", "ControllerSettings", "Indexes"]

log = logging.getLogger("sealtrail.operator")

EXPORTS = "auditexports"
POLICIES = "auditpolicies"


@dataclass(frozen=True)
class ControllerSettings:
    """How often the leader does what."""

    poll_seconds: float = 5.0
    resync_seconds: float = 30.0
    heartbeat_seconds: float = 60.0
    secret_refresh_seconds: float = 30.0
    default_image: str = "sealtrail/sealtrail:0.1.0"
    #: API writes in flight at once (each is a thread running the blocking client).
    concurrency: int = 8
    #: (namespace, name) of the Secret whose `token` workers take for `/metrics`; None: none.
    metrics_secret: tuple[str, str] | None = None


@dataclass(frozen=True)
class Indexes:
    """kopf's indexes (live views; keyed by namespace), as the startup handler got them."""

    exports: Any
    policies: Any
    workers: Any  # namespace -> (policy label value, WorkerAddress)
    pods: Any  # namespace -> PodFact

    def namespaces(self) -> set[str]:
        """Every namespace that holds an AuditExport or an AuditPolicy."""
        return {str(key) for key in self.exports} | {str(key) for key in self.policies}

    def exports_of(self, namespace: str) -> list[ExportFact]:
        """The namespace's AuditExports."""
        return values_of(self.exports, namespace)

    def policies_of(self, namespace: str) -> list[PolicyFact]:
        """The namespace's AuditPolicies."""
        return values_of(self.policies, namespace)

    def wanted_secrets(self) -> dict[str, set[str]]:
        """Per namespace, every Secret its exports and policies name (and nothing else)."""
        return {namespace: secrets_named(self.exports_of(namespace),
                                         self.policies_of(namespace))
                for namespace in self.namespaces()}


class Controller:
    """One per process; `run` acts only while `leadership.leading`."""

    def __init__(self, kube: Kube, indexes: Indexes, secrets: NamedSecrets,  # noqa: PLR0917 - wiring, once
                 poller: StatusPoller, leadership: Leadership,
                 settings: ControllerSettings, metrics: OperatorMetrics) -> None:
        """Wire; nothing runs until `run`."""
        self._metrics = metrics
        self._kube = kube
        self._indexes = indexes
        self._secrets = secrets
        self._poller = poller
        self._leadership = leadership
        self._settings = settings
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._answers: dict[WorkerAddress, Answer] = {}
        #: What we last wrote, by (plural, namespace, name): the index catches up a moment later.
        self._written: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._limit = asyncio.Semaphore(settings.concurrency)
        #: The generation of each policy whose other mode's objects were cleaned up.
        self._cleaned: dict[tuple[str, str], int | None] = {}
        self._metrics_token: str | None = None

    # -- signals from the handlers ------------------------------------------------------------

    def changed(self, namespace: str) -> None:
        """An export or policy of `namespace` changed: reconcile it soon."""
        self._dirty.add(namespace)
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: lead when the lease is ours, otherwise wait for it."""
        while True:
            self._metrics.leader.set(1 if self._leadership.leading else 0)
            if not self._leadership.leading:
                self._written.clear()
                self._cleaned.clear()
                self._answers.clear()
                await self._leadership.wait_changed(timeout=5.0)
                continue
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end reconciling for good; the next round retries
                log.exception("reconcile round failed")
                await asyncio.sleep(1.0)

    def _jittered(self, seconds: float) -> float:
        return seconds * random.uniform(0.9, 1.1)  # noqa: S311 - spreading load, not secrecy

    async def _lead(self) -> None:
        next_resync = next_poll = time.monotonic()
        while self._leadership.leading:
            current = time.monotonic()
            if current >= next_resync:
                namespaces = self._indexes.namespaces() | self._take_dirty()
                next_resync = current + self._jittered(self._settings.resync_seconds)
                self._metrics_token = await self._read_metrics_token()
                await self._reconcile_policies(namespaces)
            elif self._dirty:
                dirty = self._take_dirty()
                await self._reconcile_policies(dirty)
                await self._reconcile_exports(dirty)
            if current >= next_poll:
                await self._poll()
                next_poll = current + self._jittered(self._settings.poll_seconds)
                await self._reconcile_exports(self._indexes.namespaces())
            self._metrics.rounds.inc()
            pause = max(0.0, min(next_resync, next_poll) - time.monotonic())
            self._wake.clear()
            if self._dirty:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    async def _read_metrics_token(self) -> str | None:
        if self._settings.metrics_secret is None:
            return None
        namespace, name = self._settings.metrics_secret
        try:
            body = await asyncio.to_thread(self._kube.read_secret, namespace, name)
        except KubeError as error:
            log.warning("%s", error)
            return self._metrics_token
        value = ((body or {}).get("data") or {}).get("token")
        return base64.b64decode(value).decode().strip() if value else None

    def _take_dirty(self) -> set[str]:
        taken, self._dirty = self._dirty, set()
        return taken

    # -- facts --------------------------------------------------------------------------------

    def _facts(self, namespace: str) -> NamespaceFacts:
        return namespace_facts(namespace, self._indexes.exports_of(namespace),
                               self._indexes.policies_of(namespace),
                               self._secrets.of(namespace))

    def _workers(self, namespace: str) -> dict[str, list[WorkerAddress]]:
        found: dict[str, list[WorkerAddress]] = {}
        for label, address in values_of(self._indexes.workers, namespace):
            found.setdefault(label, []).append(address)
        return found

    def _previous(self, plural: str, namespace: str, name: str,
                  indexed: Mapping[str, Any]) -> Mapping[str, Any]:
        written = self._written.get((plural, namespace, name))
        if written is None:
            return indexed
        return {**indexed, **written}

    async def _write(self, plural: str, namespace: str, name: str,
                     previous: Mapping[str, Any], fresh: Mapping[str, Any]) -> bool:
        # Each object's heartbeat falls due at its own point of the interval (from its name),
        # so a thousand exports written together once do not stay in step for ever.
        spread = 0.75 + 0.5 * (zlib.crc32(f"{namespace}/{name}".encode()) % 1000) / 1000
        patch = worth_writing(previous, fresh, now=now(),
                              heartbeat_seconds=self._settings.heartbeat_seconds * spread)
        if patch is None:
            return False
        async with self._limit:
            try:
                found = await asyncio.to_thread(self._kube.patch_status, plural, namespace,
                                                name, patch)
            except KubeError as error:
                log.error("%s", error)  # noqa: TRY400 - the reason is the message
                return False
        if found:
            self._metrics.status_writes.labels(plural).inc()
            self._written[(plural, namespace, name)] = {**dict(previous), **patch}
        return found

    # -- policies -----------------------------------------------------------------------------

    async def _reconcile_policies(self, namespaces: Iterable[str]) -> None:
        await asyncio.gather(*(self._policies_of(namespace) for namespace in sorted(namespaces)))

    async def _policies_of(self, namespace: str) -> None:
        facts = self._facts(namespace)
        valid = facts.valid_policies
        async with self._limit:
            try:
                await asyncio.to_thread(ensure_admin_secret, self._kube, namespace, valid,
                                        self._metrics_token)
                if valid and self._secrets.key(namespace) is None:
                    await self._secrets.read_key(namespace)  # poll with it from this round
            except KubeError as error:
                log.error("%s", error)  # noqa: TRY400 - the reason is the message
        pods = [pod for pod in values_of(self._indexes.pods, namespace)
                if isinstance(pod, PodFact)]
        await asyncio.gather(*(self._policy_safely(namespace, facts, fact, pods)
                               for fact in self._indexes.policies_of(namespace)))

    async def _policy_safely(self, namespace: str, facts: NamespaceFacts, fact: PolicyFact,
                             pods: list[PodFact]) -> None:
        try:
            await self._policy(namespace, facts, fact, pods)
        except asyncio.CancelledError:
            raise
        except Exception:  # one object's bug must not stop the others
            log.exception("auditpolicy %s/%s: reconciling failed", namespace, fact.name)

    async def _policy(self, namespace: str, facts: NamespaceFacts, fact: PolicyFact,
                      pods: list[PodFact]) -> None:
        result, failure = None, None
        extra: dict[str, Any] = {}
        if fact.policy is not None:
            key = (namespace, fact.name)
            clean_up = key not in self._cleaned or self._cleaned[key] != fact.generation
            async with self._limit:
                result, failure, extra = await asyncio.to_thread(
                    apply_policy, self._kube, facts, fact.policy,
                    default_image=self._settings.default_image, clean_up=clean_up)
            if failure is None:
                self._cleaned[key] = fact.generation
            else:
                log.error("auditpolicy %s/%s: %s", namespace, fact.name, failure)
        previous = self._previous(POLICIES, namespace, fact.name, fact.status)
        fresh = policy_status(fact, result, failure, pods, previous=previous, now=now())
        fresh.update(extra)
        await self._write(POLICIES, namespace, fact.name, previous, fresh)

    # -- exports ------------------------------------------------------------------------------

    async def _poll(self) -> None:
        workers = [address for namespace in self._indexes.namespaces()
                   for addresses in self._workers(namespace).values() for address in addresses]

        def token(worker: WorkerAddress) -> bytes | None:
            return self._secrets.key(worker.pod.split("/", 1)[0])

        self._answers = await self._poller.poll(workers, token)

    async def _reconcile_exports(self, namespaces: Iterable[str]) -> None:
        for namespace in sorted(namespaces):
            facts = self._facts(namespace)
            workers = self._workers(namespace)
            await asyncio.gather(*(self._export_safely(namespace, facts, workers, fact)
                                   for fact in self._indexes.exports_of(namespace)))

    async def _export_safely(self, namespace: str, facts: NamespaceFacts,
                             workers: Mapping[str, list[WorkerAddress]],
                             fact: ExportFact) -> None:
        try:
            await self._export(namespace, facts, workers, fact)
        except asyncio.CancelledError:
            raise
        except Exception:  # one object's bug must not stop the others
            log.exception("auditexport %s/%s: reconciling failed", namespace, fact.name)

    async def _export(self, namespace: str, facts: NamespaceFacts,
                      workers: Mapping[str, list[WorkerAddress]], fact: ExportFact) -> None:
        found = workers_of_export(facts, workers, fact.name)
        previous = self._previous(EXPORTS, namespace, fact.name, fact.status)
        fresh = export_status(
            backend=fact.backend, spec_problem=fact.problem, spec_paused=fact.paused,
            credentials=credential_facts(fact, facts),
            reports=reports(found, self._answers, fact.name), previous=previous,
            generation=fact.generation, now=now())
        if await self._write(EXPORTS, namespace, fact.name, previous, fresh):
            await self._post_events(namespace, fact, previous, fresh)

    async def _post_events(self, namespace: str, fact: ExportFact, previous: Mapping[str, Any],
                           fresh: Mapping[str, Any]) -> None:
        for event in transition_events(previous, fresh):
            await asyncio.to_thread(self._kube.post_event, "AuditExport", namespace, fact.name,
                                    fact.uid, type_=event.type, reason=event.reason,
                                    message=event.message)

    # -- Secrets (every replica: the webhook needs them too) ------------------------------------

    async def refresh_secrets(self) -> None:
        """Forever, in every replica: re-read the named Secrets; a change makes a round."""
        while True:
            try:
                changed = await self._secrets.refresh(self._indexes.wanted_secrets())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the named Secrets failed")
                changed = set()
            for namespace in changed:
                self.changed(namespace)
            await asyncio.sleep(self._jittered(self._settings.secret_refresh_seconds))

