"""A Kubernetes API server emulator for end-to-end tests.

The real operator (kopf) and the real kubectl talk to it over HTTP as they would to
kube-apiserver:

    emulator = KubeEmulator(crd_paths=[ROOT / "crds"], service_resolver=resolve).start()
    emulator.write_kubeconfig(tmp_path / "kubeconfig")   # server http://127.0.0.1:PORT, no auth
    ...                                                  # kopf / kubectl with KUBECONFIG set
    emulator.register_pod("sealtrail", "worker-0", labels={...})   # a Running pod on 127.0.0.1
    emulator.objects("auditexports", "sealtrail")                   # read-only snapshot
    emulator.stop()

It serves on 127.0.0.1 from a background thread with its own asyncio loop. The in-process
helpers (`objects`, `get`, `create`, `set_status`, `set_pod_status`, `register_pod`,
`set_workload_ready`, `wait_for`, `compact`, `restart`) are for tests; they run on the server's
loop through the same code paths as HTTP requests (admission included), but the operator and
kubectl must only use HTTP.

As a process: `python -m tests.kube.emulator --crds DIR --port N [--kubeconfig FILE]` prints the
URL and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as dt
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from aiohttp import web

from tests.kube import discovery, protobuf
from tests.kube.admission import Admission, ServiceResolver
from tests.kube.api import Api, Reply, Target, decode_body, now
from tests.kube.errors import (
    ApiError,
    bad_request,
    internal_error,
    method_not_allowed,
    not_acceptable,
    path_not_found,
    unsupported_media_type,
)
from tests.kube.resources import Registry, ResourceType
from tests.kube.store import Store
from tests.kube.watch import serve_watch

__all__ = ["KubeEmulator", "RequestRecord", "main"]

log = logging.getLogger("tests.kube.emulator")

T = TypeVar("T")
Obj = dict[str, Any]

_TABLE_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_BODY_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.yaml", "")
_STARTUP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class RequestRecord:
    """One request as served: for tests that check how a client talked to the API."""

    method: str
    path: str
    query: str
    content_type: str
    status: int
    seconds: float
    user_agent: str = ""


def _media_types(request: web.Request) -> list[dict[str, str]]:
    """The Accept header's media types, each as {"type": ..., parameter: value, ...}."""
    found = []
    for entry in request.headers.get("Accept", "").split(","):
        kind, *parameters = (piece.strip() for piece in entry.split(";"))
        media = {"type": kind}
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            media[key.strip()] = value.strip()
        found.append(media)
    return found


def _wants_media(request: web.Request, as_kind: str, group: str, version: str | None = None,
                 ) -> bool:
    return any(m.get("as") == as_kind and m.get("g") == group
               and (version is None or m.get("v") == version) for m in _media_types(request))


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return not accept or any(t in accept for t in ("json", "*/*", "yaml"))


def _reply(status: int, body: Any, *, content_type: str = "application/json",
           warnings: Iterable[str] = ()) -> web.Response:
    response = web.Response(status=status, body=json.dumps(body).encode(),
                            headers={"Content-Type": content_type,
                                     "Cache-Control": "no-cache, private"})
    for warning in warnings:  # RFC 7234 warn-text: a quoted string, escaped like Go's %q
        escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.add("Warning", f'299 - "{escaped}"')
    return response


class KubeEmulator:
    """An in-process kube-apiserver stand-in; see the module docstring."""

    def __init__(self, crd_paths: Iterable[Path] = (),
                 service_resolver: ServiceResolver | None = None,
                 *, port: int = 0, bookmark_interval: float = 5.0, history_limit: int = 5000,
                 log_path: Path | None = None) -> None:
        self.crd_paths = [Path(p) for p in crd_paths]
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.log_path = log_path
        self.store = Store(history_limit)
        self.registry = Registry()
        self.admission = Admission(service_resolver, self._configurations)
        self.api = Api(self.store, self.registry, self.admission)
        self.requests: deque[RequestRecord] = deque(maxlen=5000)
        self.errors: list[str] = []  # internal errors (500s from the emulator itself)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_errors: list[BaseException] = []
        self._log_file: Any = None

    @property
    def service_resolver(self) -> ServiceResolver | None:
        return self.admission.service_resolver

    @service_resolver.setter
    def service_resolver(self, resolver: ServiceResolver | None) -> None:
        self.admission.service_resolver = resolver

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeEmulator:
        """Serve from a background thread; returns once requests are answered."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        if self.log_path is not None:
            self._log_file = self.log_path.open("a", encoding="utf-8")
        self._ready.clear()
        self._startup_errors.clear()
        self._thread = threading.Thread(target=self._serve, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the kube emulator did not start within 30 s")
        if self._startup_errors:
            self._thread.join(10)
            self._thread = None
            failure = self._startup_errors[0]
            raise RuntimeError(f"the kube emulator failed to start: {failure}") from failure
        return self

    def stop(self) -> None:
        """End every watch, close the listener and the loop, and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if self._stopping is not None:
            loop.call_soon_threadsafe(self._stopping.set)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError("the kube emulator's thread did not end")
        self._thread = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """Stop and start again on the same port, keeping every object and the history.

        Like an apiserver restart over the same etcd: open watches and connections are cut, and
        clients must reconnect (resuming their watches from the resourceVersion they had).
        """
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:
            self._startup_errors.append(error)
            self._ready.set()
            loop.run_until_complete(self._cleanup())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=3 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        documents: list[Obj] = [{"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": name}}
                     for name in _STARTUP_NAMESPACES] + _load_documents(self.crd_paths)
        for document in documents:
            if document.get("kind") not in ("Namespace", "CustomResourceDefinition"):
                raise ValueError(f"{document.get('kind')} {document.get('metadata')} is not a "
                                 "CustomResourceDefinition (crd_paths must hold only CRDs)")
            name = (document.get("metadata") or {}).get("name", "")
            plural = "namespaces" if document["kind"] == "Namespace" else \
                "customresourcedefinitions"
            if self.get(plural, name) is None:  # present already after a restart
                await self._create_object(document)
        log.info("kube emulator serving on %s", self.url)

    async def _cleanup(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.admission.close()

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await request.read()
        try:
            response = await self._route(request, body)
        except ApiError as error:
            response = _reply(error.code, error.status())
            for name, value in error.headers.items():
                response.headers[name] = value
        except Exception as error:
            log.exception("internal error serving %s %s", request.method, request.path_qs)
            self.errors.append(f"{request.method} {request.path_qs}: {error!r}")
            failure = internal_error(repr(error))
            response = _reply(failure.code, failure.status())
        self._record(request, response.status, time.monotonic() - started)
        return response

    def _record(self, request: web.Request, status: int, seconds: float) -> None:
        record = RequestRecord(request.method, request.path, request.query_string,
                               request.headers.get("Content-Type", ""), status, seconds,
                               request.headers.get("User-Agent", ""))
        self.requests.append(record)
        log.debug("%s %s -> %d (%.3f s)", record.method, request.path_qs, status, seconds)
        if self._log_file is not None:
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            self._log_file.write(f"{stamp} {record.method} {request.path_qs} {status} "
                                 f"{seconds:.3f}s {record.content_type}\n")
            self._log_file.flush()

    async def _route(self, request: web.Request, body: bytes) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        fixed = self._fixed_path(request, parts)
        if fixed is not None:
            return fixed
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        target = self._target(group, version, rest)
        return await self._resource(request, target, body)

    def _fixed_path(self, request: web.Request, parts: list[str]) -> web.Response | None:
        """Answers for everything but resources: health, version, discovery, OpenAPI."""
        if not parts:
            return _reply(200, {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez",
                                          "/openapi/v3", "/readyz", "/version"]})
        head, depth = parts[0], len(parts)
        if depth == 1 and head in ("healthz", "livez", "readyz", "version"):
            if head == "version":
                return _reply(200, discovery.version_info())
            return web.Response(text="ok", content_type="text/plain")
        if head == "openapi":
            return self._openapi(parts[1:])
        if head not in ("api", "apis"):
            raise path_not_found()
        return self._discovery(request, parts)

    def _discovery(self, request: web.Request, parts: list[str]) -> web.Response | None:
        """Discovery documents under /api and /apis; None for resource paths."""
        head, depth = parts[0], len(parts)
        if depth == 1:
            if _wants_media(request, "APIGroupDiscoveryList", "apidiscovery.k8s.io", "v2"):
                return _reply(200, discovery.aggregated(self.registry, core=head == "api"),
                              content_type=discovery.AGGREGATED_V2)
            return _reply(200, discovery.api_versions(f"127.0.0.1:{self.port}") if head == "api"
                          else discovery.group_list(self.registry))
        document: Obj | None = None
        if head == "apis" and depth == 2:
            document = discovery.api_group(self.registry, parts[1])
        elif depth == (2 if head == "api" else 3):
            document = discovery.resource_list(self.registry, "" if head == "api" else parts[1],
                                               parts[-1])
        else:
            return None
        if document is None:
            raise path_not_found()
        return _reply(200, document)

    def _openapi(self, parts: list[str]) -> web.Response:
        if parts == ["v3"]:
            return _reply(200, discovery.openapi_v3_index(self.registry))
        if len(parts) >= 3 and parts[0] == "v3":
            rest = parts[1:]
            if rest[0] == "api" and len(rest) == 2:
                document = discovery.openapi_v3_document(self.registry, "", rest[1])
            elif rest[0] == "apis" and len(rest) == 3:
                document = discovery.openapi_v3_document(self.registry, rest[1], rest[2])
            else:
                document = None
            if document is not None:
                return _reply(200, document)
        raise path_not_found()  # /openapi/v2 is not served: kubectl validates server-side

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            namespace: str | None = rest[1]
            plural, tail = rest[2], rest[3:]
        else:
            namespace, plural, tail = None, rest[0], rest[1:]
        rtype = self.registry.get(group, version, plural)
        if rtype is None or len(tail) > 2:
            raise path_not_found()
        if namespace is not None and not rtype.namespaced:
            raise path_not_found()
        name = tail[0] if tail else None
        subresource = tail[1] if len(tail) > 1 else ""
        if rtype.namespaced and namespace is None and name is not None:
            raise path_not_found()
        if subresource and subresource not in rtype.subresources:
            raise path_not_found()
        return Target(rtype, namespace, name, subresource)

    async def _resource(self, request: web.Request, target: Target,
                        body: bytes) -> web.StreamResponse:
        query = request.query
        method = request.method
        as_table = _wants_media(request, "Table", "meta.k8s.io")
        if not as_table and not _wants_json(request):
            raise not_acceptable("application/json, application/yaml")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if method == "GET":
            if query.get("watch") in ("true", "1"):
                assert self._stopping is not None
                return await serve_watch(request, self.api, target, query, as_table=as_table,
                                         stopping=self._stopping,
                                         bookmark_interval=self.bookmark_interval)
            if as_table:
                return _reply(200, self.api.table_body(target, query), content_type=_TABLE_TYPE)
            if target.name is None:
                return _reply(200, self.api.list_body(target, query))
            return _reply(200, self.api.get(target))
        reply = await self._write(method, target, body, content_type, query)
        return _reply(reply.status, reply.body, warnings=reply.warnings)

    async def _write(self, method: str, target: Target, body: bytes, content_type: str,
                     query: Any) -> Reply:
        if method == "PATCH":
            if target.name is None:
                raise method_not_allowed()
            return await self.api.patch(target, body, content_type, query)
        if method in ("POST", "PUT") and content_type not in (*_BODY_TYPES, protobuf.PROTOBUF):
            raise unsupported_media_type(content_type, ["application/json", "application/yaml"])
        if method == "POST" and target.name is None:
            if target.rtype.namespaced and target.namespace is None:
                raise method_not_allowed()
            return await self.api.create(target, decode_body(body, content_type), query)
        if method == "PUT" and target.name is not None:
            return await self.api.update(target, decode_body(body, content_type), query)
        if method == "DELETE" and target.name is not None and not target.subresource:
            return await self.api.delete(target, body, query)
        if method == "DELETE" and target.name is None:
            return await self.api.delete_collection(target, query)
        raise method_not_allowed()

    def _configurations(self, plural: str) -> list[Obj]:
        return self.store.items(f"{plural}.admissionregistration.k8s.io")

    # -- in-process helpers (run on the server's loop) ---------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        if self._loop is None or self._thread is None:
            coroutine.close()
            raise RuntimeError("the emulator is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _type(self, plural: str) -> ResourceType:
        """`pods`, `auditexports`, `auditexports.sealtrail.dev`, `deployments.apps`..."""
        candidates = [t for t in self.registry.all()
                      if plural in (t.plural, t.group_resource, *t.short_names)]
        group_resources = {t.group_resource for t in candidates}
        if not candidates:
            raise KeyError(f"no served resource is called {plural!r}")
        if len(group_resources) > 1:
            chosen = [t for t in candidates if t.group_resource == plural] or \
                     [t for t in candidates if not t.group]
            if len({t.group_resource for t in chosen}) != 1:
                raise KeyError(f"{plural!r} is ambiguous: {sorted(group_resources)}")
            candidates = chosen
        preferred = self.registry.preferred(candidates[0].group_resource)
        assert preferred is not None
        return preferred

    def _type_of(self, obj: Obj) -> ResourceType:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = api_version.rpartition("/")
        for rtype in self.registry.all():
            if (rtype.group, rtype.version, rtype.kind) == (group, version, kind):
                return rtype
        raise KeyError(f"no served resource has kind {kind!r} in {api_version!r}")

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """A snapshot of the stored objects (copies), in key order."""
        rtype = self._type(plural)
        return [self.api.output(rtype, o)
                for o in self.store.items(rtype.group_resource, namespace)]

    def get(self, plural: str, name: str, namespace: str | None = None) -> Obj | None:
        rtype = self._type(plural)
        found = self.store.get(rtype.group_resource, namespace, name)
        return self.api.output(rtype, found) if found is not None else None

    async def _create_object(self, obj: Obj) -> Obj:
        rtype = self._type_of(obj)
        namespace = (obj.get("metadata") or {}).get("namespace") if rtype.namespaced else None
        if rtype.namespaced and not namespace:
            raise bad_request(f"{rtype.kind} needs metadata.namespace")
        reply = await self.api.create(Target(rtype, namespace, None), obj, {})
        return dict(reply.body)

    def create(self, obj: Obj) -> Obj:
        """Create as a POST would (defaulting, validation, admission); the stored object."""
        return self._run(self._create_object(copy.deepcopy(obj)))

    def set_status(self, plural: str, name: str, status: Obj,
                   namespace: str | None = None) -> Obj:
        """Replace an object's status (through `/status` where that is a subresource)."""
        rtype = self._type(plural)
        sub = "status" if rtype.has_status else ""
        target = Target(rtype, namespace if rtype.namespaced else None, name, sub)
        patch = json.dumps([{"op": "add", "path": "/status", "value": status}]).encode()

        async def write() -> Obj:  # one write, so watchers never see a status half replaced
            reply = await self.api.patch(target, patch, "application/json-patch+json", {})
            return dict(reply.body)

        return self._run(write())

    def set_pod_status(self, namespace: str, name: str, *, phase: str = "Running",
                       pod_ip: str = "127.0.0.1", ready: bool = True) -> Obj:
        """What a kubelet would report for a pod whose containers all started."""
        pod = self.get("pods", name, namespace)
        if pod is None:
            raise KeyError(f"pod {namespace}/{name} does not exist")
        stamp = now()
        state = "True" if ready else "False"
        conditions = [{"type": kind, "status": "True" if kind in ("PodScheduled", "Initialized")
                       else state, "lastProbeTime": None, "lastTransitionTime": stamp}
                      for kind in ("PodReadyToStartContainers", "Initialized", "Ready",
                                   "ContainersReady", "PodScheduled")]
        containers = [{"name": c["name"], "image": c.get("image", ""),
                       "imageID": f"{c.get('image', '')}@sha256:{'0' * 64}",
                       "containerID": f"containerd://{c['name']}", "ready": ready,
                       "started": phase == "Running", "restartCount": 0,
                       "state": {"running": {"startedAt": stamp}} if phase == "Running"
                       else {"waiting": {"reason": "ContainerCreating"}}}
                      for c in (pod.get("spec") or {}).get("containers") or []]
        status = {"phase": phase, "conditions": conditions, "hostIP": "127.0.0.1",
                  "hostIPs": [{"ip": "127.0.0.1"}], "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                  "startTime": stamp, "qosClass": "BestEffort", "containerStatuses": containers,
                  "observedGeneration": pod["metadata"].get("generation", 1)}
        return self.set_status("pods", name, status, namespace)

    def set_workload_ready(self, plural: str, name: str, namespace: str) -> Obj:
        """What the deployment or statefulset controller reports once every replica is ready.

        There are no controllers here: a test says when a workload the operator made is up.
        """
        workload = self.get(plural, name, namespace)
        if workload is None:
            raise KeyError(f"{plural} {namespace}/{name} does not exist")
        replicas = int((workload.get("spec") or {}).get("replicas", 1))
        stamp = now()
        status: Obj = {
            "observedGeneration": workload["metadata"].get("generation", 1),
            "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "updatedReplicas": replicas,
        }
        if workload["kind"] == "Deployment":
            status["conditions"] = [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "lastUpdateTime": stamp, "lastTransitionTime": stamp},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "lastUpdateTime": stamp, "lastTransitionTime": stamp}]
        else:
            revision = f"{name}-emulated"
            status.update(currentReplicas=replicas, currentRevision=revision,
                          updateRevision=revision, collisionCount=0)
        return self.set_status(plural, name, status, namespace)

    def register_pod(self, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                     ports: Iterable[int] = (), owner: Obj | None = None,
                     containers: list[Obj] | None = None, pod_ip: str = "127.0.0.1") -> Obj:
        """Create a pod and mark it Running and Ready at `pod_ip`.

        This is how a test registers a loopback worker process as a pod of the cluster; the
        create goes through admission webhooks like any other.
        """
        pod: Obj = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": {"containers": containers or [{
                "name": "main", "image": "sealtrail:test",
                "ports": [{"containerPort": int(p)} for p in ports]}]},
        }
        if owner is not None:
            pod["metadata"]["ownerReferences"] = [{
                "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True}]
        self.create(pod)
        return self.set_pod_status(namespace, name, pod_ip=pod_ip)

    def wait_for(self, plural: str, name: str, predicate: Callable[[Obj | None], bool],
                 namespace: str | None = None, timeout: float = 10.0) -> Obj | None:
        """Poll until `predicate(object or None)` holds; the object it held for."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.get(plural, name, namespace)
            if predicate(found):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{plural} {namespace}/{name} never satisfied the condition; "
                                   f"last seen: {found}")
            time.sleep(0.05)

    def compact(self) -> None:
        """Drop the watch history, as an etcd compaction would.

        Resuming a watch from any older resourceVersion then gets 410 Expired.
        """
        self.store.compact()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig for this emulator: plain HTTP on loopback, no credentials."""
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator",
                                                          "user": "emulator",
                                                          "namespace": namespace}}],
            "current-context": "emulator",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path


def _load_documents(paths: Iterable[Path]) -> list[Obj]:
    """Every YAML/JSON document in the given files and directories.

    In a directory: *.yaml, *.yml and *.json, in name order.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        else:
            files.append(path)
    documents: list[Obj] = []
    for file in files:
        with file.open(encoding="utf-8") as stream:
            documents += [d for d in yaml.safe_load_all(stream) if d]
    return documents


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT: `python -m tests.kube.emulator --crds DIR --port N`."""
    parser = argparse.ArgumentParser(prog="python -m tests.kube.emulator",
                                     description="Serve the Kubernetes API emulator.")
    parser.add_argument("--crds", action="append", type=Path, default=[],
                        help="a CRD file or a directory of them (repeatable)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--kubeconfig", type=Path, help="also write a kubeconfig here")
    parser.add_argument("--log", type=Path, help="append a request log to this file")
    parser.add_argument("--verbose", action="store_true", help="debug logging on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    emulator = KubeEmulator(args.crds, port=args.port, log_path=args.log).start()
    try:
        if args.kubeconfig:
            emulator.write_kubeconfig(args.kubeconfig)
        print(emulator.url, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        with contextlib.suppress(RuntimeError):
            emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
