#!/usr/bin/env bash
# Runs a command in a network namespace of its own, as the tests and the demo need it: a
# loopback device and a bridge, `sealtrail0`, that is the pod network's gateway (10.244.0.1/16).
#
# The node (tests/fake_kubelet.py) gives each pod a network namespace of its own, joined to
# that bridge by a veth pair, with an address of 10.244.0.0/16: a pod has its own loopback (a
# sidecar listens on 127.0.0.1 as in a real pod), EndpointSlices accept its address (the API
# refuses loopback addresses there), and the real kube-apiserver reaches the operator's webhook
# through its Service. The test processes, the API server and the SIEM receivers live in this
# namespace; pods reach them at 10.244.0.1. Nothing here can reach or be reached from outside
# the machine, and the machine's own network settings are left untouched.
set -euo pipefail
if [ "${SEALTRAIL_NETNS:-}" = "1" ]; then
  exec "$@"  # already inside
fi
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
exec $sudo_cmd unshare --net --mount --propagation private -- env SEALTRAIL_NETNS=1 bash -c '
  set -euo pipefail
  # A private /run/netns for the pods'"'"' namespaces (named by `ip netns`), gone with us.
  mkdir -p /run/netns
  mount -t tmpfs -o size=1m sealtrail-netns /run/netns
  ip link set lo up
  ip link add sealtrail0 type bridge
  ip addr add 10.244.0.1/16 dev sealtrail0
  ip link set sealtrail0 up
  exec "$@"' netns "$@"
