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
# loadgroup: a module that shares one costly fixture (the operator e2e) stays on one worker.
echo "== pytest"; exec "$bin/pytest" -n 2 --dist loadgroup "$@"
