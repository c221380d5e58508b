"""End to end on a real control plane: the chart, the operator, injected workers, a SIEM.

etcd, kube-apiserver and kube-controller-manager are real (tests/control_plane.py, built from
pinned Go modules), and so are kubectl and helm. The chart is installed with `helm install`;
the operator runs as the chart's Deployment made it, in a pod the node (tests/fake_kubelet.py)
runs from the image built from the Dockerfile, with the chart's ServiceAccount token, so the
real RBAC authorizer refuses whatever the chart does not grant. The real API server calls the
operator's mutating webhook through the chart's Service, over TLS, with the caBundle the
operator published. Deployments become ReplicaSets become pods; the injected workers run from
the image too and ship to a protocol-faithful Splunk HEC receiver. What is shown, as a user
would see it:

* every example in `examples/` applies with kubectl and its resources reach `Ready`;
* an invalid spec is refused by the API server (OpenAPI schema or CEL), naming the field;
* injection gives a pod that passes `kubernetes-validate` and mounts what the worker needs;
* events from the app reach the SIEM, and `kubectl get` shows it delivering;
* a receiver that goes down shows growing `cursorLag` and `Delivering=False` within 30 s;
* five permanent failures show `Paused=True` with the reason; a rotated Secret reaches the
  running worker (no restart) and the status names the new Secret version;
* `spec.paused` round-trips: delivery stops and resumes;
* the API server's audit log shows no request of the operator's that RBAC refused.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import orjson
import pytest
import yaml

from sealtrail.demo import sample_events

from .conftest import KUBECTL, RELEASE, RELEASE_NAMESPACE, operator_log, tool, until
from .control_plane import GATEWAY, ControlPlane
from .receivers.splunk import SplunkReceiver
from .worker_process import ROOT

# The whole module shares one release and namespace (scripts/test.sh: --dist loadfile).
pytestmark = [pytest.mark.timeout(300)]

NAMESPACE = "e2e"


@dataclass
class Cluster:
    """What the tests talk to: kubectl against the real API server, and the node's view."""

    plane: ControlPlane

    def kubectl(self, *args: str, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        done = tool(self.plane, KUBECTL, *args, stdin=stdin, check=False, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stderr}{self.log_tail()}")
        return done

    def apply(self, manifest: str, namespace: str = NAMESPACE) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)

    def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o",
                                            "json").stdout))

    def log_tail(self) -> str:
        return "\noperator log:" + operator_log(self.plane)[-4000:]


def wait_until(predicate: Callable[[], Any], seconds: float, what: str,
               cluster: Cluster | None = None) -> Any:
    return until(predicate, seconds, what, cluster.log_tail if cluster else None)


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def opted_in(plane: ControlPlane, namespace: str) -> Cluster:
    """A harness on `namespace`, created and opted in (injection is opt-in, per namespace)."""
    harness = Cluster(plane)
    harness.kubectl("create", "namespace", namespace, check=False)
    harness.kubectl("label", "namespace", namespace, "sealtrail.dev/injection=enabled",
                    "--overwrite")
    return harness


@pytest.fixture(scope="module")
def cluster(sealtrail_release: ControlPlane) -> Cluster:
    return opted_in(sealtrail_release, NAMESPACE)


# -- examples and validation -----------------------------------------------------------------


def test_every_example_applies_and_reaches_ready(cluster: Cluster) -> None:
    folders = sorted(path for path in (ROOT / "examples").iterdir() if path.is_dir())
    assert len(folders) >= 8
    expected: list[tuple[str, str, str]] = []
    for folder in folders:
        namespace = "ex-" + folder.name.split("-", 1)[0]
        cluster.kubectl("create", "namespace", namespace, check=False)
        for manifest in sorted(folder.glob("*.yaml")):
            if manifest.name == "audit-webhook-kubeconfig.yaml":
                continue  # for the apiserver's flags, not for kubectl apply
            cluster.kubectl("apply", "-n", namespace, "-f", str(manifest))
            expected += [(doc["kind"].lower(), doc["metadata"]["name"], namespace)
                         for doc in yaml.safe_load_all(manifest.read_text())
                         if doc["kind"] in ("AuditExport", "AuditPolicy")]
    assert len(expected) >= 17
    for kind, name, namespace in expected:
        wait_until(lambda k=kind, n=name, ns=namespace: conditions(cluster.get(k, n, ns))
                   .get("Ready", {}).get("status") == "True", 60,
                   f"{kind} {namespace}/{name} to be Ready", cluster)
    collector = cluster.get("statefulset", "sealtrail-collector-cluster-audit", "ex-08")
    assert collector["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "st-store"
    service = cluster.get("service", "sealtrail-collector-cluster-audit", "ex-08")
    assert {p["name"] for p in service["spec"]["ports"]} == {"st-ingest", "st-admin"}
    config = cluster.get("configmap", "sealtrail-payments", "ex-01")["data"]["worker.yaml"]
    assert "/etc/sealtrail/secrets/splunk-hec/token" in config
    assert "00000000-0000-0000-0000-000000000000" not in config  # a path, never the value
    table = cluster.kubectl("get", "auditexports", "-n", "ex-01").stdout
    assert table.split("\n")[0].split() == ["NAME", "BACKEND", "READY", "PAUSED", "LAG",
                                            "WORKERS", "SEEN", "AGE"]
    assert "splunk" in table


@pytest.mark.parametrize(("patch", "field"), [
    ({"splunk": {"hecUrl": "ftp://splunk:8088", "token": {"secretKeyRef": {
        "name": "s", "key": "t"}}}}, "spec.splunk.hecUrl"),
    ({"splunk": {"hecUrl": "https://splunk:8088", "token": {"secretKeyRef": {
        "name": "s", "key": "t"}}}, "webhook": {"url": "https://x", "secret": {
            "secretKeyRef": {"name": "s", "key": "k"}}}}, "spec"),
    ({"syslog": {"host": "h", "port": 70000}}, "spec.syslog.port"),
    ({"datadog": {"apiKey": {"secretKeyRef": {"name": "d", "key": "k"}},
                  "site": "example.com"}}, "spec.datadog.site"),
])
def test_an_invalid_spec_is_refused_naming_the_field(cluster: Cluster, patch: dict[str, Any],
                                                     field: str) -> None:
    manifest = yaml.safe_dump({"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
                               "metadata": {"name": "refused"}, "spec": patch})
    done = cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                           stdin=manifest, check=False)
    assert done.returncode != 0
    assert "is invalid" in done.stderr
    assert f"{field}:" in done.stderr or f"{field} " in done.stderr, done.stderr
    missing = cluster.kubectl("get", "auditexport", "refused", "-n", NAMESPACE, check=False)
    assert missing.returncode != 0  # nothing was stored


# -- a worker, injected, delivering -------------------------------------------------------


@dataclass
class Delivery:
    """One export to a loopback HEC receiver, one policy, one Deployment whose pods get a worker."""

    cluster: Cluster
    receiver: SplunkReceiver
    token: str  # this test's own: a receiver never takes an earlier test's worker's rows
    rotated: str
    name: str

    @property
    def export(self) -> str:
        return f"{self.name}-hec"

    @property
    def policy(self) -> str:
        return f"{self.name}-app"

    @property
    def secret(self) -> str:
        return f"{self.name}-token"

    def secret_manifest(self, token: str) -> str:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": self.secret},
                               "data": {"token": base64.b64encode(token.encode()).decode()}})

    def pods(self) -> list[dict[str, Any]]:
        listing = self.cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l",
                                       f"app={self.name}", "-o", "json")
        return [pod for pod in json.loads(listing.stdout)["items"]
                if not pod["metadata"].get("deletionTimestamp")]

    def ready_pods(self, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        """The Deployment's pods once `count` of them are Ready (as the API says)."""
        return list(wait_until(
            lambda: len(ready := [p for p in self.pods() if conditions(p).get(
                "Ready", {}).get("status") == "True"]) == count and ready, timeout,
            f"{count} ready pod(s) of {self.name}", self.cluster))

    def pod(self) -> dict[str, Any]:
        (pod,) = self.ready_pods()
        return pod

    def url(self, pod: dict[str, Any] | None = None, port_name: str = "st-admin") -> str:
        pod = pod or self.pod()
        (worker,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "sealtrail-worker"]
        port = next(p["containerPort"] for p in worker["ports"] if p["name"] == port_name)
        return f"http://{pod['status']['podIP']}:{port}"

    def worker_state(self, pod: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the node runs for the worker container: its pid and restarts."""
        pod = pod or self.pod()
        key = f"{NAMESPACE}/{pod['metadata']['name']}"
        return dict(self.cluster.plane.pods()[key]["containers"]["sealtrail-worker"])

    def post(self, count: int, seed: int, pod: dict[str, Any] | None = None
             ) -> list[dict[str, Any]]:
        """The app writes `count` events through its sidecar (tests/stand_in_app.py)."""
        pod = pod or self.pod()
        emit = f"http://{pod['status']['podIP']}:8080/emit"
        # An app container without a readiness probe is Ready once started, maybe before it
        # listens (as on a real node): the first connection may be refused.
        answer = wait_until(lambda: _post_or_none(emit, {"count": count, "seed": seed}), 15,
                            f"the app at {emit} to answer")
        assert answer.status_code == 200, answer.text
        worker = answer.json()
        assert worker["status"] == 200, worker
        return list(worker["body"]["events"])

    def status(self) -> dict[str, Any]:
        return dict(self.cluster.get("auditexport", self.export).get("status") or {})


def _post_or_none(url: str, body: dict[str, Any]) -> httpx.Response | None:
    try:
        return httpx.post(url, json=body, timeout=40)
    except httpx.ConnectError:
        return None


def start_delivery(cluster: Cluster, name: str, **export_extra: Any) -> Delivery:
    token, rotated = str(uuid.uuid4()), str(uuid.uuid4())
    receiver = SplunkReceiver(token)
    receiver.host = GATEWAY  # where the pods reach the tests' namespace
    receiver.start()
    delivery = Delivery(cluster, receiver, token, rotated, name)
    cluster.apply(delivery.secret_manifest(token))
    spec = {"splunk": {"hecUrl": receiver.url, "token": {"secretKeyRef": {
        "name": delivery.secret, "key": "token"}}},
            "batch": {"intervalMs": 100, "maxIntervalMs": 1000},
            "retry": {"initialBackoffMs": 100, "maxBackoffMs": 400}, **export_extra}
    cluster.apply(yaml.safe_dump_all([
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
         "metadata": {"name": delivery.export}, "spec": spec},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
         "metadata": {"name": delivery.policy},
         "spec": {"selector": {"matchLabels": {"app": name}},
                  "routes": [{"exports": [delivery.export]}]}},
    ]))
    wait_until(lambda: conditions(cluster.get("auditpolicy", delivery.policy))
               .get("Ready", {}).get("status") == "True", 30, "the policy to render", cluster)
    cluster.apply(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app",
                                                       "image": "registry.invalid/app:1"}]}}},
    }))
    return delivery


@pytest.fixture
def delivery(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Delivery]:
    name = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:20]
    found = start_delivery(cluster, name.rstrip("-"))
    try:
        yield found
    finally:
        # The workers go first: a receiver stopped under a running worker leaves it retrying
        # at a port the next test's receiver may be given. The garbage collector removes the
        # ReplicaSet and its pods; the node stops them in order.
        cluster.kubectl("delete", "deployment", found.name, "-n", NAMESPACE, "--wait=false",
                        check=False)
        wait_until(lambda: not cluster.plane.pods_named(NAMESPACE, f"{found.name}-"), 60,
                   "the deleted Deployment's pods to stop", cluster)
        found.receiver.stop()


def test_injection_yields_a_valid_pod_that_mounts_what_the_worker_needs(
        delivery: Delivery) -> None:
    pod = delivery.pod()
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    (worker,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "sealtrail-worker"]
    assert worker["restartPolicy"] == "Always"
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/etc/sealtrail/config"]["name"]]["configMap"]["name"] == (
        f"sealtrail-{delivery.policy}")
    secret_mount = mounts[f"/etc/sealtrail/secrets/{delivery.secret}"]
    assert secret_mount["readOnly"] is True
    assert "subPath" not in secret_mount
    assert volumes[secret_mount["name"]]["secret"]["secretName"] == delivery.secret
    assert "emptyDir" in volumes[mounts["/var/lib/sealtrail"]["name"]]
    assert all("valueFrom" not in env for env in worker.get("env", []))  # no secret in env
    (app,) = pod["spec"]["containers"]
    assert {"name": "SEALTRAIL_URL", "value": "http://127.0.0.1:8470"} in app["env"]
    # The worker runs from the image, as the pod's uid.
    state = delivery.worker_state(pod)
    assert Path(f"/proc/{state['pid']}/status").read_text().count("\t65532") >= 2


def test_events_from_the_app_reach_the_siem_and_status_shows_delivery(
        cluster: Cluster) -> None:
    """The app (a stand-in that posts 30 events to SEALTRAIL_URL) writes; the SIEM receives."""
    delivery = start_delivery(cluster, "app-writes")
    try:
        cluster.kubectl("set", "env", "deployment/app-writes", "-n", NAMESPACE,
                        "STAND_IN_EVENTS=30", "STAND_IN_SEED=1")
        wait_until(lambda: len(delivery.receiver.event_bytes()) >= 30, 60, "delivery", cluster)
        rows = [orjson.loads(body) for body in delivery.receiver.event_bytes()]
        assert [row["seq"] for row in rows] == list(range(1, 31))
        expected = [e["event_type"] for e in sample_events(30, seed=1)]
        assert [row["event_type"] for row in rows] == expected
        status = wait_until(lambda: (s := delivery.status()).get("workers") == 1
                            and conditions({"status": s}).get("Delivering", {}).get("status")
                            == "True" and s.get("cursorLag") == 0
                            and str(s.get("credentialVersion")).startswith(
                                f"{delivery.secret}/token@") and s, 30,
                            "status to show delivery", cluster)
        assert status["workersUnreachable"] == 0
        table = cluster.kubectl("get", "aex", delivery.export, "-n", NAMESPACE).stdout
        assert table.split("\n")[0].split() == ["NAME", "BACKEND", "READY", "PAUSED", "LAG",
                                                "WORKERS", "SEEN", "AGE"]
        row = table.split("\n")[1].split()
        assert row[1:6] == ["splunk", "True", "false", "0", "1"]
        assert row[6].endswith("s"), row  # the operator looked seconds ago (a heartbeat)
    finally:
        cluster.kubectl("delete", "deployment", "app-writes", "-n", NAMESPACE, check=False)
        wait_until(lambda: not cluster.plane.pods_named(NAMESPACE, "app-writes-"), 60,
                   "the pods to stop", cluster)
        delivery.receiver.stop()


def test_two_replicas_chains_of_one_tenant_verify_from_the_siems_copy(
        delivery: Delivery, tmp_path: Path) -> None:
    """Two pods of one Deployment write the same tenants; the SIEM holds both replicas' chains."""
    delivery.pod()
    delivery.cluster.kubectl("scale", "deployment", delivery.name, "-n", NAMESPACE,
                             "--replicas=2")
    first, second = delivery.ready_pods(2)
    delivery.post(20, seed=3, pod=first)
    delivery.post(20, seed=3, pod=second)
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 40, 30, "delivery")

    rows = delivery.receiver.event_bytes()
    chains = {(orjson.loads(row)["store_id"], orjson.loads(row)["tenant_id"]) for row in rows}
    assert len({store for store, _ in chains}) == 2  # one store per pod
    keys = [event.fields["dedupe_key"] for event in delivery.receiver.events]
    assert len(set(keys)) == len(keys) == 40  # both pods have a row 1 of each tenant
    export = tmp_path / "siem-rows.ndjson"
    export.write_bytes(b"\n".join(rows) + b"\n")
    done = subprocess.run([sys.executable, "-m", "sealtrail", "verify", "--rows", str(export)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"intact: 40 rows in {len(chains)} chains "
            f"({len({tenant for _, tenant in chains})} tenants from 2 stores)") in done.stdout


def test_a_receiver_outage_shows_growing_lag_and_not_delivering(delivery: Delivery) -> None:
    delivery.post(10, seed=2)
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 10, 30, "first delivery")
    delivery.receiver.stop()
    started = time.monotonic()
    delivery.post(40, seed=3)
    first = wait_until(lambda: (s := delivery.status()).get("cursorLag", 0) > 0 and s, 30,
                       "cursorLag to grow", delivery.cluster)
    delivery.post(40, seed=4)
    second = wait_until(lambda: (s := delivery.status()).get("cursorLag", 0) > first[
        "cursorLag"] and s, 30, "cursorLag to keep growing", delivery.cluster)
    delivering = conditions({"status": second})["Delivering"]
    assert delivering["status"] == "False"
    assert delivering["reason"] == "DeliveryFailing"
    assert time.monotonic() - started < 30
    assert second["lastError"]
    delivery.receiver.start()
    wait_until(lambda: delivery.status().get("cursorLag") == 0, 60, "the backlog to drain",
               delivery.cluster)
    assert len({orjson.loads(b)["seq"] for b in delivery.receiver.event_bytes()}) == 90


def test_permanent_failures_pause_and_a_rotated_secret_resumes_without_restart(
        delivery: Delivery) -> None:
    delivery.post(5, seed=5)
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 5, 30, "first delivery")
    before = delivery.worker_state()
    version_before = wait_until(lambda: delivery.status().get("credentialVersion"), 30,
                                "a credential version", delivery.cluster)
    delivery.receiver.token = delivery.rotated  # the SIEM rotated: the old token is refused
    delivery.post(5, seed=6)
    paused = wait_until(lambda: conditions({"status": (s := delivery.status())}).get(
        "Paused", {}).get("status") == "True" and s, 60, "Paused=True", delivery.cluster)
    reason = conditions({"status": paused})["Paused"]
    assert reason["reason"] == "PermanentFailures"
    assert paused["paused"] is True
    assert paused["pauseReason"]
    events = delivery.cluster.kubectl("get", "events", "-n", NAMESPACE, "-o", "json").stdout
    assert any(e.get("reason") == "Paused" and e["involvedObject"]["name"] == delivery.export
               for e in json.loads(events)["items"])
    delivery.cluster.apply(delivery.secret_manifest(delivery.rotated))  # rotate the Secret
    secret_version = delivery.cluster.get("secret", delivery.secret)["metadata"][
        "resourceVersion"]
    # The worker may read the rotated file (and resume) before the operator has read the
    # Secret by name again; until then status says "an earlier version". Wait for both.
    resumed = wait_until(lambda: (s := delivery.status()).get("paused") is False
                         and s.get("cursorLag") == 0 and s.get("credentialVersion")
                         == f"{delivery.secret}/token@{secret_version}" and s, 90,
                         "the rotated Secret to resume delivery and show in status",
                         delivery.cluster)
    assert resumed["credentialVersion"] != version_before
    after = delivery.worker_state()
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"])
    (status,) = [s for s in delivery.pod()["status"]["initContainerStatuses"]
                 if s["name"] == "sealtrail-worker"]
    assert status["restartCount"] == 0
    assert len({orjson.loads(b)["seq"] for b in delivery.receiver.event_bytes()}) == 10
    assert delivery.token not in json.dumps(resumed)
    assert delivery.rotated not in json.dumps(resumed)


def test_spec_paused_round_trips(delivery: Delivery) -> None:
    delivery.post(5, seed=7)
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 5, 30, "first delivery")
    delivery.cluster.kubectl("patch", "aex", delivery.export, "-n", NAMESPACE, "--type",
                             "merge", "-p", '{"spec": {"paused": true}}')
    paused = wait_until(lambda: (s := delivery.status()).get("paused") is True and s, 30,
                        "spec.paused to show", delivery.cluster)
    assert conditions({"status": paused})["Paused"]["reason"] == "SpecPaused"
    admin = delivery.url(port_name="st-admin") + "/v1/status"
    token = base64.b64decode(delivery.cluster.get("secret", "sealtrail-worker-admin")["data"][
        "token"]).decode()
    assert httpx.get(admin, timeout=5).status_code == 401  # the admin API wants the token
    wait_until(lambda: httpx.get(admin, timeout=5, headers={
        "Authorization": f"Bearer {token}"}).json()["exports"][0]["paused"], 30,
               "the worker to load the paused config (ConfigMap, file swap, reload)")
    delivery.post(7, seed=8)
    time.sleep(1.5)  # fifteen batch intervals: anything unpaused would have gone
    assert len(delivery.receiver.event_bytes()) == 5  # nothing while paused
    delivery.cluster.kubectl("patch", "aex", delivery.export, "-n", NAMESPACE, "--type",
                             "merge", "-p", '{"spec": {"paused": false}}')
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 12, 30, "delivery to resume",
               delivery.cluster)
    wait_until(lambda: delivery.status().get("paused") is False, 30, "paused=false")


def test_an_unreachable_worker_is_reported_not_hidden(delivery: Delivery) -> None:
    delivery.post(3, seed=9)
    wait_until(lambda: delivery.status().get("workers") == 1
               and delivery.status().get("workersUnreachable") == 0, 30, "one live worker",
               delivery.cluster)
    pid = delivery.worker_state()["pid"]
    name = delivery.pod()["metadata"]["name"]
    os.kill(pid, signal.SIGSTOP)  # the worker hangs; the pod object stays
    try:
        status = wait_until(lambda: (s := delivery.status()).get("workersUnreachable") == 1
                            and s, 30, "the hung worker to be reported", delivery.cluster)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status["workers"] == 1
    assert f"{NAMESPACE}/{name}: unreachable" in status["lastError"]
    assert conditions({"status": status})["Delivering"]["reason"] == "WorkersUnreachable"


def test_pods_a_policy_missed_are_listed_in_its_status(cluster: Cluster) -> None:
    cluster.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod",
                                  "metadata": {"name": "early-pod", "labels": {"app": "late"}},
                                  "spec": {"containers": [{"name": "app", "image": "a:1"}]}}))
    cluster.apply(yaml.safe_dump({
        "apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
        "metadata": {"name": "late-policy"},
        "spec": {"selector": {"matchLabels": {"app": "late"}},
                 "routes": [{"exports": ["no-such-export"]}]}}))
    status = wait_until(lambda: (cluster.get("auditpolicy", "late-policy").get("status") or {})
                        .get("uninjectedPods") and cluster.get("auditpolicy", "late-policy")[
                            "status"], 30, "the missed pod to be listed", cluster)
    assert status["uninjectedPods"] == ["early-pod"]
    assert status["unknownExports"] == ["no-such-export"]
    assert conditions({"status": status})["ExportsResolved"]["status"] == "False"


def test_the_charts_rbac_allowed_every_request_the_operator_made(cluster: Cluster) -> None:
    """The real authorizer judged every request of the operator's; none was refused."""
    # Some work of every kind, whatever ran before: an export, a policy rendering a config.
    for folder in ("01-splunk", "08-collector-k8s-audit"):
        cluster.kubectl("create", "namespace", f"rbac-{folder[:2]}", check=False)
        for manifest in ("secret.yaml", "auditexport.yaml", "auditpolicy.yaml"):
            cluster.kubectl("apply", "-n", f"rbac-{folder[:2]}", "-f",
                            str(ROOT / "examples" / folder / manifest))
    for namespace, name in (("rbac-01", "payments"), ("rbac-08", "cluster-audit")):
        wait_until(lambda ns=namespace, n=name: conditions(cluster.get("auditpolicy", n, ns))
                   .get("Ready", {}).get("status") == "True", 30, f"policy {name}", cluster)
    operator = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
    made = [event for event in cluster.plane.audit_events()
            if event["user"]["username"] == operator and event["stage"] == "ResponseComplete"]
    resources = {(event.get("objectRef") or {}).get("resource", "") + (
        "/" + event["objectRef"]["subresource"] if (event.get("objectRef") or {}).get(
            "subresource") else "") for event in made}
    assert "auditexports/status" in resources, sorted(resources)
    assert "configmaps" in resources, sorted(resources)
    assert "mutatingwebhookconfigurations" in resources, sorted(resources)
    refused = sorted({(e["verb"], e["requestURI"].split("?")[0], e["responseStatus"]["code"])
                      for e in made if e["responseStatus"]["code"] in (401, 403)})
    assert not refused, f"the chart's RBAC refused the operator: {refused}"


def test_the_operator_reads_only_the_secrets_resources_name(cluster: Cluster) -> None:
    """No list, no watch: a Secret that no AuditExport or AuditPolicy names never reaches it."""
    namespace = "secrets-named"
    cluster.kubectl("create", "namespace", namespace, check=False)
    folder = ROOT / "examples" / "01-splunk"
    for manifest in ("secret.yaml", "auditexport.yaml", "auditpolicy.yaml"):
        cluster.kubectl("apply", "-n", namespace, "-f", str(folder / manifest))
    cluster.kubectl("create", "secret", "generic", "decoy", "-n", namespace,
                    "--from-literal=password=not-for-sealtrail")
    operator = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"

    def reads() -> list[dict[str, Any]]:
        return [event for event in cluster.plane.audit_events()
                if event["user"]["username"] == operator and event["stage"] == "ResponseComplete"
                and (event.get("objectRef") or {}).get("resource") == "secrets"]

    def named_reads() -> int:
        return sum(1 for event in reads() if event["objectRef"].get("namespace") == namespace
                   and event["objectRef"].get("name") == "splunk-hec")

    before = named_reads()
    wait_until(lambda: named_reads() >= before + 3, 30,
               "the operator to read the named Secret a few times", cluster)
    seen = reads()
    assert not [e for e in seen if e["verb"] in ("list", "watch")], "Secrets were listed"
    read_here = {e["objectRef"].get("name") for e in seen
                 if e["objectRef"].get("namespace") == namespace}
    assert "decoy" not in read_here
    # What the resources name, and what the operator itself owns there (the admin credential;
    # a collector's certificates, looked for when a policy may have switched modes).
    assert {name for name in read_here if not name.startswith("sealtrail-collector-")} <= {
        "splunk-hec", "sealtrail-worker-admin"}, read_here


def test_a_namespace_whose_quota_counts_limits_accepts_the_injected_pod(
        cluster: Cluster) -> None:
    """A quota that counts limits requires them of every container, the worker's included.

    (With a LimitRange that gives defaults, its defaults would fill them in; without one,
    the worker must bring its own: cpu, memory and ephemeral storage.)
    """
    namespace = "quota"
    cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.kubectl("label", "namespace", namespace, "sealtrail.dev/injection=enabled",
                    "--overwrite")
    every = {"cpu": "500m", "memory": "128Mi", "ephemeral-storage": "256Mi"}
    cluster.apply(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team"},
         "spec": {"hard": {"requests.cpu": "8", "limits.cpu": "16", "requests.memory": "8Gi",
                           "limits.memory": "16Gi", "requests.ephemeral-storage": "20Gi",
                           "limits.ephemeral-storage": "40Gi"}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
         "stringData": {"secret": "whsec_" + base64.b64encode(b"q" * 32).decode()}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
         "metadata": {"name": "hook"},
         "spec": {"webhook": {"url": f"http://{GATEWAY}:9/", "secret": {"secretKeyRef": {
             "name": "hook", "key": "secret"}}}}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
         "metadata": {"name": "quota-app"},
         "spec": {"selector": {"matchLabels": {"app": "quota-app"}},
                  "routes": [{"exports": ["hook"]}]}},
    ]), namespace=namespace)
    wait_until(lambda: conditions(cluster.get("auditpolicy", "quota-app", namespace))
               .get("Ready", {}).get("status") == "True", 30, "the policy", cluster)
    cluster.apply(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "quota-app"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "quota-app"}},
                 "template": {"metadata": {"labels": {"app": "quota-app"}}, "spec": {
                     "containers": [{"name": "app", "image": "registry.invalid/app:1",
                                     "resources": {"requests": every, "limits": every}}]}}},
    }), namespace=namespace)
    try:
        cluster.kubectl("rollout", "status", "-n", namespace, "deployment/quota-app",
                        "--timeout=90s")
    except AssertionError as error:
        replica_sets = cluster.kubectl("get", "rs", "-n", namespace, "-o", "yaml").stdout
        raise AssertionError(f"{error}\n{replica_sets[-3000:]}") from None
    (pod,) = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=quota-app",
                                        "-o", "json").stdout)["items"]
    (worker,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "sealtrail-worker"]
    assert set(worker["resources"]["limits"]) == {"cpu", "memory", "ephemeral-storage"}
    assert set(worker["resources"]["requests"]) == {"cpu", "memory", "ephemeral-storage"}
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
