"""Shared fixtures: a fresh store path, a signing key, sample events, and the real CLI."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sealtrail.api.event import Event
from sealtrail.chain.keys import Signer, generate_keypair
from sealtrail.demo import sample_events

from .control_plane import (
    ControlPlane,
    locked,
    pod_network_available,
    shared_control_plane,
    stop_recorded,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return generate_keypair(tmp_path / "signing.key")


def events(count: int, *, seed: int = 1, tenants: tuple[str, ...] = ("acme", "globex")) -> list[
    Event
]:
    return [Event.model_validate(raw) for raw in sample_events(count, seed=seed, tenants=tenants)]


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


CliResult = subprocess.CompletedProcess[bytes]


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Run the installed `sealtrail` command as a user would, in its own process."""

    def run(*args: str | Path, stdin: bytes = b"") -> CliResult:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        return subprocess.run(
            [sys.executable, "-m", "sealtrail", *map(str, args)],
            input=stdin,
            capture_output=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
            check=False,
        )

    return run


# -- the real control plane ------------------------------------------------------------------

HELM = ROOT / ".tools" / "bin" / "helm"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
RELEASE = "sealtrail"
RELEASE_NAMESPACE = "sealtrail"
#: What the tests install the chart with: the node runs any `sealtrail` image from the image
#: built from the Dockerfile; short intervals keep the tests quick.
RELEASE_VALUES = ("--set", "image.tag=test", "--set", "operator.pollSeconds=1",
                  "--set", "operator.policyResyncSeconds=2",
                  "--set", "operator.secretRefreshSeconds=1")


_fresh_planes = itertools.count()


def fresh_subnet() -> str:
    """A /24 of the pod network no other plane of this run uses (by xdist worker and count)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return f"10.244.{10 + 20 * worker + next(_fresh_planes)}.0/24"


@contextlib.contextmanager
def fresh_control_plane(directory: Path) -> Iterator[ControlPlane]:
    """A control plane and node of its own, for a test that installs or removes the chart.

    Its node takes a subnet no other plane of the run uses (by xdist worker and count), so
    its pods' addresses never meet those of the run's shared plane.
    """
    plane = ControlPlane(directory, subnet=fresh_subnet())
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


def until(predicate: Callable[[], Any], seconds: float, what: str,
          details: Callable[[], str] | None = None) -> Any:
    """Poll `predicate` until it returns something true; fail after `seconds`.

    The failure names `what`, and adds what `details` says then (an operator's log, say).
    """
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}"
                                 + (details() if details else ""))
        time.sleep(0.2)


def _run_directory(config: pytest.Config) -> Path:
    """A directory every process of this run shares (xdist workers and their controller)."""
    base: Path = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return base.parent if hasattr(config, "workerinput") else base


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> ControlPlane:
    """The run's etcd, kube-apiserver, kube-controller-manager and node (one for all)."""
    if not pod_network_available():
        pytest.fail("the real control plane needs the pod network: run the tests through "
                    "scripts/test.sh, or under scripts/netns.sh")
    return shared_control_plane(_run_directory(request.config))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # the controller stops it, once every worker is done
    directory = stop_recorded(_run_directory(session.config))
    if directory is not None and exitstatus != 0:
        print(f"\ncontrol plane logs (etcd, kube-apiserver, kube-controller-manager, node, "
              f"audit) kept in {directory}")


def tool(plane: ControlPlane, *args: str | Path, stdin: str | None = None,
         check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run kubectl or helm (the first argument) as the cluster's administrator."""
    done = subprocess.run([str(a) for a in args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "KUBECONFIG": str(plane.kubeconfig),
                               "HELM_CACHE_HOME": str(plane.directory / "helm-cache"),
                               "HELM_CONFIG_HOME": str(plane.directory / "helm-config"),
                               "HELM_DATA_HOME": str(plane.directory / "helm-data")})
    if check and done.returncode != 0:
        raise AssertionError(f"{Path(str(args[0])).name} {' '.join(map(str, args[1:]))} failed "
                             f"({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done


def install_chart(plane: ControlPlane, *extra: str) -> None:
    """`helm install` of the chart, then wait until the operator has published its CA."""
    tool(plane, HELM, "install", RELEASE, ROOT / "helm" / "sealtrail", "--namespace",
         RELEASE_NAMESPACE, "--create-namespace", *RELEASE_VALUES, *extra, "--wait",
         "--timeout", "5m", timeout=330)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = tool(plane, KUBECTL, "get", "mutatingwebhookconfiguration", RELEASE, "-o",
                     "jsonpath={.webhooks[0].clientConfig.caBundle}", check=False)
        if found.returncode == 0 and found.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError("the operator never published its webhook CA:\n" + operator_log(plane))


def operator_log(plane: ControlPlane) -> str:
    """The output of the operator pods the node runs (newest last)."""
    return "".join(f"\n--- {pod} ---\n"
                   + plane.container_log(RELEASE_NAMESPACE, pod, "operator")[-6000:]
                   for pod in plane.pods_named(RELEASE_NAMESPACE, RELEASE))


@pytest.fixture(scope="session")
def sealtrail_release(control_plane: ControlPlane, request: pytest.FixtureRequest
                      ) -> ControlPlane:
    """The chart installed on the run's control plane (once, by whichever process is first)."""
    marker = control_plane.directory / "release-installed"
    with locked(_run_directory(request.config) / "control-plane.lock"):
        if not marker.exists():
            install_chart(control_plane)
            marker.write_text(RELEASE)
    return control_plane
