#!/usr/bin/env bash
# Builds the real control plane the tests and the demo run against (kube-apiserver and
# kube-controller-manager from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, at the
# versions tools/k8s/go.mod pins) into a cache outside the work tree, once; later runs reuse it.
#
# Prints the directory holding the three binaries on stdout; progress goes to stderr.
# The cache key is the pinned module graph (go.sum) plus this script, so a version bump or a
# change of build flags builds afresh. SEALTRAIL_CACHE moves the cache (default ~/.cache/sealtrail).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$root/tools/k8s"
k8s_version=v1.37.2
key=$(cat "$mod/go.mod" "$mod/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
cache="${SEALTRAIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sealtrail}"
out="$cache/control-plane/$k8s_version-$key"
bins=(kube-apiserver kube-controller-manager etcd)

have_all() {
  local b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}
if have_all; then
  echo "$out"
  exit 0
fi

if [ "${SEALTRAIL_NETNS:-}" = "1" ]; then  # inside scripts/netns.sh: no route to the Go proxy
  echo "build_control_plane: not built yet, and a build needs the Go module proxy: run" \
       "scripts/build_control_plane.sh before entering scripts/netns.sh" >&2
  exit 1
fi
command -v go >/dev/null 2>&1 || { echo "build_control_plane: no 'go' on PATH (Go 1.26 is needed)" >&2; exit 1; }
free_mb=$(df -Pm "$(dirname "$cache")" 2>/dev/null | awk 'NR==2 {print $4}')
if [ -n "${free_mb:-}" ] && [ "$free_mb" -lt 8000 ]; then
  echo "build_control_plane: only ${free_mb} MB free under $cache; the cold build needs about 8 GB (modules and Go's build cache)" >&2
  exit 1
fi

mkdir -p "$out.partial"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly
stamp="-X k8s.io/component-base/version.gitVersion=$k8s_version \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
-X k8s.io/component-base/version.gitTreeState=clean \
-X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
-X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37 \
-X k8s.io/client-go/pkg/version.gitTreeState=clean"
flags=(-trimpath -pgo=off -tags=selinux,notest)

# go build -v names each package as it is compiled; one line per 100 packages keeps the
# cold build (a few minutes) visibly moving without flooding the log. Anything that is not a
# package path (a compiler error, a download failure) is passed through as it is.
progress() {
  awk -v what="$1" '
    /^[A-Za-z0-9._~\/-]+$/ { n++; if (n % 100 == 0) { printf "build_control_plane: %s: %d packages compiled\n", what, n > "/dev/stderr"; fflush("/dev/stderr") } next }
    { print > "/dev/stderr"; fflush("/dev/stderr") }
    END { printf "build_control_plane: %s: %d packages compiled in all\n", what, n > "/dev/stderr" }'
}

started=$(date +%s)
cd "$mod"
echo "build_control_plane: building Kubernetes $k8s_version and etcd into $out (first time: about 5 minutes on 2 cores)" >&2
echo "build_control_plane: downloading modules" >&2
go mod download
go build -v "${flags[@]}" -ldflags "$stamp -s -w" -o "$out.partial/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  2> >(progress "kube-apiserver, kube-controller-manager")
go build -v "${flags[@]}" -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3 \
  2> >(progress "etcd")
wait
for b in "${bins[@]}"; do
  [ -x "$out.partial/$b" ] || { echo "build_control_plane: $b was not built" >&2; exit 1; }
done
rm -rf "$out"
mv "$out.partial" "$out"
echo "build_control_plane: done in $(( $(date +%s) - started )) s" >&2
echo "$out"
