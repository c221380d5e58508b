"""On the real control plane: nothing acknowledged is lost in a pod's life (issue #14).

Runs with the chart installed on the real API server (`sealtrail_release`; see
tests/test_operator_e2e.py for the harness), inside `scripts/netns.sh` after
`scripts/build_image.sh`. The node (tests/fake_kubelet.py) enforces an `emptyDir`'s
`sizeLimit` as the kubelet does (the whole pod evicted at once) and stops pods in the kubelet's
order (every preStop at once, the app, then the sidecar with what is left). What it shows:

* the node really evicts a pod whose `emptyDir` passes its `sizeLimit` (the control);
* a SIEM down long enough to fill a sidecar's store under steady load: the app gets 429s naming
  the store, the pod is never evicted, every acknowledged row arrives after recovery, and
  once retention prunes what was delivered the app is let in again;
* a deleted pod's worker drains for what the pod's grace leaves after the app's shutdown (its
  preStop hook started the clock), less than its own `drainTimeoutSeconds` when the app used
  more than its share, and exits before the node's SIGKILL;
* a Deployment of 3 scaled to 0 while the SIEM is down, with 30,000 undelivered rows: the
  workers sign their last checkpoints and hand every row to a collector, and once the SIEM
  is back every acknowledged row is there once per dedupe key and every (store, tenant)
  chain verifies from the SIEM's copy, checkpoints included.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from sealtrail.chain.keys import PublicKey, generate_keypair
from sealtrail.chain.verify import Status, verify_rows

from .control_plane import GATEWAY, ControlPlane
from .receivers.splunk import SplunkReceiver
from .test_operator_e2e import Cluster, conditions, opted_in, wait_until
from .worker_process import free_port, start_worker

pytestmark = [pytest.mark.timeout(400)]

NAMESPACE = "lifecycle"


@pytest.fixture(scope="module")
def cluster(sealtrail_release: ControlPlane) -> Cluster:
    return opted_in(sealtrail_release, NAMESPACE)


def _export_and_policy(cluster: Cluster, name: str, url: str, token: str,
                       worker: dict[str, Any], **spec: Any) -> None:
    cluster.apply(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-token"},
         "data": {"token": base64.b64encode(token.encode()).decode()}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
         "metadata": {"name": f"{name}-hec"},
         "spec": {"splunk": {"hecUrl": url, "token": {"secretKeyRef": {
             "name": f"{name}-token", "key": "token"}}},
             "batch": {"intervalMs": 100, "maxIntervalMs": 500},
             "retry": {"initialBackoffMs": 100, "maxBackoffMs": 500}}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
         "metadata": {"name": name},
         "spec": {"selector": {"matchLabels": {"app": name}},
                  "routes": [{"exports": [f"{name}-hec"]}], "worker": worker, **spec}},
    ]), namespace=NAMESPACE)
    wait_until(lambda: conditions(cluster.get("auditpolicy", name, NAMESPACE))
               .get("Ready", {}).get("status") == "True", 30, f"policy {name}", cluster)


def _deployment(cluster: Cluster, name: str, pod_spec: dict[str, Any]) -> None:
    cluster.apply(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}},
    }), namespace=NAMESPACE)


def _ready_pod(cluster: Cluster, name: str, timeout: float = 90) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        listing = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"app={name}",
                                  "-o", "json").stdout
        pods = [pod for pod in yaml.safe_load(listing)["items"]
                if not pod["metadata"].get("deletionTimestamp")
                and conditions(pod).get("Ready", {}).get("status") == "True"]
        return pods[0] if pods else None
    return dict(wait_until(ready, timeout, f"a ready pod of {name}", cluster))


def _emit(pod: dict[str, Any], count: int, seed: int) -> dict[str, Any]:
    """The app writes `count` events through its sidecar; the worker's answer."""
    emit = f"http://{pod['status']['podIP']}:8080/emit"
    for _ in range(100):
        try:
            answer = httpx.post(emit, json={"count": count, "seed": seed}, timeout=40)
        except httpx.ConnectError:
            time.sleep(0.2)  # the app may be Ready a moment before it listens
            continue
        assert answer.status_code == 200, answer.text
        return dict(answer.json())
    raise AssertionError(f"the app at {emit} never answered")


def _cleanup(cluster: Cluster, name: str) -> None:
    cluster.kubectl("delete", "deployment", name, "-n", NAMESPACE, "--wait=false", check=False)
    wait_until(lambda: not cluster.plane.pods_named(NAMESPACE, f"{name}-"), 90,
               f"the pods of {name} to stop", cluster)


def test_the_node_evicts_a_pod_whose_empty_dir_passes_its_size_limit(cluster: Cluster) -> None:
    """The control: without it, "never evicted" below would prove nothing."""
    cluster.apply(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fills-scratch"},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1",
                                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                 "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]}}),
        namespace=NAMESPACE)
    key = f"{NAMESPACE}/fills-scratch"
    found = wait_until(lambda: cluster.plane.pods().get(key), 60, "the pod on the node", cluster)
    (Path(found["root"]) / "volumes" / "scratch" / "blob").write_bytes(b"x" * (2 * 1024 * 1024))
    pod = wait_until(lambda: (p := cluster.get("pod", "fills-scratch", NAMESPACE))["status"]
                     .get("reason") == "Evicted" and p, 30, "the eviction", cluster)
    assert pod["status"]["phase"] == "Failed"
    assert 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi"' in (
        pod["status"]["message"])
    assert any(event["event"] == "evicted" and event["uid"] == pod["metadata"]["uid"]
               for event in cluster.plane.node_events())
    cluster.kubectl("delete", "pod", "fills-scratch", "-n", NAMESPACE, "--wait=false")


def test_a_siem_outage_fills_the_store_budget_and_the_pod_is_never_evicted(
        cluster: Cluster, tmp_path: Path) -> None:
    name = "budget"
    token = str(uuid.uuid4())
    receiver = SplunkReceiver(token)
    receiver.host = GATEWAY
    receiver.start()
    generate_keypair(tmp_path / "checkpoint.key")
    try:
        cluster.apply(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "budget-key"},
            "stringData": {"key": (tmp_path / "checkpoint.key").read_text()}}),
            namespace=NAMESPACE)
        # Retention 0: what every export delivered goes at the next prune round (30 s).
        _export_and_policy(cluster, name, receiver.url, token,
                           {"storeSize": "16Mi", "retentionSeconds": 0,
                            "backpressure": {"retryAfterSeconds": 1}},
                           checkpoints={"signingKey": {"secretKeyRef": {
                               "name": "budget-key", "key": "key"}}})
        _deployment(cluster, name, {"containers": [{"name": "app",
                                                    "image": "registry.invalid/app:1"}]})
        pod = _ready_pod(cluster, name)
        uid = pod["metadata"]["uid"]
        receiver.stop()  # the SIEM goes down; the app keeps writing
        acknowledged: dict[tuple[str, int], str] = {}
        refusals: list[str] = []
        for seed in range(400):
            answer = _emit(pod, 200, seed)
            if answer["status"] == 200:
                for row in answer["body"]["events"]:
                    acknowledged[(row["tenant_id"], row["tenant_seq"])] = row["record_hash"]
                continue
            assert answer["status"] == 429, answer
            refusals.append(answer["body"]["error"])
            if len(refusals) >= 10:
                break
        assert len(refusals) >= 10, f"never refused after {len(acknowledged)} rows"
        assert all("the store holds" in reason for reason in refusals), refusals[:3]
        assert len(acknowledged) >= 8000  # most of the 16 MiB budget was used
        time.sleep(2)  # the node measures every sync: give an eviction time to show
        assert not [e for e in cluster.plane.node_events()
                    if e["event"] == "evicted" and e["uid"] == uid]
        now = cluster.get("pod", pod["metadata"]["name"], NAMESPACE)
        assert now["metadata"]["uid"] == uid
        assert now["status"]["phase"] == "Running"
        (worker,) = [s for s in now["status"]["initContainerStatuses"]
                     if s["name"] == "sealtrail-worker"]
        assert worker["restartCount"] == 0

        receiver.start()  # recovery: every acknowledged row arrives
        def delivered() -> bool:
            rows = [orjson.loads(body) for body in receiver.event_bytes()]
            got = {(row["tenant_id"], row["tenant_seq"]): row["record_hash"] for row in rows}
            return all(got.get(key) == digest for key, digest in acknowledged.items())
        wait_until(delivered, 120, f"the {len(acknowledged)} acknowledged rows to arrive",
                   cluster)
        # Delivered, then pruned: the store has room again and the app is let in.
        wait_until(lambda: _emit(pod, 200, 999)["status"] == 200, 90,
                   "ingest to open again once retention pruned what was delivered", cluster)
    finally:
        _cleanup(cluster, name)
        receiver.stop()


def test_a_deleted_pods_worker_drains_for_the_grace_the_app_left(cluster: Cluster) -> None:
    name = "grace"
    _export_and_policy(cluster, name, f"http://{GATEWAY}:9", "unused",  # a SIEM never up
                       {"drainTimeoutSeconds": 6})
    # The app's own grace is 9 s; its preStop takes 8 (the API server wants less than its
    # grace) and it takes 6 more to exit after SIGTERM: the pod gets 9 + 6 + 5 = 20 s, and the
    # app uses 14 of them, more than its share.
    _deployment(cluster, name, {
        "terminationGracePeriodSeconds": 9,
        "containers": [{"name": "app", "image": "registry.invalid/app:1",
                        "env": [{"name": "STAND_IN_STOP_SECONDS", "value": "6"}],
                        "lifecycle": {"preStop": {"sleep": {"seconds": 8}}}}]})
    pod = _ready_pod(cluster, name)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 20
    assert _emit(pod, 50, 1)["status"] == 200  # a backlog the drain cannot deliver
    uid, pod_name = pod["metadata"]["uid"], pod["metadata"]["name"]
    root = Path(cluster.plane.pods()[f"{NAMESPACE}/{pod_name}"]["root"])
    try:
        cluster.kubectl("delete", "pod", pod_name, "-n", NAMESPACE, "--wait=false")
        wait_until(lambda: f"{NAMESPACE}/{pod_name}" not in cluster.plane.pods(), 60,
                   "the pod to stop", cluster)
        events = [e for e in cluster.plane.node_events() if e["uid"] == uid]
        began = next(e["time"] for e in events if e["event"] == "terminating")
        sigterm = {e["container"]: e["time"] for e in events if e["event"] == "sigterm"}
        assert 7.5 <= sigterm["app"] - began <= 10  # after its 8 s preStop
        assert sigterm["sealtrail-worker"] - sigterm["app"] >= 5.5  # once the app has exited
        assert not [e for e in events if e["event"] == "sigkill"], events
        log = (root / "logs" / "sealtrail-worker.log").read_text()
        drain = next(line for line in log.splitlines() if "draining exports for up to" in line)
        assert "what the pod's grace leaves: 20 s" in drain, drain
        seconds = float(drain.split("for up to ")[1].split(" s")[0])
        # 20 s from the preStop call, less the app's ~14 s, less 2 s to exit: less than the
        # worker's own drainTimeoutSeconds of 6, which would have run into the SIGKILL.
        assert 2.5 <= seconds <= 5, drain
        assert "stopped;" in log  # it finished its drain and exited by itself
    finally:
        _cleanup(cluster, name)


def test_scaling_to_zero_while_the_siem_is_down_hands_every_row_to_a_collector(
        cluster: Cluster, tmp_path: Path) -> None:
    """3 pods, thousands of undelivered rows each, scaled to 0 while the SIEM is down.

    The collector is a real worker on the node's bridge address, as the SIEM receiver is:
    there is no kube-proxy here, so pods reach no ClusterIP (the collector's in-cluster
    rendering, which accepts handoffs with its ingest token, is in tests/test_operator_planners.py).
    """
    name = "handoff"
    token, handoff_token = str(uuid.uuid4()), str(uuid.uuid4())
    siem = SplunkReceiver(token)
    siem.host = GATEWAY
    siem.start()
    siem.stop()  # down from the start; its port stays the SIEM's address
    key = generate_keypair(tmp_path / "checkpoint.key")
    (tmp_path / "hec-token").write_text(token)
    (tmp_path / "handoff-token").write_text(handoff_token)
    collector = start_worker(
        tmp_path / "collector",
        ingest={"listen": f"{GATEWAY}:{free_port()}"},
        handoff={"accept": {"tokens": [{"file": str(tmp_path / "handoff-token")}]}},
        exports=[{"name": "siem", "splunk": {"hecUrl": siem.url,
                                             "token": {"file": str(tmp_path / "hec-token")}},
                  "batch": {"intervalMs": 100, "maxIntervalMs": 500},
                  "retry": {"initialBackoffMs": 100, "maxBackoffMs": 500}}])
    try:
        cluster.apply(yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "handoff-secrets"},
             "stringData": {"handoff": handoff_token,
                            "key": (tmp_path / "checkpoint.key").read_text()}}]),
            namespace=NAMESPACE)
        _export_and_policy(cluster, name, siem.url, token, {
            "drainTimeoutSeconds": 10})
        cluster.kubectl("patch", "auditpolicy", name, "-n", NAMESPACE, "--type=merge", "-p",
                        json.dumps({"spec": {
                            "checkpoints": {"signingKey": {"secretKeyRef": {
                                "name": "handoff-secrets", "key": "key"}}},
                            "handoff": {"url": collector.url, "token": {"secretKeyRef": {
                                "name": "handoff-secrets", "key": "handoff"}}}}}))
        wait_until(lambda: "handoff" in cluster.kubectl(
            "get", "configmap", f"sealtrail-{name}", "-n", NAMESPACE, "-o", "json").stdout,
            30, "the handoff in the worker config", cluster)
        _deployment(cluster, name, {"terminationGracePeriodSeconds": 5, "containers": [
            {"name": "app", "image": "registry.invalid/app:1"}]})
        cluster.kubectl("scale", "deployment", name, "-n", NAMESPACE, "--replicas=3")
        pods = wait_until(lambda: len(found := _ready_pods(cluster, name)) == 3 and found, 120,
                          "3 ready pods", cluster)
        acknowledged: set[str] = set()
        roots = {}
        for number, pod in enumerate(pods):
            roots[pod["metadata"]["name"]] = Path(
                cluster.plane.pods()[f"{NAMESPACE}/{pod['metadata']['name']}"]["root"])
            for batch in range(4):
                answer = _emit(pod, 2500, seed=100 * number + batch)
                assert answer["status"] == 200, answer
                acknowledged |= {row["record_hash"] for row in answer["body"]["events"]}
        assert len(acknowledged) == 30_000

        cluster.kubectl("scale", "deployment", name, "-n", NAMESPACE, "--replicas=0")
        wait_until(lambda: not cluster.plane.pods_named(NAMESPACE, f"{name}-"), 90,
                   "the 3 pods to stop", cluster)
        for pod_name, root in roots.items():
            log = (root / "logs" / "sealtrail-worker.log").read_text()
            assert "handed off" in log, f"{pod_name}:\n{log[-3000:]}"
            assert "(abandoned)" not in log, log[-3000:]
            assert "every row delivered or handed off" in log, log[-3000:]
        events = [e for e in cluster.plane.node_events() if e["event"] == "sigkill"
                  and e["pod"].startswith(f"{NAMESPACE}/{name}-")]
        assert not events, events  # every worker finished its handoff and exited in time

        siem.start()  # the SIEM returns: the collector delivers what it was handed
        wait_until(lambda: acknowledged <= {orjson.loads(body)["record_hash"]
                                            for body in siem.event_bytes()}, 180,
                   "every acknowledged row at the SIEM", cluster)
        _check_siem_copy(siem, key.public, stores=3)
        metrics = httpx.get(f"{collector.url}/metrics", timeout=10).text
        assert "sealtrail_audit_handoff_received_rows_total" in metrics
    finally:
        _cleanup(cluster, name)
        collector.stop()
        siem.stop()


def _check_siem_copy(siem: SplunkReceiver, public: PublicKey, stores: int) -> None:
    """Once per dedupe key, and every (store, tenant) chain intact with its checkpoints."""
    by_key: dict[str, set[bytes]] = {}
    for event in siem.events:
        by_key.setdefault(event.fields["dedupe_key"], set()).add(event.event)
    assert all(len(copies) == 1 for copies in by_key.values()), "a key with two rows"
    rows = [next(iter(copies)) for copies in by_key.values()]
    report = verify_rows(rows, public_keys=[public])
    assert report.status is Status.INTACT, report.to_json()
    # One chain per (pod's store, tenant), each from its row 1, each ending in a checkpoint
    # the draining worker signed.
    assert len({tenant.store_id for tenant in report.tenants}) == stores
    assert all(tenant.checkpoints_checked >= 1 for tenant in report.tenants)
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for row in map(orjson.loads, rows):
        chain = (row["store_id"], row["tenant_id"])
        if chain not in last or row["tenant_seq"] > last[chain]["tenant_seq"]:
            last[chain] = row
    assert {row["event_type"] for row in last.values()} == {"sealtrail.checkpoint"}


def _ready_pods(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"app={name}", "-o",
                              "json").stdout
    return [pod for pod in json.loads(listing)["items"]
            if not pod["metadata"].get("deletionTimestamp")
            and conditions(pod).get("Ready", {}).get("status") == "True"]
