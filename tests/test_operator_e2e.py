"""End to end: the real operator process, the real kubectl, real workers, a faithful API.

No kube-apiserver can run on these machines, so the API is the emulator in `tests/kube`
(discovery, resourceVersions, the status subresource, patches, watches, CRD schema and CEL
validation, the mutating admission webhook call). Everything else is real: `sealtrail
operator` (kopf) runs as its own process against it, resources are applied with the real
`kubectl`, pods are created through the API so the operator's webhook injects them, and
`tests/fake_kubelet.py` runs each injected worker container as a real `sealtrail worker`
process (own loopback IP per pod, volumes projected and swapped as the kubelet does) shipping
to a protocol-faithful Splunk HEC receiver. What is shown, as a user would see it:

* every example in `examples/` applies and its AuditExports and AuditPolicies reach `Ready`;
* an invalid spec is refused at `kubectl apply` with a message naming the field;
* injection gives a pod that passes `kubernetes-validate` and mounts what the worker needs;
* events posted to the injected worker reach the SIEM, and `kubectl get` shows it delivering;
* a receiver that goes down shows growing `cursorLag` and `Delivering=False` within 30 s;
* five permanent failures show `Paused=True` with the reason; a rotated Secret reaches the
  running worker (same pid) and the status names the new Secret version;
* `spec.paused` round-trips: delivery stops and resumes.

Against a real cluster (`SEALTRAIL_E2E_KUBECONFIG`, with the chart installed), the kubectl-only
tests run unchanged; those that need loopback workers and receivers say why they skip.
"""

from __future__ import annotations

import base64
import json
import os
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

from .fake_kubelet import FakeKubelet, RunningPod
from .receivers.http_base import free_port
from .receivers.splunk import SplunkReceiver
from .worker_process import ROOT

# The whole module shares one emulator, operator and kubelet (scripts/test.sh: --dist loadfile).
pytestmark = [pytest.mark.timeout(300)]

KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
REAL_CLUSTER = os.environ.get("SEALTRAIL_E2E_KUBECONFIG")
LOCAL_ONLY = pytest.mark.skipif(
    bool(REAL_CLUSTER), reason="needs loopback workers and receivers (the local harness)")
NAMESPACE = "e2e"



@dataclass
class Cluster:
    """What the tests talk to: kubectl against the API, and the local harness if any."""

    kubeconfig: Path
    directory: Path
    emulator: Any  # tests.kube.emulator.KubeEmulator, or None against a real cluster
    kubelet: FakeKubelet | None
    operator: subprocess.Popen[bytes] | None
    operator_log: Path | None

    def kubectl(self, *args: str, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(KUBECTL), *args], input=stdin, capture_output=True,
                              text=True, timeout=60, check=False,
                              env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stderr}{self.log_tail()}")
        return done

    def apply(self, manifest: str, namespace: str = NAMESPACE) -> None:
        self.kubectl("apply", "-n", namespace, "--validate=false", "-f", "-", stdin=manifest)

    def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)

    def log_tail(self) -> str:
        if self.operator_log is None or not self.operator_log.exists():
            return ""
        return "\noperator log:\n" + self.operator_log.read_text(errors="replace")[-4000:]


def wait_until(predicate: Callable[[], Any], seconds: float, what: str,
               cluster: Cluster | None = None) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}"
                                 + (cluster.log_tail() if cluster else ""))
        time.sleep(0.2)


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def webhook_configuration(port: int) -> str:
    return yaml.safe_dump({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "sealtrail"},
        "webhooks": [{
            "name": "inject.sealtrail.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/sealtrail-inject"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"]}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    })


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("e2e")
    if REAL_CLUSTER:
        yield Cluster(Path(REAL_CLUSTER), directory, None, None, None, None)
        return
    from .kube.emulator import KubeEmulator  # noqa: PLC0415 - local harness only

    emulator = KubeEmulator(sorted((ROOT / "crds").glob("*.yaml")))
    emulator.start()
    kubeconfig = directory / "kubeconfig"
    emulator.write_kubeconfig(kubeconfig)
    webhook_port = free_port()
    operator_log = directory / "operator.log"
    harness = Cluster(kubeconfig, directory, emulator, None, None, operator_log)
    harness.kubectl("create", "namespace", NAMESPACE)
    harness.kubectl("apply", "--validate=false", "-f", "-",
                    stdin=webhook_configuration(webhook_port))
    with operator_log.open("wb") as log:
        harness.operator = subprocess.Popen(
            [sys.executable, "-m", "sealtrail", "operator", "--poll-seconds", "1",
             "--policy-resync-seconds", "2", "--webhook-port", str(webhook_port),
             "--webhook-host", "127.0.0.1", "--webhook-configuration", "sealtrail",
             "--liveness-port", str(free_port())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBECONFIG": str(kubeconfig),
                 "PYTHONPATH": str(ROOT / "operator"), "PYTHONUNBUFFERED": "1"})
    harness.kubelet = FakeKubelet(emulator.url, directory / "node", [NAMESPACE])
    harness.kubelet.start()
    try:
        wait_until(lambda: harness.get("mutatingwebhookconfiguration", "sealtrail", "default")
                   ["webhooks"][0]["clientConfig"].get("caBundle"), 30,
                   "the operator to publish its webhook CA", harness)
        yield harness
    finally:
        harness.kubelet.stop()
        harness.operator.terminate()
        try:
            harness.operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            harness.operator.kill()
            harness.operator.wait(timeout=10)
        emulator.stop()


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
            cluster.kubectl("apply", "-n", namespace, "--validate=false", "-f", str(manifest))
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
                                            "WORKERS", "AGE"]
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
    done = cluster.kubectl("apply", "-n", NAMESPACE, "--validate=false", "-f", "-",
                           stdin=manifest, check=False)
    assert done.returncode != 0
    assert "is invalid" in done.stderr
    assert f"{field}:" in done.stderr or f"{field} " in done.stderr, done.stderr
    missing = cluster.kubectl("get", "auditexport", "refused", "-n", NAMESPACE, check=False)
    assert missing.returncode != 0  # nothing was stored


# -- a worker, injected, delivering -------------------------------------------------------


@dataclass
class Delivery:
    """One export to a loopback HEC receiver, one policy, one injected pod."""

    cluster: Cluster
    receiver: SplunkReceiver
    token: str  # this test's own: a receiver never takes an earlier test's worker's rows
    rotated: str
    export: str
    policy: str
    secret: str
    pod_name: str

    def secret_manifest(self, token: str) -> str:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": self.secret},
                               "data": {"token": base64.b64encode(token.encode()).decode()}})

    def worker(self) -> RunningPod:
        assert self.cluster.kubelet is not None
        return self.cluster.kubelet.wait_ready(NAMESPACE, self.pod_name, timeout=40)

    def post(self, count: int, seed: int) -> list[dict[str, Any]]:
        events = [orjson.loads(orjson.dumps(e)) for e in sample_events(count, seed=seed)]
        answer = httpx.post(self.worker().url() + "/v1/events", json=events, timeout=10)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["events"])

    def status(self) -> dict[str, Any]:
        return dict(self.cluster.get("auditexport", self.export).get("status") or {})


def start_delivery(cluster: Cluster, name: str, **export_extra: Any) -> Delivery:
    token, rotated = str(uuid.uuid4()), str(uuid.uuid4())
    receiver = SplunkReceiver(token)
    receiver.start()
    delivery = Delivery(cluster, receiver, token, rotated, f"{name}-hec", f"{name}-app",
                        f"{name}-token", f"{name}-pod")
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
                  "routes": [{"exports": [delivery.export]}],
                  "worker": {"image": "sealtrail/sealtrail:test"}}},
    ]))
    wait_until(lambda: conditions(cluster.get("auditpolicy", delivery.policy))
               .get("Ready", {}).get("status") == "True", 30, "the policy to render", cluster)
    cluster.apply(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": delivery.pod_name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    return delivery


@pytest.fixture
def delivery(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Delivery]:
    if REAL_CLUSTER:
        pytest.skip("needs loopback workers and receivers (the local harness)")
    name = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:20]
    found = start_delivery(cluster, name.rstrip("-"))
    try:
        yield found
    finally:
        # The worker goes first: a receiver stopped under a running worker leaves it retrying
        # at a port the next test's receiver may be given.
        cluster.kubectl("delete", "pod", found.pod_name, "-n", NAMESPACE, "--wait=false",
                        check=False)
        assert cluster.kubelet is not None
        kubelet = cluster.kubelet
        wait_until(lambda: kubelet.pod(NAMESPACE, found.pod_name) is None, 30,
                   "the deleted pod's worker to stop", cluster)
        found.receiver.stop()


@LOCAL_ONLY
def test_injection_yields_a_valid_pod_that_mounts_what_the_worker_needs(
        delivery: Delivery) -> None:
    pod = delivery.cluster.get("pod", delivery.pod_name)
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


@LOCAL_ONLY
def test_events_reach_the_siem_and_status_shows_delivery(delivery: Delivery) -> None:
    stored = delivery.post(30, seed=1)
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 30, 30, "delivery")
    seqs = [orjson.loads(body)["seq"] for body in delivery.receiver.event_bytes()]
    assert seqs == [entry["seq"] for entry in stored]
    status = wait_until(lambda: (s := delivery.status()).get("workers") == 1
                        and conditions({"status": s}).get("Delivering", {}).get("status")
                        == "True" and s.get("cursorLag") == 0
                        and str(s.get("credentialVersion")).startswith(
                            f"{delivery.secret}/token@") and s, 30,
                        "status to show delivery", delivery.cluster)
    assert status["workersUnreachable"] == 0
    table = delivery.cluster.kubectl("get", "aex", delivery.export, "-n", NAMESPACE).stdout
    assert table.split("\n")[1].split()[1:6] == ["splunk", "True", "false", "0", "1"]


@LOCAL_ONLY
def test_two_replicas_chains_of_one_tenant_verify_from_the_siems_copy(
        delivery: Delivery, tmp_path: Path) -> None:
    """Two pods of one workload write the same tenants; the SIEM holds both replicas' chains."""
    second = f"{delivery.pod_name}-2"
    labels = delivery.cluster.get("pod", delivery.pod_name)["metadata"]["labels"]
    delivery.cluster.apply(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": second, "labels": {"app": labels["app"]}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    kubelet = delivery.cluster.kubelet
    assert kubelet is not None
    try:
        other = kubelet.wait_ready(NAMESPACE, second, timeout=40)
        events = [orjson.loads(orjson.dumps(e)) for e in sample_events(20, seed=3)]
        delivery.post(20, seed=3)
        answer = httpx.post(other.url() + "/v1/events", json=events, timeout=10)
        assert answer.status_code == 200, answer.text
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
    finally:
        delivery.cluster.kubectl("delete", "pod", second, "-n", NAMESPACE, "--wait=false",
                                 check=False)
        wait_until(lambda: kubelet.pod(NAMESPACE, second) is None, 30,
                   "the second pod's worker to stop", delivery.cluster)


@LOCAL_ONLY
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


@LOCAL_ONLY
def test_permanent_failures_pause_and_a_rotated_secret_resumes_without_restart(
        delivery: Delivery) -> None:
    delivery.post(5, seed=5)
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 5, 30, "first delivery")
    pid = delivery.worker().process.pid  # type: ignore[union-attr]
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
    resumed = wait_until(lambda: (s := delivery.status()).get("paused") is False
                         and s.get("cursorLag") == 0 and s, 60,
                         "the rotated Secret to resume delivery", delivery.cluster)
    assert resumed["credentialVersion"] != version_before
    secret_version = delivery.cluster.get("secret", delivery.secret)["metadata"][
        "resourceVersion"]
    assert resumed["credentialVersion"] == f"{delivery.secret}/token@{secret_version}"
    assert delivery.worker().process.pid == pid  # type: ignore[union-attr]
    assert len({orjson.loads(b)["seq"] for b in delivery.receiver.event_bytes()}) == 10
    assert delivery.token not in json.dumps(resumed)
    assert delivery.rotated not in json.dumps(resumed)


@LOCAL_ONLY
def test_spec_paused_round_trips(delivery: Delivery) -> None:
    delivery.post(5, seed=7)
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 5, 30, "first delivery")
    delivery.cluster.kubectl("patch", "aex", delivery.export, "-n", NAMESPACE, "--type",
                             "merge", "-p", '{"spec": {"paused": true}}')
    paused = wait_until(lambda: (s := delivery.status()).get("paused") is True and s, 30,
                        "spec.paused to show", delivery.cluster)
    assert conditions({"status": paused})["Paused"]["reason"] == "SpecPaused"
    admin = delivery.worker().url("st-admin") + "/v1/status"
    wait_until(lambda: httpx.get(admin, timeout=5).json()["exports"][0]["paused"], 30,
               "the worker to load the paused config (ConfigMap, file swap, reload)")
    delivery.post(7, seed=8)
    time.sleep(1.5)  # fifteen batch intervals: anything unpaused would have gone
    assert len(delivery.receiver.event_bytes()) == 5  # nothing while paused
    delivery.cluster.kubectl("patch", "aex", delivery.export, "-n", NAMESPACE, "--type",
                             "merge", "-p", '{"spec": {"paused": false}}')
    wait_until(lambda: len(delivery.receiver.event_bytes()) >= 12, 30, "delivery to resume",
               delivery.cluster)
    wait_until(lambda: delivery.status().get("paused") is False, 30, "paused=false")


@LOCAL_ONLY
def test_an_unreachable_worker_is_reported_not_hidden(delivery: Delivery) -> None:
    delivery.post(3, seed=9)
    wait_until(lambda: delivery.status().get("workers") == 1
               and delivery.status().get("workersUnreachable") == 0, 30, "one live worker",
               delivery.cluster)
    process = delivery.worker().process
    assert process is not None
    process.kill()  # the worker dies; the pod object stays, as after an OOM kill
    process.wait(timeout=10)
    status = wait_until(lambda: (s := delivery.status()).get("workersUnreachable") == 1 and s,
                        30, "the dead worker to be reported", delivery.cluster)
    assert status["workers"] == 1
    assert f"{NAMESPACE}/{delivery.pod_name}: unreachable" in status["lastError"]
    assert conditions({"status": status})["Delivering"]["reason"] == "WorkersUnreachable"


@LOCAL_ONLY
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


def _rbac_request(method: str, path: str, query: str) -> tuple[str, str, str, str] | None:
    """(verb, apiGroup, resource[/subresource], name) of an API request; None: discovery."""
    parts = [part for part in path.split("/") if part]
    if not parts or parts[0] not in ("api", "apis") or len(parts) < 3:
        return None
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]  # a namespaced resource (not the namespace object itself)
    if not rest:
        return None  # a group version's discovery document
    resource, name = rest[0], rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource += "/" + rest[2]
    watching = "watch=true" in query or "watch=1" in query
    verb = {"GET": "watch" if watching else ("get" if name else "list"), "POST": "create",
            "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return verb, group, resource, name


@LOCAL_ONLY
def test_the_charts_rbac_allows_every_request_the_operator_made(cluster: Cluster) -> None:
    chart = subprocess.run([str(ROOT / ".tools" / "bin" / "helm"), "template", "sealtrail",
                            str(ROOT / "helm" / "sealtrail")], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    (role,) = [doc for doc in yaml.safe_load_all(chart) if doc and doc["kind"] == "ClusterRole"]
    # Some work of every kind, whatever ran before: an export, a policy rendering a config.
    for folder in ("01-splunk", "08-collector-k8s-audit"):
        cluster.kubectl("create", "namespace", f"rbac-{folder[:2]}", check=False)
        for manifest in ("secret.yaml", "auditexport.yaml", "auditpolicy.yaml"):
            cluster.kubectl("apply", "-n", f"rbac-{folder[:2]}", "-f",
                            str(ROOT / "examples" / folder / manifest))
    for namespace, name in (("rbac-01", "payments"), ("rbac-08", "cluster-audit")):
        wait_until(lambda ns=namespace, n=name: conditions(cluster.get("auditpolicy", n, ns))
                   .get("Ready", {}).get("status") == "True", 30, f"policy {name}", cluster)
    made = {found for record in list(cluster.emulator.requests)
            if record.user_agent.startswith(("kopf/", "OpenAPI-Generator/"))
            and (found := _rbac_request(record.method, record.path, record.query))}
    assert any(resource == "auditexports/status" for _, _, resource, _ in made)
    assert any(resource == "configmaps" for _, _, resource, _ in made)

    def allowed(verb: str, group: str, resource: str, name: str) -> bool:
        return any(group in rule.get("apiGroups", []) and resource in rule["resources"]
                   and verb in rule["verbs"]
                   and (not rule.get("resourceNames") or name in rule["resourceNames"])
                   for rule in role["rules"])

    refused = sorted(request for request in made if not allowed(*request))
    assert not refused, f"the chart's ClusterRole does not allow: {refused}"

