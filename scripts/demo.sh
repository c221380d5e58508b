#!/usr/bin/env bash
# The main job on an embedded default: keys, a local store, sample events for several tenants,
# checkpoints, status, verification, and attacks on copies that verify catches.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/sealtrail" demo --dir "${1:-$root/demo-out}"
