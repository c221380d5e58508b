"""The node of the tests' real control plane: binds pods, runs them, reports their status.

kube-apiserver and kube-controller-manager are real (tests/control_plane.py); there is no
container engine here, so this plays the scheduler and the kubelet for one Node:

* **Scheduling.** It registers a Node (`sealtrail-node`, Ready, never heartbeating: the
  control plane runs without node lifecycle) and binds every pending pod to it through the
  `binding` subresource, as kube-scheduler would.
* **Containers.** A container whose image is a `sealtrail` image runs **from the root
  filesystem of the image built from the repository's Dockerfile** under bubblewrap
  (tests/container.py): its entrypoint, command and args, the pod's uid and gid, a read-only
  root, the pod's env, and the volumes at their mount paths. Any other image is an application
  the node does not have; a stand-in process (tests/stand_in_app.py) takes its place, with its
  env, and posts events to the worker if told to (`STAND_IN_EVENTS`).
* **Volumes.** `configMap`, `secret` and `projected` volumes (service-account token from the
  TokenRequest API, `kube-root-ca.crt`, downward API) are written the way the kubelet's atomic
  writer does it: files in a timestamped directory, `..data` a symlink to it swapped at once
  when the source changes (polled), each key a symlink through `..data`. `emptyDir` volumes are
  directories.
* **Network.** Each pod gets a network namespace of its own (its containers share it, so a
  sidecar on 127.0.0.1 is the app's localhost), with an address of the pod network on a veth
  pair joined to the node's bridge (scripts/netns.sh). In-cluster clients get
  `KUBERNETES_SERVICE_HOST`/`PORT` of the real API server on the bridge's address, which is
  where kube-proxy would route the `kubernetes` Service. Nothing in a pod's spec is rewritten.
* **Lifecycle.** Init containers run in order (a sidecar, `restartPolicy: Always`, is started
  and waited for by its startup probe, then left running); then the app containers. Readiness
  probes (httpGet) decide `Ready`; a container that exits is restarted with a growing back-off
  (`restartCount`). Deletion follows the kubelet's order (kuberuntime's `killContainer` with
  its termination ordering): every container's preStop hook (`sleep` or `httpGet`) starts at
  once, sidecars' included; an app container then gets SIGTERM; a sidecar waits for its turn
  (every app container, and every sidecar declared after it, exited) and then gets SIGTERM;
  each is SIGKILLed when the pod's grace, counted from the start, is spent (but never sooner
  than 2 s after its SIGTERM); then the pod object is removed (`gracePeriodSeconds: 0`).
* **Eviction.** An `emptyDir` with a `sizeLimit` is measured as the kubelet's eviction manager
  does (the blocks its files take); past the limit the whole pod is evicted at once: every
  container SIGKILLed, no preStop, no grace, the pod `Failed` with reason `Evicted` and the
  kubelet's message, never restarted. Its controller makes a new pod; the volume's data is gone.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.control_plane import POD_CIDR, ControlPlane

__all__ = ["FakeKubelet", "RunningPod", "swap_in"]

ROOT = Path(__file__).resolve().parent.parent
NODE_NAME = "sealtrail-node"
WORKER_CONTAINER = "sealtrail-worker"
_SEALTRAIL_IMAGE = re.compile(r"(^|/)sealtrail(:[\w.-]+)?(@sha256:[0-9a-f]+)?$")
#: The bridge's address (scripts/netns.sh): the pods' gateway, where the API server listens.
GATEWAY = str(POD_CIDR.network_address + 1)
BRIDGE = "sealtrail0"


class Process(Protocol):
    """What the node needs of a running container, whatever runs it."""

    pid: int

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


@dataclass
class RunningContainer:
    spec: dict[str, Any]
    sidecar: bool = False
    init: bool = False
    process: Process | None = None
    restarts: int = 0
    next_start: float = 0.0
    ready: bool = False
    started: bool = False
    exit_code: int | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])


@dataclass
class RunningPod:
    """One pod bound to this node."""

    namespace: str
    name: str
    uid: str
    ip: str
    root: Path
    body: dict[str, Any]
    containers: list[RunningContainer] = field(default_factory=list)
    projected: dict[str, str] = field(default_factory=dict)  # volume -> source versions
    volumes: dict[str, Path] = field(default_factory=dict)  # volume name -> its directory
    reported: str = ""
    terminating: bool = False
    evicted: str | None = None  # the eviction message, once evicted

    @property
    def netns(self) -> str:
        return f"st-{self.uid[:8]}"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    def container(self, name: str = WORKER_CONTAINER) -> RunningContainer:
        return next(c for c in self.containers if c.name == name)

    @property
    def process(self) -> Process | None:
        """The worker's process (the container tests most often look at)."""
        return self.container().process

    def log_path(self, name: str = WORKER_CONTAINER) -> Path:
        return self.root / "logs" / f"{name}.log"

    def log(self, name: str = WORKER_CONTAINER) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def port(self, name: str, container: str = WORKER_CONTAINER) -> int:
        return next(int(p["containerPort"]) for p in self.container(container).spec.get(
            "ports", []) if p.get("name") == name)

    def url(self, port_name: str = "st-ingest") -> str:
        return f"http://{self.ip}:{self.port(port_name)}"

    @property
    def ready(self) -> bool:
        regular = [c for c in self.containers if not c.init or c.sidecar]
        return bool(regular) and all(c.ready for c in regular)


class FakeKubelet:
    """Bind pods to one Node and run them, until stopped."""

    def __init__(self, plane: ControlPlane, directory: Path, subnet: str,
                 image_loader: Callable[[], Any] | None = None) -> None:
        self.plane = plane
        self.api = plane.client(timeout=15)
        self.directory = directory
        self.pods: dict[str, RunningPod] = {}
        self.errors: list[str] = []
        self._image_loader = image_loader
        self._image: Any = None
        self.subnet = subnet
        network = ipaddress.ip_network(subnet)
        if not network.subnet_of(POD_CIDR):  # type: ignore[arg-type]
            raise ValueError(f"{subnet} is not part of the pod network {POD_CIDR}")
        # The subnet's first address stays unused, like a node's; an address is free again
        # once its pod's network namespace is gone.
        self._free_addresses = [str(address) for address in network.hosts()][1:]
        self.host_ip = GATEWAY
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-kubelet")
        self._terminations: dict[str, threading.Thread] = {}
        self._last_state = ""

    # -- public ----------------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for pod in list(self.pods.values()):
            for container in reversed(pod.containers):
                _stop_process(container.process, grace=5)
        self.api.close()

    def pod(self, namespace: str, name: str) -> RunningPod | None:
        return self.pods.get(f"{namespace}/{name}")

    def wait_ready(self, namespace: str, name: str, timeout: float = 60) -> RunningPod:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = self.pod(namespace, name)
            if pod is not None and pod.ready:
                return pod
            time.sleep(0.1)
        pod = self.pod(namespace, name)
        logs = "".join(f"\n--- {c.name} ---\n{pod.log(c.name)[-3000:]}"
                       for c in pod.containers) if pod else " never started"
        raise AssertionError(f"pod {namespace}/{name} not ready after {timeout} s; "
                             f"node errors {self.errors[-5:]}; logs:{logs}")

    # -- the node --------------------------------------------------------------------------

    def _register_node(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE_NAME, "labels": {
                    "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64"}},
                "spec": {"podCIDR": self.subnet}}
        answer = self.api.post("/api/v1/nodes", json=node)
        if answer.status_code not in (201, 409):
            answer.raise_for_status()
        now = _now()
        status = {"status": {
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "250",
                         "ephemeral-storage": "50Gi"},
            "allocatable": {"cpu": "2", "memory": "23Gi", "pods": "250",
                            "ephemeral-storage": "45Gi"},
            "addresses": [{"type": "InternalIP", "address": self.host_ip},
                          {"type": "Hostname", "address": NODE_NAME}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "the tests' fake kubelet", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "v1.37.2", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "bubblewrap",
                         "kernelVersion": os.uname().release, "osImage": "sealtrail tests",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": ""}}}
        self.api.patch(f"/api/v1/nodes/{NODE_NAME}/status", json=status,
                       headers={"Content-Type": "application/merge-patch+json"}
                       ).raise_for_status()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._sync()
            except Exception as error:  # the node outlives any one pod's failure
                self.errors.append(f"{type(error).__name__}: {error}")

    def _sync(self) -> None:
        listing = self.api.get("/api/v1/pods")
        listing.raise_for_status()
        seen = set()
        for body in listing.json().get("items", []):
            meta, spec = body["metadata"], body["spec"]
            if not spec.get("nodeName"):
                if not meta.get("deletionTimestamp"):
                    self._bind(body)
                continue
            if spec["nodeName"] == NODE_NAME:
                seen.add(f"{meta['namespace']}/{meta['name']}")
                self._sync_pod(body)
        for key in set(self.pods) - seen:
            pod = self.pods.pop(key)
            if key not in self._terminations:
                self._finish(pod, grace=0)  # force-deleted: no grace at all
        self._write_state()

    def _sync_pod(self, body: dict[str, Any]) -> None:
        """Bring one pod bound here to what its object says."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        pod = self.pods.get(key)
        if pod is not None and pod.uid != meta["uid"]:
            self._finish(pod, grace=0)
            pod = None
        if pod is None:
            if (body.get("status", {}).get("phase") in ("Succeeded", "Failed")
                    or meta.get("deletionTimestamp") or key in self._terminations):
                return  # finished, or being (or already) stopped
            pod = self._admit(body)
            self.pods[key] = pod
        pod.body = body
        if pod.evicted is not None:
            return  # stays Failed until its object is removed
        if meta.get("deletionTimestamp"):
            self._begin_termination(pod)
            return
        if self._over_size_limit(pod):
            return
        self._project(pod)
        self._advance(pod)
        self._report(pod)

    def _write_state(self) -> None:
        """What runs where, for tests in other processes (tests/node.py reads it)."""
        state = {key: {"uid": pod.uid, "ip": pod.ip, "ready": pod.ready, "root": str(pod.root),
                       "terminating": pod.terminating,
                       "containers": {c.name: {"pid": c.process.pid if c.process else None,
                                               "restarts": c.restarts, "ready": c.ready,
                                               "ports": {p["name"]: p["containerPort"]
                                                         for p in c.spec.get("ports", [])
                                                         if "name" in p}}
                                      for c in pod.containers}}
                 for key, pod in list(self.pods.items())}
        text = json.dumps(state, sort_keys=True)
        if text != self._last_state:
            fresh = self.directory / "pods.json.tmp"
            fresh.write_text(text)
            fresh.replace(self.directory / "pods.json")
            self._last_state = text

    # -- pods ------------------------------------------------------------------------------

    def _bind(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        answer = self.api.post(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
            json={"apiVersion": "v1", "kind": "Binding",
                  "metadata": {"name": meta["name"], "uid": meta["uid"]},
                  "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME}})
        if answer.status_code not in (201, 409, 404):
            self.errors.append(f"binding {meta['namespace']}/{meta['name']}: "
                               f"{answer.status_code} {answer.text[:300]}")

    def _admit(self, body: dict[str, Any]) -> RunningPod:
        meta, spec = body["metadata"], body["spec"]
        root = self.directory / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        (root / "logs").mkdir(parents=True)
        if not self._free_addresses:
            raise OSError(f"no address left in {self.subnet} for {meta['name']}")
        pod = RunningPod(meta["namespace"], meta["name"], meta["uid"],
                         self._free_addresses.pop(0), root, body)
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        for volume in spec.get("volumes", []):
            directory = root / "volumes" / volume["name"]
            directory.mkdir(parents=True)
            directory.chmod(0o777 if "emptyDir" in volume else 0o755)
            if fs_group is not None and "persistentVolumeClaim" in volume:
                # The kubelet's volume ownership management: the group, group-writable,
                # setgid (a claim is written by the pod's fsGroup, whatever its uid).
                os.chown(directory, 0, int(fs_group))
                directory.chmod(0o2775)
            pod.volumes[volume["name"]] = directory
        _pod_network(pod)
        pod.containers = [
            *(RunningContainer(c, sidecar=c.get("restartPolicy") == "Always", init=True)
              for c in spec.get("initContainers", [])),
            *(RunningContainer(c) for c in spec.get("containers", []))]
        return pod

    def _advance(self, pod: RunningPod) -> None:
        """Start what may start now, restart what exited, and probe."""
        now = time.monotonic()
        for container in pod.containers:
            process = container.process
            if process is not None and (code := process.poll()) is not None:
                container.exit_code, container.process = code, None
                container.ready = False
                if container.init and not container.sidecar and code == 0:
                    container.started = True
                    continue
                container.restarts += 1
                container.next_start = now + min(10.0, 0.5 * 2 ** container.restarts)
            if container.init and not container.sidecar and container.exit_code == 0:
                continue  # an init container that finished stays finished
            if container.process is None:
                if now < container.next_start:
                    if container.init:
                        return
                    continue
                self._start_container(pod, container)
            container.ready = self._probe(pod, container)
            if container.init and (not container.sidecar or not container.ready):
                return  # init containers one at a time; a sidecar must be up first

    def _probe(self, pod: RunningPod, container: RunningContainer) -> bool:
        probe = container.spec.get("readinessProbe") or container.spec.get("startupProbe")
        if probe is None or "httpGet" not in probe:
            return container.process is not None
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(int(p["containerPort"]) for p in container.spec.get("ports", [])
                        if p.get("name") == port)
        try:
            answer = httpx.get(f"http://{pod.ip}:{port}{get.get('path', '/')}", timeout=1)
        except httpx.HTTPError:
            return False
        return 200 <= answer.status_code < 400

    def _report(self, pod: RunningPod) -> None:
        def state(container: RunningContainer) -> dict[str, Any]:
            if container.process is not None:
                return {"running": {"startedAt": _now()}}
            if container.exit_code is not None:
                return {"terminated": {"exitCode": container.exit_code,
                                       "reason": "Completed" if container.exit_code == 0
                                       else "Error"}}
            return {"waiting": {"reason": "PodInitializing"}}

        def statuses(*, init: bool) -> list[dict[str, Any]]:
            return [{"name": c.name, "image": c.spec.get("image", ""), "imageID": "",
                     "ready": c.ready, "started": c.process is not None,
                     "restartCount": c.restarts, "state": state(c)}
                    for c in pod.containers if c.init == init]

        ready = "True" if pod.ready else "False"
        initialized = "True" if all(c.started or c.ready for c in pod.containers
                                    if c.init) else "False"
        summary = f"{ready}{initialized}" + "".join(
            f"{c.name}{c.ready}{c.restarts}{c.process is not None}" for c in pod.containers)
        if summary == pod.reported:
            return
        now = _now()
        body = {"status": {
            "phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
            "hostIP": self.host_ip, "hostIPs": [{"ip": self.host_ip}],
            "startTime": pod.body.get("status", {}).get("startTime") or now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": initialized, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now}],
            "initContainerStatuses": statuses(init=True),
            "containerStatuses": statuses(init=False)}}
        answer = self.api.patch(
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status", json=body,
            headers={"Content-Type": "application/merge-patch+json"})
        if answer.status_code == 200:
            pod.reported = summary
        elif answer.status_code != 404:
            answer.raise_for_status()

    # -- containers ------------------------------------------------------------------------

    def _start_container(self, pod: RunningPod, container: RunningContainer) -> None:
        spec = container.spec
        env = self._environment(pod, spec)
        log = pod.log_path(container.name)
        if _SEALTRAIL_IMAGE.search(spec.get("image", "")):
            container.process = self._run_image(pod, spec, env, log)
        else:
            with log.open("ab") as out:
                container.process = subprocess.Popen(
                    ["nsenter", f"--net={pod.netns_path}", sys.executable,
                     str(ROOT / "tests" / "stand_in_app.py")],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
                         "PYTHONUNBUFFERED": "1", **env},
                    cwd=pod.root)
        container.started = True

    def _run_image(self, pod: RunningPod, spec: dict[str, Any], env: dict[str, str],
                   log: Path) -> Process:
        from tests import container as runtime  # noqa: PLC0415 - builds the image on first use

        if self._image is None:
            self._image = self._image_loader() if self._image_loader else runtime.image()
        image = self._image
        argv = [*(spec.get("command") or image.entrypoint),
                *(spec.get("args") if spec.get("command") or spec.get("args") else image.cmd)]
        context = {**(pod.body["spec"].get("securityContext") or {}),
                   **(spec.get("securityContext") or {})}
        default_uid, _, default_gid = (image.user or "0:0").partition(":")
        uid = int(context.get("runAsUser", default_uid or 0))
        gid = int(context.get("runAsGroup", default_gid or uid))
        mounts = []
        for mount in sorted(spec.get("volumeMounts", []), key=lambda m: m["mountPath"]):
            source = pod.volumes[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
            mounts.append(runtime.Mount(source, mount["mountPath"],
                                        bool(mount.get("readOnly"))))
        return runtime.start(image, argv=argv, env=env, mounts=mounts, uid=uid, gid=gid,
                             log=log, workdir=spec.get("workingDir"), netns=pod.netns_path)

    def _environment(self, pod: RunningPod, spec: dict[str, Any]) -> dict[str, str]:
        meta = pod.body["metadata"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "spec.nodeName": NODE_NAME,
                  "spec.serviceAccountName": pod.body["spec"].get("serviceAccountName", ""),
                  "status.podIP": pod.ip, "status.hostIP": self.host_ip}
        env = {"KUBERNETES_SERVICE_HOST": GATEWAY,
               "KUBERNETES_SERVICE_PORT": str(self.plane.api_port),
               "HOSTNAME": meta["name"]}
        for item in spec.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            source = item.get("valueFrom", {})
            if "fieldRef" in source:
                env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                kind, ref = (("secrets", source["secretKeyRef"]) if "secretKeyRef" in source
                             else ("configmaps", source["configMapKeyRef"]))
                found = self.api.get(f"/api/v1/namespaces/{pod.namespace}/{kind}/{ref['name']}")
                found.raise_for_status()
                value = (found.json().get("data") or {})[ref["key"]]
                env[item["name"]] = (base64.b64decode(value).decode() if kind == "secrets"
                                     else value)
        return env

    # -- volumes ---------------------------------------------------------------------------

    def _project(self, pod: RunningPod) -> None:
        for volume in pod.body["spec"].get("volumes", []):
            if "configMap" in volume:
                sources = [{"configMap": volume["configMap"]}]
            elif "secret" in volume:
                secret = dict(volume["secret"])
                secret["name"] = secret.pop("secretName")
                sources = [{"secret": secret}]
            elif "projected" in volume:
                sources = volume["projected"]["sources"]
            else:
                continue
            files, versions = self._render_sources(pod, sources)
            if files is None or pod.projected.get(volume["name"]) == versions:
                continue
            swap_in(pod.volumes[volume["name"]], files)
            pod.projected[volume["name"]] = versions

    def _render_sources(self, pod: RunningPod, sources: list[dict[str, Any]]
                        ) -> tuple[dict[str, bytes] | None, str]:
        """The files of a volume's sources and their versions; None while one is missing."""
        files: dict[str, bytes] = {}
        versions: list[str] = []
        for source in sources:
            if "configMap" in source or "secret" in source:
                found = self._object_files(pod, source)
                if found is None:
                    return None, ""  # the kubelet waits for it (ContainerCreating)
                files.update(found[0])
                versions.append(found[1])
            elif "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                key = f"token:{pod.uid}"
                if key not in pod.projected:
                    pod.projected[key] = self._token(pod, token)
                files[token["path"]] = pod.projected[key].encode()
                versions.append(key)
            elif "downwardAPI" in source:
                fields = {"metadata.namespace": pod.namespace, "metadata.name": pod.name,
                          "metadata.uid": pod.uid}
                files.update({item["path"]: fields[item["fieldRef"]["fieldPath"]].encode()
                              for item in source["downwardAPI"]["items"]})
        return files, ",".join(versions)

    def _object_files(self, pod: RunningPod, source: dict[str, Any]
                      ) -> tuple[dict[str, bytes], str] | None:
        """A ConfigMap's or Secret's keys as files (its `items` pick and rename them)."""
        kind = "configmaps" if "configMap" in source else "secrets"
        ref = source.get("configMap") or source["secret"]
        found = self.api.get(f"/api/v1/namespaces/{pod.namespace}/{kind}/{ref['name']}")
        if found.status_code == 404:
            return ({}, "optional") if ref.get("optional") else None
        found.raise_for_status()
        obj = found.json()
        data = {key: (value.encode() if kind == "configmaps" else base64.b64decode(value))
                for key, value in (obj.get("data") or {}).items()}
        items = ref.get("items")
        files = dict(data) if items is None else {
            item["path"]: data[item["key"]] for item in items}
        return files, str(obj["metadata"]["resourceVersion"])

    def _token(self, pod: RunningPod, token: dict[str, Any]) -> str:
        account = pod.body["spec"].get("serviceAccountName") or "default"
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": int(token.get("expirationSeconds", 3607)),
                            "audiences": [token["audience"]] if token.get("audience") else [],
                            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                               "name": pod.name, "uid": pod.uid}}}
        answer = self.api.post(
            f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{account}/token", json=request)
        answer.raise_for_status()
        return str(answer.json()["status"]["token"])

    def _event(self, what: str, pod: RunningPod, **details: str) -> None:
        """Append what the node did to `events.jsonl`, for tests in other processes."""
        line = json.dumps({"event": what, "pod": f"{pod.namespace}/{pod.name}", "uid": pod.uid,
                           "time": time.time(), **details}, sort_keys=True)
        with self._lock, (self.directory / "events.jsonl").open("a") as out:
            out.write(line + "\n")

    # -- eviction --------------------------------------------------------------------------

    def _over_size_limit(self, pod: RunningPod) -> bool:
        """Evict the pod if an `emptyDir` holds more than its `sizeLimit`; True if it did.

        The eviction manager's `emptyDirLimitEviction`, with its message.
        """
        for volume in pod.body["spec"].get("volumes", []):
            limit = (volume.get("emptyDir") or {}).get("sizeLimit")
            if limit is None or volume["name"] not in pod.volumes:
                continue
            used = _du(pod.volumes[volume["name"]])
            if used > _quantity(limit):
                name = volume["name"]
                self._evict(pod, f'Usage of EmptyDir volume "{name}" exceeds the limit '
                                 f'"{limit}". ')
                return True
        return False

    def _evict(self, pod: RunningPod, message: str) -> None:
        pod.evicted = message
        pod.terminating = True
        self._event("evicted", pod, message=message.strip())
        for container in pod.containers:
            _signal(container.process, signal.SIGKILL)
        for container in pod.containers:
            _wait_all([container.process], time.monotonic() + 10)
            container.ready = False
        now = _now()
        body = {"status": {
            "phase": "Failed", "reason": "Evicted", "message": message,
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
                {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                 "message": message, "lastTransitionTime": now}]}}
        answer = self.api.patch(
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status", json=body,
            headers={"Content-Type": "application/merge-patch+json"})
        if answer.status_code not in (200, 404):
            self.errors.append(f"evicting {pod.namespace}/{pod.name}: {answer.status_code}")

    # -- termination -----------------------------------------------------------------------

    def _begin_termination(self, pod: RunningPod) -> None:
        key = f"{pod.namespace}/{pod.name}"
        if pod.terminating:
            return
        pod.terminating = True
        grace = pod.body["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod.body["spec"].get("terminationGracePeriodSeconds", 30)
        thread = threading.Thread(target=self._terminate, args=(pod, float(grace)),
                                  daemon=True, name=f"terminate-{key}")
        self._terminations[key] = thread
        thread.start()

    def _terminate(self, pod: RunningPod, grace: float) -> None:
        key = f"{pod.namespace}/{pod.name}"
        try:
            self._finish(pod, grace)
            answer = self.api.request(
                "DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                json={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                      "preconditions": {"uid": pod.uid}})
            if answer.status_code not in (200, 404, 409):
                self.errors.append(f"removing {key}: {answer.status_code} {answer.text[:200]}")
        except (httpx.HTTPError, OSError) as error:
            self.errors.append(f"terminating {key}: {error}")
        finally:
            with self._lock:
                self._terminations.pop(key, None)
                if (found := self.pods.get(key)) is not None and found.uid == pod.uid:
                    self.pods.pop(key, None)

    def _finish(self, pod: RunningPod, grace: float) -> None:
        """Stop every container as the kubelet's `killContainer` does, then free the network.

        One thread per container, all starting now: its preStop hook; a sidecar then waits for
        its turn; SIGTERM; SIGKILL when the pod's grace (from now) is spent, or 2 s after the
        SIGTERM if that is later. `grace` 0 (a forced deletion): SIGKILL at once.
        """
        start = time.monotonic()
        self._event("terminating", pod, grace=str(grace))
        apps = [c for c in pod.containers if not c.init]
        sidecars = [c for c in pod.containers if c.sidecar]
        if grace > 0:
            threads = [threading.Thread(target=self._stop_container,
                                        args=(pod, c, start + grace, apps, sidecars),
                                        daemon=True, name=f"stop-{pod.name}-{c.name}")
                       for c in [*apps, *sidecars]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(grace + 15)
        for container in pod.containers:
            _signal(container.process, signal.SIGKILL)
            _wait_all([container.process], time.monotonic() + 10)
        deleted = subprocess.run(["ip", "netns", "delete", pod.netns], capture_output=True,
                                 check=False)
        if deleted.returncode == 0:
            with self._lock:
                self._free_addresses.append(pod.ip)

    def _stop_container(self, pod: RunningPod, container: RunningContainer, deadline: float,
                        apps: list[RunningContainer], sidecars: list[RunningContainer]) -> None:
        self._pre_stop(pod, container, deadline)
        if container.sidecar:
            # Its turn: every app container gone, and every sidecar declared after it.
            later = sidecars[sidecars.index(container) + 1:]
            _wait_all([c.process for c in [*apps, *later]], deadline)
        _signal(container.process, signal.SIGTERM)
        self._event("sigterm", pod, container=container.name)
        _wait_all([container.process], max(deadline, time.monotonic() + _MINIMUM_GRACE))
        if container.process is not None and container.process.poll() is None:
            self._event("sigkill", pod, container=container.name)
        _signal(container.process, signal.SIGKILL)

    def _pre_stop(self, pod: RunningPod, container: RunningContainer, deadline: float) -> None:
        """Run the container's preStop hook, if any, within what is left of the grace."""
        hook = (container.spec.get("lifecycle") or {}).get("preStop") or {}
        left = deadline - time.monotonic()
        if left <= 0 or container.process is None:
            return
        if "sleep" in hook:
            time.sleep(min(float(hook["sleep"]["seconds"]), left))
        elif "httpGet" in hook:
            get = hook["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = pod.port(port, container.name)
            try:
                httpx.get(f"http://{pod.ip}:{port}{get.get('path', '/')}", timeout=left)
            except httpx.HTTPError as error:
                self.errors.append(f"preStop of {pod.name}/{container.name}: {error}")
        elif hook:
            self.errors.append(f"preStop of {pod.name}/{container.name}: only sleep and "
                               "httpGet hooks run on this node")


def main() -> int:
    """`python -m tests.fake_kubelet`: the node process ControlPlane.start(node=...) runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plane", type=Path, required=True, help="the control plane's directory")
    parser.add_argument("--directory", type=Path, required=True, help="the node's directory")
    parser.add_argument("--subnet", required=True, help="this node's part of the pod network")
    parser.add_argument("--image", type=Path, required=True,
                        help="the built sealtrail image (scripts/build_image.sh's output)")
    args = parser.parse_args()
    from tests import container  # noqa: PLC0415 - bubblewrap's runner, used by the node only

    built = container.load_image(args.image)
    kubelet = FakeKubelet(ControlPlane.attach(args.plane), args.directory, args.subnet,
                          image_loader=lambda: built)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    kubelet.start()
    print(f"fake kubelet: node {NODE_NAME} up, pods in {args.subnet}", flush=True)
    while not stopping.wait(1):
        for error in kubelet.errors[:]:
            print(f"fake kubelet: {error}", flush=True)
        kubelet.errors.clear()
    kubelet.stop()
    print("fake kubelet: stopped", flush=True)
    return 0


def _pod_network(pod: RunningPod) -> None:
    """The pod's own network namespace: lo, and eth0 on the node's bridge with the pod IP."""
    veth = f"v{pod.uid[:12]}"
    steps = [["ip", "netns", "add", pod.netns],
             ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns",
              pod.netns],
             ["ip", "link", "set", veth, "master", BRIDGE, "up"],
             ["ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/{POD_CIDR.prefixlen}", "dev",
              "eth0"],
             ["ip", "-n", pod.netns, "link", "set", "eth0", "up"],
             ["ip", "-n", pod.netns, "link", "set", "lo", "up"],
             ["ip", "-n", pod.netns, "route", "add", "default", "via", GATEWAY]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"pod network for {pod.namespace}/{pod.name}: {' '.join(step)}: "
                          f"{done.stderr.strip()}")


#: The kubelet's `minimumGracePeriodInSeconds`: what a container gets after its SIGTERM even
#: when the pod's grace is spent.
_MINIMUM_GRACE = 2.0
_SUFFIXES = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
             "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def _quantity(value: str) -> float:
    """A Kubernetes quantity of bytes (`16Mi`, `1G`, `500000`)."""
    match = re.fullmatch(r"([0-9.]+)([KMGT]i?|k)?", str(value))
    if match is None:
        raise ValueError(f"not a quantity of bytes: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def _du(directory: Path) -> int:
    """Bytes the files under `directory` take (allocated blocks), as the kubelet measures."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512  # noqa: PTH118
    return total


def _signal(process: Process | None, signum: int) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if signum == signal.SIGKILL:
            process.kill()
        else:
            process.terminate()


def _wait_all(processes: list[Process | None], deadline: float) -> None:
    while time.monotonic() < deadline:
        if all(p is None or p.poll() is not None for p in processes):
            return
        time.sleep(0.05)


def _stop_process(process: Process | None, grace: float) -> None:
    _signal(process, signal.SIGTERM)
    _wait_all([process], time.monotonic() + grace)
    _signal(process, signal.SIGKILL)
    _wait_all([process], time.monotonic() + 5)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def swap_in(directory: Path, files: dict[str, bytes]) -> None:
    """Replace the files of a projected volume at once, as the kubelet's atomic writer does."""
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    fresh = directory / stamp
    fresh.mkdir()
    for key, content in files.items():
        target = fresh / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o644)
    fresh.chmod(0o755)
    link = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(stamp)
    old = (directory / "..data").resolve() if (directory / "..data").is_symlink() else None
    link.replace(directory / "..data")
    for key in {key.split("/", 1)[0] for key in files}:
        target = directory / key
        if not target.is_symlink():
            target.symlink_to(Path("..data") / key)
    if old is not None and old.name != stamp:
        shutil.rmtree(old, ignore_errors=True)



if __name__ == "__main__":
    sys.exit(main())
