"""The built image, run as Kubernetes runs it: read-only root, uid 65532, volumes, SIGTERM.

The repository's Dockerfile is built for real (scripts/build_image.sh: buildah on a local
Debian bookworm python base, since the official base image cannot be pulled here) and processes
run from its root filesystem under bubblewrap (tests/container.py). One build serves the module.

* `sealtrail --version` runs from the image's entrypoint as uid/gid 65532, no supplementary
  groups, no capabilities; the image's config says USER 65532:65532, the entrypoint and command.
* The environment is the image's Env plus what the caller gives, nothing of the host's.
* The root filesystem is read-only (a write outside the volumes fails with EROFS) while a
  mounted volume is writable, and what the process writes there is owned by 65532 on the host.
* The process is really uid 65532: it cannot read a root-owned 0600 file or write into a
  root-owned directory, mounted read-write.
* `sealtrail worker` from the image with its store on a volume and a scratch /tmp: it answers
  /readyz, stores a posted event (200), and on SIGTERM to its pid 1 drains and exits 0; the
  store it leaves verifies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from .container import Container, Image, Mount, image, start
from .worker_process import ROOT, free_port

UID = GID = 65532

# A cold build (debootstrap, Debian's python, the Dockerfile) takes a few minutes; it happens
# in the first test's setup, within that test's time limit.
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def built() -> Image:
    return image()


def owned_dir(path: Path, mode: int = 0o755) -> Path:
    """A directory for the container's user, as the kubelet prepares an emptyDir (fsGroup)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, GID)
    path.chmod(mode)
    return path


def run(built: Image, tmp_path: Path, argv: list[str], *, mounts: list[Mount] | None = None,
        env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run `argv` from the image to its end; its exit status and output."""
    log = tmp_path / f"run-{time.monotonic_ns()}.log"
    with start(built, argv=argv, env=env or {}, mounts=mounts or [], uid=UID, gid=GID,
               log=log) as container:
        status = container.wait(timeout)
        return status, container.output()


def python(code: str) -> list[str]:
    return ["python", "-c", code]


def test_the_entrypoint_runs_as_65532(built: Image, tmp_path: Path) -> None:
    assert built.user == "65532:65532"
    assert built.entrypoint == ["sealtrail"]
    assert built.cmd == ["operator"]
    status, output = run(built, tmp_path, built.command(["--version"]))
    assert (status, output.strip()) == (0, "sealtrail 0.1.0")
    status, output = run(built, tmp_path, python(
        "import os\n"
        "status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines())\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups(), os.getpid())\n"
        "print(status['CapEff'], status['CapPrm'], status['CapBnd'], status['NoNewPrivs'])"))
    assert status == 0, output
    ids, caps = output.splitlines()
    assert ids == "65532 65532 65532 65532 [] 1"  # pid 1 of its own namespace
    assert caps.split() == ["0000000000000000", "0000000000000000", "0000000000000000", "1"]


def test_the_environment_is_the_images_and_the_callers(built: Image, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALTRAIL_HOST_ONLY", "1")
    status, output = run(built, tmp_path, python(
        "import json, os; print(json.dumps(dict(os.environ)))"), env={"GIVEN": "yes"})
    assert status == 0, output
    assert yaml.safe_load(output) == {**built.env, "GIVEN": "yes", "PWD": "/"}
    assert built.env["PATH"].startswith("/opt/sealtrail/bin:")
    assert built.env["PYTHONDONTWRITEBYTECODE"] == "1"


def attempts(*statements: str) -> list[str]:
    """A python command that runs each statement, printing `done` or why the OS refused it."""
    lines: list[str] = []
    for statement in statements:
        lines += ["try:", f"    {statement}", "except OSError as error:",
                  "    print(error.strerror)", "else:", "    print('done')"]
    return python("\n".join(lines))


def test_the_root_is_read_only_and_a_volume_is_writable(built: Image, tmp_path: Path) -> None:
    volume = owned_dir(tmp_path / "volume")
    status, output = run(built, tmp_path, attempts(
        "open('/opt/sealtrail/planted', 'w')", "open('/etc/planted', 'w')",
        "open('/planted', 'w')", "open('/data/written', 'w').write('hello')",
    ), mounts=[Mount(volume, "/data")])
    assert status == 0, output
    assert output.splitlines() == ["Read-only file system"] * 3 + ["done"]
    written = volume / "written"
    assert written.read_text() == "hello"
    assert (written.stat().st_uid, written.stat().st_gid) == (UID, GID)
    assert not (built.rootfs / "planted").exists()
    assert not (built.rootfs / "opt" / "sealtrail" / "planted").exists()


def test_the_process_cannot_read_or_write_what_only_root_may(built: Image,
                                                             tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"  # root's, mounted read-write on purpose
    secrets.mkdir(mode=0o755)
    secret = secrets / "key"
    secret.write_text("root only")
    secret.chmod(0o600)
    status, output = run(built, tmp_path, attempts(
        "open('/secrets/key').read()", "open('/secrets/key', 'a')", "open('/secrets/new', 'w')",
    ), mounts=[Mount(secrets, "/secrets")])
    assert status == 0, output
    assert output.splitlines() == ["Permission denied"] * 3
    assert secret.read_text() == "root only"
    assert sorted(path.name for path in secrets.iterdir()) == ["key"]


def test_sigterm_reaches_a_handler_in_pid_1(built: Image, tmp_path: Path) -> None:
    log = tmp_path / "signal.log"
    with start(built, argv=python(
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(42))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n"), env={}, mounts=[], uid=UID, gid=GID, log=log) as container:
        _wait_for(container, lambda: "ready" in container.output())
        assert Path(f"/proc/{container.pid}/status").read_text().count("\t65532") >= 4
        container.terminate()
        assert container.wait(10) == 42


def _wait_for(container: Container, done: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        if container.poll() is not None:
            pytest.fail(f"exited with {container.poll()}:\n{container.output()}")
        time.sleep(0.05)
    pytest.fail(f"not done after {timeout} s:\n{container.output()}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_worker_stores_an_event_and_drains_on_sigterm(built: Image, tmp_path: Path) -> None:
    store = owned_dir(tmp_path / "store")
    scratch = owned_dir(tmp_path / "tmp", 0o1777)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    port = free_port()
    (config_dir / "worker.yaml").write_text(yaml.safe_dump({
        "store": {"path": "/var/lib/sealtrail/audit.db", "synchronous": "NORMAL"},
        "ingest": {"listen": f"127.0.0.1:{port}"},
        "drainTimeoutSeconds": 2,
    }))
    url = f"http://127.0.0.1:{port}"
    with start(built, argv=built.command(["worker", "--config", "/etc/sealtrail/worker.yaml"]),
               env={}, uid=UID, gid=GID, log=tmp_path / "worker.log",
               mounts=[Mount(store, "/var/lib/sealtrail"),
                       Mount(config_dir, "/etc/sealtrail", read_only=True),
                       Mount(scratch, "/tmp")]) as container:  # noqa: S108 (the container's)
        _wait_for(container, lambda: _ready(url))
        answer = httpx.post(f"{url}/v1/events", timeout=10,
                            json={"event_type": "image.test", "severity": "INFO"})
        assert answer.status_code == 200, answer.text
        container.terminate()
        assert container.wait(30) == 0, container.output()
    database = store / "audit.db"
    assert (database.stat().st_uid, database.stat().st_gid) == (UID, GID)
    verified = subprocess.run([sys.executable, "-m", "sealtrail", "verify", "--db", str(database)],
                              capture_output=True, text=True, check=False, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_container_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A test process killed outright leaves no container behind (see container._GUARDIAN)."""
    code = ("import time\n"
            "from pathlib import Path\n"
            "from tests.container import image, start\n"
            "container = start(image(), argv=['python', '-c', 'import time; time.sleep(120)'],\n"
            f"                  env={{}}, mounts=[], uid={UID}, gid={GID},\n"
            f"                  log=Path({str(tmp_path / 'sleeper.log')!r}))\n"
            "print(container.pid, flush=True)\n"
            "time.sleep(120)\n")
    with subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True) as starter:
        try:
            assert starter.stdout is not None
            pid = int(starter.stdout.readline())
            assert Path(f"/proc/{pid}").exists()
        finally:
            starter.kill()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()


def test_a_container_joins_the_network_namespace_it_is_given(built: Image,
                                                             tmp_path: Path) -> None:
    """As a pod's containers share the pod's namespace (here a fresh one: loopback only)."""
    with subprocess.Popen(["unshare", "--net", "sleep", "60"]) as holder:
        try:
            namespace = Path(f"/proc/{holder.pid}/ns/net")
            deadline = time.monotonic() + 10
            while (namespace.readlink() == Path("/proc/self/ns/net").readlink()
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            code = "import socket; print(sorted(name for _, name in socket.if_nameindex()))"
            with start(built, argv=python(code), env={}, mounts=[], uid=UID, gid=GID,
                       log=tmp_path / "netns.log", netns=namespace) as container:
                assert container.wait(30) == 0, container.output()
                assert container.output().strip() == "['lo']"
        finally:
            holder.kill()
