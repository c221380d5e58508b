"""The operator's pure planners: worker config, sidecar patch, collector objects, admission.

Golden files under tests/golden/operator/ hold what the planners produce for the example
resources in tests/golden/operator/inputs/ (regenerate them with SEALTRAIL_UPDATE_GOLDEN=1 and
read the diff). The behaviour tests check what a golden file cannot show at a glance: every
config validates as a WorkerConfig and every object against the Kubernetes 1.37 schemas; no
Secret becomes an env var or a subPath; every path the config names lies on a volume the
worker mounts; missing Secrets are reported and their exports left out; the admission answer
is a patch that applies to the very pod the planner promised, and never a refusal.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from sealtrail.api.resources import AuditExportSpec
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.operator import naming
from sealtrail.operator.admission import Admission, decide
from sealtrail.operator.collector import collector_status, plan_collector, stale_objects
from sealtrail.operator.inject import SidecarPlan, new_pod_reasons, plan_sidecar
from sealtrail.operator.render import (
    Policy,
    RenderedConfig,
    RenderResult,
    config_map,
    export_from_object,
    render_worker_config,
    secret_keys_of,
)

GOLDEN = Path(__file__).parent / "golden" / "operator"
INPUTS = GOLDEN / "inputs"
IMAGE = "ghcr.io/sealtrail/sealtrail:0.1.0"
K8S_VERSION = "1.37.0"
NAMESPACE = "payments"
UPDATE = os.environ.get("SEALTRAIL_UPDATE_GOLDEN") == "1"


# --- inputs -----------------------------------------------------------------------------------


def _documents(name: str) -> list[dict[str, Any]]:
    with (INPUTS / name).open(encoding="utf-8") as stream:
        return [document for document in yaml.safe_load_all(stream) if document]


def _by_name(name: str) -> dict[str, dict[str, Any]]:
    return {str(document["metadata"].get("name") or document["metadata"]["generateName"]):
            document for document in _documents(name)}


def exports() -> dict[str, AuditExportSpec]:
    return dict(export_from_object(obj) for obj in _documents("exports.yaml"))


def secret_keys() -> dict[str, frozenset[str]]:
    return secret_keys_of(_documents("secrets.yaml"))


def policy(name: str) -> Policy:
    return Policy.from_object(_by_name("policies.yaml")[name])


def pod(name: str) -> dict[str, Any]:
    return copy.deepcopy(_by_name("pods.yaml")[name])


def render(name: str, keys: Mapping[str, frozenset[str]] | None = None,
           exports_: Mapping[str, AuditExportSpec] | None = None) -> RenderResult:
    return render_worker_config(policy(name), exports() if exports_ is None else exports_,
                                secret_keys() if keys is None else keys)


def rendered(name: str) -> RenderedConfig:
    result = render(name)
    assert result.rendered is not None, result.problems
    return result.rendered


POLICIES = ("two-exports", "unknown-export", "namespace-tenant", "checkpoints", "apiserver")
SIDECAR_POLICIES = tuple(name for name in POLICIES if name != "apiserver")
PODS = ("payments-7c9f8-", "payments-with-extras", "payments-injected")


# --- golden files -----------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (worker.yaml inside a ConfigMap) as literal blocks, to be readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def check_golden(name: str, data: Any) -> None:
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)
    path = GOLDEN / f"{name}.yaml"
    if UPDATE:
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), (f"{path} is missing; create it with SEALTRAIL_UPDATE_GOLDEN=1 "
                           ".venv/bin/python -m pytest tests/test_operator_planners.py")
    expected = path.read_text(encoding="utf-8")
    assert text == expected, (
        f"{path.name} differs from what the planner now produces; if the change is intended, "
        "regenerate with SEALTRAIL_UPDATE_GOLDEN=1 .venv/bin/python -m pytest "
        "tests/test_operator_planners.py and review the diff")


def _summary(result: RenderResult) -> dict[str, Any]:
    assert result.rendered is not None
    return {
        "matchedExports": list(result.matched_exports),
        "unknownExports": list(result.unknown_exports),
        "skippedExports": list(result.skipped_exports),
        "problems": list(result.problems),
        "configMap": config_map(policy(result.rendered.policy), result.rendered),
    }


@pytest.mark.parametrize(("golden", "name"), [
    ("config-two-exports", "two-exports"),
    ("config-unknown-export", "unknown-export"),
    ("config-namespace-tenant", "namespace-tenant"),
    ("config-checkpoints", "checkpoints"),
])
def test_config_golden(golden: str, name: str) -> None:
    check_golden(golden, _summary(render(name)))


@pytest.mark.parametrize(("golden", "pod_name"), [
    ("sidecar-plain-pod", "payments-7c9f8-"),
    ("sidecar-pod-with-extras", "payments-with-extras"),
    ("sidecar-injected-pod", "payments-injected"),
])
def test_sidecar_golden(golden: str, pod_name: str) -> None:
    plan = plan_sidecar(pod(pod_name), policy("two-exports"), rendered("two-exports"),
                        default_image=IMAGE)
    check_golden(golden, {"outcome": plan.outcome, "patch": plan.patch, "pod": plan.pod})


def test_collector_golden() -> None:
    plan = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    check_golden("collector", {"warnings": list(plan.warnings), "statefulSet": plan.stateful_set,
                               "service": plan.service, "configMap": plan.config_map,
                               "podDisruptionBudget": plan.pod_disruption_budget})


def _collector_policy(**collector: Any) -> Policy:
    raw = copy.deepcopy(_by_name("policies.yaml")["apiserver"])
    raw["spec"]["collector"].update(collector)
    return Policy.from_object(raw)


def test_collector_with_a_pinned_cluster_ip_golden() -> None:
    """What changes when `spec.collector.clusterIP` is set: the Service asks for that IP."""
    pinned = _collector_policy(clusterIP="10.96.100.20")
    plan = plan_collector(pinned, rendered("apiserver"), default_image=IMAGE)
    check_golden("collector-pinned-service", {
        "service": plan.service,
        "status": collector_status(pinned, ["10.96.100.20"]),
        "staleInSidecarMode": [],
    })
    unpinned = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    assert "clusterIP" not in unpinned.service["spec"], "unpinned: the apiserver allocates"


def test_a_storage_change_only_changes_the_claim_template_golden() -> None:
    """`storageSize` and `storageClassName` reach only `volumeClaimTemplates`.

    The API cannot update those in place: `Kube.apply_recreating` re-creates the StatefulSet.
    """
    before = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    after = plan_collector(_collector_policy(storageSize="50Gi", storageClassName="slow-hdd"),
                           rendered("apiserver"), default_image=IMAGE)
    changed = {key for key in before.stateful_set["spec"]
               if before.stateful_set["spec"][key] != after.stateful_set["spec"][key]}
    assert changed == {"volumeClaimTemplates"}
    assert before.service == after.service
    assert before.pod_disruption_budget == after.pod_disruption_budget
    check_golden("collector-storage-change", {
        "before": before.stateful_set["spec"]["volumeClaimTemplates"],
        "after": after.stateful_set["spec"]["volumeClaimTemplates"]})


# --- every output is valid --------------------------------------------------------------------


def k8s_valid(obj: Mapping[str, Any]) -> None:
    kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)


def _labels_valid(obj: Mapping[str, Any]) -> None:
    """What the OpenAPI schema does not check: names and label values are DNS labels."""
    for key, value in (obj.get("metadata") or {}).get("labels", {}).items():
        if key.startswith(("app.kubernetes.io/", "sealtrail.dev/")):
            assert len(value) <= 63, (key, value)
    for volume in obj.get("spec", {}).get("volumes") or []:
        assert naming.is_dns_label(volume["name"]), volume["name"]


@pytest.mark.parametrize("name", POLICIES)
def test_every_rendered_config_validates_as_worker_config(name: str) -> None:
    result = rendered(name)
    parsed = yaml.safe_load(result.text)
    assert WorkerConfig.model_validate(parsed) == result.config
    assert result.config_hash == hashlib.sha256(result.text.encode()).hexdigest()[:16]
    assert rendered(name).text == result.text, "rendering is deterministic"
    k8s_valid(config_map(policy(name), result))


@pytest.mark.parametrize("pod_name", PODS)
@pytest.mark.parametrize("name", SIDECAR_POLICIES)
def test_the_patch_applied_by_jsonpatch_is_the_promised_pod_and_valid(name: str,
                                                                      pod_name: str) -> None:
    before = pod(pod_name)
    plan = plan_sidecar(before, policy(name), rendered(name), default_image=IMAGE)
    applied = jsonpatch.apply_patch(before, plan.patch)
    assert applied == plan.pod
    assert before == pod(pod_name), "the input pod is not changed"
    k8s_valid(applied)
    _labels_valid(applied)


def test_collector_objects_are_valid() -> None:
    plan = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    pinned = plan_collector(_collector_policy(clusterIP="fd00:10:96::20"),
                            rendered("apiserver"), default_image=IMAGE)
    for obj in (plan.stateful_set, plan.service, plan.config_map, plan.pod_disruption_budget,
                pinned.service):
        k8s_valid(obj)
        _labels_valid(obj)
    _labels_valid(plan.stateful_set["spec"]["template"])


# --- secrets: mounted whole, read-only, never env or subPath ----------------------------------


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, value
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, (*path, str(key)))
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from _walk(item, (*path, str(number)))


def _worker_pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in SIDECAR_POLICIES:
        for pod_name in PODS[:2]:
            plan = plan_sidecar(pod(pod_name), policy(name), rendered(name), default_image=IMAGE)
            yield name, plan.pod["spec"]
    collector = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    yield "apiserver", collector.stateful_set["spec"]["template"]["spec"]


def _worker(spec: Mapping[str, Any]) -> dict[str, Any]:
    containers = [*(spec.get("initContainers") or []), *spec["containers"]]
    return next(c for c in containers if c["name"] == naming.CONTAINER_NAME)


def test_no_secret_is_an_env_var_or_a_subpath() -> None:
    for _, spec in _worker_pod_specs():
        for path, value in _walk(spec):
            assert path[-1:] not in (("subPath",), ("subPathExpr",), ("secretKeyRef",),
                                     ("secretRef",)), path
            if path[-1:] == ("env",):
                assert all(set(item) == {"name", "value"} for item in value), value
        assert "env" not in _worker(spec)


def _secret_refs(name: str) -> list[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef the policy and its rendered exports name."""
    spec = policy(name).spec
    refs = [spec.checkpoints.signing_key]
    if spec.mode == "collector":
        refs.append(spec.collector.ingest_token)
    all_exports = exports()
    refs += [ref for entry in rendered(name).config.exports
             for _, ref in all_exports[entry.name].credentials()]
    return [(ref.secret_key_ref.name, ref.secret_key_ref.key) for ref in refs
            if ref is not None and ref.secret_key_ref is not None]


@pytest.mark.parametrize("name", POLICIES)
def test_every_referenced_secret_is_mounted_read_only_where_the_config_says(name: str) -> None:
    refs = _secret_refs(name)
    assert refs
    config_files = {value for path, value in _walk(yaml.safe_load(rendered(name).text))
                    if path[-1:] == ("file",)}
    for _, spec in (item for item in _worker_pod_specs() if item[0] == name):
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in _worker(spec)["volumeMounts"]}
        for secret, key in refs:
            mount = mounts[f"/etc/sealtrail/secrets/{secret}"]
            assert mount["readOnly"] is True
            assert volumes[mount["name"]]["secret"] == {"secretName": secret}
            assert f"/etc/sealtrail/secrets/{secret}/{key}" in config_files


def test_a_tls_secret_is_mounted_read_only_where_the_config_says() -> None:
    tls = next(e.tls for e in rendered("two-exports").config.exports if e.name == "elastic-siem")
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        "/etc/sealtrail/tls/es-tls/ca.crt", "/etc/sealtrail/tls/es-tls/tls.crt",
        "/etc/sealtrail/tls/es-tls/tls.key")
    for _, spec in (item for item in _worker_pod_specs() if item[0] == "two-exports"):
        mount = next(m for m in _worker(spec)["volumeMounts"]
                     if m["mountPath"] == "/etc/sealtrail/tls/es-tls")
        assert mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"] == {"secretName": "es-tls"}


_PATH_KEYS = {"file", "caFile", "certFile", "keyFile"}


@pytest.mark.parametrize("name", POLICIES)
def test_every_path_in_the_config_lies_on_a_mounted_volume(name: str) -> None:
    config = yaml.safe_load(rendered(name).text)
    paths = [value for path, value in _walk(config) if path[-1:] and path[-1] in _PATH_KEYS]
    paths.append(config["store"]["path"])
    assert len(paths) > 1
    for _, spec in (item for item in _worker_pod_specs() if item[0] == name):
        worker = _worker(spec)
        assert worker["args"] == ["worker", "--config", naming.CONFIG_PATH]
        mounted = {mount["mountPath"]: mount for mount in worker["volumeMounts"]}
        assert naming.CONFIG_DIR in mounted
        for file in paths:
            directory = next((where for where in mounted if file.startswith(where + "/")), None)
            assert directory is not None, f"{file} is on no volume of the worker"
            writable = file == naming.STORE_PATH
            assert mounted[directory].get("readOnly", False) is not writable, file


def test_a_tls_secret_with_only_a_ca_gives_only_a_ca_file() -> None:
    keys = secret_keys() | {"es-tls": frozenset({"ca.crt"})}
    result = render("two-exports", keys)
    assert result.rendered is not None
    elastic = next(e for e in result.rendered.config.exports if e.name == "elastic-siem")
    assert elastic.tls.ca_file == "/etc/sealtrail/tls/es-tls/ca.crt"
    assert elastic.tls.cert_file is None
    assert elastic.tls.key_file is None
    assert not result.problems


# --- problems: reported, and the export left out ----------------------------------------------


def test_a_missing_secret_key_is_a_problem_and_the_export_is_left_out() -> None:
    keys = secret_keys() | {"hec": frozenset({"hec-token"})}
    result = render("two-exports", keys)
    assert result.problems == (
        ('auditexport/splunk-prod: spec.splunk.token.secretKeyRef: Secret "hec" has no key '
        '"token"'),)
    assert result.matched_exports == ("splunk-prod", "elastic-siem")
    assert result.skipped_exports == ("splunk-prod",)
    assert result.rendered is not None
    assert [e.name for e in result.rendered.config.exports] == ["elastic-siem"]
    assert [r.exports for r in result.rendered.config.routes] == [["elastic-siem"]] * 2
    assert "hec" not in {mount.secret for mount in result.rendered.mounts}
    assert "/etc/sealtrail/secrets/hec" not in result.rendered.text


def test_missing_secrets_and_tls_keys_name_the_export_and_field() -> None:
    keys = {name: value for name, value in secret_keys().items() if name != "es-credentials"}
    keys["es-tls"] = frozenset({"tls.crt"})
    result = render("two-exports", keys)
    assert result.problems == (
        ('auditexport/elastic-siem: spec.elastic.auth.basic.password.secretKeyRef: Secret '
        '"es-credentials" not found'),
        ('auditexport/elastic-siem: spec.tls.secretName: Secret "es-tls" has key "tls.crt" but '
        'no key "tls.key"'),
        ("auditpolicy/two-exports: spec.routes[1]: none of its exports can be rendered, so the "
        "rows it matches go nowhere until they can"),
    )
    assert result.rendered is not None
    assert [e.name for e in result.rendered.config.exports] == ["splunk-prod"]
    assert [r.exports for r in result.rendered.config.routes] == [["splunk-prod"], []]


def test_unknown_exports_are_reported_and_their_rules_send_nowhere() -> None:
    result = render("unknown-export")
    assert result.unknown_exports == ("missing-siem",)
    assert result.matched_exports == ("splunk-prod", "elastic-siem")
    assert result.rendered is not None
    routes = result.rendered.config.routes
    # The globex rule stays, sending nowhere: dropped, its rows would fall to the catch-all.
    assert [(r.tenants, r.exports) for r in routes] == [
        (["acme"], ["splunk-prod"]), (["globex"], []), (["*"], ["elastic-siem"])]
    assert 'no AuditExport "missing-siem" in namespace "payments"' in result.problems[0]


def test_a_missing_checkpoint_key_means_no_config_rather_than_no_checkpoints() -> None:
    keys = secret_keys() | {"checkpoint-key": frozenset({"other.pem"})}
    result = render("checkpoints", keys)
    assert result.rendered is None
    assert result.problems == (
        ('auditpolicy/checkpoints: spec.checkpoints.signingKey.secretKeyRef: Secret '
        '"checkpoint-key" has no key "ed25519.pem"'),)
    assert result.matched_exports == ("splunk-prod",)


def test_a_collector_without_a_token_is_rendered_with_a_warning() -> None:
    raw = copy.deepcopy(_by_name("policies.yaml")["apiserver"])
    del raw["spec"]["collector"]["ingestToken"]
    result = render_worker_config(Policy.from_object(raw), exports(), secret_keys())
    assert result.rendered is not None
    assert result.rendered.config.ingest.tokens == []
    assert result.rendered.config.ingest.listen == "[::]:8470"
    assert result.problems == (
        ("auditpolicy/apiserver: spec.collector.ingestToken: not set, so the collector accepts "
        "events from anyone who can reach its Service"),)


def test_the_collector_token_is_a_file_for_every_tenant() -> None:
    config = rendered("apiserver").config
    assert [(t.token.file, t.tenants) for t in config.ingest.tokens] == [
        ("/etc/sealtrail/secrets/collector-token/token", ["*"])]
    assert config.ingest.processes == 2


# --- the sidecar ------------------------------------------------------------------------------


def _plan(pod_name: str, name: str = "two-exports") -> SidecarPlan:
    return plan_sidecar(pod(pod_name), policy(name), rendered(name), default_image=IMAGE)


def test_the_worker_is_the_first_init_container_a_hardened_native_sidecar() -> None:
    plan = _plan("payments-with-extras")
    first, *rest = plan.pod["spec"]["initContainers"]
    assert first["name"] == naming.CONTAINER_NAME
    assert first["restartPolicy"] == "Always"
    assert [c["name"] for c in rest] == ["migrate"]
    assert first["securityContext"]["readOnlyRootFilesystem"] is True
    assert first["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {p["name"]: p["containerPort"] for p in first["ports"]} == {
        "st-ingest": 8470, "st-admin": 8471}
    assert first["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "st-admin"}
    assert first["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "st-admin"}
    assert first["image"] == IMAGE
    assert _plan("payments-with-extras", "checkpoints").pod["spec"]["initContainers"][0][
        "image"] == "registry.example.com/sealtrail:0.1.0-custom"


def test_patch_paths_create_missing_arrays_and_append_to_existing_ones() -> None:
    plain = [(op["op"], op["path"]) for op in _plan("payments-7c9f8-").patch]
    assert plain == [
        ("add", "/metadata/labels/sealtrail.dev~1policy"),
        ("add", "/metadata/annotations"),
        ("add", "/spec/containers/0/env"),
        ("add", "/spec/initContainers"),
        ("add", "/spec/volumes"),
        ("add", "/spec/terminationGracePeriodSeconds"),
    ]
    extras = [(op["op"], op["path"]) for op in _plan("payments-with-extras").patch]
    assert extras[:6] == [
        ("add", "/metadata/labels/sealtrail.dev~1policy"),
        ("add", "/metadata/annotations/sealtrail.dev~1injected"),
        ("add", "/metadata/annotations/sealtrail.dev~1config-hash"),
        ("add", "/metadata/annotations/sealtrail.dev~1restart-hash"),
        # env first: the init container keeps index 0 until the worker is inserted before it
        ("add", "/spec/initContainers/0/env/-"),
        ("add", "/spec/containers/0/env/-"),
    ]
    assert extras[6] == ("add", "/spec/initContainers/0")
    assert set(extras[7:-1]) == {("add", "/spec/volumes/-")}
    assert extras[-1] == ("replace", "/spec/terminationGracePeriodSeconds")


def test_every_other_container_gets_the_url_unless_it_sets_one() -> None:
    spec = _plan("payments-with-extras").pod["spec"]
    urls = {c["name"]: [e["value"] for e in c.get("env", []) if e["name"] == "SEALTRAIL_URL"]
            for c in [*spec["initContainers"], *spec["containers"]]}
    assert urls == {"sealtrail-worker": [], "migrate": ["http://127.0.0.1:8470"],
                    "app": ["http://127.0.0.1:8470"], "proxy": ["http://127.0.0.1:9999"]}


def test_labels_annotations_and_grace_period() -> None:
    plan = _plan("payments-with-extras", "checkpoints")
    metadata = plan.pod["metadata"]
    assert metadata["labels"] == {"app": "payments", "tier": "backend",
                                  "sealtrail.dev/policy": "checkpoints"}
    assert metadata["annotations"] == {
        "team": "payments", "sealtrail.dev/injected": "true",
        "sealtrail.dev/config-hash": rendered("checkpoints").config_hash,
        "sealtrail.dev/restart-hash": rendered("checkpoints").restart_hash}
    # The app's own 5 s, then the worker's drain of 45 s, then 5 s to exit: the kubelet
    # stops the sidecar only after the app, from one grace period.
    assert plan.pod["spec"]["terminationGracePeriodSeconds"] == 55
    assert {"op": "replace", "path": "/spec/terminationGracePeriodSeconds",
            "value": 55} in plan.patch
    worker = plan.pod["spec"]["initContainers"][0]
    assert worker["lifecycle"] == {"preStop": {"httpGet": {
        "path": "/v1/lifecycle/pre-stop?grace=55", "port": "st-admin"}}}
    # Unset means Kubernetes' 30 s for the app: 30 + the default drain of 20 + 5.
    plain = _plan("payments-7c9f8-").pod["spec"]
    assert plain["terminationGracePeriodSeconds"] == 55
    assert plain["initContainers"][0]["lifecycle"]["preStop"]["httpGet"]["path"].endswith(
        "grace=55")
    assert _plan("payments-7c9f8-", "checkpoints").pod["spec"][
        "terminationGracePeriodSeconds"] == 80


def test_handoff_mounts_the_token_and_an_optional_ca_and_a_collector_accepts_its_token(
        ) -> None:
    sidecar = rendered("checkpoints").config.handoff
    assert sidecar is not None
    assert sidecar.accept is None
    assert sidecar.url == "https://sealtrail-collector-apiserver.payments.svc:8470"
    assert sidecar.token is not None
    assert sidecar.token.file == "/etc/sealtrail/secrets/collector-token/token"
    assert sidecar.ca_file == "/etc/sealtrail/configmaps/sealtrail-collector-apiserver-ca/ca.crt"
    volumes = {v["name"]: v for v in _plan("payments-7c9f8-", "checkpoints").pod["spec"]["volumes"]}
    # Someone else's ConfigMap: optional, so a missing one never holds the pod back.
    assert volumes["st-cm-sealtrail-collector-apiserver-ca"]["configMap"] == {
        "name": "sealtrail-collector-apiserver-ca", "optional": True}
    assert volumes["st-secret-collector-token"]["secret"] == {"secretName": "collector-token"}
    collector = rendered("apiserver").config.handoff
    assert collector is not None
    assert collector.url is None
    assert collector.accept is not None
    assert [t.file for t in collector.accept.tokens] == [
        "/etc/sealtrail/secrets/collector-token/token"]
    assert rendered("two-exports").config.handoff is None


def test_the_store_gets_its_volume_as_budget_and_retention_only_with_a_signing_key() -> None:
    signed = rendered("checkpoints").config.store
    assert signed.budget_bytes == 1024**3  # storeSize 1Gi: the emptyDir's sizeLimit
    assert signed.retention is not None
    assert signed.retention.keep_seconds == 3600
    unsigned = rendered("two-exports").config.store
    assert unsigned.retention is None  # nothing would vouch for what stays
    assert rendered("apiserver").config.store.budget_bytes == 20 * 1024**3  # its claim


def test_an_injected_pod_gets_no_patch_and_injection_is_idempotent() -> None:
    assert _plan("payments-injected").patch == []
    once = _plan("payments-7c9f8-")
    again = plan_sidecar(once.pod, policy("two-exports"), rendered("two-exports"),
                         default_image=IMAGE)
    assert (again.outcome, again.patch, again.pod) == ("already-injected", [], once.pod)


def test_an_opted_out_pod_gets_no_patch() -> None:
    opted_out = pod("payments-7c9f8-")
    opted_out["metadata"]["annotations"] = {"sealtrail.dev/inject": "false"}
    plan = plan_sidecar(opted_out, policy("two-exports"), rendered("two-exports"),
                        default_image=IMAGE)
    assert (plan.outcome, plan.patch, plan.pod) == ("opted-out", [], opted_out)


@pytest.mark.parametrize(("change", "reason"), [
    ({"volumes": [{"name": "st-store", "emptyDir": {}}]},
     "the pod already has volumes named st-store"),
    ({"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 8471}]}]},
     "container 'app' declares port 8471, which the worker needs"),
    ({"hostNetwork": True}, ("the pod uses the host's network, where the worker's ports would "
                            "be the node's and clash between pods")),
])
def test_a_clash_gets_no_patch_and_says_why(change: dict[str, Any], reason: str) -> None:
    clashing = pod("payments-7c9f8-")
    clashing["spec"] |= change
    plan = plan_sidecar(clashing, policy("two-exports"), rendered("two-exports"),
                        default_image=IMAGE)
    assert (plan.outcome, plan.patch, plan.reason) == ("conflict", [], reason)


def test_a_pod_needs_replacing_only_for_start_settings_and_new_secrets() -> None:
    injected = _plan("payments-7c9f8-").pod
    assert new_pod_reasons(injected, rendered("two-exports")) == []
    more = {**exports()}
    more["webhook"] = AuditExportSpec.model_validate({"webhook": {
        "url": "https://hooks.example.com/audit",
        "secret": {"secretKeyRef": {"name": "hook", "key": "secret"}}}})
    raw = copy.deepcopy(_by_name("policies.yaml")["two-exports"])
    raw["spec"]["routes"].append({"exports": ["webhook"]})
    raw["spec"]["worker"] = {"synchronous": "NORMAL"}
    changed = render_worker_config(Policy.from_object(raw), more,
                                   secret_keys() | {"hook": frozenset({"secret"})}).rendered
    assert changed is not None
    assert new_pod_reasons(injected, changed) == [
        "settings the worker reads only at start changed", 'Secret "hook" is not mounted']


def test_long_names_stay_within_kubernetes_limits() -> None:
    long = "a" * 40 + "." + "b" * 100
    raw = copy.deepcopy(_by_name("policies.yaml")["two-exports"])
    raw["metadata"]["name"] = long
    keys = secret_keys()
    keys[long] = keys.pop("hec")
    spec = exports()
    spec["splunk-prod"] = AuditExportSpec.model_validate({"splunk": {
        "hecUrl": "https://hec:8088", "token": {"secretKeyRef": {"name": long, "key": "token"}}}})
    result = render_worker_config(Policy.from_object(raw), spec, keys)
    assert result.rendered is not None
    plan = plan_sidecar(pod("payments-7c9f8-"), Policy.from_object(raw), result.rendered,
                        default_image=IMAGE)
    k8s_valid(plan.pod)
    _labels_valid(plan.pod)
    assert naming.is_dns_label(naming.config_map_name(long))
    assert len(naming.collector_name(long)) <= 52
    assert naming.secret_volume_name(long) != naming.secret_volume_name(long + "c")
    assert f"/etc/sealtrail/secrets/{long}/token" in result.rendered.text


# --- the collector ----------------------------------------------------------------------------


def test_the_collector_owns_its_objects_and_selects_only_its_pods() -> None:
    plan = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    owner = {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy", "name": "apiserver",
             "uid": "5a1b2c3d-0000-4000-8000-000000000005", "controller": True,
             "blockOwnerDeletion": True}
    for obj in (plan.stateful_set, plan.service, plan.config_map, plan.pod_disruption_budget):
        assert obj["metadata"]["ownerReferences"] == [owner]
        assert obj["metadata"]["labels"]["sealtrail.dev/policy"] == "apiserver"
    spec = plan.stateful_set["spec"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert plan.service["spec"]["selector"] == selector
    assert "app.kubernetes.io/component" in selector, "never an injected app pod"
    worker = spec["template"]["spec"]["containers"][0]
    assert "restartPolicy" not in worker
    assert spec["template"]["spec"]["securityContext"]["fsGroup"] == 65532
    assert spec["serviceName"] == plan.service["metadata"]["name"]
    assert [p["name"] for p in plan.service["spec"]["ports"]] == ["st-ingest", "st-admin"]


def test_the_collector_serves_https_with_the_certificate_it_mounts() -> None:
    plan = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    config = rendered("apiserver").config
    assert config.ingest.tls is not None
    pod_spec = plan.stateful_set["spec"]["template"]["spec"]
    volume = next(v for v in pod_spec["volumes"] if v["name"] == naming.VOLUME_COLLECTOR_TLS)
    assert volume["secret"] == {"secretName": "sealtrail-collector-apiserver-tls"}
    mount = next(m for m in pod_spec["containers"][0]["volumeMounts"]
                 if m["name"] == naming.VOLUME_COLLECTOR_TLS)
    assert mount == {"name": "st-ingest-tls", "mountPath": naming.COLLECTOR_TLS_DIR,
                     "readOnly": True}
    for path in (config.ingest.tls.cert_file, config.ingest.tls.key_file):
        assert path.startswith(naming.COLLECTOR_TLS_DIR + "/")
    assert rendered("two-exports").config.ingest.tls is None, "a sidecar's loopback: plain"


def test_the_budget_lets_a_drain_through_one_replica_at_a_time() -> None:
    for replicas in (1, 3):
        plan = plan_collector(_collector_policy(replicas=replicas), rendered("apiserver"),
                              default_image=IMAGE)
        budget = plan.pod_disruption_budget["spec"]
        assert budget["maxUnavailable"] == 1, "never minAvailable: 1, which blocks every drain"
        assert "minAvailable" not in budget
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert budget["selector"] == plan.stateful_set["spec"]["selector"]


def test_sidecar_mode_names_every_collector_object_but_the_claims_as_stale() -> None:
    raw = copy.deepcopy(_by_name("policies.yaml")["apiserver"])
    raw["spec"]["mode"] = "sidecar"
    stale = stale_objects(Policy.from_object(raw))
    plan = plan_collector(policy("apiserver"), rendered("apiserver"), default_image=IMAGE)
    planned = {(obj["kind"], obj["metadata"]["name"]) for obj in (
        plan.stateful_set, plan.service, plan.pod_disruption_budget)}
    assert planned <= {(ref.kind, ref.name) for ref in stale}
    assert {(ref.kind, ref.name) for ref in stale} - planned == {
        ("Secret", "sealtrail-collector-apiserver-tls"),
        ("Secret", "sealtrail-collector-apiserver-ca"),
        ("ConfigMap", "sealtrail-collector-apiserver-ca")}
    assert all(ref.namespace == NAMESPACE for ref in stale)
    assert naming.config_map_name("apiserver") not in {ref.name for ref in stale}, (
        "the worker ConfigMap is both modes'")
    assert "PersistentVolumeClaim" not in {ref.kind for ref in stale}
    assert stale_objects(policy("apiserver")) == (), "the sidecar mode owns nothing else"


def test_more_than_one_collector_replica_is_planned_with_a_warning() -> None:
    raw = copy.deepcopy(_by_name("policies.yaml")["apiserver"])
    raw["spec"]["collector"]["replicas"] = 3
    plan = plan_collector(Policy.from_object(raw), rendered("apiserver"), default_image=IMAGE)
    assert plan.stateful_set["spec"]["replicas"] == 3
    assert "told apart in the SIEM by store_id" in plan.warnings[0]


def test_a_policy_is_planned_only_in_its_own_mode() -> None:
    with pytest.raises(ValueError, match="collector"):
        plan_sidecar(pod("payments-7c9f8-"), policy("apiserver"), rendered("apiserver"),
                     default_image=IMAGE)
    with pytest.raises(ValueError, match="sidecar"):
        plan_collector(policy("two-exports"), rendered("two-exports"), default_image=IMAGE)


# --- admission --------------------------------------------------------------------------------


def answer(obj: Mapping[str, Any], *, names: tuple[str, ...] = POLICIES,
           keys: Mapping[str, frozenset[str]] | None = None,
           namespace: str = NAMESPACE) -> Admission:
    return decide(obj, namespace, policies=[policy(n) for n in names], exports=exports(),
                  secret_keys=secret_keys() if keys is None else keys, default_image=IMAGE)


def test_a_matching_pod_becomes_the_planned_pod() -> None:
    obj = pod("payments-7c9f8-")
    before = copy.deepcopy(obj)
    admission = answer(obj)
    assert admission.pod == _plan("payments-7c9f8-").pod
    assert admission.warnings == []
    assert obj == before  # the request's pod is not changed in place


def test_a_pod_no_policy_matches_is_left_as_it_is() -> None:
    obj = pod("payments-7c9f8-")
    obj["metadata"]["labels"] = {"app": "other"}
    assert answer(obj) == Admission()


@pytest.mark.parametrize("case", ["opted-out", "injected", "other-namespace", "collector-only"])
def test_nothing_changes_when_sealtrail_has_nothing_to_do(case: str) -> None:
    obj = pod("payments-7c9f8-")
    names = POLICIES
    namespace = NAMESPACE
    if case == "opted-out":
        obj["metadata"]["annotations"] = {"sealtrail.dev/inject": "false"}
    elif case == "injected":
        obj = pod("payments-injected")
    elif case == "other-namespace":  # policies apply to their own namespace only
        obj["metadata"]["namespace"] = namespace = "elsewhere"
    elif case == "collector-only":
        obj["metadata"]["labels"] = {}  # apiserver's empty selector matches every pod
        names = ("apiserver",)
    assert answer(obj, names=names, namespace=namespace) == Admission()


def test_a_policy_that_cannot_render_admits_the_pod_with_a_warning() -> None:
    obj = pod("payments-7c9f8-")
    obj["metadata"]["labels"] = {"app": "vault"}
    keys = {name: value for name, value in secret_keys().items() if name != "checkpoint-key"}
    admission = answer(obj, keys=keys)
    assert admission.pod is None
    assert admission.warnings == [
        ("sealtrail: auditpolicy/checkpoints matches this pod, but its worker config cannot be "
        "rendered, so the pod runs without an audit worker: auditpolicy/checkpoints: "
        'spec.checkpoints.signingKey.secretKeyRef: Secret "checkpoint-key" not found')]


def test_a_clashing_pod_is_admitted_without_a_worker_and_a_warning() -> None:
    obj = pod("payments-7c9f8-")
    obj["spec"]["volumes"] = [{"name": "st-tmp", "emptyDir": {}}]
    admission = answer(obj)
    assert admission.pod is None
    assert admission.warnings == [
        ("sealtrail: auditpolicy/two-exports matches this pod, but the worker was not injected: "
        "the pod already has volumes named st-tmp")]


def test_two_matching_policies_inject_the_first_by_name_and_warn() -> None:
    obj = pod("payments-with-extras")  # app=payments (two-exports), tier=backend
    admission = answer(obj)
    assert admission.pod is not None
    assert admission.pod["metadata"]["labels"]["sealtrail.dev/policy"] == "namespace-tenant"
    assert admission.warnings == [
        ("sealtrail: auditpolicy/two-exports also matches this pod; a pod gets one worker, "
        "auditpolicy/namespace-tenant's (the first by name)")]


def test_export_problems_reach_the_pod_creator_as_warnings() -> None:
    keys = secret_keys() | {"hec": frozenset()}
    admission = answer(pod("payments-7c9f8-"), keys=keys)
    assert admission.pod is not None
    assert admission.warnings[0] == (
        'sealtrail: auditexport/splunk-prod: spec.splunk.token.secretKeyRef: Secret "hec" has '
        'no key "token"')
