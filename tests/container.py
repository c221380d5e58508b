"""Run processes from the built sealtrail image, as a container runtime would, without one.

`image()` builds the repository's Dockerfile with scripts/build_image.sh (buildah, once per
machine and per change of its inputs; once per test process here) and returns its root
filesystem and config. `start(image, argv=..., ...)` runs a process from it under bubblewrap::

    built = image()
    with start(built, argv=[*built.entrypoint, "worker", "--config", "/etc/sealtrail/w.yaml"],
               env={}, mounts=[Mount(store, "/var/lib/sealtrail"),
                               Mount(config_dir, "/etc/sealtrail", read_only=True),
                               Mount(scratch, "/tmp")],
               uid=65532, gid=65532, log=tmp_path / "worker.log") as container:
        ...
        container.terminate()               # SIGTERM to the program, pid 1 of its namespace
        assert container.wait(30) == 0

What the process gets, as in a Kubernetes pod with `readOnlyRootFilesystem: true`:

* the image's root filesystem, read-only (`--ro-bind rootfs /`); writable only where a mount
  says so. A mount point the image lacks is created (an empty directory, or an empty file for a
  file mount) in the exported root filesystem before the start, as runc creates it in the
  container's writable layer: a bind mount needs somewhere to land and the root is read-only.
* its own pid, mount, IPC and UTS namespaces, a fresh /proc and a minimal /dev; the caller's
  network namespace (like `hostNetwork`: tests talk to it on 127.0.0.1), or the one `netns`
  names (a pod's, entered with nsenter), with the host's /etc/hosts and /etc/resolv.conf bound
  read-only, as a runtime provides them;
* exactly the image's Env plus `env` (nothing of the host's environment), plus PWD, which
  bubblewrap always sets to the working directory;
* pid 1 of its namespace is the program itself (`--as-pid-1`): a SIGTERM from `terminate()`
  reaches its handler as the kubelet's would, and a program without a SIGTERM handler ignores
  it, as pid 1 does in a real container;
* if the test process dies, the container dies with it: bubblewrap runs with
  `--die-with-parent` under a small guardian process (`_GUARDIAN`) that SIGKILLs the sandbox's
  pid 1 when the test process goes (the kernel drops bubblewrap's own parent-death signal to a
  process of another uid, see there).

How the uid is enforced. Tests run as root. bubblewrap's own `--uid/--gid` need a user
namespace, and as root bubblewrap maps the chosen uid inside to uid 0 outside: the "65532"
process would own and write every root-owned file it can reach. Dropping privileges before
bubblewrap (setpriv on the host, then an unprivileged bubblewrap) would map it right, but then
every path bubblewrap binds must be reachable by that uid, and the image cache lives under
root's 0700 home, the tests' volumes under pytest's 0700 temporary root. So it is done as
runc does it: bubblewrap runs as root without a user namespace and sets up the mounts; the
program is then started through the image's own `/usr/bin/setpriv` (util-linux, in every
Debian-based image, the official python one included) with `--reuid/--regid`, supplementary
groups cleared, no capabilities (permitted, effective, inheritable, ambient and bounding sets
emptied: bubblewrap keeps only CAP_SETUID, CAP_SETGID and CAP_SETPCAP for setpriv to use),
`no_new_privs`, and the parent-death signal restored (a uid change clears it). The process is
then really that uid on the host: it cannot read a root-only file or write a root-owned
directory, and what it creates is owned by it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Self

__all__ = ["Container", "Image", "Mount", "image", "load_image", "start"]

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build_image.sh"
SETPRIV = "/usr/bin/setpriv"
HOST_FILES = ("/etc/hosts", "/etc/resolv.conf")  # what a runtime gives a container

# Between the test process and bubblewrap: if the test process dies, the kernel sends this
# process SIGTERM (its parent-death signal), and it SIGKILLs the sandbox's pid 1, which takes the
# whole pid namespace with it. bubblewrap's own --die-with-parent cannot: its launcher keeps no
# capability, and the kernel checks the parent-death signal like a kill(2) from the launcher
# (uid 0, no CAP_KILL) to the program (uid 65532), so it is dropped. Exits with bubblewrap's
# status. Arguments: the test process's pid, the --info-fd descriptor, the bwrap command.
_GUARDIAN = """
import ctypes, os, signal, subprocess, sys
parent, info_fd, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
bwrap = None
def kill_sandbox(number=None, frame=None):
    if bwrap is not None:
        try:
            with open(f"/proc/{bwrap.pid}/task/{bwrap.pid}/children") as children:
                pids = [int(pid) for pid in children.read().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        bwrap.kill()
    os._exit(128 + signal.SIGKILL)
signal.signal(signal.SIGTERM, kill_sandbox)
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    kill_sandbox()
bwrap = subprocess.Popen(command, pass_fds=(info_fd,))
os.close(info_fd)
sys.exit(bwrap.wait())
"""


@dataclass(frozen=True)
class Image:
    """A built image: its root filesystem and the parts of its config that run a process."""

    rootfs: Path
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    user: str
    workdir: str

    def command(self, args: list[str] | None = None) -> list[str]:
        """Entrypoint plus `args` (Kubernetes' `args`), or plus the image's Cmd when None."""
        return [*self.entrypoint, *(self.cmd if args is None else args)]


@dataclass(frozen=True)
class Mount:
    """A host file or directory bound at `path` in the container (a volume)."""

    host: Path
    path: str
    read_only: bool = False


@functools.cache
def image() -> Image:
    """The image of this work tree, built (or found in the cache) by scripts/build_image.sh."""
    built = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE,
                           text=True)
    return load_image(Path(built.stdout.strip().splitlines()[-1]))


def load_image(directory: Path) -> Image:
    """A built image from its directory (`rootfs/` and `config.json`), as build_image.sh left it."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return Image(rootfs=directory / "rootfs", entrypoint=list(config.get("Entrypoint") or []),
                 cmd=list(config.get("Cmd") or []), env=env, user=config.get("User") or "0",
                 workdir=config.get("WorkingDir") or "/")


@dataclass
class Container:
    """A process running from an image; `pid` is its pid on the host (pid 1 inside)."""

    pid: int
    process: subprocess.Popen[bytes] = field(repr=False)  # outside: the guardian of bubblewrap
    log: Path

    def poll(self) -> int | None:
        """The exit status once the program has exited (128+N if signal N ended it)."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the program's exit; subprocess.TimeoutExpired after `timeout` seconds."""
        return self.process.wait(timeout)

    def signal(self, number: signal.Signals) -> None:
        """Send a signal to the program (nothing if it has exited)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends it to a container's pid 1."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, which pid 1 cannot ignore."""
        self.signal(signal.SIGKILL)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if the program has not exited after `timeout` seconds."""
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait(10)

    def output(self) -> str:
        """Everything the program wrote to stdout and stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.process.poll() is None:
            self.kill()
            self.process.wait(10)


def _in_image(rootfs: Path, path: str) -> PurePosixPath:
    """`path` with the image's symlinks followed inside the image, as runc resolves it.

    A link's target is read as the container would read it (an absolute target starts at the
    image's root), so `/var/run/secrets/...` lands at `/run/secrets/...` in a Debian image
    and nothing resolves outside the root filesystem.
    """
    resolved = PurePosixPath("/")
    pending = list(PurePosixPath(path).parts[1:])
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        host = rootfs / candidate.relative_to("/")
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise ValueError(f"{path}: too many symlinks in the image")
            target = PurePosixPath(host.readlink())
            if target.is_absolute():
                resolved = PurePosixPath("/")
            pending = [*(target.parts[1:] if target.is_absolute() else target.parts), *pending]
            continue
        resolved = candidate
    return resolved


def _mount_point(rootfs: Path, mount: Mount) -> str:
    """The path to mount at (symlinks resolved in the image), created if it is missing."""
    path = PurePosixPath(mount.path)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ValueError(f"a mount path must be absolute, below /, without '..': {mount.path}")
    inside = _in_image(rootfs, mount.path)
    current = rootfs / inside.relative_to("/")
    if not current.exists():
        if mount.host.is_dir():
            current.mkdir(parents=True, exist_ok=True)
        else:
            current.parent.mkdir(parents=True, exist_ok=True)
            current.touch(exist_ok=True)
    return str(inside)


def _child_pid(read_end: int, bwrap: subprocess.Popen[bytes], timeout: float) -> int:
    """The sandboxed program's host pid, from bubblewrap's --info-fd JSON."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 0.1)
        if ready:
            chunk = os.read(read_end, 4096)
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except ValueError:
                if not chunk:
                    break
        elif bwrap.poll() is not None:
            break
    raise RuntimeError(f"bubblewrap gave no child pid (status {bwrap.poll()}): {data!r}")


def start(image: Image, *, argv: list[str], env: dict[str, str], mounts: list[Mount],
          uid: int, gid: int, log: Path, workdir: str | None = None,
          netns: Path | None = None) -> Container:
    """Start `argv` (the whole command: see `Image.command`) from `image`; output goes to `log`.

    `netns`: a network namespace to run in (a pod's, `/run/netns/NAME`) instead of the caller's.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise RuntimeError("bwrap is missing (bubblewrap; scripts/setup.sh installs it)")
    if not (image.rootfs / SETPRIV.lstrip("/")).is_file():
        raise RuntimeError(f"the image has no {SETPRIV}, which drops to the container's uid")
    if not argv:
        raise ValueError("argv is empty")
    command = [
        bwrap, "--ro-bind", str(image.rootfs), "/",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "sealtrail",
        "--proc", "/proc", "--dev", "/dev",
        "--as-pid-1", "--die-with-parent", "--new-session",
        "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
    ]
    for host_file in HOST_FILES:
        if Path(host_file).exists():
            command += ["--ro-bind", host_file, host_file]
    for mount in mounts:
        target = _mount_point(image.rootfs, mount)
        command += ["--ro-bind" if mount.read_only else "--bind", str(mount.host), target]
    command += ["--chdir", workdir or image.workdir, "--clearenv"]
    for name, value in {**image.env, **env}.items():
        command += ["--setenv", name, value]
    read_end, write_end = os.pipe()
    command += [
        "--info-fd", str(write_end), "--",
        SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
        "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
        "--no-new-privs", "--pdeathsig=keep", "--", *argv,
    ]
    with log.open("ab") as output:
        try:
            entered = ["nsenter", f"--net={netns}", "--"] if netns is not None else []
            guarded = [sys.executable, "-I", "-c", _GUARDIAN, str(os.getpid()), str(write_end),
                       *entered, *command]
            process = subprocess.Popen(guarded, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, env={}, pass_fds=(write_end,))
        finally:
            os.close(write_end)
    try:
        pid = _child_pid(read_end, process, timeout=10.0)
    except RuntimeError as error:
        process.kill()
        process.wait()
        raise RuntimeError(f"{error}\n{log.read_text(errors='replace')}") from None
    finally:
        os.close(read_end)
    return Container(pid=pid, process=process, log=log)
