"""The Helm chart, with the real helm (v4): it lints, it renders valid manifests, its RBAC is narrow.

* `helm lint` passes with the default values and with a namespaced install;
* every object `helm template` renders validates with `kubernetes-validate` for 1.37 (strict);
* the RBAC grants what the operator does and no more: no wildcard, no Secret writes, the
  webhook configuration only by name; with `watchNamespaces` there is no cluster-wide grant of
  the operator's namespaced work, only Roles in those namespaces.

That the rules suffice for what the operator really asks of the API is shown in
`tests/test_operator_e2e.py`, which checks every request the operator made against them.
"""

from __future__ import annotations

import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .worker_process import ROOT

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "helm" / "sealtrail"


def helm(*args: str) -> str:
    done = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def render(*values: str) -> list[dict[str, Any]]:
    args = ["template", "audit", str(CHART), "--namespace", "sealtrail"]
    for value in values:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def rules_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for doc in docs if doc["kind"] == kind for rule in doc["rules"]]


@pytest.mark.parametrize("values", [(), ("watchNamespaces={payments,billing}",),
                                    ("webhook.enabled=false",)])
def test_lints_and_renders_valid_objects(values: tuple[str, ...]) -> None:
    sets = [arg for value in values for arg in ("--set", value)]
    helm("lint", str(CHART), *sets)
    for doc in render(*values):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_rbac_is_narrow() -> None:
    rules = rules_of(render(), "ClusterRole")
    for rule in rules:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "*" not in rule.get("apiGroups", [])
        if "secrets" in rule["resources"]:
            assert set(rule["verbs"]) == {"get", "list", "watch"}  # never written
        if "mutatingwebhookconfigurations" in rule["resources"]:
            assert rule["resourceNames"] == ["audit-sealtrail"]
    assert not any("delete" in r["verbs"] and "pods" in r["resources"] for r in rules)


def test_watch_namespaces_grants_roles_there_only() -> None:
    docs = render("watchNamespaces={payments,billing}")
    cluster = rules_of(docs, "ClusterRole")
    assert not any("secrets" in r["resources"] or "configmaps" in r["resources"]
                   for r in cluster)
    roles = [doc for doc in docs if doc["kind"] == "Role"]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["billing", "payments"]
    assert all(any("secrets" in r["resources"] for r in role["rules"]) for role in roles)
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=payments" in args
    assert "--namespace=billing" in args


def test_webhook_never_covers_the_operators_own_namespace() -> None:
    (config,) = [doc for doc in render() if doc["kind"] == "MutatingWebhookConfiguration"]
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["service"]["path"] == "/sealtrail-inject"
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["sealtrail"]} in hook["namespaceSelector"]["matchExpressions"]
    deployment = next(doc for doc in render() if doc["kind"] == "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--webhook-configuration=audit-sealtrail" in (
        deployment["spec"]["template"]["spec"]["containers"][0]["args"])
