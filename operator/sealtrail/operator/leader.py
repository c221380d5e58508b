"""Which operator replica reconciles: a Lease, held by one replica at a time.

Every replica serves the admission webhook (its answers come from indexes each replica keeps),
so losing one replica never fails a pod creation. Writing to the cluster (rendering policies,
polling workers, writing status, publishing the webhook CA) is the leader's alone: two writers
would fight over the same status and the same objects.

Why not kopf's peering: a kopf operator that is not the leader pauses all of its watches, and
with them the indexes the webhook answers from. So kopf runs in every replica, unpaused, with
no change handlers at all (only indexes and event hooks, which write nothing to the objects),
and the leader's controller (`controller.py`) does the work. The election itself is the
`kubernetes` client's (`kubernetes.leaderelection`, a `coordination.k8s.io` Lease), run in a
thread because it is blocking.

A leader that cannot renew within `renew_deadline_seconds` stops leading before its lease can
have passed to anyone else (the lease is longer than the deadline), so two leaders never act at
once for longer than a clock skew.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

__all__ = ["Leadership", "LeaseSettings"]

log = logging.getLogger("sealtrail.operator")


@dataclass(frozen=True)
class LeaseSettings:
    """Where the lease is and how long it lasts (client-go's defaults: 15 s, 10 s, 2 s)."""

    name: str
    namespace: str
    duration_seconds: int = 15
    renew_deadline_seconds: int = 10
    retry_seconds: int = 2


class _Lock(LeaseLock):
    """The client's Lease lock, refusing to take or renew the Lease once we are stopping."""

    def __init__(self, name: str, namespace: str, identity: str,
                 stopping: threading.Event) -> None:
        super().__init__(name, namespace, identity)  # type: ignore[no-untyped-call]
        self._stopping = stopping

    def create(self, *args: Any, **kwargs: Any) -> bool:
        return not self._stopping.is_set() and bool(
            super().create(*args, **kwargs))  # type: ignore[no-untyped-call]

    def update(self, *args: Any, **kwargs: Any) -> bool:
        return not self._stopping.is_set() and bool(
            super().update(*args, **kwargs))  # type: ignore[no-untyped-call]


def _identity() -> str:
    """The pod's name (what `kubectl get lease` shows) and a suffix unique to this process."""
    return f"{os.environ.get('HOSTNAME', 'sealtrail')}_{secrets.token_hex(4)}"


class Leadership:
    """Runs the election in a thread; the event loop asks `leading` or waits for it."""

    def __init__(self, settings: LeaseSettings) -> None:
        """Prepare; nothing runs until `start`."""
        self.settings = settings
        self.identity = _identity()
        self._leading = threading.Event()
        self._stopping = threading.Event()
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The client logs every failed attempt at INFO ("lease held by ..."): every 2 s per
        # follower, forever. Transitions are logged here instead.
        logging.getLogger("leaderelection").setLevel(logging.WARNING)

    @property
    def leading(self) -> bool:
        """True while this replica holds the lease."""
        return self._leading.is_set()

    def start(self) -> None:
        """Start campaigning, from inside the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        threading.Thread(target=self._campaign, name="leader-election", daemon=True).start()

    def stop(self) -> None:
        """Stop leading, and hand the Lease back so that a follower takes over at once."""
        self._stopping.set()
        was_leading = self.leading
        self._set(leading=False)
        if was_leading:
            self._release()

    def _release(self) -> None:
        # What client-go's ReleaseOnCancel does: an empty holder, which any candidate takes
        # at its next try, instead of a lease the others must wait out (a rollout would
        # otherwise leave status unwritten for a lease duration per replica).
        api = kubernetes.client.CoordinationV1Api()
        try:
            lease: Any = api.read_namespaced_lease(self.settings.name, self.settings.namespace,
                                                   _request_timeout=5)
            if lease.spec.holder_identity != self.identity:
                return
            api.patch_namespaced_lease(self.settings.name, self.settings.namespace,
                                       {"spec": {"holderIdentity": None}}, _request_timeout=5)
            log.info("released the Lease %s", self.settings.name)
        except (ApiException, OSError) as error:
            log.warning("could not release the Lease %s: %s", self.settings.name, error)

    async def wait_changed(self, timeout: float) -> None:  # noqa: ASYNC109 - a wake-up, not a deadline
        """Return when leadership changes, or after `timeout` seconds."""
        assert self._changed is not None, "start() first"  # noqa: S101 - a programming error
        changed = self._changed  # every waiter wakes: each change sets one event, then a new one
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return

    def _notify(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _set(self, *, leading: bool) -> None:
        if leading == self._leading.is_set():
            return
        if leading:
            self._leading.set()
            log.info("leading: this replica (%s) reconciles", self.identity)
        else:
            self._leading.clear()
            log.info("not leading: this replica (%s) only answers the webhook", self.identity)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify)

    def _campaign(self) -> None:
        while not self._stopping.is_set():
            lock = _Lock(self.settings.name, self.settings.namespace, self.identity,
                         self._stopping)
            term = threading.Event()  # set when this term of leading ends

            def lead(term: threading.Event = term) -> None:
                # Runs in a thread of its own while the lease is renewed in another;
                # returning would not end the lease, so this marks the state and waits.
                self._set(leading=True)
                term.wait()

            def stopped(term: threading.Event = term) -> None:
                term.set()
                self._set(leading=False)

            config = electionconfig.Config(  # type: ignore[no-untyped-call]
                lock, self.settings.duration_seconds, self.settings.renew_deadline_seconds,
                self.settings.retry_seconds, onstarted_leading=lead, onstopped_leading=stopped)
            try:
                election = leaderelection.LeaderElection(config)  # type: ignore[no-untyped-call]
                election.run()  # type: ignore[no-untyped-call]  # returns when leading ends
            except Exception:
                log.exception("leader election failed; trying again")
            term.set()
            self._set(leading=False)
            self._stopping.wait(self.settings.retry_seconds)
