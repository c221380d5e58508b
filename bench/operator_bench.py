"""Operator benchmark: reconcile 1,000 AuditExports and 50 AuditPolicies from scratch.

    .venv/bin/python bench/operator_bench.py [--exports 1000] [--policies 50]

Starts a real control plane (tests/control_plane.py: etcd, kube-apiserver and
kube-controller-manager built from pinned Go modules; the first run builds them), installs the
CRDs from crds/, creates the resources first (a Secret per export, 1,000 AuditExports over the
six backends, 50 AuditPolicies each routing to four exports), then starts the real `sealtrail
operator` process and measures the time from its start until every resource reports
`Ready=True`, polling the API every 250 ms, and the operator's resident memory (VmRSS from
/proc every 100 ms). Writes `bench/results/operator.json`. It runs itself inside
scripts/netns.sh, where the control plane's listeners cannot be reached from outside.

No node runs here, so no worker pods exist: this measures the operator's own work (watch,
index, validate, resolve Secrets, render and apply the 50 ConfigMaps, write status) against a
real API server (with its admission, validation, CEL rules and priority and fairness), not
delivery.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from tests.control_plane import ControlPlane, binaries  # noqa: E402

from chain_bench import machine  # noqa: E402
from export_bench import free_port, rss_kib  # noqa: E402

NAMESPACE = "bench"
GROUP_PATH = "/apis/sealtrail.dev/v1alpha1/namespaces/" + NAMESPACE


def backend(number: int) -> dict[str, Any]:
    """A valid spec for export `number`, cycling through the six backends."""
    ref = {"secretKeyRef": {"name": f"secret-{number}", "key": "token"}}
    specs: list[dict[str, Any]] = [
        {"splunk": {"hecUrl": f"https://hec-{number}.example:8088", "token": ref,
                    "index": "audit"}},
        {"elastic": {"url": f"https://es-{number}.example:9200",
                     "auth": {"apiKey": ref}}},
        {"datadog": {"apiKey": ref, "site": "datadoghq.eu"}},
        {"webhook": {"url": f"https://hook-{number}.example/in", "secret": ref}},
        {"syslog": {"host": f"syslog-{number}.example", "port": 6514}},
        {"cloudwatch": {"logGroup": f"/sealtrail/{number}", "region": "eu-west-1"}},
    ]
    return specs[number % len(specs)]


def install_crds(client: httpx.Client) -> None:
    """The CRDs from crds/, created and Established."""
    names = []
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                client.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                            json=document).raise_for_status()
                names.append(document["metadata"]["name"])
    deadline = time.monotonic() + 60
    for name in names:
        while not any(c["type"] == "Established" and c["status"] == "True" for c in (
                client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                .json().get("status") or {}).get("conditions") or []):
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established after 60 s")
            time.sleep(0.1)


def create_all(client: httpx.Client, exports: int, policies: int) -> None:
    """Namespace, Secrets, exports and policies, through the API."""
    client.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": NAMESPACE}}).raise_for_status()
    for number in range(exports):
        client.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"secret-{number}"},
            "data": {"token": "c2VjcmV0LXZhbHVl"}}).raise_for_status()
        client.post(f"{GROUP_PATH}/auditexports", json={
            "apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditExport",
            "metadata": {"name": f"export-{number}"}, "spec": backend(number),
        }).raise_for_status()
    per_policy = max(1, exports // policies)
    for number in range(policies):
        names = [f"export-{(number * per_policy + k) % exports}" for k in range(4)]
        client.post(f"{GROUP_PATH}/auditpolicies", json={
            "apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
            "metadata": {"name": f"policy-{number}"},
            "spec": {"selector": {"matchLabels": {"app": f"app-{number}"}},
                     "routes": [{"exports": names}]},
        }).raise_for_status()


def ready_count(client: httpx.Client, plural: str) -> tuple[int, int]:
    """(ready, total) of one kind."""
    items = client.get(f"{GROUP_PATH}/{plural}").json()["items"]
    ready = sum(1 for item in items if any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (item.get("status") or {}).get("conditions") or []))
    return ready, len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--exports", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "operator.json")
    args = parser.parse_args()
    if os.environ.get("SEALTRAIL_NETNS") != "1":
        # Built out here (it needs the Go module proxy), then run in there.
        binaries()
        netns = ROOT / "scripts" / "netns.sh"  # the control plane's listeners stay in there
        os.execv("/bin/bash", ["bash", str(netns), sys.executable, *sys.argv])  # noqa: S606
    directory = Path(tempfile.mkdtemp(prefix="sealtrail-operator-bench-"))
    plane = ControlPlane(directory / "control-plane")
    plane.start(node=False)
    kubeconfig = plane.kubeconfig
    client = plane.client()
    install_crds(client)
    started_create = time.perf_counter()
    create_all(client, args.exports, args.policies)
    create_seconds = time.perf_counter() - started_create
    log = (directory / "operator.log").open("wb")
    started = time.perf_counter()
    operator = subprocess.Popen(
        [sys.executable, "-m", "sealtrail", "operator", "--no-webhook", "--poll-seconds", "30",
         "--policy-resync-seconds", "60", "--liveness-port", str(free_port())],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "KUBECONFIG": str(kubeconfig),
             "PYTHONPATH": str(ROOT / "operator"), "SEALTRAIL_LOG_LEVEL": "WARNING"})
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            rss = rss_kib(operator.pid)
            if rss is not None:
                samples.append(rss)

    threading.Thread(target=sample, daemon=True).start()
    progress: list[tuple[float, int, int]] = []
    try:
        while True:
            exports_ready, exports_total = ready_count(client, "auditexports")
            policies_ready, policies_total = ready_count(client, "auditpolicies")
            elapsed = time.perf_counter() - started
            progress.append((round(elapsed, 2), exports_ready, policies_ready))
            if exports_ready == exports_total and policies_ready == policies_total:
                break
            if elapsed > args.timeout or operator.poll() is not None:
                print(f"not all Ready: exports {exports_ready}/{exports_total}, policies "
                      f"{policies_ready}/{policies_total}; see {directory}/operator.log",
                      file=sys.stderr)
                return 1
            time.sleep(0.25)
        all_ready = time.perf_counter() - started
        time.sleep(3.0)  # settled: memory after the work
        settled = rss_kib(operator.pid) or 0
    finally:
        done.set()
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        log.close()
        client.close()
        plane.stop()
    config_maps = args.policies
    figures = {
        "benchmark": "operator",
        "command": "python bench/operator_bench.py " + " ".join(sys.argv[1:]),
        "exports": args.exports, "policies": args.policies,
        "objects_created_seconds": round(create_seconds, 2),
        "operator_start_to_all_ready_seconds": round(all_ready, 2),
        "config_maps_rendered": config_maps,
        "operator_rss_peak_mib": round(max(samples, default=0) / 1024, 1),
        "operator_rss_settled_mib": round(settled / 1024, 1),
        "progress": progress[:: max(1, len(progress) // 40)],
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    rows = [
        ("resources", f"{args.exports} AuditExports, {args.policies} AuditPolicies"),
        ("operator start to all Ready (s)", f"{all_ready:.2f}"),
        ("operator RSS, peak (MiB)", f"{figures['operator_rss_peak_mib']}"),
        ("operator RSS, settled (MiB)", f"{figures['operator_rss_settled_mib']}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'measure':<{width}}  value")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
