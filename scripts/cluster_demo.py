"""The README's main command, on a local real control plane: the operator doing its job.

Run by scripts/demo.sh inside scripts/netns.sh, after the control plane and the image are built.
It starts etcd, kube-apiserver, kube-controller-manager and the tests' node
(tests/control_plane.py), installs the chart with helm, applies an AuditExport (a signed
webhook to a local stand-in SIEM) and an AuditPolicy (signed checkpoints), creates a Deployment
whose pods get the worker injected by the operator's webhook, lets the app write events, shows
`kubectl get auditexports`, and has the SIEM re-check every chain and checkpoint from its own
copy of the rows, as a SOC would. Then it stops everything it started.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.control_plane import GATEWAY, ControlPlane  # noqa: E402

from sealtrail.chain.keys import Signer, generate_keypair  # noqa: E402
from sealtrail.demo_siem import LocalSiem, check_received  # noqa: E402

TOOLS = ROOT / ".tools" / "bin"
APP_NAMESPACE = "shop"
EVENTS = 300


def step(text: str) -> None:
    """A heading for the next part of the story."""
    print(f"\n== {text}", flush=True)


def run(plane: ControlPlane, *args: str | Path, stdin: str | None = None, show: bool = True
        ) -> str:
    """Run kubectl or helm as the cluster's administrator, showing the command and its output."""
    command = [str(TOOLS / str(args[0])), *map(str, args[1:])]
    if show:
        print(f"$ {' '.join([str(args[0]), *map(str, args[1:])])}", flush=True)
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=330,
                          check=False, env={**os.environ, "KUBECONFIG": str(plane.kubeconfig),
                                            "HELM_CACHE_HOME": str(plane.directory / "helm")})
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {done.stderr}{done.stdout}")
    if show and done.stdout.strip():
        print(done.stdout.rstrip(), flush=True)
    return done.stdout


def wait(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll until `predicate` is true; stop the demo, naming `what`, after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out after {seconds:.0f} s waiting for {what}")


def install(plane: ControlPlane) -> None:
    """Start the control plane and install the chart, as a cluster's operator would."""
    step("a real control plane: etcd, kube-apiserver, kube-controller-manager, one node")
    plane.start()
    with plane.client() as client:
        version = client.get("/version").json()["gitVersion"]
    print(f"kube-apiserver {version} at {plane.url} (logs in {plane.directory})")
    run(plane, "kubectl", "get", "nodes")

    step("install the chart (CRDs, RBAC, webhook, the operator's Deployment)")
    run(plane, "helm", "install", "sealtrail", ROOT / "helm" / "sealtrail", "-n",
        "sealtrail", "--create-namespace", "--set", "image.tag=0.1.0", "--set",
        "operator.pollSeconds=1", "--wait", "--timeout", "5m", "--hide-notes")
    wait(lambda: run(plane, "kubectl", "get", "mutatingwebhookconfiguration", "sealtrail",
                     "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}", show=False),
         60, "the operator to publish its webhook CA")
    run(plane, "kubectl", "-n", "sealtrail", "get", "pods", "-o", "wide")


def audit(plane: ControlPlane, directory: Path, siem: LocalSiem, webhook_secret: str) -> None:
    """The Secrets, an AuditExport to the SIEM and an AuditPolicy, applied and Ready."""
    step("a local SIEM (signed webhooks), an AuditExport to it, an AuditPolicy")
    siem_url = siem.start(host=GATEWAY)
    print(f"SIEM listening at {siem_url}")
    run(plane, "kubectl", "create", "namespace", APP_NAMESPACE)
    run(plane, "kubectl", "label", "namespace", APP_NAMESPACE, "sealtrail.dev/injection=enabled")
    resources = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "siem-webhook"},
         "stringData": {"secret": webhook_secret}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sealtrail-checkpoint-key"},
         "data": {"checkpoint.key": base64.b64encode(
             (directory / "audit.key").read_bytes()).decode()}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
         "metadata": {"name": "siem"},
         "spec": {"webhook": {"url": siem_url, "secret": {"secretKeyRef": {
             "name": "siem-webhook", "key": "secret"}}},
             "batch": {"intervalMs": 200}}},
        {"apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
         "metadata": {"name": "shop"},
         "spec": {"selector": {"matchLabels": {"app": "shop"}},
                  "routes": [{"exports": ["siem"]}],
                  "checkpoints": {"signingKey": {"secretKeyRef": {
                      "name": "sealtrail-checkpoint-key", "key": "checkpoint.key"}},
                      "everyRows": 100}}},
    ]
    (directory / "audit.yaml").write_text(yaml.safe_dump_all(resources))
    run(plane, "kubectl", "apply", "-n", APP_NAMESPACE, "-f", directory / "audit.yaml")
    # The webhook injects pods of policies the operator has seen: wait until it says so.
    run(plane, "kubectl", "-n", APP_NAMESPACE, "wait", "--for=condition=Ready",
        "auditpolicy/shop", "auditexport/siem", "--timeout=60s")


def app(plane: ControlPlane, directory: Path) -> None:
    """A Deployment whose pod gets the worker and writes EVENTS events through it."""
    step(f"an app whose pods get the worker; it writes {EVENTS} audit events")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "shop"}},
                 "template": {"metadata": {"labels": {"app": "shop"}}, "spec": {
                     "containers": [{"name": "app", "image": "example.invalid/shop:1",
                                     "env": [{"name": "STAND_IN_EVENTS",
                                              "value": str(EVENTS)}]}]}}}}
    (directory / "app.yaml").write_text(yaml.safe_dump(deployment))
    run(plane, "kubectl", "apply", "-n", APP_NAMESPACE, "-f", directory / "app.yaml")
    run(plane, "kubectl", "-n", APP_NAMESPACE, "rollout", "status", "deployment/shop",
        "--timeout=120s")
    run(plane, "kubectl", "-n", APP_NAMESPACE, "get", "pods", "-o",
        "custom-columns=POD:.metadata.name,IP:.status.podIP,"
        "SIDECARS:.spec.initContainers[*].name,APP:.spec.containers[*].name,"
        "READY:.status.conditions[?(@.type=='Ready')].status")


def delivered(plane: ControlPlane, siem: LocalSiem) -> None:
    """Every event at the SIEM, and the export's status saying the backlog is 0."""
    step("delivery: the SIEM receives every row; the export's status says so")
    wait(lambda: sum(1 for row in siem.rows if b'"sealtrail.checkpoint"' not in row)
         >= EVENTS, 120, f"{EVENTS} events at the SIEM")

    def caught_up() -> bool:
        status = json.loads(run(plane, "kubectl", "get", "aex", "siem", "-n", APP_NAMESPACE,
                                "-o", "json", show=False)).get("status", {})
        return status.get("cursorLag") == 0 and status.get("workers") == 1

    wait(caught_up, 60, "the status to show the backlog delivered")
    run(plane, "kubectl", "-n", APP_NAMESPACE, "get", "auditexports,auditpolicies")


def siem_check(directory: Path, siem: LocalSiem, signer: Signer) -> None:
    """What a SOC can prove from the SIEM's copy alone."""
    step("the SIEM re-checks every chain and checkpoint from its own copy")
    check = check_received(list(siem.rows), [signer.public])
    print(f"{check.rows} rows in {check.chains} chains ({check.tenants} tenants, "
          f"{check.stores} store), {check.checkpoints} signed checkpoints: "
          + ("every hash, link and signature checks" if not check.problems
             else "; ".join(check.problems)))
    (directory / "siem-rows.ndjson").write_bytes(b"\n".join(siem.rows) + b"\n")
    verify = subprocess.run([sys.executable, "-m", "sealtrail", "verify", "--rows",
                             str(directory / "siem-rows.ndjson"), "--pubkey",
                             str(directory / "audit.key.pub")],
                            capture_output=True, text=True, check=False)
    print("$ sealtrail verify --rows siem-rows.ndjson --pubkey audit.key.pub\n"
          f"{verify.stdout.strip()}")
    if check.problems or verify.returncode != 0:
        raise SystemExit("the SIEM's copy does not verify")


def main() -> int:
    """Run the story; stop everything it started, whatever happens."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "demo-out" / "cluster")
    parser.add_argument("--subnet", default=os.environ.get("SEALTRAIL_DEMO_SUBNET",
                                                          "10.244.1.0/24"))
    args = parser.parse_args()
    directory: Path = args.dir
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    plane = ControlPlane(directory / "control-plane", subnet=args.subnet)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    siem = LocalSiem(webhook_secret)
    started = time.monotonic()
    try:
        install(plane)
        signer = generate_keypair(directory / "audit.key")
        audit(plane, directory, siem, webhook_secret)
        app(plane, directory)
        delivered(plane, siem)
        siem_check(directory, siem, signer)
        print(json.dumps({"cluster_demo": "ok", "events": EVENTS, "rows": len(siem.rows),
                          "seconds": round(time.monotonic() - started, 1)}))
        return 0
    finally:
        step("stopping the node, the controllers, the API server and etcd")
        siem.stop()
        plane.stop()


if __name__ == "__main__":
    raise SystemExit(main())
