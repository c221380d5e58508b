#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian packages the tests start, a virtual environment
# in .venv with the exact versions in requirements.lock, and sealtrail itself (editable).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is done).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Debian packages that tests start as real peers: rsyslog (with GnuTLS) is the syslog receiver,
# nats-server the JetStream source; chromium is the browser the audit UI's browser tests drive
# (through PyPI's playwright, launched from /usr/bin/chromium: playwright downloads no browser).
# Installed only when missing.
debs=(rsyslog rsyslog-gnutls nats-server buildah bubblewrap debootstrap uidmap iproute2 chromium)
missing=()
for deb in "${debs[@]}"; do
  dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
stamp=.venv/.sealtrail-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv and installing pinned packages" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# kubectl and helm, for the operator's and the chart's tests.
bash scripts/kube_tools.sh
