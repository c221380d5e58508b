"""The chart's life on a real cluster of its own: install, use, upgrade, restart, uninstall.

A new control plane (tests/control_plane.py) and node, so nothing else of the run sees the
operator go away. In order, as an operator of the cluster would do it:

1. `helm install --wait`: the operator's pod (from the image) becomes Ready and publishes its
   webhook CA; a Deployment's pod gets the worker injected through the chart's Service; the
   app's events reach the SIEM.
2. `helm upgrade` with a changed value: both operator pods are replaced (a rolling update
   that never leaves the webhook without a ready replica) and a new pod of the app is injected.
3. An operator restart (`kubectl rollout restart`): the same.
4. High availability: pods are created continuously for a minute (a server-side dry run, so
   admission runs in full and nothing is scheduled) while the leader is killed; every
   admission succeeds with the worker injected, and the other replica takes the Lease and
   reconciles.
5. With the operator scaled to zero, a namespace that did not opt in creates pods at once.
6. `helm uninstall`, then deleting the app's namespace and the operator's: both finish (the
   operator puts no finalizer on anything).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from .conftest import (
    HELM,
    KUBECTL,
    RELEASE,
    RELEASE_NAMESPACE,
    fresh_control_plane,
    install_chart,
    operator_log,
    tool,
    until,
)
from .control_plane import GATEWAY, ControlPlane
from .receivers.splunk import SplunkReceiver
from .worker_process import ROOT

pytestmark = [pytest.mark.timeout(600)]

APP_NAMESPACE = "shop"


def wait_until(predicate: Callable[[], Any], seconds: float, what: str,
               plane: ControlPlane) -> Any:
    return until(predicate, seconds, what, lambda: f"\noperator:{operator_log(plane)[-3000:]}")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory,
          control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """A cluster of its own (`control_plane` only makes sure the pod network is here)."""
    with fresh_control_plane(tmp_path_factory.mktemp("lifecycle")) as fresh:
        yield fresh


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None,
            check: bool = True) -> str:
    return tool(plane, KUBECTL, *args, stdin=stdin, check=check).stdout


def app_pods(plane: ControlPlane) -> list[dict[str, Any]]:
    listing = json.loads(kubectl(plane, "get", "pods", "-n", APP_NAMESPACE, "-l", "app=shop",
                                 "-o", "json"))
    return [pod for pod in listing["items"] if not pod["metadata"].get("deletionTimestamp")]


def injected_and_ready(plane: ControlPlane, count: int) -> bool:
    pods = app_pods(plane)
    return len(pods) == count and all(
        any(c["name"] == "sealtrail-worker" for c in pod["spec"].get("initContainers", []))
        and any(c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", []))
        for pod in pods)


def operator_pods(plane: ControlPlane) -> frozenset[str]:
    """The operator's ready pods, when all of the chart's replicas (2) are, else none."""
    listing = json.loads(kubectl(plane, "get", "pods", "-n", RELEASE_NAMESPACE, "-o", "json"))
    pods = [pod for pod in listing["items"] if not pod["metadata"].get("deletionTimestamp")]
    ready = frozenset(pod["metadata"]["name"] for pod in pods if any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])))
    return ready if len(ready) == len(pods) == 2 else frozenset()


def leader(plane: ControlPlane) -> str:
    """The pod holding the Lease (its identity is `<pod>_<process suffix>`)."""
    holder = kubectl(plane, "get", "lease", f"{RELEASE}-leader", "-n", RELEASE_NAMESPACE,
                     "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return holder.rsplit("_", 1)[0] if "_" in holder else ""


def test_install_upgrade_and_restart_keep_injecting(plane: ControlPlane) -> None:
    receiver = SplunkReceiver("lifecycle-token")
    receiver.host = GATEWAY
    receiver.start()
    try:
        _install_upgrade_restart(plane, receiver)
    finally:
        receiver.stop()


def _install_upgrade_restart(plane: ControlPlane, receiver: SplunkReceiver) -> None:
    # 1. Install and use.
    install_chart(plane)
    first_operators = wait_until(lambda: operator_pods(plane), 60, "the operator pods", plane)
    kubectl(plane, "create", "namespace", APP_NAMESPACE)
    kubectl(plane, "label", "namespace", APP_NAMESPACE, "sealtrail.dev/injection=enabled")
    kubectl(plane, "apply", "-n", APP_NAMESPACE, "-f", "-", stdin=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hec"},
         "data": {"token": base64.b64encode(b"lifecycle-token").decode()}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
         "metadata": {"name": "hec"},
         "spec": {"splunk": {"hecUrl": receiver.url, "token": {"secretKeyRef": {
             "name": "hec", "key": "token"}}}, "batch": {"intervalMs": 100}}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
         "metadata": {"name": "shop"},
         "spec": {"selector": {"matchLabels": {"app": "shop"}},
                  "routes": [{"exports": ["hec"]}]}},
    ]))
    wait_until(lambda: '"Ready"' in kubectl(plane, "get", "auditpolicy", "shop", "-n",
                                            APP_NAMESPACE, "-o", "json"), 30,
               "the policy", plane)
    kubectl(plane, "apply", "-n", APP_NAMESPACE, "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "shop"}},
                 "template": {"metadata": {"labels": {"app": "shop"}}, "spec": {
                     "containers": [{"name": "app", "image": "registry.invalid/shop:1",
                                     "env": [{"name": "STAND_IN_EVENTS", "value": "25"}]}]}}},
    }))
    kubectl(plane, "rollout", "status", "-n", APP_NAMESPACE, "deployment/shop",
            "--timeout=120s")
    assert injected_and_ready(plane, 1)
    wait_until(lambda: len(receiver.event_bytes()) >= 25, 60, "the app's events", plane)

    # 2. Upgrade with a changed value: a new operator pod, and injection goes on.
    tool(plane, HELM, "upgrade", RELEASE, ROOT / "helm" / "sealtrail", "--namespace",
         RELEASE_NAMESPACE, "--reuse-values", "--set", "operator.pollSeconds=2", "--wait",
         "--timeout", "5m", timeout=330)
    second_operators = wait_until(lambda: (names := operator_pods(plane)).isdisjoint(
        first_operators) and names, 120, "the upgraded operator pods", plane)
    kubectl(plane, "scale", "-n", APP_NAMESPACE, "deployment/shop", "--replicas=2")
    wait_until(lambda: injected_and_ready(plane, 2), 120,
               "a pod created after the upgrade to be injected", plane)

    # 3. Restart the operator: injection goes on.
    kubectl(plane, "rollout", "restart", "-n", RELEASE_NAMESPACE, f"deployment/{RELEASE}")
    kubectl(plane, "rollout", "status", "-n", RELEASE_NAMESPACE, f"deployment/{RELEASE}",
            "--timeout=120s")
    wait_until(lambda: (names := operator_pods(plane)).isdisjoint(second_operators) and names,
               120, "the restarted operator pods", plane)
    kubectl(plane, "scale", "-n", APP_NAMESPACE, "deployment/shop", "--replicas=3")
    wait_until(lambda: injected_and_ready(plane, 3), 120,
               "a pod created after the restart to be injected", plane)


def dry_run_pod(plane: ControlPlane, number: int) -> tuple[bool, str]:
    """Create a pod as a server-side dry run: every admission step, nothing stored."""
    pod = yaml.safe_dump({"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": f"probe-{number}", "labels": {"app": "shop"}},
                          "spec": {"containers": [{"name": "app", "image": "a:1"}]}})
    done = tool(plane, KUBECTL, "create", "--dry-run=server", "-o", "json", "-n",
                APP_NAMESPACE, "-f", "-", stdin=pod, check=False)
    if done.returncode != 0:
        return False, done.stderr.strip()
    created = json.loads(done.stdout)
    injected = any(c["name"] == "sealtrail-worker"
                   for c in created["spec"].get("initContainers", []))
    return injected, "" if injected else "admitted without the worker"


def test_two_replicas_admit_every_pod_while_the_leader_is_killed(plane: ControlPlane) -> None:
    first = wait_until(lambda: (name := leader(plane)) in operator_pods(plane) and name, 60,
                       "one of the two operators to lead", plane)
    failures: list[str] = []
    started, number, killed = time.monotonic(), 0, False
    while time.monotonic() - started < 60:
        if not killed and time.monotonic() - started > 15:
            kubectl(plane, "delete", "pod", first, "-n", RELEASE_NAMESPACE, "--grace-period=0",
                    "--force")
            killed = True
        number += 1
        ok, why = dry_run_pod(plane, number)
        if not ok:
            failures.append(f"pod {number} at {time.monotonic() - started:.1f} s: {why}")
        time.sleep(0.2)
    assert number > 60
    assert not failures, "\n".join(failures)
    second = wait_until(lambda: (name := leader(plane)) not in ("", first) and name, 45,
                        "another replica to take the Lease", plane)
    assert second != first
    # The new leader reconciles: a pause set now shows in the export's status.
    kubectl(plane, "patch", "auditexport", "hec", "-n", APP_NAMESPACE, "--type=merge", "-p",
            '{"spec": {"paused": true}}')
    try:
        wait_until(lambda: json.loads(kubectl(plane, "get", "auditexport", "hec", "-n",
                                              APP_NAMESPACE, "-o", "json"))
                   .get("status", {}).get("pauseReason") == "spec.paused is true", 30,
                   "the new leader to write the pause into status", plane)
    finally:
        kubectl(plane, "patch", "auditexport", "hec", "-n", APP_NAMESPACE, "--type=merge",
                "-p", '{"spec": {"paused": false}}')


def test_with_the_operator_down_only_opted_in_namespaces_wait_for_it(
        plane: ControlPlane) -> None:
    """Injection is opt-in: a namespace that did not ask never depends on the operator."""
    kubectl(plane, "scale", "-n", RELEASE_NAMESPACE, f"deployment/{RELEASE}", "--replicas=0")
    wait_until(lambda: not plane.pods_named(RELEASE_NAMESPACE, RELEASE), 60,
               "the operator's pod to stop", plane)
    try:
        kubectl(plane, "create", "namespace", "elsewhere")
        pod = yaml.safe_dump({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": "plain", "labels": {"app": "shop"}},
                              "spec": {"containers": [{"name": "app", "image": "a:1"}]}})
        started = time.monotonic()
        kubectl(plane, "apply", "-n", "elsewhere", "-f", "-", stdin=pod)
        assert time.monotonic() - started < 5  # at once: no webhook was called
        refused = tool(plane, KUBECTL, "apply", "-n", APP_NAMESPACE, "-f", "-", stdin=pod,
                       check=False)
        assert refused.returncode != 0  # failurePolicy Fail, in the namespace that opted in
        assert "inject.sealtrail.dev" in refused.stderr, refused.stderr
        opted_out = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "opted-out", "labels": {"sealtrail.dev/inject": "false"}},
            "spec": {"containers": [{"name": "app", "image": "a:1"}]}})
        kubectl(plane, "apply", "-n", APP_NAMESPACE, "-f", "-", stdin=opted_out)
    finally:
        kubectl(plane, "scale", "-n", RELEASE_NAMESPACE, f"deployment/{RELEASE}",
                "--replicas=2")
        kubectl(plane, "rollout", "status", "-n", RELEASE_NAMESPACE, f"deployment/{RELEASE}",
                "--timeout=120s")


def test_uninstall_then_deleting_the_namespaces_finishes(plane: ControlPlane) -> None:
    # 4. Uninstall, then delete the namespaces: both must go (in seconds, normally).
    tool(plane, HELM, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait",
         "--timeout", "2m", timeout=150)
    kubectl(plane, "delete", "namespace", APP_NAMESPACE, RELEASE_NAMESPACE, "--wait=false")
    try:
        wait_until(lambda: not [line for line in kubectl(plane, "get", "namespaces", "-o",
                                                         "name").split()
                                if line in (f"namespace/{APP_NAMESPACE}",
                                            f"namespace/{RELEASE_NAMESPACE}")], 45,
                   "both namespaces to be deleted", plane)
    except AssertionError as error:
        left = kubectl(plane, "get", "auditexports,auditpolicies", "-A", "-o",
                       "custom-columns=NAME:.metadata.name,FINALIZERS:.metadata.finalizers",
                       check=False)
        raise AssertionError(f"{error}\nwhat holds them:\n{left}") from None
