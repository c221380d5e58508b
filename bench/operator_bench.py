"""Operator benchmark: 1,000 AuditExports, 50 AuditPolicies and 2,000 worker pods.

    .venv/bin/python bench/operator_bench.py [--exports 1000] [--policies 50] [--pods 2000]
        [--window 120]

Starts a real control plane (tests/control_plane.py: etcd, kube-apiserver and
kube-controller-manager built from pinned Go modules; the first run builds them) without its
node, installs the CRDs from crds/ and creates everything first, through the API:

* a Secret per export, the AuditExports over the six backends, the AuditPolicies (policy `k`
  selects `app: app-k` and routes to every `policies`-th export from `k`, so every export has
  workers);
* a Node with a `Ready` condition (the node lifecycle controller is off in the test control
  plane, and pod garbage collection deletes pods bound to a node that does not exist);
* the worker pods: pod `n` is labelled `sealtrail.dev/policy: policy-<n % policies>` and
  `app: app-<n % policies>`, has the `sealtrail-worker` init container (restartPolicy Always,
  port `st-admin` 8471) and an app container, is bound to that Node, and its status (written
  through the `/status` subresource, as a kubelet would) says Running with the pod IP
  `127.10.a.b` (bench/status_responder.py: Linux answers all of 127.0.0.0/8 on loopback).

Then it starts bench/status_responder.py (one process answering every pod's `/v1/status` with
the namespace's admin token, lags that move within their decade at every poll and now and
then across it) and the real `sealtrail operator` process with the chart's intervals, and
measures:

* from the operator's start: every export and policy `Ready=True`; every export's
  `status.workers` equal to the number of pods its policies route to; every export polled
  (those workers all answered: `workersUnreachable` 0, `Delivering=True`). The API is listed
  every 500 ms.
* then a steady window (`--window` seconds): status writes per second (the operator's own
  `sealtrail_operator_status_writes_total`, and the status PATCHes the API server counted),
  polls per second (the responder's count), reconcile rounds, the operator's other API
  requests, its CPU time;
* the operator's VmRSS every 100 ms throughout: the peak, and at the end of the window.

Writes `bench/results/operator.json`. It runs itself inside scripts/netns.sh, where the control
plane's listeners and the 127.10.0.0/16 pods cannot be reached from outside.
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
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from tests.control_plane import GATEWAY, ControlPlane, binaries  # noqa: E402

from chain_bench import machine  # noqa: E402
from export_bench import free_port, rss_kib  # noqa: E402
from status_responder import ADMIN_PORT, pod_ip, routed_exports  # noqa: E402

NAMESPACE = "bench"
GROUP_PATH = "/apis/sealtrail.dev/v1alpha1/namespaces/" + NAMESPACE
NODE = "bench-node"
#: The CRD's limit on the exports of one route.
EXPORTS_PER_ROUTE = 32
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


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
    for number in range(policies):
        names = [f"export-{export}" for export in routed_exports(number, exports, policies)]
        routes = [{"exports": names[at:at + EXPORTS_PER_ROUTE]}
                  for at in range(0, len(names), EXPORTS_PER_ROUTE)]
        client.post(f"{GROUP_PATH}/auditpolicies", json={
            "apiVersion": "sealtrail.dev/v1alpha1", "kind": "AuditPolicy",
            "metadata": {"name": f"policy-{number}"},
            "spec": {"selector": {"matchLabels": {"app": f"app-{number}"}},
                     "routes": routes},
        }).raise_for_status()


def register_node(client: httpx.Client) -> None:
    """A Node that says it is Ready (nothing checks its heartbeat here)."""
    client.post("/api/v1/nodes", json={
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}},
    ).raise_for_status()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.patch(f"/api/v1/nodes/{NODE}/status", headers=MERGE_PATCH, json={"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the benchmark's node", "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp}],
        "addresses": [{"type": "InternalIP", "address": GATEWAY}],
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "5000"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "5000"}}}).raise_for_status()


def worker_pod(number: int, policies: int) -> dict[str, Any]:
    """Pod `number` as the webhook would have left it: the worker as a native sidecar."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"app-{number}", "labels": {
            "sealtrail.dev/policy": f"policy-{number % policies}",
            "app": f"app-{number % policies}"}},
        "spec": {
            "nodeName": NODE, "automountServiceAccountToken": False,
            "initContainers": [{
                "name": "sealtrail-worker", "image": "sealtrail/sealtrail:0.1.0",
                "restartPolicy": "Always",
                "ports": [{"name": "st-admin", "containerPort": ADMIN_PORT}]}],
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    }


def create_pods(client: httpx.Client, pods: int, policies: int) -> None:
    """The worker pods, Running at their 127.10.a.b address (8 requests in flight)."""
    def one(number: int) -> None:
        client.post(f"/api/v1/namespaces/{NAMESPACE}/pods",
                    json=worker_pod(number, policies)).raise_for_status()
        ip = pod_ip(number)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.patch(f"/api/v1/namespaces/{NAMESPACE}/pods/app-{number}/status",
                     headers=MERGE_PATCH, json={"status": {
                         "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                         "hostIP": GATEWAY, "hostIPs": [{"ip": GATEWAY}], "startTime": stamp,
                         "conditions": [{"type": "Ready", "status": "True",
                                         "lastTransitionTime": stamp}]}},
                     ).raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(pods)))


def expected_workers(exports: int, policies: int, pods: int) -> dict[str, int]:
    """Per export, the pods whose policy routes to it."""
    per_policy = Counter(number % policies for number in range(pods))
    return {f"export-{export}": per_policy[export % policies] for export in range(exports)}


def _condition(item: Mapping[str, Any], kind: str) -> str | None:
    return next((str(c.get("status")) for c in (item.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind), None)


def survey(client: httpx.Client, expected: Mapping[str, int]) -> dict[str, int]:
    """What the statuses say now: how many are Ready, found their workers, were polled."""
    exports = client.get(f"{GROUP_PATH}/auditexports").json()["items"]
    policies = client.get(f"{GROUP_PATH}/auditpolicies").json()["items"]
    found = polled = lag_in_range = credential = 0
    for item in exports:
        status = item.get("status") or {}
        wanted = expected.get(item["metadata"]["name"], 0)
        if status.get("workers") == wanted:
            found += 1
            if not status.get("workersUnreachable") and (
                    wanted == 0 or _condition(item, "Delivering") == "True"):
                polled += 1
        if wanted and 100 <= (status.get("cursorLag") or 0) <= 9999:
            lag_in_range += 1
        if status.get("credentialVersion") and "@" in status["credentialVersion"]:
            credential += 1
    return {
        "exports": len(exports), "policies": len(policies),
        "exports_ready": sum(_condition(item, "Ready") == "True" for item in exports),
        "policies_ready": sum(_condition(item, "Ready") == "True" for item in policies),
        "exports_workers_found": found, "exports_polled": polled,
        "exports_lag_in_range": lag_in_range, "exports_credential_version_known": credential,
        "policies_injected_pods": sum(int((item.get("status") or {}).get("injectedPods") or 0)
                                      for item in policies),
    }


def operator_metrics(port: int) -> dict[str, float]:
    """The operator's counters, by sample name and labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {name + "".join(f",{k}={v}" for k, v in sorted(labels.items())): value
            for family in text_string_to_metric_families(text)
            for name, labels, value, *_ in family.samples}


def api_requests(client: httpx.Client) -> dict[str, float]:
    """The API server's request counts by verb, resource and subresource (all callers)."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                key = " ".join(filter(None, (labels.get("verb"), labels.get("resource"),
                                             labels.get("subresource"))))
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_summary(path: Path) -> dict[str, Any]:
    """How many lines the operator logged (at WARNING and above), and the distinct first few."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    distinct: list[str] = []
    for line in lines:
        short = line[:300]
        if short not in distinct and len(distinct) < 8:
            distinct.append(short)
    return {"lines": len(lines),
            "error_lines": sum(1 for line in lines if "ERROR" in line or "Traceback" in line),
            "first_distinct": distinct}


class RssSampler:
    """A process's VmRSS every 100 ms, in a thread: (seconds since start, KiB)."""

    def __init__(self, pid: int, started: float) -> None:
        """Start sampling at once."""
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._pid, self._started = pid, started
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._done.wait(0.1):
            rss = rss_kib(self._pid)
            if rss is not None:
                self.samples.append((time.perf_counter() - self._started, rss))

    def stop(self) -> None:
        """No more samples."""
        self._done.set()

    def peak_mib(self, since: float = 0.0) -> float:
        """The highest sample since `since` seconds."""
        return round(max((kib for at, kib in self.samples if at >= since), default=0) / 1024, 1)


def spawn(argv: list[str], log: Path, kubeconfig: Path) -> subprocess.Popen[bytes]:
    """A process of ours with the sources on its path, its output into `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={
                                    **os.environ, "KUBECONFIG": str(kubeconfig),
                                    "PYTHONPATH": str(ROOT / "operator"),
                                    "SEALTRAIL_LOG_LEVEL": "WARNING"})


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def responder_stats(port: int) -> dict[str, Any]:
    """The responder's counts so far."""
    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json())


def operator_argv(metrics_port: int) -> list[str]:
    """The operator with the chart's intervals, no webhook, its Lease in the bench namespace."""
    return [sys.executable, "-m", "sealtrail", "operator", "--no-webhook",
            "--poll-seconds", "5", "--policy-resync-seconds", "30", "--heartbeat-seconds", "60",
            "--secret-refresh-seconds", "30", "--release-namespace", NAMESPACE,
            "--release-name", "sealtrail", "--liveness-port", str(metrics_port)]


def wait_until_polled(client: httpx.Client, expected: Mapping[str, int], started: float,
                      timeout: float, operator: subprocess.Popen[bytes],
                      ) -> tuple[dict[str, float], list[list[float]]]:
    """Seconds from `started` to all Ready, all workers found and all polled; the progress."""
    reached: dict[str, float] = {}
    progress: list[list[float]] = []
    while True:
        now = survey(client, expected)
        elapsed = round(time.perf_counter() - started, 2)
        progress.append([elapsed, now["exports_ready"], now["policies_ready"],
                         now["exports_workers_found"], now["exports_polled"]])
        if now["exports_ready"] == now["exports"] and now["policies_ready"] == now["policies"]:
            reached.setdefault("all_ready", elapsed)
        if now["exports_workers_found"] == now["exports"]:
            reached.setdefault("all_workers_found", elapsed)
        if now["exports_polled"] == now["exports"]:
            reached.setdefault("all_polled", elapsed)
        if len(reached) == 3:
            return reached, progress
        if elapsed > timeout or operator.poll() is not None:
            raise RuntimeError(f"after {elapsed} s: {now} (reached: {reached})")
        time.sleep(0.5)


def rate(before: Mapping[str, float], after: Mapping[str, float], key: str,
         seconds: float) -> float:
    """Per second over the window."""
    return round((after.get(key, 0.0) - before.get(key, 0.0)) / seconds, 2)


def steady_window(client: httpx.Client, seconds: float, metrics_port: int, stats_port: int,
                  pids: tuple[int, int]) -> dict[str, Any]:
    """Counters at both ends of a window with every pod being polled."""
    def snapshot() -> tuple[float, dict[str, float], dict[str, float], dict[str, Any],
                            list[float]]:
        return (time.perf_counter(), operator_metrics(metrics_port), api_requests(client),
                responder_stats(stats_port), [cpu_seconds(pid) for pid in pids])

    start = snapshot()
    time.sleep(seconds)
    end = snapshot()
    span = end[0] - start[0]
    writes = {kind: rate(start[1], end[1], f"sealtrail_operator_status_writes_total,kind={kind}",
                         span) for kind in ("auditexports", "auditpolicies")}
    requests = {key: rate(start[2], end[2], key, span) for key in sorted(end[2])}
    return {
        "seconds": round(span, 1),
        "status_writes_per_second": writes,
        "status_patches_seen_per_second": {
            kind: requests.get(f"PATCH {kind} status", 0.0)
            for kind in ("auditexports", "auditpolicies")},
        "reconcile_rounds": round(end[1].get("sealtrail_operator_reconcile_rounds_total", 0)
                                  - start[1].get("sealtrail_operator_reconcile_rounds_total", 0)),
        "leader": end[1].get("sealtrail_operator_leader"),
        "polls_per_second": round((end[3]["requests"] - start[3]["requests"]) / span, 1),
        "polls_answered_per_second": round((end[3]["ok"] - start[3]["ok"]) / span, 1),
        "polls_refused_per_second": round(
            (end[3]["unauthorized"] - start[3]["unauthorized"]) / span, 2),
        "decade_flips": end[3]["flips"] - start[3]["flips"],
        "operator_cpu_percent": round(100 * (end[4][0] - start[4][0]) / span, 1),
        "responder_cpu_percent": round(100 * (end[4][1] - start[4][1]) / span, 1),
        "api_requests_per_second_all": round(sum(requests.values()), 1),
        "api_requests_per_second": {key: value for key, value in requests.items()
                                    if value >= 0.05},
    }


def table(figures: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The printed (and documented) rows."""
    window = figures["steady_window"]
    writes = window["status_writes_per_second"]
    seen = window["status_patches_seen_per_second"]
    reached = figures["operator_start_to"]
    return [
        ("resources", (f"{figures['exports']} AuditExports, {figures['policies']} AuditPolicies, "
                       f"{figures['pods']} worker pods")),
        ("objects created (s)", f"{figures['objects_created_seconds']}"),
        ("operator start to all Ready (s)", f"{reached['all_ready']}"),
        ("operator start to all workers found (s)", f"{reached['all_workers_found']}"),
        ("operator start to all exports polled (s)", f"{reached['all_polled']}"),
        ("steady window (s)", f"{window['seconds']}"),
        ("status writes/s, exports + policies", (f"{writes['auditexports']} + "
                                                 f"{writes['auditpolicies']}")),
        ("status PATCHes/s seen by the API server", (f"{seen['auditexports']} + "
                                                     f"{seen['auditpolicies']}")),
        ("expected writes/s (heartbeats + lag flips)", f"{figures['expected_writes_per_second']}"),
        ("polls/s answered (refused)", (f"{window['polls_answered_per_second']} "
                                        f"({window['polls_refused_per_second']})")),
        ("reconcile rounds in the window", f"{window['reconcile_rounds']}"),
        ("API requests/s: all callers (GET secrets)", (
            f"{window['api_requests_per_second_all']} "
            f"({window['api_requests_per_second'].get('GET secrets', 0.0)})")),
        ("CPU in the window, operator (responder) (%)", (
            f"{window['operator_cpu_percent']} ({window['responder_cpu_percent']})")),
        ("operator RSS, peak (MiB)", f"{figures['operator_rss_peak_mib']}"),
        ("operator RSS, end of window (MiB)", f"{figures['operator_rss_settled_mib']}"),
        ("exports correct at the end (of all)", (f"{figures['final']['exports_polled']} / "
                                                 f"{figures['final']['exports']}")),
        ("operator log lines (ERROR)", (f"{figures['operator_log']['lines']} "
                                        f"({figures['operator_log']['error_lines']})")),
    ]


def measure(args: argparse.Namespace, plane: ControlPlane, directory: Path) -> dict[str, Any]:
    """Everything after the control plane is up."""
    client = plane.client()
    install_crds(client)
    started_create = time.perf_counter()
    create_all(client, args.exports, args.policies)
    register_node(client)
    started_pods = time.perf_counter()
    create_pods(client, args.pods, args.policies)
    created = time.perf_counter()
    expected = expected_workers(args.exports, args.policies, args.pods)
    stats_port, metrics_port = free_port(), free_port()
    responder = spawn([sys.executable, str(ROOT / "bench" / "status_responder.py"),
                       "--kubeconfig", str(plane.kubeconfig), "--namespace", NAMESPACE,
                       "--exports", str(args.exports), "--policies", str(args.policies),
                       "--stats-port", str(stats_port)], directory / "responder.log",
                      plane.kubeconfig)
    operator: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                responder_stats(stats_port)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or responder.poll() is not None:
                    raise RuntimeError(f"the responder did not start; see {directory}") from None
                time.sleep(0.2)
        started = time.perf_counter()
        operator = spawn(operator_argv(metrics_port), directory / "operator.log",
                         plane.kubeconfig)
        rss = RssSampler(operator.pid, started)
        reached, progress = wait_until_polled(client, expected, started, args.timeout, operator)
        window_from = time.perf_counter() - started
        window = steady_window(client, args.window, metrics_port, stats_port,
                               (operator.pid, responder.pid))
        settled = rss_kib(operator.pid) or 0
        rss.stop()
        final = survey(client, expected)
    finally:
        for process in (operator, responder):
            if process is not None:
                stop(process)
        client.close()
    flips_per_second = window["decade_flips"] / window["seconds"]
    return {
        "benchmark": "operator",
        "command": "python bench/operator_bench.py " + " ".join(sys.argv[1:]),
        "exports": args.exports, "policies": args.policies, "pods": args.pods,
        "operator_flags": operator_argv(0)[4:-2],
        "objects_created_seconds": round(created - started_create, 2),
        "pods_created_seconds": round(created - started_pods, 2),
        "operator_start_to": reached,
        "steady_window": window,
        # Each export and policy once a heartbeat; each flip moves an export's lag bucket once.
        "expected_writes_per_second": round(
            (args.exports + args.policies) / 60 + flips_per_second, 1),
        "operator_rss_peak_mib": rss.peak_mib(),
        "operator_rss_window_peak_mib": rss.peak_mib(since=window_from),
        "operator_rss_settled_mib": round(settled / 1024, 1),
        "final": final,
        "operator_log": log_summary(directory / "operator.log"),
        "logs": str(directory),
        "progress": progress[:: max(1, len(progress) // 60)],
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    """Run in the network namespace; print the table; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--exports", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--window", type=float, default=120.0,
                        help="seconds of steady polling to measure over (two heartbeats)")
    parser.add_argument("--timeout", type=float, default=900.0)
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
    try:
        figures = measure(args, plane, directory)
    finally:
        plane.stop()
    rows = table(figures)
    width = max(len(label) for label, _ in rows)
    print(f"{'measure':<{width}}  value")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for line in figures["operator_log"]["first_distinct"]:
        print(f"operator log: {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out} (logs in {directory})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
