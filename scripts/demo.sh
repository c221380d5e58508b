#!/usr/bin/env bash
# The main job on an embedded default, on a local real Kubernetes control plane: etcd,
# kube-apiserver and kube-controller-manager built from pinned Go modules, a node that runs the
# image built from the Dockerfile, the chart installed with helm, an AuditExport and an
# AuditPolicy applied, a Deployment whose pods get the worker, events written by the app and
# delivered to a local SIEM, `kubectl get auditexports`, and the SIEM re-checking every chain.
#
# The first run builds the control plane (about 5 minutes on 2 cores) and the image (about 2),
# both into ~/.cache/sealtrail, with progress shown; later runs take well under a minute.
# The chain-only walk-through (keys, a local store, attacks that verify catches) is
# `.venv/bin/sealtrail demo --dir DIR`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
echo "== building (or reusing) the control plane and the image" >&2
bash "$root/scripts/build_control_plane.sh" >/dev/null
bash "$root/scripts/build_image.sh" >/dev/null
exec bash "$root/scripts/netns.sh" "$root/.venv/bin/python" "$root/scripts/cluster_demo.py" \
  --dir "${1:-$root/demo-out/cluster}"
