#!/usr/bin/env bash
# The whole test suite: lint, types, import layering, then pytest (unit, property, crash and
# concurrency tests). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
bin=.venv/bin
echo "== ruff"; "$bin/ruff" check operator tests bench
echo "== mypy (strict)"; "$bin/mypy"
echo "== import layers"; "$bin/lint-imports"
# loadfile: a module that shares one costly fixture (the operator e2e: an API emulator, the
# operator, workers) runs on one worker, not twice. (loadgroup would be finer, but pytest-xdist
# 3.8 under pytest 9.2 ignores xdist_group marks: tried.)
echo "== pytest"; exec "$bin/pytest" -n 2 --dist loadfile "$@"
