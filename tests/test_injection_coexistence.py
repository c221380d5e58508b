"""Injection next to other webhooks and nodes: Windows, taken ports, AWS identity, pull secrets.

Golden files (tests/golden/operator/coexist-*.yaml, from the pods in
tests/golden/operator/inputs/pods-coexistence.yaml; regenerate with SEALTRAIL_UPDATE_GOLDEN=1)
show what the planner does with:

- a Windows pod (`spec.os.name`, a `kubernetes.io/os` nodeSelector, or required node
  affinity): left alone, with a reason, as the Linux worker cannot join it;
- a pod whose container is probed on the worker's port (undeclared, but listening): left alone;
- a pod an identity webhook (EKS IRSA, EKS Pod Identity) ran on first: the worker gets the
  app's `AWS_*` env and token mount, except what it sets itself;
- image pull secrets, the policy's and the operator's: added once each after the pod's own;
- reinvocation (`reinvocationPolicy: IfNeeded`): a later webhook changed the injected pod, and
  the worker takes the AWS identity it gave the app; the pod keeps exactly one worker, and a
  further call changes nothing.

Every patch applies (jsonpatch) to the promised pod, which the Kubernetes schema accepts.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import jsonpatch
import pytest
import yaml

from sealtrail.operator import naming
from sealtrail.operator.admission import Admission, decide
from sealtrail.operator.inject import SidecarPlan, plan_sidecar
from sealtrail.operator.render import Policy

from .test_operator_planners import (
    IMAGE,
    INPUTS,
    NAMESPACE,
    check_golden,
    exports,
    k8s_valid,
    policy,
    rendered,
    secret_keys,
)
from .test_operator_planners import pod as planner_pod

IRSA_ENV = {"AWS_STS_REGIONAL_ENDPOINTS", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE"}


def pod(name: str) -> dict[str, Any]:
    documents = yaml.safe_load_all((INPUTS / "pods-coexistence.yaml").read_text("utf-8"))
    return next(copy.deepcopy(document) for document in documents
                if document["metadata"]["generateName"] == name)


def with_pull_secrets(names: Sequence[str]) -> Policy:
    base = policy("two-exports")
    worker = base.spec.worker.model_copy(update={"image_pull_secrets": list(names)})
    return dataclasses.replace(base, spec=base.spec.model_copy(update={"worker": worker}))


def plan(obj: dict[str, Any], chosen: Policy | None = None,
         default_pull_secrets: Sequence[str] = ()) -> SidecarPlan:
    result = plan_sidecar(obj, chosen or policy("two-exports"), rendered("two-exports"),
                          default_image=IMAGE, default_pull_secrets=default_pull_secrets)
    assert jsonpatch.apply_patch(obj, result.patch) == result.pod
    k8s_valid(result.pod)
    return result


def answer(obj: dict[str, Any], default_pull_secrets: Sequence[str] = ()) -> Admission:
    return decide(obj, NAMESPACE, policies=[policy("two-exports")], exports=exports(),
                  secret_keys=secret_keys(), default_image=IMAGE,
                  default_pull_secrets=default_pull_secrets)


def workers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    return [container for kind in ("initContainers", "containers")
            for container in spec.get(kind) or [] if container["name"] == naming.CONTAINER_NAME]


def golden(name: str, result: SidecarPlan) -> None:
    check_golden(name, {"outcome": result.outcome, "reason": result.reason,
                        "patch": result.patch, "pod": result.pod})


# --- pods the worker cannot join --------------------------------------------------------------


def test_a_windows_pod_is_left_alone_golden() -> None:
    result = plan(pod("payments-win-"))
    assert (result.outcome, result.patch) == ("unsupported", [])
    golden("coexist-windows-pod", result)


@pytest.mark.parametrize("change", [
    {"nodeSelector": {"kubernetes.io/os": "windows"}},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}}}},
], ids=["node-selector", "node-affinity"])
def test_a_pod_bound_to_windows_nodes_is_left_alone(change: dict[str, Any]) -> None:
    obj = planner_pod("payments-7c9f8-")
    obj["spec"] |= change
    assert plan(obj).outcome == "unsupported"


def test_a_pod_that_may_run_on_linux_gets_the_worker() -> None:
    obj = planner_pod("payments-7c9f8-")
    obj["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In",
                                   "values": ["windows"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In",
                                   "values": ["linux"]}]}]}}}
    assert plan(obj).outcome == "injected"


def test_a_windows_pod_is_admitted_without_a_worker_and_a_warning() -> None:
    admission = answer(pod("payments-win-"))
    assert admission.pod is None
    assert admission.warnings == [
        ("sealtrail: auditpolicy/two-exports matches this pod, but the worker was not injected: "
         "a Windows pod (spec.os.name is windows); the worker runs on Linux only")]


def test_a_pod_probed_on_the_workers_port_is_left_alone_golden() -> None:
    result = plan(pod("payments-probed-"))
    assert (result.outcome, result.patch) == ("conflict", [])
    assert result.reason == "container 'app' is probed on port 8470, which the worker needs"
    golden("coexist-port-taken", result)


@pytest.mark.parametrize("port", [8470, 8471])
@pytest.mark.parametrize("kind", ["initContainers", "containers"])
def test_a_port_of_the_worker_in_any_container_means_no_worker(kind: str, port: int) -> None:
    obj = planner_pod("payments-7c9f8-")
    obj["spec"].setdefault(kind, []).append(
        {"name": "other", "image": "x", "livenessProbe": {"tcpSocket": {"port": port}}})
    admission = answer(obj)
    assert admission.pod is None
    assert f"is probed on port {port}" in admission.warnings[0]


def test_a_named_probe_port_or_another_protocol_is_no_clash() -> None:
    obj = planner_pod("payments-7c9f8-")
    app = obj["spec"]["containers"][0]
    app["readinessProbe"] = {"httpGet": {"path": "/", "port": "http"}}
    app["ports"].append({"containerPort": 8470, "protocol": "UDP"})
    assert plan(obj).outcome == "injected"


# --- AWS identity from other webhooks ---------------------------------------------------------


def test_the_worker_gets_the_apps_irsa_identity_golden() -> None:
    result = plan(pod("payments-irsa-"))
    assert result.outcome == "injected"
    (worker,) = workers(result.pod)
    assert {item["name"] for item in worker["env"]} == IRSA_ENV
    assert {"name": "aws-iam-token", "readOnly": True,
            "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount"} in worker[
                "volumeMounts"]
    golden("coexist-irsa-pod", result)


def test_the_worker_gets_the_apps_eks_pod_identity() -> None:
    (worker,) = workers(plan(pod("payments-pod-identity-")).pod)
    assert [item["name"] for item in worker["env"]] == [
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
    assert worker["volumeMounts"][-1] == {
        "name": "eks-pod-identity-token", "readOnly": True,
        "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"}


def test_a_pod_without_aws_identity_gives_the_worker_no_env() -> None:
    (worker,) = workers(plan(planner_pod("payments-7c9f8-")).pod)
    assert "env" not in worker


def test_only_the_aws_identity_is_copied_and_not_a_missing_volume() -> None:
    obj = pod("payments-irsa-")
    del obj["spec"]["volumes"]  # a mount of a volume the pod lacks is not the worker's to copy
    (worker,) = workers(plan(obj).pod)
    assert "LOG_LEVEL" not in {item["name"] for item in worker["env"]}
    assert all(mount["name"] != "aws-iam-token" for mount in worker["volumeMounts"])


# --- image pull secrets -----------------------------------------------------------------------


def test_pull_secrets_are_added_once_after_the_pods_own_golden() -> None:
    result = plan(pod("payments-irsa-"), with_pull_secrets(["sealtrail-pull", "registry-creds"]),
                  default_pull_secrets=["ops-pull", "sealtrail-pull"])
    assert result.pod["spec"]["imagePullSecrets"] == [
        {"name": "registry-creds"}, {"name": "sealtrail-pull"}, {"name": "ops-pull"}]
    golden("coexist-pull-secrets", result)


def test_a_pod_without_pull_secrets_gets_the_list() -> None:
    result = plan(planner_pod("payments-7c9f8-"), default_pull_secrets=["ops-pull"])
    assert {"op": "add", "path": "/spec/imagePullSecrets",
            "value": [{"name": "ops-pull"}]} in result.patch
    assert "imagePullSecrets" not in plan(planner_pod("payments-7c9f8-")).pod["spec"]


# --- reinvocation -----------------------------------------------------------------------------


def irsa_webhook(obj: dict[str, Any], *, kinds: Sequence[str] = ("containers",)) -> dict[
        str, Any]:
    """What EKS's pod-identity-webhook does to a pod when it runs after sealtrail."""
    irsa = pod("payments-irsa-")
    app = irsa["spec"]["containers"][0]
    changed = copy.deepcopy(obj)
    for kind in kinds:
        for container in changed["spec"].get(kind) or []:
            container.setdefault("env", []).extend(
                item for item in app["env"] if item["name"].startswith("AWS_"))
            container.setdefault("volumeMounts", []).extend(app["volumeMounts"])
    changed["spec"].setdefault("volumes", []).extend(irsa["spec"]["volumes"])
    return changed


def test_reinvocation_after_a_later_webhook_gives_the_worker_its_identity_golden() -> None:
    first = answer(planner_pod("payments-7c9f8-"), default_pull_secrets=["ops-pull"])
    assert first.pod is not None
    changed = irsa_webhook(first.pod)
    changed["spec"]["initContainers"].insert(0, {"name": "mesh-init", "image": "mesh:1"})
    again = answer(changed, default_pull_secrets=["ops-pull"])
    assert again.pod is not None
    assert again.warnings == []
    assert len(workers(again.pod)) == 1
    (worker,) = workers(again.pod)
    assert {item["name"] for item in worker["env"]} == IRSA_ENV
    assert again.pod["spec"]["imagePullSecrets"] == [{"name": "ops-pull"}]
    result = plan_sidecar(changed, policy("two-exports"), rendered("two-exports"),
                          default_image=IMAGE, default_pull_secrets=["ops-pull"])
    assert result.outcome == "already-injected"
    assert jsonpatch.apply_patch(changed, result.patch) == result.pod == again.pod
    k8s_valid(result.pod)
    golden("coexist-reinvocation", result)
    # Called once more (another webhook changed something else): nothing left to do.
    assert answer(again.pod, default_pull_secrets=["ops-pull"]) == Admission()


def test_reinvocation_keeps_what_the_worker_already_has() -> None:
    first = answer(planner_pod("payments-7c9f8-"))
    assert first.pod is not None
    # This webhook version also changes init containers, the worker among them.
    changed = irsa_webhook(first.pod, kinds=("initContainers", "containers"))
    (worker,) = workers(changed)
    next(item for item in worker["env"] if item["name"] == "AWS_REGION")["value"] = "us-east-1"
    assert answer(changed) == Admission()


def test_a_worker_sealtrail_did_not_inject_is_never_changed() -> None:
    obj = irsa_webhook(planner_pod("payments-injected"))
    del obj["metadata"]["annotations"][naming.INJECTED_ANNOTATION]  # the pod's own worker
    assert answer(obj, default_pull_secrets=["ops-pull"]) == Admission()
