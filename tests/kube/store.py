"""The emulator's etcd: objects by group-resource, one global resourceVersion, and watch history.

Every write takes the next resourceVersion (a decimal string, as etcd's revision) and is appended
to a bounded history, so a watch can resume from any resourceVersion still in it — and gets
410 Expired for older ones, as after an etcd compaction. Stored objects are never mutated
(writers store fresh dicts), so readers and watch events can share them safely.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ABSENT", "END", "Store", "StoreConflictError", "WatchEvent", "WatchExpiredError", "Watcher",
]

ABSENT = "<absent>"  # expected resourceVersion of an object that must not exist yet
END = "END"  # the type of the event that tells a watch its resource is no longer served

Key = tuple[str, str]  # (namespace or "", name)


class StoreConflictError(Exception):
    """The object changed (or appeared, or vanished) since the caller read it."""


class WatchExpiredError(Exception):
    """The requested resourceVersion is older than the oldest one still in the history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    group_resource: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass(eq=False)
class Watcher:
    """One open watch: events for its group-resource arrive on `queue` (on `loop`)."""

    group_resource: str
    namespace: str | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[WatchEvent] = field(default_factory=asyncio.Queue)

    def deliver(self, event: WatchEvent) -> None:
        """Queue the event.

        On the watcher's own loop (the usual case) it is queued at once, so that the store's
        resourceVersion never runs ahead of an empty queue there.
        """
        if self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.queue.put_nowait(event)
        else:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Store:
    """Objects and their history; all methods are thread-safe."""

    def __init__(self, history_limit: int = 5000) -> None:
        self.lock = threading.RLock()
        self._rv = 0
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {}
        self._uids: dict[str, tuple[str, Key]] = {}
        self._history: deque[WatchEvent] = deque()
        self._history_limit = history_limit
        self._compacted = 0  # events up to this resourceVersion are gone from the history
        self._watchers: set[Watcher] = set()

    @property
    def resource_version(self) -> str:
        with self.lock:
            return str(self._rv)

    # -- reads (copies, so callers may modify them) ----------------------------------------

    def get(self, group_resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._objects.get(group_resource, {}).get((namespace or "", name))
            return copy.deepcopy(found) if found is not None else None

    def items(self, group_resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects in key order (namespace, name), as etcd returns them."""
        with self.lock:
            stored = self._objects.get(group_resource, {})
            keys = sorted(k for k in stored if namespace is None or k[0] == namespace)
            return [copy.deepcopy(stored[k]) for k in keys]

    def list_with_version(self, group_resource: str,
                          namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        with self.lock:
            return self.items(group_resource, namespace), str(self._rv)

    def namespaced_in(self, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        """Every object in a namespace, with its group-resource."""
        with self.lock:
            return [(gr, copy.deepcopy(obj)) for gr, objects in self._objects.items()
                    for (ns, _), obj in sorted(objects.items()) if ns == namespace]

    def dependents(self, owner_uid: str) -> list[tuple[str, dict[str, Any]]]:
        """Objects that list `owner_uid` among their ownerReferences."""
        with self.lock:
            return [(gr, copy.deepcopy(obj)) for gr, objects in self._objects.items()
                    for obj in objects.values()
                    if any(ref.get("uid") == owner_uid
                           for ref in obj["metadata"].get("ownerReferences") or [])]

    def uid_exists(self, uid: str) -> bool:
        with self.lock:
            return uid in self._uids

    # -- writes ------------------------------------------------------------------------------

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._compacted = self._history.popleft().rv
        for watcher in self._watchers:
            if watcher.group_resource == event.group_resource:
                watcher.deliver(event)

    def put(self, group_resource: str, obj: dict[str, Any], expect: str | None) -> dict[str, Any]:
        """Store `obj` with the next resourceVersion.

        `expect` is the resourceVersion the caller read: ABSENT for a create, None for an
        unconditional write.
        """
        with self.lock:
            objects = self._objects.setdefault(group_resource, {})
            key = _key(obj)
            old = objects.get(key)
            current = old["metadata"]["resourceVersion"] if old is not None else ABSENT
            if expect is not None and expect != current:
                raise StoreConflictError(current)
            self._rv += 1
            stored = copy.deepcopy(obj)
            stored["metadata"]["resourceVersion"] = str(self._rv)
            objects[key] = stored
            self._uids[stored["metadata"]["uid"]] = (group_resource, key)
            self._record(WatchEvent(self._rv, group_resource,
                                    "ADDED" if old is None else "MODIFIED", stored, old))
            return copy.deepcopy(stored)

    def delete(self, group_resource: str, obj: dict[str, Any],
               expect: str | None) -> dict[str, Any]:
        """Remove the object; the DELETED event carries it with a fresh resourceVersion."""
        with self.lock:
            objects = self._objects.get(group_resource, {})
            key = _key(obj)
            old = objects.get(key)
            if old is None or (expect is not None and expect != old["metadata"]["resourceVersion"]):
                raise StoreConflictError(old["metadata"]["resourceVersion"] if old else ABSENT)
            self._rv += 1
            del objects[key]
            self._uids.pop(old["metadata"]["uid"], None)
            final = copy.deepcopy(obj)  # the last state: e.g. with its last finalizer removed
            final["metadata"]["resourceVersion"] = str(self._rv)
            self._record(WatchEvent(self._rv, group_resource, "DELETED", final, old))
            return copy.deepcopy(final)

    def drop_group_resource(self, group_resource: str) -> None:
        """Forget every object of a type that is no longer served (its CRD went away).

        The watches on it end, as the apiserver ends them.
        """
        with self.lock:
            for obj in self._objects.pop(group_resource, {}).values():
                self._uids.pop(obj["metadata"]["uid"], None)
            for watcher in self._watchers:
                if watcher.group_resource == group_resource:
                    watcher.deliver(WatchEvent(self._rv, group_resource, END, {}, None))

    # -- watching ----------------------------------------------------------------------------

    def subscribe(self, group_resource: str, namespace: str | None, since: int | None,
                  loop: asyncio.AbstractEventLoop) -> tuple[Watcher, list[WatchEvent], int]:
        """A watcher, the history events after `since` (None: none), and the current version.

        Registration and the replay snapshot happen under one lock, so no event is lost or
        delivered twice between them.
        """
        with self.lock:
            if since is not None and since < self._compacted:
                raise WatchExpiredError(since, self._compacted + 1)
            replay = [e for e in self._history
                      if since is not None and e.rv > since and e.group_resource == group_resource]
            watcher = Watcher(group_resource, namespace, loop)
            self._watchers.add(watcher)
            return watcher, replay, self._rv

    def unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.discard(watcher)

    def compact(self) -> None:
        """Forget the whole history, as an etcd compaction at the current revision would."""
        with self.lock:
            self._history.clear()
            self._compacted = self._rv

    def objects_snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self.lock:
            return {gr: [copy.deepcopy(o) for _, o in sorted(objects.items())]
                    for gr, objects in self._objects.items()}
