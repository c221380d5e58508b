#!/usr/bin/env bash
# The whole test suite: lint, types, import layering, then pytest (unit, property, crash and
# concurrency tests, and the operator, chart and CRDs on a real control plane). Extra arguments
# go to pytest.
#
# The control plane (kube-apiserver, kube-controller-manager, etcd) is built from pinned Go
# modules and the image from the Dockerfile, both once, into ~/.cache/sealtrail (about 4.5 and
# 2 minutes the first time on 2 cores; seconds after). pytest runs in a network namespace of
# its own (scripts/netns.sh), where the tests' node gives pods their own addresses.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
bin=.venv/bin
echo "== ruff"; "$bin/ruff" check operator tests bench scripts
echo "== mypy (strict)"; "$bin/mypy"
echo "== import layers"; "$bin/lint-imports"
# loadfile: a module that shares one costly fixture (the operator e2e: the installed chart,
# its namespace and workers) runs on one worker, not twice. (loadgroup would be finer, but
# pytest-xdist 3.8 under pytest 9.2 ignores xdist_group marks: tried.)
echo "== control plane"; bash scripts/build_control_plane.sh >/dev/null
echo "== image"; bash scripts/build_image.sh >/dev/null
echo "== pytest"; exec bash scripts/netns.sh "$bin/pytest" -n 2 --dist loadfile "$@"
