"""On the real control plane: injected pods that a LimitRange and a ResourceQuota accept.

Runs with the chart installed on the real API server (`sealtrail_release`; see
tests/test_operator_e2e.py for the harness), inside `scripts/netns.sh` after
`scripts/build_image.sh`. What it shows:

* a namespace with a LimitRange (per-container max cpu and memory, default limits, which
  LimitRanger gives the app before the webhook runs) and a ResourceQuota that counts requests
  and limits of cpu, memory and ephemeral storage: a Deployment's pod gets the worker, with
  the cpu limit and ephemeral storage its AuditPolicy set, and the API server accepts it;
* the CRD refuses at apply time what would make every such pod unacceptable: a request above
  its limit (compared as quantities, so `1Gi` is above `1G`) and `port` equal to `adminPort`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from .control_plane import GATEWAY, ControlPlane
from .test_operator_e2e import Cluster, conditions, opted_in, wait_until

pytestmark = [pytest.mark.timeout(300)]

NAMESPACE = "limits"
APP = "limited-app"


@pytest.fixture(scope="module")
def cluster(sealtrail_release: ControlPlane) -> Cluster:
    return opted_in(sealtrail_release, NAMESPACE)


def policy(name: str, worker: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "routes": [{"exports": ["hook"]}], "worker": worker}}


def test_a_limit_range_and_quota_accept_the_injected_pod(cluster: Cluster) -> None:
    worker = {"cpuRequest": "100m", "cpuLimit": "1500m", "memoryRequest": "128Mi",
              "memoryLimit": "512Mi", "ephemeralStorageRequest": "128Mi",
              "ephemeralStorageLimit": "512Mi"}
    cluster.apply(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "team"},
         "spec": {"limits": [{"type": "Container",
                              "max": {"cpu": "2", "memory": "1Gi"},
                              "default": {"cpu": "500m", "memory": "256Mi",
                                          "ephemeral-storage": "512Mi"},
                              "defaultRequest": {"cpu": "100m", "memory": "64Mi",
                                                 "ephemeral-storage": "64Mi"}}]}},
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team"},
         "spec": {"hard": {"requests.cpu": "8", "limits.cpu": "16", "requests.memory": "8Gi",
                           "limits.memory": "16Gi", "requests.ephemeral-storage": "20Gi",
                           "limits.ephemeral-storage": "40Gi", "pods": "10"}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
         "stringData": {"secret": "whsec_" + base64.b64encode(b"l" * 32).decode()}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
         "metadata": {"name": "hook"},
         "spec": {"webhook": {"url": f"http://{GATEWAY}:9/", "secret": {"secretKeyRef": {
             "name": "hook", "key": "secret"}}}}},
        policy(APP, worker),
    ]), namespace=NAMESPACE)
    wait_until(lambda: conditions(cluster.get("auditpolicy", APP, NAMESPACE))
               .get("Ready", {}).get("status") == "True", 30, "the policy", cluster)
    cluster.apply(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": APP}},
                 "template": {"metadata": {"labels": {"app": APP}}, "spec": {
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}},
    }), namespace=NAMESPACE)
    try:
        cluster.kubectl("rollout", "status", "-n", NAMESPACE, f"deployment/{APP}",
                        "--timeout=90s")
    except AssertionError as error:
        replica_sets = cluster.kubectl("get", "rs", "-n", NAMESPACE, "-o", "yaml").stdout
        raise AssertionError(f"{error}\n{replica_sets[-3000:]}") from None
    (pod,) = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"app={APP}",
                                        "-o", "json").stdout)["items"]
    (injected,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "sealtrail-worker"]
    assert injected["resources"]["requests"] == {
        "cpu": "100m", "memory": "128Mi", "ephemeral-storage": "128Mi"}
    limits = injected["resources"]["limits"]
    assert (limits["cpu"], limits["memory"]) == ("1500m", "512Mi")
    assert limits["ephemeral-storage"] == "1536Mi"  # its own 512Mi and the store's 1Gi
    (app,) = pod["spec"]["containers"]
    assert app["resources"]["limits"]["cpu"] == "500m", "LimitRanger's default, not ours"


@pytest.mark.parametrize(("worker", "message"), [
    ({"memoryRequest": "512Mi"}, "memoryRequest must not be above memoryLimit"),
    ({"memoryRequest": "1Gi", "memoryLimit": "1G"},
     "memoryRequest must not be above memoryLimit"),
    ({"cpuRequest": "2"}, "cpuRequest must not be above cpuLimit"),
    ({"ephemeralStorageRequest": "1Gi"},
     "ephemeralStorageRequest must not be above ephemeralStorageLimit"),
    ({"port": 8471}, "port and adminPort must differ"),
], ids=["memory", "memory-by-value", "cpu", "ephemeral-storage", "ports"])
def test_kubectl_apply_refuses_a_worker_no_pod_could_run(
        cluster: Cluster, worker: dict[str, Any], message: str) -> None:
    done = cluster.kubectl("apply", "--dry-run=server", "-n", NAMESPACE, "-f", "-",
                           stdin=yaml.safe_dump(policy("refused", worker)), check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_kubectl_apply_takes_requests_equal_to_limits(cluster: Cluster) -> None:
    worker = {"cpuRequest": "1", "cpuLimit": "1000m", "memoryRequest": "1G",
              "memoryLimit": "1Gi", "imagePullSecrets": ["registry-creds"]}
    cluster.kubectl("apply", "--dry-run=server", "-n", NAMESPACE, "-f", "-",
                    stdin=yaml.safe_dump(policy("accepted", worker)))
