"""Watch streams: `?watch=true` answered as newline-delimited JSON events over a long response.

Semantics follow the apiserver's watch cache: with no resourceVersion (or "0") the stream starts
with synthetic ADDED events for what exists; with a resourceVersion it replays the history after
it, or sends a 410 `Expired` ERROR event when that is no longer kept; `sendInitialEvents=true`
ends the initial ADDED events with a BOOKMARK annotated `k8s.io/initial-events-end`; BOOKMARKs
are sent every `bookmark_interval` seconds when `allowWatchBookmarks` is set. Selectors filter
like the watch cache: an object that stops matching is sent as DELETED, one that starts matching
as ADDED. The stream ends at `timeoutSeconds` (default 30 to 60 minutes, as the apiserver picks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.kube.api import Api, Query, Target
from tests.kube.errors import bad_request, expired
from tests.kube.store import END, Watcher, WatchEvent, WatchExpiredError
from tests.kube.tables import table

__all__ = ["serve_watch"]

log = logging.getLogger("tests.kube.watch")

Matcher = Callable[[dict[str, Any]], bool]


def _in_namespace(target: Target, obj: dict[str, Any]) -> bool:
    return target.namespace is None or obj["metadata"].get("namespace") == target.namespace


def _translate(event: WatchEvent, target: Target,
               matches: Matcher) -> tuple[str, dict[str, Any]] | None:
    """The event as this watcher sees it through its namespace and selectors (None: unseen)."""
    if target.name is not None and event.obj["metadata"]["name"] != target.name:
        return None
    if not _in_namespace(target, event.obj):
        return None
    now_matches = matches(event.obj)
    if event.type == "MODIFIED":
        before = event.old is not None and matches(event.old)
        if before and now_matches:
            return "MODIFIED", event.obj
        if before:
            return "DELETED", event.obj
        return ("ADDED", event.obj) if now_matches else None
    if event.type == "DELETED":
        return ("DELETED", event.obj) if matches(event.old or event.obj) else None
    return (event.type, event.obj) if now_matches else None


class _Stream:
    """One response being written; remembers whether a Table header was sent already."""

    def __init__(self, response: web.StreamResponse, api: Api, target: Target, query: Query,
                 *, as_table: bool) -> None:
        self.response = response
        self.api = api
        self.target = target
        self.query = query
        self.as_table = as_table
        self.columns_sent = False

    async def send(self, kind: str, obj: dict[str, Any]) -> None:
        rtype = self.target.rtype
        shown = self.api.output(rtype, json.loads(json.dumps(obj)))
        if self.as_table and kind in ("ADDED", "MODIFIED", "DELETED"):
            shown = table(rtype, [shown], shown["metadata"]["resourceVersion"],
                          self.query.get("includeObject", "Metadata"))
            if self.columns_sent:
                shown["columnDefinitions"] = []
            self.columns_sent = True
        line = json.dumps({"type": kind, "object": shown}, separators=(",", ":")) + "\n"
        await self.response.write(line.encode())

    async def bookmark(self, version: int, *, initial_end: bool = False) -> None:
        rtype = self.target.rtype
        meta: dict[str, Any] = {"resourceVersion": str(version)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta}
        line = json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")) + "\n"
        await self.response.write(line.encode())


def _timeout(query: Query) -> float:
    if query.get("timeoutSeconds"):
        return max(float(query["timeoutSeconds"]), 0.0)
    return 1800.0 * (1 + random.random())


@dataclass
class _Start:
    """Where a new watch begins: its registration, what it replays, or why it cannot start."""

    watcher: Watcher | None
    replay: list[WatchEvent]
    current: int
    existing: list[dict[str, Any]]
    error: dict[str, Any] | None = None


def _subscribe(api: Api, target: Target, query: Query, matches: Matcher) -> _Start:
    rtype = target.rtype
    version = query.get("resourceVersion") or ""
    initial = query.get("sendInitialEvents") == "true" or version in ("", "0")
    if not initial and not version.isdigit():
        raise bad_request(f"invalid resource version: {version}")
    with api.store.lock:  # one snapshot: the current objects and the registration agree
        try:
            watcher, replay, current = api.store.subscribe(
                rtype.group_resource, target.namespace, None if initial else int(version),
                asyncio.get_running_loop())
        except WatchExpiredError as too_old:
            return _Start(None, [], 0, [], expired(str(too_old)).status())
        existing = [o for o in api.store.items(rtype.group_resource, target.namespace)
                    if matches(o) and target.name in (None, o["metadata"]["name"])] \
            if initial else []
    return _Start(watcher, replay, current, existing)


async def serve_watch(request: web.Request, api: Api, target: Target, query: Query, *,
                      as_table: bool, stopping: asyncio.Event,
                      bookmark_interval: float) -> web.StreamResponse:
    labels, fields = api.selectors(target, query)

    def matches(obj: dict[str, Any]) -> bool:
        return labels.matches(obj) and fields.matches(obj)

    start = _subscribe(api, target, query, matches)
    content_type = ("application/json;as=Table;v=v1;g=meta.k8s.io" if as_table
                    else "application/json")
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type,
                                                       "Cache-Control": "no-cache, private"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if start.watcher is None:  # 410: reported in the stream, as the watch cache does
        await response.write((json.dumps({"type": "ERROR", "object": start.error}) + "\n")
                             .encode())
        await response.write_eof()
        return response
    stream = _Stream(response, api, target, query, as_table=as_table)
    try:
        for obj in start.existing:
            await stream.send("ADDED", obj)
        if query.get("sendInitialEvents") == "true":
            await stream.bookmark(start.current, initial_end=True)
        for event in start.replay:
            seen = _translate(event, target, matches)
            if seen is not None:
                await stream.send(*seen)
        await _follow(stream, start.watcher.queue, target, matches, stopping,
                      deadline=asyncio.get_running_loop().time() + _timeout(query),
                      bookmark_every=bookmark_interval
                      if query.get("allowWatchBookmarks") in ("true", "1") else None)
    except (ConnectionResetError, asyncio.CancelledError):
        log.debug("watch on %s closed by the client", target.rtype.group_resource)
    finally:
        api.store.unsubscribe(start.watcher)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _follow(stream: _Stream, queue: asyncio.Queue[WatchEvent], target: Target,
                  matches: Matcher, stopping: asyncio.Event, *, deadline: float,
                  bookmark_every: float | None) -> None:
    loop = asyncio.get_running_loop()
    next_bookmark = loop.time() + bookmark_every if bookmark_every else float("inf")
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        while not stopping.is_set():
            remaining = min(deadline, next_bookmark) - loop.time()
            if loop.time() >= deadline:
                return
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, stopper}, timeout=max(remaining, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if bookmark_every and loop.time() >= next_bookmark and queue.empty():
                    await stream.bookmark(int(stream.api.store.resource_version))
                    next_bookmark = loop.time() + bookmark_every
                continue
            event = getter.result()
            if event.type == END:
                return
            seen = _translate(event, target, matches)
            if seen is not None:
                await stream.send(*seen)
    finally:
        stopper.cancel()
