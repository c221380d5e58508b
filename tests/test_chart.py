"""The Helm chart, with the real helm (v4): it lints, it renders valid manifests, its RBAC is narrow.

* `helm lint` passes with the default values and with each file under `helm/sealtrail/ci/`;
  `values.schema.json` refuses a bad value, naming it;
* every object `helm template` renders validates with `kubernetes-validate` (strict) for the
  oldest Kubernetes the chart declares (1.29: native sidecars) and for 1.37; the Prometheus
  Operator's kinds, which it has no schema for, are checked for their shape here;
* the chart's CRDs equal `crds/` (plus the chart's labels and keep annotation);
* the RBAC grants what the operator does and no more: no wildcard, no Secret writes, the
  webhook configuration only by name; with `watchNamespaces` there is no cluster-wide grant of
  the operator's namespaced work, only Roles in those namespaces.

* every rendering (the defaults and each `ci/` file) is accepted by the real kube-apiserver as
  a server-side dry run (tests/control_plane.py), but for the kinds of operators that cluster
  does not run.

That the rules suffice for what the operator really asks of the API is shown in
`tests/test_operator_e2e.py`, where the operator runs with the chart's ServiceAccount and the
real authorizer; the API server's audit log shows none of its requests refused.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import KUBECTL, tool
from .control_plane import ControlPlane
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


VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))
MONITORING_KINDS = ("PodMonitor", "PrometheusRule")


def render_file(values_file: Path | None) -> list[dict[str, Any]]:
    args = ["template", "audit", str(CHART), "--namespace", "sealtrail"]
    if values_file is not None:
        args += ["-f", str(values_file)]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def kube_version() -> str:
    declared = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    return declared.removeprefix(">=").removesuffix("-0")


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES],
                         ids=["defaults", *(path.stem for path in VALUES_FILES)])
def test_lints_and_renders_valid_objects(values_file: Path | None) -> None:
    helm("lint", str(CHART), *(["-f", str(values_file)] if values_file else []))
    docs = render_file(values_file)
    assert docs
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS or doc["apiVersion"].startswith("cert-manager.io/"):
            continue  # not Kubernetes' own kinds: no schema in kubernetes-validate
        for version in (kube_version(), "1.37.0"):
            kubernetes_validate.validate(doc, version, strict=True)


def test_values_schema_refuses_a_bad_value_naming_it() -> None:
    done = subprocess.run([str(HELM), "lint", str(CHART), "--set",
                           "webhook.failurePolicy=Sometimes"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "/webhook/failurePolicy" in done.stdout + done.stderr


def test_the_charts_crds_equal_crds_folder() -> None:
    rendered = {doc["metadata"]["name"]: doc for doc in render()
                if doc["kind"] == "CustomResourceDefinition"}
    committed = {doc["metadata"]["name"]: doc
                 for path in sorted((ROOT / "crds").glob("*.yaml"))
                 for doc in yaml.safe_load_all(path.read_text())}
    assert set(rendered) == set(committed) == {"auditexports.sealtrail.dev",
                                               "auditpolicies.sealtrail.dev"}
    for name, crd in rendered.items():
        meta = crd["metadata"]
        assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        labels = meta.pop("labels")
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        own = committed[name]["metadata"].get("labels", {})
        assert own.items() <= labels.items()  # the chart adds its labels, keeps the CRD's
        meta["labels"] = own
        assert crd == committed[name], f"{name}: the chart's copy differs from crds/"
    no_crds = render("crds.enabled=false")
    assert not any(doc["kind"] == "CustomResourceDefinition" for doc in no_crds)


def test_monitoring_objects_have_their_shape() -> None:
    docs = render_file(CHART / "ci" / "monitoring-values.yaml")
    (monitor,) = [doc for doc in docs if doc["kind"] == "PodMonitor"
                  and doc["metadata"]["name"].endswith("-workers")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchExpressions"] == [
        {"key": "sealtrail.dev/policy", "operator": "Exists"}]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "st-admin"
    (rule,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    groups = rule["spec"]["groups"]
    assert groups
    assert all(alert["expr"] and alert["labels"]["severity"]
               for group in groups for alert in group["rules"])
    (dashboard,) = [doc for doc in docs if doc["kind"] == "ConfigMap"
                    and doc["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["sealtrail.json"] == (
        CHART / "files" / "dashboard.json").read_text().rstrip("\n")


def test_cert_manager_replaces_the_self_made_certificate() -> None:
    docs = render_file(CHART / "ci" / "cert-manager-values.yaml")
    (certificate,) = [doc for doc in docs if doc["kind"] == "Certificate"]
    assert certificate["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer"}
    (config,) = [doc for doc in docs if doc["kind"] == "MutatingWebhookConfiguration"]
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "sealtrail/audit-sealtrail-webhook")
    args = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"][
        "spec"]["containers"][0]["args"]
    assert "--webhook-cert-dir=/etc/sealtrail/webhook-tls" in args
    assert "--webhook-configuration=" in args  # the operator writes no CA of its own


def test_rbac_is_narrow() -> None:
    rules = rules_of(render(), "ClusterRole")
    for rule in rules:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "*" not in rule.get("apiGroups", [])
        if "secrets" in rule["resources"]:
            # Read by name, never listed or watched (no Secret it was not told of reaches it).
            assert not {"list", "watch"} & set(rule["verbs"]), rule
        if "mutatingwebhookconfigurations" in rule["resources"]:
            assert rule["resourceNames"] == ["audit-sealtrail"]
    assert not any("delete" in r["verbs"] and "pods" in r["resources"] for r in rules)


def test_watch_namespaces_grants_roles_there_only() -> None:
    docs = render("watchNamespaces={payments,billing}")
    cluster = rules_of(docs, "ClusterRole")
    assert not any("secrets" in r["resources"] or "configmaps" in r["resources"]
                   for r in cluster)
    roles = [doc for doc in docs if doc["kind"] == "Role"
             and not doc["metadata"]["name"].endswith("-self")]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["billing", "payments"]
    assert all(any("secrets" in r["resources"] for r in role["rules"]) for role in roles)
    (own,) = [doc for doc in docs if doc["kind"] == "Role"
              and doc["metadata"]["name"].endswith("-self")]
    assert own["metadata"]["namespace"] == "sealtrail"  # the Lease and the webhook certificate
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
    # Opt-in per namespace, opt-out per pod; never a mirror or a Windows pod.
    assert hook["namespaceSelector"]["matchLabels"] == {"sealtrail.dev/injection": "enabled"}
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": "sealtrail.dev/inject", "operator": "NotIn", "values": ["false"]}]
    assert {c["name"] for c in hook["matchConditions"]} == {"not-a-mirror-pod", "not-windows"}
    deployment = next(doc for doc in render() if doc["kind"] == "Deployment")
    # Highly available: two replicas answer it, a rollout never takes the last one away, a
    # drain evicts one at a time, and it is scheduled before the workloads that wait on it.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (budget,) = [doc for doc in render() if doc["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 1
    assert "--webhook-configuration=audit-sealtrail" in (
        deployment["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES],
                         ids=["defaults", *(path.stem for path in VALUES_FILES)])
def test_the_real_api_server_accepts_every_rendered_object(
        sealtrail_release: ControlPlane, values_file: Path | None) -> None:
    """Each rendering, applied as a server-side dry run: admission, validation, defaulting.

    Under its own release name and namespace, so nothing clashes with the installed release;
    the kinds of operators this cluster does not run (the Prometheus Operator's, cert-manager's)
    are left out and named, and the rest must all be accepted.
    """
    variant = f"chart-{values_file.stem if values_file else 'defaults'}"
    args = ["template", variant, str(CHART), "--namespace", variant]
    if values_file is not None:
        args += ["-f", str(values_file)]
    docs = [doc for doc in yaml.safe_load_all(helm(*args)) if doc]
    foreign = {doc["kind"] for doc in docs if doc["kind"] in MONITORING_KINDS
               or doc["apiVersion"].startswith("cert-manager.io/")}
    assert foreign <= {*MONITORING_KINDS, "Certificate", "Issuer"}
    kept = [doc for doc in docs if doc["kind"] not in foreign]
    # The release's namespace, and those it watches: Roles go there, so they must exist first
    # (the API server refuses a Role in a namespace that does not exist).
    watched = (yaml.safe_load(values_file.read_text()) if values_file else {}).get(
        "watchNamespaces") or []
    with sealtrail_release.client() as client:
        for namespace in (variant, *watched):
            created = client.post("/api/v1/namespaces", json={
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            assert created.status_code in (201, 409), created.text
    done = tool(sealtrail_release, KUBECTL, "apply", "--dry-run=server", "-f", "-",
                stdin=yaml.safe_dump_all(kept), check=False)
    assert done.returncode == 0, done.stderr
    applied = [line for line in done.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(kept), done.stdout


def test_cert_manager_issues_from_a_ca_so_renewals_keep_the_trusted_bundle() -> None:
    docs = render("webhook.certManager.enabled=true")
    certificates = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Certificate"}
    ca = certificates["audit-sealtrail-webhook-ca"]
    assert ca["spec"]["isCA"] is True
    serving = certificates["audit-sealtrail-webhook"]
    issuers = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Issuer"}
    issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    assert issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]  # not self-signed


def test_watch_namespaces_narrow_the_webhook_too() -> None:
    (config,) = [doc for doc in render("watchNamespaces={payments,billing}")
                 if doc["kind"] == "MutatingWebhookConfiguration"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "In",
            "values": ["payments", "billing"]} in (
        config["webhooks"][0]["namespaceSelector"]["matchExpressions"])


def test_worker_pull_secrets_reach_the_operator() -> None:
    deployment = next(doc for doc in render("worker.imagePullSecrets={regcred}")
                      if doc["kind"] == "Deployment")
    assert "--worker-image-pull-secret=regcred" in (
        deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_prometheus_scrapes_workers_with_a_metrics_only_credential() -> None:
    docs = render("monitoring.podMonitor.enabled=true")
    (monitor,) = [doc for doc in docs if doc["kind"] == "PodMonitor"
                  and doc["metadata"]["name"].endswith("-workers")]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": "audit-sealtrail-metrics-token",
                                                        "key": "token"}
    (secret,) = [doc for doc in docs if doc["kind"] == "Secret"
                 and doc["metadata"]["name"] == "audit-sealtrail-metrics-token"]
    assert len(base64.b64decode(secret["data"]["token"])) == 40


def test_prometheus_scrapes_the_operator_on_its_probe_port() -> None:
    docs = render("monitoring.podMonitor.enabled=true", "monitoring.podMonitor.labels.team=audit")
    (monitor,) = [doc for doc in docs if doc["kind"] == "PodMonitor"
                  and doc["metadata"]["name"] == "audit-sealtrail-operator"]
    assert monitor["metadata"]["namespace"] == "sealtrail"
    assert monitor["metadata"]["labels"]["team"] == "audit"  # Prometheus's podMonitorSelector
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["sealtrail"]}
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    assert spec["selector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("healthz", "/metrics")
    assert "authorization" not in endpoint  # the probe port's /metrics is open
    (container,) = pod["spec"]["containers"]
    assert {"name": "healthz", "containerPort": 8080} in container["ports"]
    assert "--liveness-port=8080" in container["args"]  # where the operator serves /metrics
    # The fixed job label the operator's alerts select on (files/alerts.yaml).
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "sealtrail-operator"}]
    assert "sealtrail.dev/policy" not in pod["metadata"]["labels"]  # not the workers' monitor's
    assert not [doc for doc in render() if doc["kind"] == "PodMonitor"]  # off by default
