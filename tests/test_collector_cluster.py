"""Collector mode on the real control plane: HTTPS for a ClusterIP, storage changes, mode switch.

The chart's operator runs the collector of a policy whose `spec.collector.clusterIP` is
pinned, as a kube-apiserver's audit webhook needs it (the apiserver has no cluster DNS). What
is shown, as an admin would see it:

* the Service has the pinned IP; the ConfigMap `<collector>-ca` publishes the CA and an audit
  webhook kubeconfig naming `https://<clusterIP>:8470` with that CA; the collector answers
  HTTPS with a certificate that the published CA verifies for the ClusterIP, and takes an
  `audit.k8s.io/v1` EventList with the bearer token. (There is no kube-proxy here, so the test
  process dials the collector pod's own address and checks the certificate against the
  ClusterIP, exactly as a client of the ClusterIP would.)
* changing `storageSize` (a StatefulSet field the API refuses to update) ends with a new
  StatefulSet asking for the new size and the policy Ready, not a 422 on every resync;
* switching the policy to sidecar mode removes the StatefulSet, Service, PodDisruptionBudget,
  TLS Secrets and CA ConfigMap, and keeps the volume claims (they hold undelivered rows).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import subprocess
from typing import Any

import pytest
import yaml

from .conftest import KUBECTL, operator_log, tool, until
from .control_plane import SERVICE_CIDR, ControlPlane

pytestmark = [pytest.mark.timeout(300)]

NAMESPACE = "collector"
POLICY = "cluster-audit"
COLLECTOR = f"sealtrail-collector-{POLICY}"
TOKEN = "collector-test-token-0123456789"  # noqa: S105 - a test value
#: A ClusterIP near the top of the service range, which nothing else here asks for.
PINNED_IP = str(ipaddress.ip_network(SERVICE_CIDR).network_address + 65000)


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    done = tool(plane, KUBECTL, *args, stdin=stdin, check=False, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}"
                             + operator_log(plane)[-4000:])
    return done


def _get(plane: ControlPlane, kind: str, name: str) -> dict[str, Any] | None:
    done = _kubectl(plane, "get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    if done.returncode != 0:
        if "NotFound" in done.stderr:
            return None
        raise AssertionError(done.stderr)
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _ready(plane: ControlPlane) -> dict[str, Any] | None:
    policy = _get(plane, "auditpolicy", POLICY) or {}
    status = policy.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    if ready.get("status") == "True" and status.get("observedGeneration") == (
            policy["metadata"]["generation"]):
        return policy
    return None


def _policy(storage: str = "1Gi", mode: str = "collector") -> str:
    return yaml.safe_dump({
        "apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
        "metadata": {"name": POLICY},
        "spec": {"mode": mode, "defaultTenant": "_system",
                 "routes": [{"exports": ["nowhere"]}],
                 "collector": {"clusterIP": PINNED_IP, "storageSize": storage,
                               "ingestToken": {"secretKeyRef": {"name": "collector-ingest",
                                                                "key": "token"}}}}})


@pytest.fixture(scope="module")
def plane(sealtrail_release: ControlPlane) -> ControlPlane:
    _kubectl(sealtrail_release, "create", "namespace", NAMESPACE, check=False)
    _kubectl(sealtrail_release, "apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "collector-ingest"},
         "stringData": {"token": TOKEN}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hec"},
         "stringData": {"token": "00000000-0000-0000-0000-000000000000"}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
         "metadata": {"name": "nowhere"},
         "spec": {"paused": True, "splunk": {"hecUrl": "https://127.0.0.1:9",
                                             "token": {"secretKeyRef": {"name": "hec",
                                                                        "key": "token"}}}}},
    ]))
    _kubectl(sealtrail_release, "apply", "-n", NAMESPACE, "-f", "-", stdin=_policy())
    until(lambda: _ready(sealtrail_release), 90, "the collector policy to be Ready",
          lambda: operator_log(sealtrail_release)[-4000:])
    return sealtrail_release


def _collector_pod_ip(plane: ControlPlane) -> str | None:
    pod = _get(plane, "pod", f"{COLLECTOR}-0") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True"
                for c in (pod.get("status") or {}).get("conditions") or [])
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ready and ip else None


def test_the_collector_answers_https_for_its_cluster_ip(plane: ControlPlane) -> None:
    service = _get(plane, "service", COLLECTOR)
    assert service is not None
    assert service["spec"]["clusterIP"] == PINNED_IP
    published = until(lambda: _get(plane, "configmap", f"{COLLECTOR}-ca"), 30,
                      "the published CA")["data"]
    kubeconfig = yaml.safe_load(published["audit-webhook-kubeconfig.yaml"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == (
        f"https://{PINNED_IP}:8470/v1/k8s-audit")
    status = _get(plane, "auditpolicy", POLICY)["status"]  # type: ignore[index]
    assert status.get("collector", {}).get("url") == f"https://{PINNED_IP}:8470", status
    pod_ip = until(lambda: _collector_pod_ip(plane), 120, "the collector pod to be Ready",
                   lambda: operator_log(plane)[-3000:])

    context = ssl.create_default_context(cadata=published["ca.crt"])
    body = json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {},
                       "items": []}).encode()
    request = (f"POST /v1/k8s-audit HTTP/1.1\r\nHost: {PINNED_IP}:8470\r\n"
               f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((pod_ip, 8470), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=PINNED_IP) as tls:
        # The handshake verified the chain against the published CA and the ClusterIP.
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split()[1] in {b"200", b"202"}, answer[:500]

    wrong = ssl.create_default_context(cadata=published["ca.crt"])
    with socket.create_connection((pod_ip, 8470), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        wrong.wrap_socket(raw, server_hostname="10.96.255.254")  # an IP it is not for


def test_a_storage_change_ends_with_a_new_stateful_set(plane: ControlPlane) -> None:
    before = _get(plane, "statefulset", COLLECTOR)
    assert before is not None
    _kubectl(plane, "apply", "-n", NAMESPACE, "-f", "-", stdin=_policy(storage="2Gi"))

    def replaced() -> dict[str, Any] | None:
        found = _get(plane, "statefulset", COLLECTOR)
        if found is None or found["metadata"]["uid"] == before["metadata"]["uid"]:
            return None
        return found

    after = until(replaced, 90, "a new StatefulSet", lambda: operator_log(plane)[-4000:])
    claim = after["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert claim == {"storage": "2Gi"}
    until(lambda: _ready(plane), 60, "the policy to be Ready again (not ApplyFailed)",
          lambda: operator_log(plane)[-4000:])


def test_switching_to_sidecar_removes_the_collector_but_not_its_claims(
        plane: ControlPlane) -> None:
    claims_before = _kubectl(plane, "get", "pvc", "-n", NAMESPACE, "-l",
                             f"sealtrail.dev/policy={POLICY}", "-o", "name").stdout.split()
    _kubectl(plane, "apply", "-n", NAMESPACE, "-f", "-", stdin=_policy(mode="sidecar"))
    gone = [("statefulset", COLLECTOR), ("service", COLLECTOR),
            ("poddisruptionbudget", COLLECTOR), ("secret", f"{COLLECTOR}-tls"),
            ("secret", f"{COLLECTOR}-ca"), ("configmap", f"{COLLECTOR}-ca")]
    for kind, name in gone:
        until(lambda k=kind, n=name: _get(plane, k, n) is None, 60, f"{kind} {name} to go",
              lambda: operator_log(plane)[-4000:])
    assert _get(plane, "configmap", f"sealtrail-{POLICY}") is not None, "the sidecar's config"
    claims_after = _kubectl(plane, "get", "pvc", "-n", NAMESPACE, "-l",
                            f"sealtrail.dev/policy={POLICY}", "-o", "name").stdout.split()
    assert claims_after == claims_before
