#!/usr/bin/env bash
# Builds the repository's Dockerfile for real, without a container engine or a registry, and
# prints the path of the result: a directory holding `rootfs/` (the image's root filesystem) and
# `config.json` (its OCI config: Entrypoint, Cmd, Env, User, WorkingDir). tests/container.py
# runs processes from it under bubblewrap. Progress goes to stderr; stdout is the path alone.
#
#   scripts/build_image.sh            # build once, then reuse: prints <cache>/image/<key>
#
# The official base image (python:3.11.x-slim-bookworm) cannot be pulled here, so:
#   1. debootstrap makes a Debian bookworm root filesystem (minbase), kept as a tarball;
#   2. docker/python-base.Dockerfile turns it into a local python base image laid out like the
#      official one (localhost/sealtrail-python-base:3.11-bookworm);
#   3. `buildah bud` builds ./Dockerfile with --build-arg PYTHON_IMAGE=<that base>;
#   4. the image's root filesystem and config are copied out of buildah's storage.
# Everything lives under ${SEALTRAIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sealtrail}:
# base/ (steps 1-2), buildah/ (buildah's storage, vfs driver) and image/<key>/, where <key>
# hashes every input of the build. Needs root, buildah and debootstrap (scripts/setup.sh installs
# them). The Debian mirror is the machine's own, read from its apt sources (or
# SEALTRAIL_DEBIAN_MIRROR); PyPI must be reachable from the build (pip runs inside it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SEALTRAIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sealtrail}
base_name=localhost/sealtrail-python-base:3.11-bookworm
suite=bookworm

say() { echo "build_image: [${SECONDS}s] $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, and buildah's chroot isolation)"
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || die "$tool is missing (run scripts/setup.sh)"
done

# The key: every file the build reads, and this script.
key=$(cd "$root" && find Dockerfile .dockerignore docker pyproject.toml README.md \
        operator/sealtrail scripts/build_image.sh -type f ! -path '*/__pycache__/*' \
        ! -name '*.py[cod]' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum \
        | cut -c1-16)
result=$cache/image/$key
if [ -f "$result/config.json" ]; then
  echo "$result"
  exit 0
fi

if [ "${SEALTRAIL_NETNS:-}" = "1" ]; then  # inside scripts/netns.sh: loopback and a bridge only
  die "no image for this tree yet, and a build needs Debian's mirror and PyPI: run
  scripts/build_image.sh before entering scripts/netns.sh (it then finds this one in the cache)"
fi
mkdir -p "$cache/base" "$cache/image"
exec 9>"$cache/lock"
flock -n 9 || { say "waiting for another build ($cache/lock)"; flock 9; }
if [ -f "$result/config.json" ]; then  # built by another process meanwhile
  echo "$result"
  exit 0
fi

buildah=(buildah --root "$cache/buildah/root" --runroot "$cache/buildah/runroot"
         --storage-driver vfs)
started=$SECONDS

# The machine's Debian mirror: the first URI serving $suite in its deb822 sources, else in
# sources.list. Never written into the repository.
debian_mirror() {
  if [ -n "${SEALTRAIL_DEBIAN_MIRROR:-}" ]; then
    echo "$SEALTRAIL_DEBIAN_MIRROR"
    return
  fi
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uri != "" && found) { print uri; exit } uri = ""; found = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found = 1 }
      END { if (uri != "" && found) print uri }' "$file"
  done | head -n1 | grep . && return
  awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep . && return
  die "no Debian mirror for $suite in /etc/apt (set SEALTRAIL_DEBIAN_MIRROR)"
}

# 1. Debian bookworm, minbase, as a tarball (reused by every later build).
tarball=$cache/base/debian-$suite-minbase.tar
if [ ! -f "$tarball" ]; then
  mirror=$(debian_mirror)
  target=$cache/base/debootstrap.tmp
  rm -rf "$target"
  say "debootstrap --variant=minbase $suite (a few minutes)"
  debootstrap --variant=minbase "$suite" "$target" "$mirror" \
    > "$cache/base/debootstrap.log" 2>&1 \
    || die "debootstrap failed, see $cache/base/debootstrap.log"
  # The machine's own sources (with the security suite) where it runs bookworm too.
  if grep -qw "$suite" /etc/apt/sources.list.d/debian.sources 2>/dev/null; then
    cp /etc/apt/sources.list.d/debian.sources "$target/etc/apt/sources.list.d/"
    rm -f "$target/etc/apt/sources.list"
  fi
  rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/*
  # debootstrap copied this machine's name and resolver; a container runtime provides its own.
  : > "$target/etc/hostname"
  : > "$target/etc/resolv.conf"
  tar --numeric-owner --xattrs -C "$target" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$target"
fi

# 2. The local python base image, rebuilt when its Containerfile changes.
base_file=$root/docker/python-base.Dockerfile
base_stamp=$cache/base/python-base.sha256
want=$( (sha256sum < "$base_file"; sha256sum < "$tarball") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$base_stamp" 2>/dev/null)" != "$want" ] \
   || ! "${buildah[@]}" inspect --type image "$base_name" >/dev/null 2>&1; then
  say "building $base_name (Debian's python3.11)"
  "${buildah[@]}" bud --isolation chroot --layers=false --pull=never -t "$base_name" \
    -f "$base_file" "$cache/base" >&2
  echo "$want" > "$base_stamp"
fi

# Whatever an interrupted build left in the store: working containers, images but the base.
"${buildah[@]}" rm --all >/dev/null
"${buildah[@]}" images --noheading --format '{{.Name}}:{{.Tag}}' \
  | { grep -vxF "$base_name" || true; } | while read -r stale; do
      "${buildah[@]}" rmi "$stale" >/dev/null 2>&1 || true
    done

# 3. The repository's Dockerfile on that base. The machine's CA bundle is mounted over the
# image's for the RUN steps only (a volume is no part of any layer): where HTTPS goes through a
# proxy with its own CA, pip must trust what this machine trusts, and the base's (Debian's) pip
# reads that file.
tag=localhost/sealtrail:$key
volumes=()
host_ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$host_ca" ]; then volumes=(-v "$host_ca:$host_ca:ro"); fi
say "buildah bud $root/Dockerfile (PYTHON_IMAGE=$base_name)"
"${buildah[@]}" bud --isolation chroot --layers=false --pull=never "${volumes[@]}" \
  --build-arg PYTHON_IMAGE="$base_name" -t "$tag" -f "$root/Dockerfile" "$root" >&2

# 4. Root filesystem and config out of the store; then the store keeps only the bases.
say "exporting the root filesystem"
out=$cache/image/$key.tmp
rm -rf "$out"
mkdir -p "$out/rootfs"
"${buildah[@]}" inspect --type image "$tag" \
  | python3 -c 'import json, sys; json.dump(json.load(sys.stdin)["OCIv1"]["config"], sys.stdout, indent=2)' \
  > "$out/config.json"
container=$("${buildah[@]}" from --pull=never "$tag")
mountpoint=$("${buildah[@]}" mount "$container")
cp -a "$mountpoint/." "$out/rootfs/"
"${buildah[@]}" umount "$container" >/dev/null
"${buildah[@]}" rm "$container" >/dev/null
"${buildah[@]}" rmi "$tag" >/dev/null
"${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
mv "$out" "$result"
# Keep the three newest builds (other work trees may share the cache), drop older ones.
find "$cache/image" -mindepth 1 -maxdepth 1 -type d ! -name '*.tmp' -printf '%T@ %p\n' \
  | sort -rn | tail -n +4 | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
say "built in $((SECONDS - started)) s: $result ($(du -sh "$result/rootfs" | cut -f1))"
echo "$result"
