"""The README's main command (`bash scripts/demo.sh`) does what the README says it does.

scripts/demo.sh builds what it needs, then runs scripts/cluster_demo.py inside the network
namespace; the tests already run inside one, with the control plane and the image built, so
this runs that script itself, on a control plane of its own (its own subnet of the pod
network), and reads what it printed: the chart installed, the worker injected into the app's
pod, `kubectl get auditexports` showing delivery, and the SIEM's copy verified.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from .conftest import fresh_subnet
from .control_plane import ControlPlane
from .worker_process import ROOT

pytestmark = [pytest.mark.timeout(400)]


def test_the_main_command_delivers_and_verifies_on_a_real_cluster(
        control_plane: ControlPlane, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "cluster_demo.py"),
                           "--dir", str(tmp_path / "demo"), "--subnet", fresh_subnet()],
                          capture_output=True, text=True, timeout=360, check=False)
    shown = done.stdout
    assert done.returncode == 0, shown[-6000:] + done.stderr[-3000:]
    summary = orjson.loads(next(line for line in reversed(shown.splitlines())
                                if line.startswith("{")))
    assert summary["cluster_demo"] == "ok"
    assert summary["events"] == 300
    assert summary["rows"] >= 301  # the events and at least one signed checkpoint
    assert "STATUS: deployed" in shown
    assert re.search(r"^shop-\S+\s+10\.244\.\S+\s+sealtrail-worker\s+app\s+True$", shown,
                     re.MULTILINE), shown
    assert re.search(r"^auditexport\.sealtrail\.dev/siem\s+webhook\s+True\s+false\s+0\s+1\s",
                     shown, re.MULTILINE), shown
    assert f"intact: {summary['rows']} rows in 3 chains (3 tenants)" in shown
    assert "every hash, link and signature checks" in shown
    # Everything it started is stopped: no process still uses its directory.
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True,
                              text=True, check=False)
    assert leftover.stdout == "", leftover.stdout
