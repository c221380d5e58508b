#!/usr/bin/env bash
# Runs a command in a network namespace of its own, as the tests and the demo need it: only a
# loopback device, up, with the pod network (10.244.0.0/16) routed to it as local addresses.
#
# The fake node gives each pod an address of that range, which EndpointSlices accept (the API
# refuses loopback addresses there) and which the real kube-apiserver can reach when it calls
# the operator's webhook through its Service. Nothing here can reach or be reached from
# outside the machine, and the machine's own network settings are left untouched.
set -euo pipefail
if [ "${SEALTRAIL_NETNS:-}" = "1" ]; then
  exec "$@"  # already inside
fi
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
exec $sudo_cmd unshare --net -- env SEALTRAIL_NETNS=1 bash -c '
  set -euo pipefail
  ip link set lo up
  ip route add local 10.244.0.0/16 dev lo
  exec "$@"' netns "$@"
