"""A stand-in kubelet for end-to-end tests: runs the worker containers of pods as local processes.

The Kubernetes API emulator (tests/kube) stores pods but runs nothing. This plays the node's
part for pods that have a `sealtrail-worker` container (a native sidecar or a collector's), so
the operator's e2e tests see real workers, exactly as rendered by the operator:

* **Volumes.** Each `configMap` and `secret` volume is projected into a directory the way the
  kubelet does it: files under a timestamped directory, `..data` a symlink to it, and each key a
  symlink through `..data`, swapped atomically when the object changes (polled every 0.3 s).
  That is what the worker's live reload of its config and credentials must survive. `emptyDir`
  volumes are plain directories.
* **Mount and network namespaces.** A container sees its mounts at absolute paths
  (`/etc/sealtrail/...`) and has its own loopback. A local process has neither, so this
  kubelet gives each pod its own loopback address (127.0.0.2, 127.0.0.3, ...) as its pod IP,
  and translates the worker's config file as it projects it: every volume's `mountPath` becomes
  the pod's local directory, and the listen addresses (`listen: 127.0.0.1:`/`0.0.0.0:`) become
  the pod IP. The mapping is printed in the pod's log. Nothing else of the config is changed.
* **Status.** Once the worker answers `/readyz` on its admin port, the pod's status is written
  through the API's `/status` subresource (`phase: Running`, `podIP`, `Ready`), which is what
  the operator reads to find the worker.
* A pod deleted from the API gets SIGTERM (its own pid), then SIGKILL after 20 s.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.worker_process import ROOT

__all__ = ["FakeKubelet", "RunningPod"]

WORKER_CONTAINER = "sealtrail-worker"


@dataclass
class RunningPod:
    """One pod whose worker runs here."""

    namespace: str
    name: str
    uid: str
    ip: str
    root: Path
    mounts: dict[str, Path]  # mountPath -> local directory
    volumes: dict[str, dict[str, Any]]  # volume name -> its spec
    container: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    projected: dict[str, str] = field(default_factory=dict)  # volume -> resourceVersion
    ready: bool = False

    @property
    def log_path(self) -> Path:
        return self.root / "worker.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def port(self, name: str) -> int:
        return next(int(p["containerPort"]) for p in self.container.get("ports", [])
                    if p.get("name") == name)

    def url(self, port_name: str = "st-ingest") -> str:
        return f"http://{self.ip}:{self.port(port_name)}"


class FakeKubelet:
    """Watch (by polling) the API for pods with a worker container, and run them."""

    def __init__(self, api_url: str, directory: Path, namespaces: list[str]) -> None:
        self.api = httpx.Client(base_url=api_url, timeout=10)
        self.directory = directory
        self.namespaces = namespaces
        self.pods: dict[str, RunningPod] = {}
        self._next_ip = 2
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-kubelet")
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for pod in list(self.pods.values()):
            self._kill(pod)
        self.api.close()

    def pod(self, namespace: str, name: str) -> RunningPod | None:
        return self.pods.get(f"{namespace}/{name}")

    def wait_ready(self, namespace: str, name: str, timeout: float = 30) -> RunningPod:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = self.pod(namespace, name)
            if pod is not None and pod.ready:
                return pod
            time.sleep(0.1)
        pod = self.pod(namespace, name)
        raise AssertionError(f"pod {namespace}/{name} not ready; errors {self.errors}; "
                             f"log: {pod.log()[-3000:] if pod else 'never started'}")

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self._sync()
            except (httpx.HTTPError, OSError, KeyError, ValueError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")

    def _sync(self) -> None:
        seen = set()
        for namespace in self.namespaces:
            listing = self.api.get(f"/api/v1/namespaces/{namespace}/pods")
            listing.raise_for_status()
            for body in listing.json().get("items", []):
                container = _worker_container(body)
                if container is None or body["metadata"].get("deletionTimestamp"):
                    continue
                key = f"{namespace}/{body['metadata']['name']}"
                seen.add(key)
                pod = self.pods.get(key)
                if pod is None or pod.uid != body["metadata"]["uid"]:
                    if pod is not None:
                        self._kill(pod)
                    pod = self._admit(body, container)
                    self.pods[key] = pod
                self._project(pod)
                if pod.process is None:
                    self._start(pod)
                if not pod.ready and self._answers(pod):
                    pod.ready = True
                    self._report_running(pod)
        for key in set(self.pods) - seen:
            self._kill(self.pods.pop(key))

    # -- pods ----------------------------------------------------------------------------

    def _admit(self, body: dict[str, Any], container: dict[str, Any]) -> RunningPod:
        meta = body["metadata"]
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        root = self.directory / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        root.mkdir(parents=True)
        volumes = {v["name"]: v for v in body["spec"].get("volumes", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            local = root / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
        return RunningPod(meta["namespace"], meta["name"], meta["uid"], ip, root, mounts,
                          {name: volumes[name] for name in volumes
                           if any(m["name"] == name for m in container.get("volumeMounts", []))},
                          container)

    def _translate(self, pod: RunningPod, text: str) -> str:
        """What the worker would see inside its container, in local terms."""
        # One pass, longest mount first, at path boundaries only: a local directory put in
        # by one replacement (they live under /tmp) must not be rewritten by another.
        paths = sorted((m.rstrip("/") for m in pod.mounts), key=len, reverse=True)
        local = {m.rstrip("/"): str(d) for m, d in pod.mounts.items()}
        if paths:
            pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, paths))
                                 + r")(?=/|\s|['\"]|$)", re.MULTILINE)
            text = pattern.sub(lambda match: local[match.group(1)], text)
        # Only the worker's own listeners move to the pod IP; a SIEM on 127.0.0.1 stays there.
        return re.sub(r"(?m)^(\s*listen:\s*['\"]?)(?:127\.0\.0\.1|0\.0\.0\.0):",
                      lambda match: f"{match.group(1)}{pod.ip}:", text)

    def _project(self, pod: RunningPod) -> None:
        for name, volume in pod.volumes.items():
            if "configMap" in volume:
                kind, ref = "configmaps", volume["configMap"]["name"]
            elif "secret" in volume:
                kind, ref = "secrets", volume["secret"]["secretName"]
            else:
                continue
            found = self.api.get(f"/api/v1/namespaces/{pod.namespace}/{kind}/{ref}")
            if found.status_code == 404:
                continue
            found.raise_for_status()
            obj = found.json()
            version = obj["metadata"]["resourceVersion"]
            if pod.projected.get(name) == version:
                continue
            files: dict[str, bytes] = {}
            if kind == "configmaps":
                files = {k: self._translate(pod, v).encode()
                         for k, v in (obj.get("data") or {}).items()}
            else:
                files = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            local = next(path for mount_path, path in pod.mounts.items()
                         if any(m["name"] == name and m["mountPath"] == mount_path
                                for m in pod.container.get("volumeMounts", [])))
            swap_in(local, files)
            pod.projected[name] = version

    def _start(self, pod: RunningPod) -> None:
        args = [self._translate(pod, arg) for arg in pod.container.get("args", [])]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"), "PYTHONUNBUFFERED": "1",
               "TMPDIR": str(pod.mounts.get("/tmp", pod.root))}  # noqa: S108 - a mountPath
        mapping = ", ".join(f"{mount} -> {local}" for mount, local in pod.mounts.items())
        with pod.log_path.open("ab") as log:
            log.write(f"fake kubelet: pod IP {pod.ip}; mounts {mapping}\n".encode())
            log.flush()
            pod.process = subprocess.Popen([sys.executable, "-m", "sealtrail", *args],
                                           stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, env=env, cwd=pod.root)

    def _answers(self, pod: RunningPod) -> bool:
        if pod.process is None or pod.process.poll() is not None:
            return False
        try:
            return httpx.get(pod.url("st-admin") + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _report_running(self, pod: RunningPod) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {"status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
                             "hostIP": "127.0.0.1", "startTime": now,
                             "conditions": [{"type": "Ready", "status": "True",
                                             "lastTransitionTime": now}]}}
        answer = self.api.patch(
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status", json=status,
            headers={"Content-Type": "application/merge-patch+json"})
        answer.raise_for_status()

    def _kill(self, pod: RunningPod) -> None:
        process = pod.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _worker_container(body: dict[str, Any]) -> dict[str, Any] | None:
    spec = body.get("spec", {})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if container.get("name") == WORKER_CONTAINER:
            return dict(container)
    return None


def swap_in(directory: Path, files: dict[str, bytes]) -> None:
    """Replace the files of a projected volume at once, as the kubelet's atomic writer does."""
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    fresh = directory / stamp
    fresh.mkdir()
    for key, content in files.items():
        (fresh / key).write_bytes(content)
    link = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(stamp)
    old = (directory / "..data").resolve() if (directory / "..data").is_symlink() else None
    link.replace(directory / "..data")
    for key in files:
        target = directory / key
        if not target.is_symlink():
            target.symlink_to(Path("..data") / key)
    if old is not None and old.name != stamp:
        shutil.rmtree(old, ignore_errors=True)
