"""Collector mode's HTTPS, immutable-field re-creation and mode-switch clean-up, without a cluster.

Covers: `collector_tls.plan_collector_tls` (a CA made once and kept, a serving certificate for
the Service's DNS names and ClusterIPs, re-issued only when those change, it nears expiry or
another CA signs it; an unchanged plan is exactly what was read, so applying it writes
nothing; the published kubeconfig names `https://<clusterIP>` and the CA); the worker's ingest
listener over TLS (the real `sealtrail worker` with two ingest processes; a certificate swapped
under a running listener is served to new connections); `Kube.apply_recreating` and
`Kube.delete_owned` against a stand-in of the API that refuses StatefulSet updates as the real
one does (the real one: tests/test_collector_cluster.py).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from kubernetes.client.exceptions import ApiException

from sealtrail.api.worker_config import IngestTlsSpec
from sealtrail.operator import naming
from sealtrail.operator.collector import cluster_ips, serving_hosts, stale_objects
from sealtrail.operator.collector_tls import KUBECONFIG_KEY, plan_collector_tls
from sealtrail.operator.kube import Kube, KubeError
from sealtrail.operator.refs import ObjectRef
from sealtrail.operator.render import Policy
from sealtrail.worker.ingest_tls import IngestTls

from .worker_process import ROOT, free_port

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
POLICY = Policy.from_object({
    "metadata": {"name": "cluster-audit", "namespace": "sealtrail", "uid": "uid-1"},
    "spec": {"mode": "collector", "routes": [{"exports": ["x"]}]}})


def _as_read(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API returns for an object we applied: ours plus its own metadata."""
    read = copy.deepcopy(obj)
    read["metadata"] |= {"uid": "obj-uid", "resourceVersion": "7"}
    return read


def _certificate(secret: dict[str, Any], key: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def _sans(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ({str(n) for n in names.get_values_for_type(x509.DNSName)}
            | {str(n) for n in names.get_values_for_type(x509.IPAddress)})


# --- the certificates -------------------------------------------------------------------------


def test_the_first_plan_makes_a_ca_and_a_certificate_for_names_and_cluster_ip() -> None:
    plan = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=None, serving_secret=None,
                              now=NOW)
    assert plan.issued == "there was no CA"
    cert = _certificate(plan.serving_secret)
    assert _sans(cert) == {"10.96.0.40", "sealtrail-collector-cluster-audit",
                           "sealtrail-collector-cluster-audit.sealtrail",
                           "sealtrail-collector-cluster-audit.sealtrail.svc",
                           "sealtrail-collector-cluster-audit.sealtrail.svc.cluster.local"}
    ca = _certificate(plan.ca_secret, "ca.crt")
    cert.verify_directly_issued_by(ca)
    assert plan.serving_secret["type"] == "kubernetes.io/tls"
    assert plan.serving_secret["metadata"]["name"] == naming.collector_tls_name(POLICY.name)
    assert "ca.key" not in plan.serving_secret["data"], "the pod never gets the CA's key"
    assert "ca.key" in plan.ca_secret["data"]
    for obj in (plan.ca_secret, plan.serving_secret, plan.ca_config_map):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    published = plan.ca_config_map["data"]
    assert published["ca.crt"].encode() == base64.b64decode(plan.ca_secret["data"]["ca.crt"])
    kubeconfig = yaml.safe_load(published[KUBECONFIG_KEY])
    cluster = kubeconfig["clusters"][0]["cluster"]
    assert cluster["server"] == "https://10.96.0.40:8470/v1/k8s-audit"
    assert base64.b64decode(cluster["certificate-authority-data"]).decode() == published["ca.crt"]
    assert "token" not in kubeconfig["users"][0]["user"], "the token is a secret; a file path"


def test_an_unchanged_plan_is_what_was_read_so_nothing_is_written() -> None:
    first = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=None, serving_secret=None,
                               now=NOW)
    again = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=_as_read(first.ca_secret),
                               serving_secret=_as_read(first.serving_secret),
                               now=NOW + dt.timedelta(days=300))
    assert again.issued is None
    assert (again.ca_secret, again.serving_secret, again.ca_config_map) == (
        first.ca_secret, first.serving_secret, first.ca_config_map)


@pytest.mark.parametrize(("ips", "days", "reason"), [
    (["10.96.0.41"], 1, "new: 10.96.0.41; gone: 10.96.0.40"),
    (["10.96.0.40", "fd00::40"], 1, "new: fd00::40"),
    (["10.96.0.40"], 340, "expires within 30 days"),
])
def test_the_certificate_is_reissued_by_the_same_ca(ips: list[str], days: int,
                                                    reason: str) -> None:
    first = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=None, serving_secret=None,
                               now=NOW)
    later = plan_collector_tls(POLICY, ips, ca_secret=_as_read(first.ca_secret),
                               serving_secret=_as_read(first.serving_secret),
                               now=NOW + dt.timedelta(days=days))
    assert later.issued is not None
    assert reason in later.issued
    assert later.ca_secret == first.ca_secret, "callers keep trusting the same CA"
    cert = _certificate(later.serving_secret)
    cert.verify_directly_issued_by(_certificate(first.ca_secret, "ca.crt"))
    assert {str(ipaddress.ip_address(ip)) for ip in ips} <= _sans(cert)
    assert cert.not_valid_after_utc > NOW + dt.timedelta(days=days + 300)


def test_a_certificate_of_another_ca_or_a_broken_ca_is_replaced() -> None:
    ours = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=None, serving_secret=None,
                              now=NOW)
    theirs = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=None, serving_secret=None,
                                now=NOW)
    mixed = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=_as_read(ours.ca_secret),
                               serving_secret=_as_read(theirs.serving_secret), now=NOW)
    assert mixed.issued is not None
    _certificate(mixed.serving_secret).verify_directly_issued_by(
        _certificate(ours.ca_secret, "ca.crt"))
    broken = _as_read(ours.ca_secret)
    broken["data"]["ca.key"] = base64.b64encode(b"not a key").decode()
    remade = plan_collector_tls(POLICY, ["10.96.0.40"], ca_secret=broken,
                                serving_secret=_as_read(ours.serving_secret), now=NOW)
    assert remade.issued == "the stored CA could not be read"
    assert remade.ca_secret["data"]["ca.crt"] != ours.ca_secret["data"]["ca.crt"]


def test_cluster_ips_and_hosts_come_from_the_service_as_read() -> None:
    assert cluster_ips({"spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "fd00::1"]}}
                       ) == ["10.0.0.1", "fd00::1"]
    assert cluster_ips({"spec": {"clusterIP": "None"}}) == []
    assert cluster_ips(None) == []
    assert serving_hosts(POLICY, ["10.0.0.1"])[-1] == "10.0.0.1"


# --- the worker's listener --------------------------------------------------------------------


def _write_pair(directory: Path, hosts: list[str]) -> bytes:
    """A fresh CA and serving pair as the operator makes them; the CA's PEM."""
    plan = plan_collector_tls(POLICY, hosts, ca_secret=None, serving_secret=None,
                              now=dt.datetime.now(dt.UTC))
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("tls.crt", "tls.key"):  # swapped at once, as the kubelet does: a rename
        staged = directory / f".{key}.new"
        staged.write_bytes(base64.b64decode(plan.serving_secret["data"][key]))
        staged.replace(directory / key)
    return base64.b64decode(plan.ca_secret["data"]["ca.crt"])


def _client(ca_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem.decode())


def test_a_running_listener_serves_a_swapped_certificate_to_new_connections(
        tmp_path: Path) -> None:
    asyncio.run(_swap_under_a_listener(tmp_path))


async def _swap_under_a_listener(tmp_path: Path) -> None:
    first_ca = _write_pair(tmp_path, ["127.0.0.1"])
    tls = IngestTls(IngestTlsSpec(cert_file=str(tmp_path / "tls.crt"),
                                  key_file=str(tmp_path / "tls.key")), check_seconds=0)
    app = web.Application()
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.context)
    await site.start()
    try:
        async with httpx.AsyncClient(verify=_client(first_ca)) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/")).text == "ok"
        second_ca = _write_pair(tmp_path, ["127.0.0.1"])
        async with httpx.AsyncClient(verify=_client(second_ca)) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/")).text == "ok"
        (tmp_path / "tls.key").write_text("garbage")  # unusable: the last good pair stays
        async with httpx.AsyncClient(verify=_client(second_ca)) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/")).text == "ok"
        async with httpx.AsyncClient(verify=_client(first_ca)) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()


@pytest.fixture
def tls_worker(tmp_path: Path) -> Iterator[tuple[str, bytes, subprocess.Popen[bytes]]]:
    ca = _write_pair(tmp_path / "tls", ["127.0.0.1"])
    port, admin = free_port(), free_port()
    config = {
        "store": {"path": str(tmp_path / "audit.db"), "synchronous": "NORMAL"},
        "ingest": {"listen": f"127.0.0.1:{port}", "processes": 2,
                   "tls": {"certFile": str(tmp_path / "tls" / "tls.crt"),
                           "keyFile": str(tmp_path / "tls" / "tls.key")}},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "drainTimeoutSeconds": 2,
    }
    (tmp_path / "worker.yaml").write_text(yaml.safe_dump(config))
    with (tmp_path / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sealtrail", "worker", "--config",
             str(tmp_path / "worker.yaml")], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the worker did not start: " + (tmp_path / "worker.log").read_text())
        yield f"https://127.0.0.1:{port}", ca, process
    finally:
        process.terminate()
        process.wait(30)


def test_the_worker_takes_events_over_https_only(
        tls_worker: tuple[str, bytes, subprocess.Popen[bytes]]) -> None:
    url, ca, _ = tls_worker
    event = {"event_type": "safety.decision", "severity": "INFO", "tenant_id": "t"}
    with httpx.Client(verify=_client(ca)) as client:
        for _ in range(6):  # new connections: the kernel spreads them over both processes
            answer = client.post(f"{url}/v1/events", json=event,
                                 headers={"Connection": "close"})
            assert answer.status_code in {200, 201, 202}, answer.text
    with pytest.raises(httpx.TransportError):
        httpx.post(url.replace("https", "http") + "/v1/events", json=event, timeout=5)


def test_unusable_certificate_files_stop_the_worker_at_start(tmp_path: Path) -> None:
    config = {"store": {"path": str(tmp_path / "audit.db")},
              "ingest": {"listen": f"127.0.0.1:{free_port()}",
                         "tls": {"certFile": str(tmp_path / "none.crt"),
                                 "keyFile": str(tmp_path / "none.key")}}}
    (tmp_path / "worker.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "sealtrail", "worker", "--config", str(tmp_path / "worker.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    assert done.returncode != 0
    assert "ingest.tls" in done.stderr
    assert str(tmp_path / "none.crt") in done.stderr


# --- re-creation and clean-up against a stand-in API ------------------------------------------


class _Answer:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.data = json.dumps(obj).encode()


def _error(status: int, message: str = "") -> ApiException:
    error = ApiException(status=status, reason=message or str(status))
    error.body = json.dumps({"kind": "Status", "code": status, "message": message})
    return error


class _StandIn:
    """StatefulSets and Services as the API keeps them: uid, resourceVersion, immutability."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: list[tuple[str, str | None]] = []
        self.counter = 0

    def _key(self, kind: str, name: str) -> tuple[str, str]:
        return kind, name

    def calls(self, kind: str) -> tuple[Any, Any, Any, Any]:  # noqa: C901 - four small fakes
        def read(name: str, _namespace: str, **_: Any) -> _Answer:
            if (kind, name) not in self.objects:
                raise _error(404)
            return _Answer(self.objects[kind, name])

        def create(_namespace: str, body: dict[str, Any]) -> None:
            self.counter += 1
            body = copy.deepcopy(body)
            body["metadata"] |= {"uid": f"uid-{self.counter}", "resourceVersion": "1"}
            if kind == "Service":
                body["spec"].setdefault("clusterIP", f"10.96.0.{self.counter}")
            self.objects[kind, body["metadata"]["name"]] = body

        def replace(name: str, _namespace: str, body: dict[str, Any],
                    dry_run: str | None = None) -> None:
            current = self.objects[kind, name]
            if kind == "StatefulSet" and any(
                    current["spec"].get(f) != body["spec"].get(f)
                    for f in ("volumeClaimTemplates", "selector", "serviceName")):
                raise _error(422, 'StatefulSet.apps "x" is invalid: spec: Forbidden: updates '
                             "to statefulset spec for fields other than 'replicas', ...")
            if dry_run is None:
                body = copy.deepcopy(body)
                body["metadata"]["uid"] = current["metadata"]["uid"]
                self.objects[kind, name] = body

        def delete(name: str, _namespace: str, body: Any = None) -> None:
            if (kind, name) not in self.objects:
                raise _error(404)
            if body is not None and body.preconditions is not None and (
                    body.preconditions.uid != self.objects[kind, name]["metadata"]["uid"]):
                raise _error(409)
            self.deleted.append((f"{kind}/{name}", body.propagation_policy if body else None))
            del self.objects[kind, name]

        return read, create, replace, delete


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> tuple[Kube, _StandIn]:
    api = _StandIn()
    kube = Kube.__new__(Kube)
    monkeypatch.setattr(kube, "_calls", api.calls)
    monkeypatch.setattr(kube, "apps", type("Apps", (), {
        "replace_namespaced_stateful_set":
            staticmethod(api.calls("StatefulSet")[2])})(),
        raising=False)
    return kube, api


def _stateful_set(size: str, owner: str = "uid-1") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "c", "namespace": "ns",
                         "ownerReferences": [{"uid": owner, "name": "p"}]},
            "spec": {"replicas": 1, "serviceName": "c", "selector": {"matchLabels": {"a": "b"}},
                     "volumeClaimTemplates": [{"spec": {"resources": {"requests": {
                         "storage": size}}}}]}}


def test_a_storage_change_recreates_the_stateful_set_orphaning_its_pods(
        stand_in: tuple[Kube, _StandIn]) -> None:
    kube, api = stand_in
    assert kube.apply_recreating(_stateful_set("10Gi")) == "created"
    assert kube.apply_recreating(_stateful_set("10Gi")) == "unchanged"
    changed = _stateful_set("10Gi")
    changed["spec"]["replicas"] = 2
    assert kube.apply_recreating(changed) == "replaced", "an updatable field: no re-creation"
    assert api.deleted == []
    assert kube.apply_recreating(_stateful_set("20Gi")) == "recreated"
    assert api.deleted == [("StatefulSet/c", "Orphan")]
    stored = api.objects["StatefulSet", "c"]
    assert stored["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "20Gi"}
    assert kube.apply_recreating(_stateful_set("20Gi")) == "unchanged"


def test_any_other_refusal_is_not_answered_by_deleting(
        stand_in: tuple[Kube, _StandIn], monkeypatch: pytest.MonkeyPatch) -> None:
    kube, api = stand_in
    kube.apply_recreating(_stateful_set("10Gi"))
    read, create, _, delete = api.calls("StatefulSet")

    def refuse(*_: Any, **__: Any) -> None:
        raise _error(422, "spec.replicas: Invalid value: -1")

    monkeypatch.setattr(kube, "_calls", lambda _kind: (read, create, refuse, delete))
    monkeypatch.setattr(kube, "apps", type("Apps", (), {
        "replace_namespaced_stateful_set": staticmethod(refuse)})(), raising=False)
    with pytest.raises(KubeError):
        kube.apply_recreating(_stateful_set("20Gi"))
    assert api.deleted == []


def test_a_new_pinned_cluster_ip_recreates_the_service(stand_in: tuple[Kube, _StandIn]) -> None:
    kube, api = stand_in
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "c", "namespace": "ns"}, "spec": {"ports": []}}
    kube.apply_recreating(service)
    allocated = api.objects["Service", "c"]["spec"]["clusterIP"]
    pinned = copy.deepcopy(service)
    pinned["spec"]["clusterIP"] = "10.96.7.7"
    assert kube.apply_recreating(pinned) == "recreated"
    assert api.objects["Service", "c"]["spec"]["clusterIP"] == "10.96.7.7" != allocated
    assert kube.apply_recreating(pinned) == "unchanged"
    assert kube.apply_recreating(service) == "replaced", "unpinned: the IP it has is kept"
    assert api.objects["Service", "c"]["spec"]["clusterIP"] == "10.96.7.7"


def test_only_what_the_policy_owns_is_deleted(stand_in: tuple[Kube, _StandIn]) -> None:
    kube, api = stand_in
    kube.apply(_stateful_set("1Gi", owner="someone-else"))
    ref = ObjectRef("StatefulSet", "ns", "c")
    assert kube.delete_owned(ref, "uid-1") is False
    assert ("StatefulSet", "c") in api.objects
    assert kube.delete_owned(ObjectRef("Service", "ns", "absent"), "uid-1") is False
    api.objects.clear()
    kube.apply(_stateful_set("1Gi"))
    assert kube.delete_owned(ref, "uid-1") is True
    assert api.deleted == [("StatefulSet/c", "Background")]


def test_switching_to_sidecar_deletes_each_stale_object_once(
        stand_in: tuple[Kube, _StandIn]) -> None:
    kube, api = stand_in
    sidecar = Policy.from_object({
        "metadata": {"name": "cluster-audit", "namespace": "sealtrail", "uid": "uid-1"},
        "spec": {"mode": "sidecar", "routes": [{"exports": ["x"]}]}})
    refs = stale_objects(sidecar)
    for ref in refs:
        api.objects[ref.kind, ref.name] = {"metadata": {
            "name": ref.name, "namespace": ref.namespace, "uid": f"{ref.kind}-uid",
            "ownerReferences": [{"uid": "uid-1"}]}}
    assert [kube.delete_owned(ref, "uid-1") for ref in refs] == [True] * len(refs)
    assert [kube.delete_owned(ref, "uid-1") for ref in refs] == [False] * len(refs)
    assert api.objects == {}

