"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager.

The binaries are built from pinned Go modules by `scripts/build_control_plane.sh` (once, into a
cache outside the work tree). `ControlPlane.start()` runs them on loopback ports it picks, in a
directory of its own:

* **PKI.** A CA made here signs the apiserver's serving certificate (for 127.0.0.1 and the
  in-cluster names), a client certificate for an administrator (`system:masters`) and one for
  the controller-manager; a separate RSA key signs service-account tokens.
* **kube-apiserver** with RBAC authorization and the default admission chain (which includes
  ServiceAccount, LimitRanger, ResourceQuota and MutatingAdmissionWebhook). Webhook Services are
  resolved through their EndpointSlices (`--enable-aggregator-routing`): there is no kube-proxy,
  so a ClusterIP leads nowhere, while a pod's own IP (see `POD_CIDR`) is reachable here.
* **kube-controller-manager** with the default controllers (deployments, replica sets, stateful
  sets, garbage collection, namespaces, service accounts and their tokens, EndpointSlices)
  except node lifecycle and taint eviction: the node is tests/fake_kubelet.py, which keeps no
  heartbeat. Each controller acts with its own service account, as on a real cluster.

Pod IPs: the tests run inside a network namespace of their own (`scripts/netns.sh`) in which
`POD_CIDR` is routed to the loopback device, so a pod's worker can listen on an address such as
10.244.0.7 that EndpointSlices accept (the API refuses loopback addresses there) while no packet
leaves the machine.

The control plane is shared by every xdist worker of a run: the first to ask starts it and
writes `state.json`; the others attach; the controller process stops it at the end of the run
(`stop_recorded`), by the process ids it recorded. The logs of all three stay in the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.receivers.pki import make_ca, make_leaf, write_cert, write_key

__all__ = ["GATEWAY", "POD_CIDR", "ControlPlane", "ControlPlaneError", "binaries", "locked", "shared_control_plane",
           "stop_recorded"]

ROOT = Path(__file__).resolve().parent.parent
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
#: The pod network's gateway (the bridge scripts/netns.sh makes): where pods reach the API
#: server and the tests' SIEM receivers.
GATEWAY = str(POD_CIDR.network_address + 1)
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_VERSION = "v1.37.2"
_STARTUP_SECONDS = 120
#: What the API server's audit log keeps: the requests of the operator's namespace's service
#: accounts (so a test can show that the chart's RBAC allowed every one of them).
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts:sealtrail"]},
              {"level": "None"}]}


class ControlPlaneError(RuntimeError):
    """A component could not be built or did not come up; the message carries its log."""


def binaries() -> Path:
    """The directory with etcd, kube-apiserver and kube-controller-manager (built if needed)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_control_plane.sh")],
                          stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    if done.returncode != 0:
        raise ControlPlaneError("scripts/build_control_plane.sh failed (its output is above)")
    return Path(done.stdout.strip().splitlines()[-1])


def pod_network_available() -> bool:
    """Whether the pod network's gateway is here (inside scripts/netns.sh it is)."""
    with socket.socket() as sock:
        try:
            sock.bind((GATEWAY, 0))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- PKI ---------------------------------------------------------------------------------------


def _write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, two client certificates, the SA key."""
    pki.mkdir(parents=True)
    ca, ca_key = make_ca("sealtrail-test-ca")
    write_cert(ca, pki / "ca.crt")
    serving = [*(x509.IPAddress(ipaddress.ip_address(ip)) for ip in
                 ("127.0.0.1", "10.96.0.1", GATEWAY)),
               *(x509.DNSName(name) for name in
                 ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  "kubernetes.default.svc.cluster.local"))]
    leaves = {
        "apiserver": make_leaf(ca, ca_key, "kube-apiserver", serving,
                               ExtendedKeyUsageOID.SERVER_AUTH),
        # Kubernetes reads a client certificate's O= entries as the user's groups.
        "admin": make_leaf(ca, ca_key, "sealtrail-test-admin", [],
                           ExtendedKeyUsageOID.CLIENT_AUTH, ("system:masters",)),
        "controller-manager": make_leaf(ca, ca_key, "system:kube-controller-manager", [],
                                        ExtendedKeyUsageOID.CLIENT_AUTH),
    }
    for stem, (cert, key) in leaves.items():
        write_cert(cert, pki / f"{stem}.crt")
        write_key(key, pki / f"{stem}.key")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(sa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{user}.crt"),
            "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
    }, indent=2))


# -- the control plane -------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """Three processes and what a client needs to talk to them."""

    directory: Path
    api_port: int = 0
    etcd_port: int = 0
    #: This plane's node's share of POD_CIDR (each plane of a run gets its own).
    subnet: str = "10.244.1.0/24"
    pids: dict[str, int] = field(default_factory=dict)
    #: The processes this object started (none for one attached from state.json).
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def kubeconfig(self) -> Path:
        """An administrator's kubeconfig (system:masters)."""
        return self.directory / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: every request of a service account of `sealtrail`."""
        return self.directory / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def pods(self) -> dict[str, dict[str, Any]]:
        """What the node runs: `namespace/name` -> ip, uid, containers (pid, restarts)."""
        path = self.node_directory / "pods.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def node_events(self) -> list[dict[str, Any]]:
        """What the node did to pods: `terminating`, `sigterm`, `sigkill`, `evicted`.

        `sigkill` is a container still running when its grace was spent.
        """
        path = self.node_directory / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's output as the node kept it (there is no kubelet API for logs here)."""
        found = self.pods().get(f"{namespace}/{pod}")
        if found is None:
            return f"(pod {namespace}/{pod} is not on the node)"
        path = Path(found["root"]) / "logs" / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else "(no output)"

    def pods_named(self, namespace: str, prefix: str) -> list[str]:
        return sorted(key.split("/", 1)[1] for key in self.pods()
                      if key.startswith(f"{namespace}/{prefix}"))

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    def client(self, timeout: float = 30) -> httpx.Client:
        """An httpx client authenticated as the administrator."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return httpx.Client(base_url=self.url, verify=context, timeout=timeout)

    def log(self, component: str) -> str:
        path = self.directory / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs_tail(self, chars: int = 3000) -> str:
        return "".join(f"\n--- {name}.log ---\n{self.log(name)[-chars:]}"
                       for name in ("etcd", "kube-apiserver", "kube-controller-manager", "fake-kubelet"))

    # -- start and stop ----------------------------------------------------------------------

    @property
    def node_directory(self) -> Path:
        """Where the node keeps its pods' volumes, logs and `pods.json`."""
        return self.directory / "node"

    def start(self, *, node: bool = True) -> None:
        """Start etcd, the API server, the controller-manager and (with `node`) the node.

        The node runs sealtrail's containers from the image (tests/container.py builds it
        first, in this process, so its progress shows) and stand-ins for the others.
        """
        image_directory = None
        if node:
            from tests import container  # noqa: PLC0415 - only a plane with a node needs it

            image_directory = container.image().rootfs.parent
        bin_dir = binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_pki(self.pki)
        self.etcd_port, self.api_port = _free_port(), _free_port()
        peer = _free_port()
        _kubeconfig(self.kubeconfig, self.url, self.pki, "admin")
        _kubeconfig(self.directory / "controller-manager.kubeconfig", self.url, self.pki,
                    "controller-manager")
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn("etcd", [
            str(bin_dir / "etcd"), "--name=default", f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync=true", "--log-level=warn"])
        self._wait("etcd", lambda: httpx.get(f"{etcd_url}/health", timeout=2).status_code == 200)
        pki = self.pki
        audit_policy = self.directory / "audit-policy.yaml"
        audit_policy.write_text(json.dumps(AUDIT_POLICY))
        self._spawn("kube-apiserver", [
            str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            # All addresses of the run's own network namespace: loopback for the tests, the
            # bridge for pods (scripts/netns.sh); nothing outside can reach either.
            "--bind-address=0.0.0.0", f"--secure-port={self.api_port}",
            f"--advertise-address={GATEWAY}", "--endpoint-reconciler-type=none",
            f"--cert-dir={self.directory / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-aggregator-routing=true",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--allow-privileged=true", "--profiling=false", "--v=1"])
        self._wait("kube-apiserver", self._api_ready)
        self._spawn("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={_free_port()}",
            f"--cert-dir={self.directory / 'controller-manager'}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kube-api-qps=100", "--kube-api-burst=200", "--profiling=false", "--v=1"])
        self._wait("kube-controller-manager", self._default_service_account)
        self.record()
        if node:
            self._spawn("fake-kubelet", [
                sys.executable, "-m", "tests.fake_kubelet", f"--plane={self.directory}",
                f"--directory={self.node_directory}", f"--subnet={self.subnet}",
                f"--image={image_directory}"], cwd=ROOT)
            self._wait("fake-kubelet", self._node_ready)
            self.record()

    def _spawn(self, component: str, argv: list[str], cwd: Path | None = None) -> None:
        with (self.directory / f"{component}.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=cwd or self.directory,
                                       start_new_session=True)
        self.pids[component] = process.pid
        self._processes[component] = process

    def _alive(self, component: str) -> bool:
        try:
            waited, _ = os.waitpid(self.pids[component], os.WNOHANG)
        except ChildProcessError:
            return _pid_alive(self.pids[component])
        return waited == 0

    def _wait(self, component: str, ready: object) -> None:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while time.monotonic() < deadline:
            if not self._alive(component):
                raise ControlPlaneError(f"{component} exited during start-up:"
                                        f"\n{self.log(component)[-4000:]}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if ready():  # type: ignore[operator]
                    return
            time.sleep(0.25)
        raise ControlPlaneError(f"{component} not ready after {_STARTUP_SECONDS} s:"
                                f"\n{self.log(component)[-4000:]}")

    def _api_ready(self) -> bool:
        with self.client(timeout=3) as client:
            return client.get("/readyz").status_code == 200

    def _default_service_account(self) -> bool:
        with self.client(timeout=3) as client:
            return client.get("/api/v1/namespaces/default/serviceaccounts/default"
                              ).status_code == 200

    def _node_ready(self) -> bool:
        with self.client(timeout=3) as client:
            return client.get("/api/v1/nodes").json().get("items") != []

    def stop(self) -> None:
        # The node first (its pods stop in order), etcd last: nobody writes to a store that is
        # going away.
        for component in ("fake-kubelet", "kube-controller-manager", "kube-apiserver", "etcd"):
            pid = self.pids.get(component)
            if pid is not None:
                _terminate(pid, grace=60 if component == "fake-kubelet" else 15)
            process = self._processes.pop(component, None)
            if process is not None:
                process.poll()  # reaped by _terminate; this only updates the object

    # -- sharing between processes -----------------------------------------------------------

    def record(self) -> None:
        state = {"directory": str(self.directory), "api_port": self.api_port,
                 "etcd_port": self.etcd_port, "subnet": self.subnet, "pids": self.pids}
        (self.directory / "state.json").write_text(json.dumps(state))

    @classmethod
    def attach(cls, directory: Path) -> ControlPlane:
        state = json.loads((directory / "state.json").read_text())
        return cls(Path(state["directory"]), state["api_port"], state["etcd_port"],
                   state["subnet"], state["pids"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(pid: int, grace: float = 15) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


#: Planes this process started, by directory: stopped through their own process objects.
_STARTED: dict[Path, ControlPlane] = {}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_control_plane(run_directory: Path) -> ControlPlane:
    """The run's control plane: started by the first caller, attached to by the others."""
    directory = run_directory / "control-plane"
    run_directory.mkdir(parents=True, exist_ok=True)
    with locked(run_directory / "control-plane.lock"):
        if (directory / "state.json").exists():
            plane = ControlPlane.attach(directory)
            if all(_pid_alive(pid) for pid in plane.pids.values()):
                return plane
            raise ControlPlaneError(f"the run's control plane has died:{plane.logs_tail()}")
        plane = ControlPlane(directory)
        try:
            plane.start()
        except BaseException:
            plane.stop()
            raise
        plane.record()
        _STARTED[directory] = plane
        return plane


def stop_recorded(run_directory: Path) -> Path | None:
    """Stop the run's control plane if one was started; returns its directory (logs kept)."""
    directory = run_directory / "control-plane"
    if not (directory / "state.json").exists():
        return None
    plane = _STARTED.pop(directory, None) or ControlPlane.attach(directory)
    plane.stop()
    (directory / "state.json").unlink()
    return directory
