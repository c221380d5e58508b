"""Run the real kubectl against a `KubeEmulator`, as a user at a terminal would.

The binary is `.tools/bin/kubectl`, installed by scripts/kube_tools.sh.

    kubectl = Kubectl(emulator, tmp_path)
    result = kubectl("apply", "-f", "-", stdin=manifest)      # a CompletedProcess[str]
    assert result.returncode == 0, result.stderr

Each `Kubectl` has its own kubeconfig, discovery cache directory and HOME under `directory`, so
nothing from the machine's `~/.kube` (a kuberc, a stale discovery cache for a reused port)
changes what kubectl does, and nothing leaks between tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Protocol

__all__ = ["KUBECTL", "Kubectl", "run_kubectl"]

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"


class _Server(Protocol):
    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path: ...


def run_kubectl(kubeconfig: Path, home: Path, *args: str, stdin: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Kubectl with this kubeconfig, HOME and cache; never raises on a non-zero exit."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBE")}
    env.update({"HOME": str(home), "KUBECONFIG": str(kubeconfig), "KUBERC": "off",
                "NO_COLOR": "1"})
    command = [str(KUBECTL), f"--cache-dir={home / 'cache'}", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


class Kubectl:
    """kubectl bound to one emulator; calling it runs one kubectl command."""

    def __init__(self, server: _Server, directory: Path, namespace: str = "default") -> None:
        self.home = Path(directory) / "kubectl-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = server.write_kubeconfig(self.home / "kubeconfig", namespace)

    def __call__(self, *args: str, stdin: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.kubeconfig, self.home, *args, stdin=stdin, timeout=timeout)

    def ok(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        """Run and return stdout; AssertionError (with stderr) if kubectl failed."""
        result = self(*args, stdin=stdin, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr}{result.stdout}")
        return result.stdout
