"""The Kubernetes API emulator (tests/kube) against the clients that will use it.

Mostly through the real kubectl (`.tools/bin/kubectl` v1.37) — discovery, `apply` of a CRD and
of its custom resources, printer columns, validation errors as kubectl prints them, patches of
every type, finalizers — and through plain HTTP for the wire-level semantics an operator relies
on: resourceVersion conflicts, generation, the status subresource, watch replay, bookmarks and
410 Gone, selectors, namespaces, garbage collection and admission webhooks over HTTPS. One test
runs a small kopf 1.45.2 operator as a process against the emulator, one runs the emulator as a
process.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kube.emulator import KubeEmulator
from tests.kube.kubectl import Kubectl
from tests.receivers.http_base import HttpReceiver, Request, Response, free_port

ROOT = Path(__file__).resolve().parent.parent

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    selectableFields: [{jsonPath: .spec.mode}]
    additionalPrinterColumns:
    - {name: Mode, type: string, jsonPath: .spec.mode}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Lag, type: integer, jsonPath: .status.cursorLag}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [url]
            x-kubernetes-validations:
            - rule: "self.minReplicas <= self.maxReplicas"
              message: "minReplicas must not exceed maxReplicas"
            properties:
              url: {type: string, pattern: '^https?://'}
              mode: {type: string, enum: [push, pull], default: push}
              minReplicas: {type: integer, minimum: 0, default: 1}
              maxReplicas: {type: integer, maximum: 10, default: 3}
              region:
                type: string
                maxLength: 12
                x-kubernetes-validations:
                - {rule: "self == oldSelf", message: "region is immutable"}
              tags: {type: array, maxItems: 2, items: {type: string, minLength: 1}}
              labels: {type: object, maxProperties: 2, additionalProperties: {type: string}}
              port: {x-kubernetes-int-or-string: true}
              note: {type: string, nullable: true}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
              retention:
                type: object
                x-kubernetes-validations:
                - rule: "self.days >= 1"
                  messageExpression: "'must keep at least 1 day, not ' + string(self.days)"
                  fieldPath: .days
                properties:
                  days: {type: integer, default: 7}
          status:
            type: object
            properties:
              phase: {type: string}
              cursorLag: {type: integer}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
"""

WIDGETS = "/apis/example.dev/v1alpha1/namespaces/default/widgets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.dev/v1alpha1", "kind": "Widget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"url": "https://siem.example", **spec}}


def configmap(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "data": {"k": "v"}}


@pytest.fixture
def emulator() -> Iterator[KubeEmulator]:
    server = KubeEmulator(bookmark_interval=0.2).start()
    try:
        yield server
    finally:
        server.stop()
    assert server.errors == [], "the emulator failed internally"


@pytest.fixture
def crd_emulator(emulator: KubeEmulator) -> KubeEmulator:
    emulator.create(yaml.safe_load(WIDGET_CRD))
    return emulator


@pytest.fixture
def kubectl(emulator: KubeEmulator, tmp_path: Path) -> Kubectl:
    return Kubectl(emulator, tmp_path)


@pytest.fixture
def http(emulator: KubeEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=10) as client:
        yield client


def watch(http: httpx.Client, path: str, until: int | None = None,
          **params: str) -> list[dict[str, Any]]:
    """The events of a watch, until the server ends it or `until` changes have arrived.

    Give timeoutSeconds, so that the server ends it in any case.
    """
    events: list[dict[str, Any]] = []
    with http.stream("GET", path, params={"watch": "true", **params}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.strip():
                events.append(json.loads(line))
            if until is not None and sum(e["type"] != "BOOKMARK" for e in events) >= until:
                break
    return events


# -- kubectl -----------------------------------------------------------------------------------


def test_kubectl_discovers_builtin_and_crd_served_resources(kubectl: Kubectl):
    version = kubectl.ok("version", "-o", "json")
    assert json.loads(version)["serverVersion"]["gitVersion"] == "v1.37.1"
    kubectl.ok("apply", "-f", "-", stdin=WIDGET_CRD)
    listed = kubectl.ok("api-resources", "--no-headers")
    rows = {tuple(line.split()[:1]) + tuple(line.split()[-3:]) for line in listed.splitlines()}
    assert ("pods", "v1", "true", "Pod") in rows
    assert ("deployments", "apps/v1", "true", "Deployment") in rows
    assert ("leases", "coordination.k8s.io/v1", "true", "Lease") in rows
    assert ("mutatingwebhookconfigurations", "admissionregistration.k8s.io/v1", "false",
            "MutatingWebhookConfiguration") in rows
    assert ("widgets", "example.dev/v1alpha1", "true", "Widget") in rows
    assert "wg" in next(line for line in listed.splitlines() if line.startswith("widgets"))
    assert kubectl.ok("get", "ns", "-o", "name").split() == [
        "namespace/default", "namespace/kube-node-lease", "namespace/kube-public",
        "namespace/kube-system"]


def test_kubectl_apply_crd_and_custom_resource_with_printer_columns(
        kubectl: Kubectl, emulator: KubeEmulator):
    assert "created" in kubectl.ok("apply", "-f", "-", stdin=WIDGET_CRD)
    manifest = yaml.safe_dump(widget("w1", mode="pull"))
    assert kubectl.ok("apply", "-f", "-", stdin=manifest).strip() == \
        "widget.example.dev/w1 created"
    assert kubectl.ok("apply", "-f", "-", stdin=manifest).strip() == \
        "widget.example.dev/w1 unchanged"

    stored = emulator.get("widgets", "w1", "default")
    assert stored is not None
    assert stored["spec"] == {"url": "https://siem.example", "mode": "pull", "minReplicas": 1,
                              "maxReplicas": 3}  # defaults filled in by the server
    applied = json.loads(stored["metadata"]["annotations"][
        "kubectl.kubernetes.io/last-applied-configuration"])
    assert applied["spec"] == {"url": "https://siem.example", "mode": "pull"}

    emulator.set_status("widgets", "w1", {"cursorLag": 42, "conditions": [
        {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}, "default")
    header, row = kubectl.ok("get", "widgets").splitlines()
    assert header.split() == ["NAME", "MODE", "READY", "LAG", "AGE"]
    assert row.split()[:4] == ["w1", "pull", "True", "42"]
    assert row.split()[4].endswith("s")  # an age such as 0s
    shown = json.loads(kubectl.ok("get", "wg", "w1", "-o", "json"))
    assert shown["status"]["cursorLag"] == 42
    assert shown["metadata"]["generation"] == 1


def test_kubectl_reports_invalid_custom_resources_with_the_field_named(kubectl: Kubectl):
    kubectl.ok("apply", "-f", "-", stdin=WIDGET_CRD)
    bad = yaml.safe_dump(widget("bad", url="ftp://x", mode="sideways", minReplicas=5,
                                maxReplicas=2))
    result = kubectl("apply", "-f", "-", stdin=bad)
    assert result.returncode != 0
    assert 'The Widget "bad" is invalid' in result.stderr
    assert ("spec.url: Invalid value: \"ftp://x\": spec.url in body should match '^https?://'"
            in result.stderr)
    assert 'spec.mode: Unsupported value: "sideways": supported values: "push", "pull"' \
        in result.stderr
    assert 'spec: Invalid value: "object": minReplicas must not exceed maxReplicas' \
        in result.stderr
    assert "NotFound" in kubectl("get", "widget", "bad").stderr

    unknown = yaml.safe_dump(widget("w2", colour="blue"))
    result = kubectl("apply", "-f", "-", stdin=unknown)
    assert result.returncode != 0
    assert 'strict decoding error: unknown field "spec.colour"' in result.stderr
    assert kubectl("apply", "--validate=false", "-f", "-", stdin=unknown).returncode == 0
    assert "colour" not in kubectl.ok("get", "widget", "w2", "-o", "jsonpath={.spec}")  # pruned


def test_kubectl_pods_and_protobuf_creates(kubectl: Kubectl, emulator: KubeEmulator):
    assert "No resources found in default namespace." in kubectl("get", "pods").stderr
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "labels": {"a": "b"}},
           "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}}
    assert "pod/p1 created" in kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(pod))
    assert "pod/p1 unchanged" in kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(pod))
    assert kubectl.ok("get", "pods", "--no-headers").split()[:4] == ["p1", "0/1", "Pending", "0"]
    emulator.set_pod_status("default", "p1")
    row = kubectl.ok("get", "pods", "-o", "wide", "--no-headers").split()
    assert row[:4] == ["p1", "1/1", "Running", "0"]
    assert "127.0.0.1" in row
    stored = json.loads(kubectl.ok("get", "pod", "p1", "-o", "json"))
    assert stored["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert stored["spec"]["serviceAccountName"] == "default"

    # The typed clients behind `kubectl create <kind>` send protobuf bodies.
    kubectl.ok("create", "namespace", "team-a")
    kubectl.ok("create", "secret", "generic", "token", "-n", "team-a", "--from-literal=t=s3cr3t")
    kubectl.ok("create", "configmap", "settings", "-n", "team-a", "--from-literal=a=1")
    secret = emulator.get("secrets", "token", "team-a")
    assert secret is not None
    assert base64.b64decode(secret["data"]["t"]) == b"s3cr3t"
    assert secret["type"] == "Opaque"
    settings = emulator.get("configmaps", "settings", "team-a")
    assert settings is not None
    assert settings["data"] == {"a": "1"}
    namespace = emulator.get("namespaces", "team-a")
    assert namespace is not None
    assert namespace["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    assert "default" in kubectl.ok("get", "sa", "-n", "team-a", "-o", "name")

    owner = emulator.get("configmaps", "settings", "team-a")
    worker = emulator.register_pod("team-a", "worker-0", labels={"app": "worker"},
                                   ports=[8443], owner=owner)
    assert worker["status"]["podIP"] == "127.0.0.1"
    assert worker["spec"]["containers"][0]["ports"] == [{"containerPort": 8443,
                                                         "protocol": "TCP"}]
    row = kubectl.ok("get", "pods", "-n", "team-a", "-l", "app=worker", "--no-headers").split()
    assert row[:3] == ["worker-0", "1/1", "Running"]
    kubectl.ok("delete", "configmap", "settings", "-n", "team-a")
    assert emulator.get("pods", "worker-0", "team-a") is None  # garbage-collected with its owner


def test_kubectl_patch_every_type_and_apply_prunes_removed_fields(
        kubectl: Kubectl, emulator: KubeEmulator):
    kubectl.ok("apply", "-f", "-", stdin=WIDGET_CRD)
    kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(widget("w1")))
    kubectl.ok("patch", "widget", "w1", "--type", "merge", "-p", '{"spec":{"mode":"pull"}}')
    kubectl.ok("patch", "widget", "w1", "--type", "json",
               "-p", '[{"op":"replace","path":"/spec/maxReplicas","value":9}]')
    patched_widget = emulator.get("widgets", "w1", "default")
    assert patched_widget is not None
    spec = patched_widget["spec"]
    assert (spec["mode"], spec["maxReplicas"]) == ("pull", 9)
    refused = kubectl("patch", "widget", "w1", "--type", "strategic", "-p", '{"spec":{}}')
    assert refused.returncode != 0
    assert "application/strategic-merge-patch+json is not supported" in refused.stderr

    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1"},
        "spec": {"selector": {"matchLabels": {"app": "d1"}}, "template": {
            "metadata": {"labels": {"app": "d1"}},
            "spec": {"containers": [
                {"name": "main", "image": "nginx:1.27",
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "busybox"}]}}}}
    kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(deployment))
    containers = deployment["spec"]["template"]["spec"]["containers"]
    containers[0]["env"] = [{"name": "A", "value": "1"}]
    del containers[1]
    assert "configured" in kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(deployment))
    stored = emulator.get("deployments", "d1", "default")
    assert stored is not None
    assert [c["name"] for c in stored["spec"]["template"]["spec"]["containers"]] == ["main"]
    assert stored["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "A", "value": "1"}]
    assert stored["metadata"]["generation"] == 2

    rollout = kubectl("rollout", "status", "deployment/d1", "--timeout=1s")
    assert rollout.returncode != 0  # no controller: nothing becomes ready by itself
    emulator.set_workload_ready("deployments", "d1", "default")
    assert "successfully rolled out" in kubectl.ok("rollout", "status", "deployment/d1",
                                                   "--timeout=10s")

    kubectl.ok("patch", "deployment", "d1", "-p", json.dumps({"spec": {"template": {"spec": {
        "containers": [{"name": "main", "env": [{"name": "C", "value": "3"}],
                        "ports": [{"containerPort": 8080}]}]}}}}))
    patched = emulator.get("deployments", "d1", "default")
    assert patched is not None
    main = patched["spec"]["template"]["spec"]["containers"][0]
    patches = [(r.path.rsplit("/", 2)[-2], r.content_type)
               for r in emulator.requests if r.method == "PATCH"]
    assert patches == [("widgets", "application/merge-patch+json"),
                       ("widgets", "application/json-patch+json"),
                       ("widgets", "application/strategic-merge-patch+json"),
                       ("deployments", "application/strategic-merge-patch+json"),
                       ("deployments", "application/strategic-merge-patch+json")]
    assert main["env"] == [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]
    assert main["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert main["image"] == "nginx:1.27"


def test_kubectl_delete_waits_for_finalizers(kubectl: Kubectl, emulator: KubeEmulator):
    kubectl.ok("apply", "-f", "-", stdin=WIDGET_CRD)
    held = widget("held")
    held["metadata"]["finalizers"] = ["example.dev/cleanup"]
    kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(held))
    kubectl.ok("delete", "widget", "held", "--wait=false")
    pending = emulator.get("widgets", "held", "default")
    assert pending is not None
    assert pending["metadata"]["deletionTimestamp"]
    assert pending["metadata"]["deletionGracePeriodSeconds"] == 0
    assert pending["metadata"]["generation"] == 2  # as the apiserver does on deletion
    assert "held" in kubectl.ok("get", "widgets", "-o", "name")

    unhold = '[{"op":"remove","path":"/metadata/finalizers"}]'
    finishing = threading.Timer(0.5, kubectl.ok, ("patch", "widget", "held", "--type", "json",
                                                  "-p", unhold))
    finishing.start()
    try:
        kubectl.ok("wait", "--for=delete", "widget/held", "--timeout=20s")
    finally:
        finishing.join()
    assert emulator.get("widgets", "held", "default") is None
    assert "NotFound" in kubectl("get", "widget", "held").stderr


def test_kubectl_wait_and_watch_follow_changes(kubectl: Kubectl, emulator: KubeEmulator):
    kubectl.ok("apply", "-f", "-", stdin=WIDGET_CRD)
    kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(widget("w1")))

    def become_ready() -> None:
        emulator.set_status("widgets", "w1", {"conditions": [{"type": "Ready",
                                                              "status": "True"}]}, "default")

    timer = threading.Timer(0.5, become_ready)
    timer.start()
    try:
        kubectl.ok("wait", "--for=condition=Ready", "widget/w1", "--timeout=20s")
    finally:
        timer.join()

    later = threading.Timer(0.5, emulator.create, (configmap("late"),))
    later.start()
    try:
        result = kubectl("get", "configmaps", "--watch", "--output-watch-events",
                         "--request-timeout=2s")
    finally:
        later.join()
    assert "ADDED" in result.stdout
    assert "late" in result.stdout


# -- HTTP: object semantics --------------------------------------------------------------------


def test_not_found_and_already_exists_are_status_objects(crd_emulator: KubeEmulator,
                                                         http: httpx.Client):
    missing = http.get(f"{WIDGETS}/x")
    assert missing.status_code == 404
    assert missing.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'widgets.example.dev "x" not found', "reason": "NotFound",
        "details": {"name": "x", "group": "example.dev", "kind": "widgets"}, "code": 404}
    assert http.post(WIDGETS, json=widget("x")).status_code == 201
    again = http.post(WIDGETS, json=widget("x"))
    assert again.status_code == 409
    assert again.json()["reason"] == "AlreadyExists"
    assert again.json()["message"] == 'widgets.example.dev "x" already exists'
    nowhere = http.post("/api/v1/namespaces/nowhere/configmaps", json=configmap("c", "nowhere"))
    assert nowhere.status_code == 404
    assert nowhere.json()["message"] == 'namespaces "nowhere" not found'
    assert http.get("/apis/example.dev/v1alpha1/widgets").json()["kind"] == "WidgetList"
    assert http.get("/api/v1/nonsense").status_code == 404
    bad_label = http.post(CONFIGMAPS, json=configmap("l", app="not ok!"))
    assert bad_label.status_code == 422
    assert bad_label.json()["details"]["causes"][0]["field"] == "metadata.labels"
    bad_name = http.post(CONFIGMAPS, json=configmap("Not_A_Name"))
    assert bad_name.json()["message"].startswith(
        'ConfigMap "Not_A_Name" is invalid: metadata.name: Invalid value: "Not_A_Name": '
        "a lowercase RFC 1123 subdomain")


def test_resource_versions_and_conflicts(emulator: KubeEmulator, http: httpx.Client):
    created = http.post(CONFIGMAPS, json=configmap("c1")).json()
    meta = created["metadata"]
    assert meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    assert "generation" not in meta  # configmaps keep none
    first = int(meta["resourceVersion"])

    updated = dict(created, data={"k": "v2"})
    answer = http.put(f"{CONFIGMAPS}/c1", json=updated)
    assert answer.status_code == 200
    second = int(answer.json()["metadata"]["resourceVersion"])
    assert second > first
    assert answer.json()["metadata"]["uid"] == meta["uid"]

    stale = http.put(f"{CONFIGMAPS}/c1", json=dict(created, data={"k": "v3"}))
    assert stale.status_code == 409
    assert stale.json()["reason"] == "Conflict"
    assert stale.json()["message"] == (
        'Operation cannot be fulfilled on configmaps "c1": the object has been modified; '
        "please apply your changes to the latest version and try again")
    stale_patch = http.patch(f"{CONFIGMAPS}/c1", headers=MERGE, json={
        "metadata": {"resourceVersion": str(first)}, "data": {"k": "v4"}})
    assert stale_patch.status_code == 409

    unconditional = http.patch(f"{CONFIGMAPS}/c1", headers=MERGE, json={"data": {"k": "v5"}})
    assert int(unconditional.json()["metadata"]["resourceVersion"]) > second
    same = http.patch(f"{CONFIGMAPS}/c1", headers=MERGE, json={"data": {"k": "v5"}})
    assert same.json()["metadata"]["resourceVersion"] == \
        unconditional.json()["metadata"]["resourceVersion"]  # a no-op is no write

    listed = http.get(CONFIGMAPS).json()
    assert listed["kind"] == "ConfigMapList"
    assert listed["apiVersion"] == "v1"
    assert int(listed["metadata"]["resourceVersion"]) >= int(
        same.json()["metadata"]["resourceVersion"])
    generated = http.post(CONFIGMAPS, json={"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"generateName": "job-"}}).json()
    assert generated["metadata"]["name"].startswith("job-")
    assert len(generated["metadata"]["name"]) == len("job-") + 5


def test_restart_keeps_objects_port_and_history(emulator: KubeEmulator, http: httpx.Client):
    since = http.post(CONFIGMAPS, json=configmap("kept")).json()["metadata"]["resourceVersion"]
    url = emulator.url
    emulator.restart()
    assert emulator.url == url
    with httpx.Client(base_url=url) as client:
        assert client.get(f"{CONFIGMAPS}/kept").status_code == 200
        client.patch(f"{CONFIGMAPS}/kept", headers=MERGE, json={"data": {"k": "after"}})
        events = watch(client, CONFIGMAPS, until=1, resourceVersion=since, timeoutSeconds="5")
    assert [(e["type"], e["object"]["data"]) for e in events] == [("MODIFIED", {"k": "after"})]


def test_generation_counts_spec_changes_only(crd_emulator: KubeEmulator, http: httpx.Client):
    def generation() -> int:
        return int(http.get(f"{WIDGETS}/g").json()["metadata"]["generation"])

    http.post(WIDGETS, json=widget("g"))
    assert generation() == 1
    http.patch(f"{WIDGETS}/g", headers=MERGE, json={"metadata": {"labels": {"x": "y"}}})
    assert generation() == 1
    http.patch(f"{WIDGETS}/g/status", headers=MERGE, json={"status": {"phase": "Ready"}})
    assert generation() == 1
    http.patch(f"{WIDGETS}/g", headers=MERGE, json={"spec": {"mode": "pull"}})
    assert generation() == 2
    http.patch(f"{WIDGETS}/g", headers=MERGE, json={"spec": {"mode": "pull"}})
    assert generation() == 2


def test_status_is_a_subresource(crd_emulator: KubeEmulator, http: httpx.Client):
    body = widget("s")
    body["status"] = {"phase": "ignored-on-create"}
    created = http.post(WIDGETS, json=body).json()
    assert "status" not in created

    with_status = http.patch(f"{WIDGETS}/s/status", headers=MERGE, json={
        "status": {"phase": "Ready"}, "spec": {"mode": "pull"},
        "metadata": {"labels": {"ignored": "yes"}}}).json()
    assert with_status["status"] == {"phase": "Ready"}
    assert with_status["spec"]["mode"] == "push"
    assert "labels" not in with_status["metadata"]

    current = http.get(f"{WIDGETS}/s").json()
    current["status"] = {"phase": "ignored-on-main"}
    current["spec"]["mode"] = "pull"
    main = http.put(f"{WIDGETS}/s", json=current).json()
    assert main["status"] == {"phase": "Ready"}
    assert main["spec"]["mode"] == "pull"

    replaced = http.put(f"{WIDGETS}/s/status", json=dict(main, status={"cursorLag": 3})).json()
    assert replaced["status"] == {"cursorLag": 3}
    assert http.get("/api/v1/namespaces/default/configmaps/x/status").status_code == 404


def test_finalizers_hold_deletion_until_removed(emulator: KubeEmulator, http: httpx.Client):
    body = configmap("f")
    body["metadata"]["finalizers"] = ["example.dev/a", "example.dev/b"]
    http.post(CONFIGMAPS, json=body)
    deleted = http.delete(f"{CONFIGMAPS}/f")
    assert deleted.status_code == 200
    assert deleted.json()["metadata"]["deletionTimestamp"]
    added = http.patch(f"{CONFIGMAPS}/f", headers=MERGE,
                       json={"metadata": {"finalizers": ["example.dev/a", "example.dev/b",
                                                         "example.dev/c"]}})
    assert added.status_code == 422
    assert "no new finalizers can be added" in added.json()["message"]
    http.patch(f"{CONFIGMAPS}/f", headers=MERGE,
               json={"metadata": {"finalizers": ["example.dev/b"]}})
    assert emulator.get("configmaps", "f", "default") is not None
    last = http.patch(f"{CONFIGMAPS}/f", headers=MERGE, json={"metadata": {"finalizers": None}})
    assert last.status_code == 200
    assert emulator.get("configmaps", "f", "default") is None

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}
    http.post("/api/v1/namespaces/default/pods", json=pod)
    gone = http.delete("/api/v1/namespaces/default/pods/p")
    assert gone.json()["kind"] == "Pod"  # pods answer with the object, deleted at once
    assert emulator.get("pods", "p", "default") is None


def test_namespace_deletion_and_garbage_collection(emulator: KubeEmulator,
                                                   http: httpx.Client):
    http.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": "team"}})
    owner = http.post("/api/v1/namespaces/team/configmaps", json=configmap("owner", "team"))
    dependent = configmap("dependent", "team")
    dependent["metadata"]["ownerReferences"] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner.json()["metadata"]["uid"]}]
    http.post("/api/v1/namespaces/team/configmaps", json=dependent)
    held = configmap("held", "team")
    held["metadata"]["finalizers"] = ["example.dev/keep"]
    http.post("/api/v1/namespaces/team/configmaps", json=held)

    http.delete("/api/v1/namespaces/team/configmaps/owner")
    assert emulator.get("configmaps", "dependent", "team") is None  # collected

    terminating = http.delete("/api/v1/namespaces/team").json()
    assert terminating["status"]["phase"] == "Terminating"
    refused = http.post("/api/v1/namespaces/team/configmaps", json=configmap("new", "team"))
    assert refused.status_code == 403
    assert "is being terminated" in refused.json()["message"]
    http.patch("/api/v1/namespaces/team/configmaps/held", headers=MERGE,
               json={"metadata": {"finalizers": []}})
    assert emulator.get("namespaces", "team") is None
    assert emulator.objects("serviceaccounts", "team") == []


def test_crd_created_through_the_api_serves_its_kind(emulator: KubeEmulator,
                                                     http: httpx.Client):
    assert http.get("/apis/example.dev/v1alpha1").status_code == 404
    crd = http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                    json=yaml.safe_load(WIDGET_CRD))
    assert crd.status_code == 201
    conditions = {c["type"]: c["status"] for c in crd.json()["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    resources = http.get("/apis/example.dev/v1alpha1").json()
    assert resources["groupVersion"] == "example.dev/v1alpha1"
    assert {r["name"] for r in resources["resources"]} == {"widgets", "widgets/status"}
    groups = http.get("/apis").json()
    assert "example.dev" in {g["name"] for g in groups["groups"]}
    assert http.post(WIDGETS, json=widget("w")).status_code == 201

    ended: list[float] = []

    def follow() -> None:
        with httpx.Client(base_url=emulator.url, timeout=30) as watcher:
            events = watch(watcher, WIDGETS, timeoutSeconds="30")
        ended.append(time.monotonic())
        assert [e["type"] for e in events] == ["ADDED", "DELETED"]

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.3)
    deleted_at = time.monotonic()
    http.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.dev")
    follower.join(10)
    assert ended
    assert ended[0] - deleted_at < 8  # the watch ends with its CRD, as on the apiserver
    assert http.get(WIDGETS).status_code == 404
    invalid = yaml.safe_load(WIDGET_CRD)
    invalid["spec"]["versions"][0]["storage"] = False
    refused = http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=invalid)
    assert refused.status_code == 422
    assert "must have exactly one version marked as storage version" in refused.json()["message"]


def test_core_discovery_documents(emulator: KubeEmulator, http: httpx.Client):
    core = http.get("/api/v1").json()
    assert core["kind"] == "APIResourceList"
    assert core["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["kind"] == "Pod"
    assert by_name["pods"]["namespaced"] is True
    assert "po" in by_name["pods"]["shortNames"]
    assert by_name["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert by_name["namespaces"]["namespaced"] is False
    assert set(by_name["configmaps"]["verbs"]) >= {"create", "get", "list", "watch", "patch"}
    assert http.get("/api").json()["versions"] == ["v1"]
    apps = http.get("/apis/apps").json()
    assert apps["preferredVersion"]["groupVersion"] == "apps/v1"
    aggregated = http.get("/apis", headers={
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"})
    assert aggregated.headers["Content-Type"].startswith("application/json;g=apidiscovery")
    names = {item["metadata"]["name"] for item in aggregated.json()["items"]}
    assert {"apps", "coordination.k8s.io", "events.k8s.io"} <= names


# -- HTTP: validation, defaulting, pruning -----------------------------------------------------


def _causes(response: httpx.Response) -> dict[str, tuple[str, str]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["reason"] == "Invalid"
    assert body["details"]["kind"] == "Widget"
    assert body["details"]["group"] == "example.dev"
    return {c["field"]: (c["reason"], c["message"]) for c in body["details"]["causes"]}


def test_custom_resource_validation_names_each_field(crd_emulator: KubeEmulator,
                                                     http: httpx.Client):
    single = http.post(WIDGETS, json=widget("bad", url="ftp://x"))
    assert single.json()["message"] == (
        'Widget.example.dev "bad" is invalid: spec.url: Invalid value: "ftp://x": '
        "spec.url in body should match '^https?://'")
    causes = _causes(http.post(WIDGETS, json={
        **widget("bad"), "spec": {"minReplicas": -1, "maxReplicas": 11, "region": "x" * 13,
                                  "tags": ["a", "", "c"], "labels": {"a": "1", "b": "2", "c": 3},
                                  "port": 1.5, "mode": 7}}))
    assert causes["spec.url"] == ("FieldValueRequired", "Required value")
    assert causes["spec.minReplicas"] == (
        "FieldValueInvalid",
        "Invalid value: -1: spec.minReplicas in body should be greater than or equal to 0")
    assert causes["spec.maxReplicas"][1].endswith("should be less than or equal to 10")
    assert causes["spec.region"] == ("FieldValueTooLong", "Too long: may not be more than 12 bytes")
    assert causes["spec.tags"] == ("FieldValueTooMany", "Too many: 3: must have at most 2 items")
    assert causes["spec.tags[1]"][1].endswith("should be at least 1 chars long")
    assert causes["spec.labels"][0] == "FieldValueTooMany"
    assert causes["spec.labels.c"][1] == (
        'Invalid value: "integer": spec.labels.c in body must be of type string: "integer"')
    assert causes["spec.port"][1].startswith('Invalid value: "number"')
    assert causes["spec.mode"][0] == "FieldValueInvalid"  # wrong type before enum
    ok = http.post(WIDGETS, json=widget("ok", port="http", note=None, labels={"a": "b"},
                                        region=None, mode=None))
    assert ok.status_code == 201, ok.text
    spec = ok.json()["spec"]
    assert spec["note"] is None  # nullable: kept
    assert "region" not in spec  # not nullable, no default: dropped
    assert spec["mode"] == "push"  # not nullable, with a default: defaulted


def test_cel_rules_and_transition_rules(crd_emulator: KubeEmulator, http: httpx.Client):
    causes = _causes(http.post(WIDGETS, json=widget("c", minReplicas=4, maxReplicas=2,
                                                    retention={"days": 0})))
    assert causes["spec"] == ("FieldValueInvalid",
                              'Invalid value: "object": minReplicas must not exceed maxReplicas')
    assert causes["spec.retention.days"] == (
        "FieldValueInvalid", 'Invalid value: "object": must keep at least 1 day, not 0')

    assert http.post(WIDGETS, json=widget("c", region="eu")).status_code == 201
    moved = http.patch(f"{WIDGETS}/c", headers=MERGE, json={"spec": {"region": "us"}})
    assert _causes(moved)["spec.region"] == ("FieldValueInvalid",
                                             'Invalid value: "string": region is immutable')
    assert http.patch(f"{WIDGETS}/c", headers=MERGE,
                      json={"spec": {"mode": "pull"}}).status_code == 200


def test_defaulting_pruning_and_field_validation(crd_emulator: KubeEmulator,
                                                 http: httpx.Client):
    body = widget("d", retention={}, extra={"anything": {"goes": [1]}}, unknown=1)
    body["status"] = {"phase": "x"}
    body["topLevel"] = True
    warned = http.post(WIDGETS, json=body)
    assert warned.status_code == 201
    warnings = warned.headers.get_list("warning")
    assert '299 - "unknown field \\"spec.unknown\\""' in warnings
    stored = warned.json()
    assert "topLevel" not in stored
    assert stored["spec"] == {"url": "https://siem.example", "mode": "push", "minReplicas": 1,
                              "maxReplicas": 3, "retention": {"days": 7},
                              "extra": {"anything": {"goes": [1]}}}
    strict = http.post(f"{WIDGETS}?fieldValidation=Strict", json=widget("e", unknown=1))
    assert strict.status_code == 400
    assert 'strict decoding error: unknown field "spec.unknown"' in strict.json()["message"]
    ignored = http.post(f"{WIDGETS}?fieldValidation=Ignore", json=widget("e", unknown=1))
    assert ignored.status_code == 201
    assert "warning" not in ignored.headers


# -- HTTP: watch and selectors -----------------------------------------------------------------


def test_watch_replays_history_and_sends_bookmarks(emulator: KubeEmulator, http: httpx.Client):
    since = http.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
    http.post(CONFIGMAPS, json=configmap("a"))
    http.patch(f"{CONFIGMAPS}/a", headers=MERGE, json={"data": {"k": "changed"}})
    http.post(CONFIGMAPS, json=configmap("b"))
    http.delete(f"{CONFIGMAPS}/a")
    http.post("/api/v1/namespaces/kube-system/configmaps", json=configmap("x", "kube-system"))

    started = time.monotonic()
    events = watch(http, CONFIGMAPS, resourceVersion=since, allowWatchBookmarks="true",
                   timeoutSeconds="1")
    assert 0.9 < time.monotonic() - started < 10  # ended by the server at timeoutSeconds
    changes = [(e["type"], e["object"]["metadata"]["name"]) for e in events
               if e["type"] != "BOOKMARK"]
    assert changes == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert events[0]["object"]["kind"] == "ConfigMap"
    assert events[1]["object"]["data"] == {"k": "changed"}
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= 2
    assert bookmarks[-1]["object"] == {
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"resourceVersion": emulator.store.resource_version}}

    current = watch(http, CONFIGMAPS, timeoutSeconds="1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in current] == [("ADDED", "b")]
    initial = watch(http, CONFIGMAPS, sendInitialEvents="true", allowWatchBookmarks="true",
                    resourceVersionMatch="NotOlderThan", timeoutSeconds="1")
    assert initial[0]["type"] == "ADDED"
    assert initial[1]["type"] == "BOOKMARK"
    assert initial[1]["object"]["metadata"]["annotations"] == {
        "k8s.io/initial-events-end": "true"}

    emulator.compact()
    expired = watch(http, CONFIGMAPS, resourceVersion=since, timeoutSeconds="1")
    assert len(expired) == 1
    assert expired[0]["type"] == "ERROR"
    assert expired[0]["object"]["code"] == 410
    assert expired[0]["object"]["reason"] == "Expired"
    assert expired[0]["object"]["message"].startswith(f"too old resource version: {since} (")


def test_watch_follows_live_changes_through_selectors(emulator: KubeEmulator,
                                                      http: httpx.Client):
    since = http.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]

    def changes() -> None:
        time.sleep(0.3)
        emulator.create(configmap("in", app="web"))
        emulator.create(configmap("out", app="db"))
        with httpx.Client(base_url=emulator.url) as writer:
            writer.patch(f"{CONFIGMAPS}/in", headers=MERGE,
                         json={"metadata": {"labels": {"app": "db"}}})
            writer.patch(f"{CONFIGMAPS}/out", headers=MERGE,
                         json={"metadata": {"labels": {"app": "web"}}})

    writer = threading.Thread(target=changes)
    writer.start()
    try:
        events = watch(http, CONFIGMAPS, until=3, resourceVersion=since,
                       labelSelector="app=web", timeoutSeconds="20")
    finally:
        writer.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "in"), ("DELETED", "in"), ("ADDED", "out")]


def test_label_and_field_selectors(emulator: KubeEmulator, http: httpx.Client):
    for name, labels in {"a": {"tier": "web", "env": "prod"}, "b": {"tier": "db"},
                         "c": {"env": "dev"}}.items():
        emulator.create(configmap(name, **labels))

    def names(path: str = CONFIGMAPS, **params: str) -> list[str]:
        answer = http.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return [item["metadata"]["name"] for item in answer.json()["items"]]

    assert names(labelSelector="tier=web") == ["a"]
    assert names(labelSelector="tier==db") == ["b"]
    assert names(labelSelector="tier!=web") == ["b", "c"]
    assert names(labelSelector="tier in (web,db)") == ["a", "b"]
    assert names(labelSelector="env notin (prod)") == ["b", "c"]
    assert names(labelSelector="env") == ["a", "c"]
    assert names(labelSelector="!env") == ["b"]
    assert names(labelSelector="tier=web,env=prod") == ["a"]
    assert names(fieldSelector="metadata.name=b") == ["b"]
    assert names(fieldSelector="metadata.name!=b") == ["a", "c"]
    assert http.get(CONFIGMAPS, params={"labelSelector": "tier in web"}).status_code == 400
    unknown = http.get(CONFIGMAPS, params={"fieldSelector": "data.k=v"})
    assert unknown.status_code == 400
    assert unknown.json()["message"] == "field label not supported: data.k"

    emulator.create(configmap("elsewhere", "kube-system", tier="web"))
    assert names("/api/v1/configmaps", labelSelector="tier=web") == ["a", "elsewhere"]
    assert names("/api/v1/configmaps", fieldSelector="metadata.namespace=kube-system") == [
        "elsewhere"]
    page = http.get("/api/v1/configmaps", params={"limit": "2"}).json()
    assert len(page["items"]) == 2
    rest = http.get("/api/v1/configmaps", params={"continue": page["metadata"]["continue"]})
    assert len(rest.json()["items"]) == page["metadata"]["remainingItemCount"]

    for name, phase in (("p1", "Running"), ("p2", "Pending")):
        emulator.create({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": name, "namespace": "default"},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}})
        if phase == "Running":
            emulator.set_pod_status("default", name)
    assert names("/api/v1/pods", fieldSelector="status.phase=Running") == ["p1"]
    assert names("/api/v1/namespaces/default/pods", fieldSelector="status.phase!=Running") == [
        "p2"]


def test_table_output(crd_emulator: KubeEmulator, http: httpx.Client):
    http.post(WIDGETS, json=widget("t", mode="pull"))
    http.patch(f"{WIDGETS}/t/status", headers=MERGE, json={"status": {
        "cursorLag": 5, "conditions": [{"type": "Ready", "status": "False"}]}})
    accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    answer = http.get(WIDGETS, headers=accept)
    assert answer.headers["Content-Type"].startswith("application/json;as=Table")
    table = answer.json()
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Mode", "Ready", "Lag",
                                                               "Age"]
    assert [c["type"] for c in table["columnDefinitions"]] == ["string", "string", "string",
                                                               "integer", "date"]
    (row,) = table["rows"]
    assert row["cells"][:4] == ["t", "pull", "False", 5]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "t"
    single = http.get(f"{WIDGETS}/t", headers=accept).json()
    assert len(single["rows"]) == 1

    emulator = crd_emulator
    emulator.create({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "p", "namespace": "default"},
                     "spec": {"containers": [{"name": "a", "image": "i"},
                                             {"name": "b", "image": "i"}]}})
    emulator.set_pod_status("default", "p")
    pods = http.get("/api/v1/namespaces/default/pods", headers=accept).json()
    assert [c["name"] for c in pods["columnDefinitions"]][:5] == [
        "Name", "Ready", "Status", "Restarts", "Age"]
    assert pods["rows"][0]["cells"][:4] == ["p", "2/2", "Running", 0]


# -- admission ---------------------------------------------------------------------------------


def _self_signed(directory: Path, hosts: list[str]) -> tuple[Path, Path, bytes]:
    """A self-signed certificate (its own CA) for `hosts`; (cert file, key file, PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = directory / "hook.pem", directory / "hook.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, pem


class AdmissionWebhook(HttpReceiver):
    """An HTTPS admission webhook that answers with `decide(request) -> response fields`."""

    def __init__(self, tls: ssl.SSLContext,
                 decide: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__(tls=tls)
        self.decide = decide

    def handle(self, request: Request) -> Response:
        review = json.loads(request.body)
        answer = {"uid": review["request"]["uid"], **self.decide(review["request"])}
        return Response(200, json.dumps({"apiVersion": "admission.k8s.io/v1",
                                         "kind": "AdmissionReview",
                                         "response": answer}).encode())


def _add_label_and_env(request: dict[str, Any]) -> dict[str, Any]:
    patch = [{"op": "add", "path": "/metadata/labels/injected", "value": "yes"},
             {"op": "add", "path": "/spec/containers/-",
              "value": {"name": "sidecar", "image": "sealtrail:test"}}]
    return {"allowed": True, "patchType": "JSONPatch", "warnings": ["sidecar added"],
            "patch": base64.b64encode(json.dumps(patch).encode()).decode()}


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[AdmissionWebhook, bytes]]:
    cert, key, pem = _self_signed(tmp_path, ["hook.webhooks.svc", "127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = AdmissionWebhook(context, _add_label_and_env)
    server.start()
    try:
        yield server, pem
    finally:
        server.stop()


def _webhook_configuration(pem: bytes, *, failure_policy: str = "Fail",
                           client: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "sealtrail"},
        "webhooks": [{
            "name": "pods.sealtrail.dev", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "failurePolicy": failure_policy,
            "timeoutSeconds": 2,
            "clientConfig": {**(client or {"service": {"namespace": "webhooks", "name": "hook",
                                                       "path": "/mutate"}}),
                             "caBundle": base64.b64encode(pem).decode()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system"]}]},
            "objectSelector": {"matchLabels": {"sealtrail.dev/inject": "true"}},
        }],
    }


def _pod(name: str, namespace: str = "default", inject: bool = True) -> dict[str, Any]:
    labels = {"sealtrail.dev/inject": "true"} if inject else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def test_mutating_webhook_patches_matching_pods(emulator: KubeEmulator, http: httpx.Client,
                                                webhook: tuple[AdmissionWebhook, bytes]):
    server, pem = webhook
    resolved: list[tuple[str, str, int]] = []

    def resolve(namespace: str, name: str, port: int) -> str:
        resolved.append((namespace, name, port))
        return server.url

    emulator.service_resolver = resolve
    http.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
              json=_webhook_configuration(pem))
    created = http.post("/api/v1/namespaces/default/pods", json=_pod("p1"))
    assert created.status_code == 201, created.text
    assert created.headers.get_list("warning") == ['299 - "sidecar added"']
    pod = created.json()
    assert pod["metadata"]["labels"]["injected"] == "yes"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "sidecar"]
    assert pod["spec"]["containers"][1]["imagePullPolicy"] == "IfNotPresent"  # re-defaulted
    assert resolved == [("webhooks", "hook", 443)]

    (call,) = server.requests
    assert call.path == "/mutate?timeout=2s"
    review = json.loads(call.body)
    assert (review["apiVersion"], review["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    request = review["request"]
    assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert (request["operation"], request["namespace"], request["name"]) == (
        "CREATE", "default", "p1")
    assert request["dryRun"] is False
    assert request["object"]["spec"]["containers"][0]["name"] == "app"
    assert request["userInfo"]["username"]

    not_selected = http.post("/api/v1/namespaces/default/pods", json=_pod("p2", inject=False))
    assert "injected" not in not_selected.json()["metadata"]["labels"]
    excluded = http.post("/api/v1/namespaces/kube-system/pods", json=_pod("p3", "kube-system"))
    assert "injected" not in excluded.json()["metadata"]["labels"]
    assert len(server.requests) == 1


def test_webhook_failure_policies(emulator: KubeEmulator, http: httpx.Client, tmp_path: Path):
    _, _, pem = _self_signed(tmp_path, ["hook.webhooks.svc"])
    down = f"https://127.0.0.1:{free_port()}"
    emulator.service_resolver = lambda *_: down
    configs = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    http.post(configs, json=_webhook_configuration(pem))
    failed = http.post("/api/v1/namespaces/default/pods", json=_pod("p1"))
    assert failed.status_code == 500
    assert failed.json()["reason"] == "InternalError"
    assert failed.json()["message"].startswith(
        'Internal error occurred: failed calling webhook "pods.sealtrail.dev": failed to call '
        'webhook: Post "https://hook.webhooks.svc:443/mutate?timeout=2s": ')
    assert emulator.get("pods", "p1", "default") is None

    http.patch(f"{configs}/sealtrail", headers={"Content-Type": "application/json-patch+json"},
               json=[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}])
    ignored = http.post("/api/v1/namespaces/default/pods", json=_pod("p1"))
    assert ignored.status_code == 201
    assert [c["name"] for c in ignored.json()["spec"]["containers"]] == ["app"]


def test_webhook_tls_and_denials(emulator: KubeEmulator, http: httpx.Client, tmp_path: Path,
                                 webhook: tuple[AdmissionWebhook, bytes]):
    server, pem = webhook
    configs = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    (tmp_path / "other").mkdir()
    _, _, other_pem = _self_signed(tmp_path / "other", ["hook.webhooks.svc"])
    http.post(configs, json=_webhook_configuration(other_pem, client={"url": server.url}))
    untrusted = http.post("/api/v1/namespaces/default/pods", json=_pod("p1"))
    assert untrusted.status_code == 500
    assert "certificate verify failed" in untrusted.json()["message"]

    http.delete(f"{configs}/sealtrail")
    server.decide = lambda _: {"allowed": False,
                               "status": {"code": 403, "message": "no sidecar for you"}}
    http.post(configs, json=_webhook_configuration(pem, client={"url": f"{server.url}/deny"}))
    denied = http.post("/api/v1/namespaces/default/pods", json=_pod("p2"))
    assert denied.status_code == 403
    assert denied.json()["message"] == (
        'admission webhook "pods.sealtrail.dev" denied the request: no sidecar for you')

    http.delete(f"{configs}/sealtrail")
    validating = _webhook_configuration(pem, client={"url": f"{server.url}/validate"})
    validating["kind"] = "ValidatingWebhookConfiguration"
    validating["webhooks"][0]["rules"][0]["operations"] = ["DELETE"]
    assert http.post("/api/v1/namespaces/default/pods", json=_pod("p3")).status_code == 201
    http.post("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
              json=validating)
    refused = http.delete("/api/v1/namespaces/default/pods/p3")
    assert refused.status_code == 403
    assert emulator.get("pods", "p3", "default") is not None
    assert json.loads(server.requests[-1].body)["request"]["operation"] == "DELETE"


def test_webhook_certificate_must_name_the_service(emulator: KubeEmulator, http: httpx.Client,
                                                   tmp_path: Path):
    cert, key, pem = _self_signed(tmp_path, ["127.0.0.1"])  # not hook.webhooks.svc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = AdmissionWebhook(context, _add_label_and_env)
    server.start()
    try:
        emulator.service_resolver = lambda *_: server.url
        http.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                  json=_webhook_configuration(pem))
        refused = http.post("/api/v1/namespaces/default/pods", json=_pod("p1"))
    finally:
        server.stop()
    assert refused.status_code == 500
    assert "certificate is not valid for 'hook.webhooks.svc'" in refused.json()["message"]


# -- kopf, and the emulator as a process -------------------------------------------------------

OPERATOR = """
import kopf

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.watching.server_timeout = 10

@kopf.on.create("example.dev", "v1alpha1", "widgets")
def created(body, spec, patch, **_):
    kopf.info(body, reason="Seen", message="widget " + spec["url"])
    patch.status["phase"] = "Ready"
    patch.status["cursorLag"] = spec["maxReplicas"]

@kopf.on.update("example.dev", "v1alpha1", "widgets", field="spec.mode")
def updated(spec, patch, **_):
    patch.status["phase"] = "Mode-" + spec["mode"]

@kopf.on.delete("example.dev", "v1alpha1", "widgets")
def deleted(**_):
    pass
"""


def test_kopf_operator_runs_against_the_emulator(crd_emulator: KubeEmulator, tmp_path: Path):
    emulator = crd_emulator
    (tmp_path / "operator.py").write_text(OPERATOR, encoding="utf-8")
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    log = (tmp_path / "kopf.log").open("wb")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    process = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", str(tmp_path / "operator.py"), "--standalone",
         "-n", "default", "--verbose"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def phase_is(wanted: str) -> Callable[[dict[str, Any] | None], bool]:
        return lambda obj: obj is not None and (obj.get("status") or {}).get("phase") == wanted

    try:
        emulator.create(widget("w1"))
        ready = emulator.wait_for("widgets", "w1", phase_is("Ready"), "default", timeout=30)
        assert ready is not None
        assert ready["status"]["cursorLag"] == 3
        assert ready["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        with httpx.Client(base_url=emulator.url) as http:
            http.patch(f"{WIDGETS}/w1", headers=MERGE, json={"spec": {"mode": "pull"}})
            emulator.wait_for("widgets", "w1", phase_is("Mode-pull"), "default", timeout=30)
            http.delete(f"{WIDGETS}/w1")
        emulator.wait_for("widgets", "w1", lambda obj: obj is None, "default", timeout=30)
        events = emulator.objects("events", "default")
        assert any(e["reason"] == "Seen" and e["message"] == "widget https://siem.example"
                   and e["involvedObject"]["name"] == "w1" for e in events)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    output = (tmp_path / "kopf.log").read_text(encoding="utf-8")
    assert "Traceback" not in output, output
    assert "Handler 'created' succeeded" in output


def test_emulator_runs_as_a_process(tmp_path: Path):
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "widgets.yaml").write_text(WIDGET_CRD, encoding="utf-8")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.kube.emulator", "--crds", str(crds), "--port", str(port),
         "--kubeconfig", str(tmp_path / "kubeconfig")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}"
        kubectl = Kubectl(_Kubeconfig(tmp_path / "kubeconfig"), tmp_path)
        assert kubectl.ok("get", "crd", "-o", "name").strip() == \
            "customresourcedefinition.apiextensions.k8s.io/widgets.example.dev"
        kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(widget("w")))
        assert kubectl.ok("get", "wg", "-o", "name").strip() == "widget.example.dev/w"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr


class _Kubeconfig:
    """A kubeconfig someone else wrote, in the shape `Kubectl` takes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        config["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path


def test_server_side_apply_creates_then_merges(emulator: KubeEmulator, http: httpx.Client):
    apply = {"Content-Type": "application/apply-patch+yaml"}
    document = yaml.safe_dump(configmap("ssa"))
    missing_manager = http.patch(f"{CONFIGMAPS}/ssa", headers=apply, content=document)
    assert missing_manager.status_code == 422
    created = http.patch(f"{CONFIGMAPS}/ssa?fieldManager=test", headers=apply, content=document)
    assert created.status_code == 201
    merged = http.patch(f"{CONFIGMAPS}/ssa?fieldManager=test", headers=apply,
                        content=yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": "ssa"},
                                                "data": {"other": "x"}}))
    assert merged.status_code == 200
    assert merged.json()["data"] == {"k": "v", "other": "x"}


def test_crd_paths_must_hold_only_crds(tmp_path: Path):
    (tmp_path / "mixed.yaml").write_text(WIDGET_CRD + "\n---\n" + yaml.safe_dump(configmap("c")),
                                         encoding="utf-8")
    emulator = KubeEmulator([tmp_path])
    with pytest.raises(RuntimeError, match="is not a CustomResourceDefinition"):
        emulator.start()
    emulator.stop()  # a no-op after a failed start
