"""Every name the operator gives or looks for: labels, annotations, objects, ports, paths.

Other code depends on these (the kopf handlers find a policy's workers by label, the webhook
recognizes an injected pod by its container name, the worker is told where its config and
Secrets are mounted), so they live in one place and nowhere else spells them out.

Kubernetes limits some names more than our resources do: an object name may be a 253-character
DNS subdomain, while label values, volume names and Service names are 63-character labels.
`bounded` keeps a derived name readable while it fits, and makes it short and unique (a hash
of the full name) when it does not, so that the same input always gives the same name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from sealtrail.api import worker_api
from sealtrail.api.resources import API_VERSION, GROUP

__all__ = [
    "ADMIN_PORT_NAME",
    "ADMIN_SECRET",
    "ADMIN_SECRET_KEY",
    "APP_NAME",
    "COLLECTOR_TLS_DIR",
    "COMPONENT_COLLECTOR",
    "COMPONENT_LABEL",
    "CONFIG_DIR",
    "CONFIG_HASH_ANNOTATION",
    "CONFIG_KEY",
    "CONFIG_MAPS_DIR",
    "CONFIG_PATH",
    "CONTAINER_NAME",
    "ENV_URL",
    "HEALTH_PATH",
    "INGEST_PORT_NAME",
    "INJECTED_ANNOTATION",
    "INJECT_ANNOTATION",
    "LEASE_NAME",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "METRICS_TOKEN_KEY",
    "METRICS_TOKEN_SECRET",
    "NAME_LABEL",
    "OWNER_API_VERSION",
    "OWNER_KIND",
    "POLICY_LABEL",
    "READY_PATH",
    "RESTART_HASH_ANNOTATION",
    "RUN_AS_ID",
    "SECRETS_DIR",
    "STORE_DIR",
    "STORE_PATH",
    "TLS_DIR",
    "TMP_DIR",
    "VOLUME_COLLECTOR_TLS",
    "VOLUME_CONFIG",
    "VOLUME_STORE",
    "VOLUME_TMP",
    "WEBHOOK_ID",
    "WEBHOOK_TLS_SECRET",
    "WORKER_ARGS",
    "bounded",
    "collector_ca_name",
    "collector_labels",
    "collector_name",
    "collector_tls_name",
    "config_map_mount_path",
    "config_map_name",
    "config_map_volume_name",
    "content_hash",
    "is_dns_label",
    "managed_labels",
    "owner_reference",
    "policy_label_value",
    "secret_file",
    "secret_mount_path",
    "secret_volume_name",
    "tls_mount_path",
    "tls_volume_name",
]

# --- labels and annotations -------------------------------------------------------------------

NAME_LABEL: Final = "app.kubernetes.io/name"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
#: Set on collector pods only, so that a collector's selector can never catch an application
#: pod that merely carries the policy label (an injected pod does).
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
POLICY_LABEL: Final = f"{GROUP}/policy"

APP_NAME: Final = "sealtrail"

# --- Secrets and the Lease the operator owns --------------------------------------------------

#: In each namespace with a policy: the workers' admin credential (made by the operator).
ADMIN_SECRET: Final = "sealtrail-worker-admin"  # noqa: S105 - a name, not a secret
ADMIN_SECRET_KEY: Final = "token"  # noqa: S105 - a key name
#: In the same Secret: the credential that opens the workers' `/metrics` only, copied from the
#: chart's `<release>-metrics-token` (the one its PodMonitor scrapes with).
METRICS_TOKEN_KEY: Final = "metrics-token"  # noqa: S105 - a key name
METRICS_TOKEN_SECRET: Final = "metrics-token"  # noqa: S105 - a name, not a secret
#: In the operator's namespace, prefixed with the release's full name: the webhook's CA and
#: serving certificate (shared by every replica), and the leader's Lease.
WEBHOOK_TLS_SECRET: Final = "webhook-tls"  # noqa: S105 - a name, not a secret
LEASE_NAME: Final = "leader"
MANAGED_BY: Final = "sealtrail-operator"
COMPONENT_COLLECTOR: Final = "collector"

#: A pod opts out of injection with this annotation set to "false".
INJECT_ANNOTATION: Final = f"{GROUP}/inject"
INJECTED_ANNOTATION: Final = f"{GROUP}/injected"
#: sha256[:16] of the worker.yaml a pod was given (or a ConfigMap holds).
CONFIG_HASH_ANNOTATION: Final = f"{GROUP}/config-hash"
#: sha256[:16] of the settings a worker reads only when it starts (store, listeners, processes):
#: a change there needs a new pod; any other change reaches a running worker through the
#: ConfigMap volume. Set on injected pods and on the collector's pod template.
RESTART_HASH_ANNOTATION: Final = f"{GROUP}/restart-hash"

#: The kopf id of the mutating webhook that injects the worker (its URL path and the name of
#: its entry in the MutatingWebhookConfiguration).
WEBHOOK_ID: Final = "sealtrail-inject"

# --- owners -----------------------------------------------------------------------------------

OWNER_API_VERSION: Final = API_VERSION
OWNER_KIND: Final = "AuditPolicy"

# --- the worker container ---------------------------------------------------------------------

CONTAINER_NAME: Final = "sealtrail-worker"
INGEST_PORT_NAME: Final = "st-ingest"
ADMIN_PORT_NAME: Final = "st-admin"
#: The worker's probes, served on the admin port (the contract's own names).
READY_PATH: Final = worker_api.READY_PATH
HEALTH_PATH: Final = worker_api.HEALTH_PATH
#: The environment variable that tells application containers where their worker listens.
ENV_URL: Final = "SEALTRAIL_URL"
#: The worker's user and group (distroless "nonroot"); also the collector's fsGroup.
RUN_AS_ID: Final = 65532

# --- volumes and paths ------------------------------------------------------------------------

VOLUME_CONFIG: Final = "st-config"
VOLUME_STORE: Final = "st-store"
VOLUME_TMP: Final = "st-tmp"
#: The collector's serving certificate (its own volume name: `st-tls-` is the exports' prefix).
VOLUME_COLLECTOR_TLS: Final = "st-ingest-tls"

CONFIG_DIR: Final = "/etc/sealtrail/config"
CONFIG_KEY: Final = "worker.yaml"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_KEY}"
SECRETS_DIR: Final = "/etc/sealtrail/secrets"
TLS_DIR: Final = "/etc/sealtrail/tls"
CONFIG_MAPS_DIR: Final = "/etc/sealtrail/configmaps"
#: Where the collector's serving certificate is mounted (`tls.crt`, `tls.key`, `ca.crt`).
COLLECTOR_TLS_DIR: Final = "/etc/sealtrail/ingest-tls"
STORE_DIR: Final = "/var/lib/sealtrail"
STORE_PATH: Final = f"{STORE_DIR}/audit.db"
TMP_DIR: Final = "/tmp"  # noqa: S108 - an emptyDir of the pod's own, not a shared /tmp

#: The worker's arguments (the image's entrypoint is `sealtrail`).
WORKER_ARGS: Final = ("worker", "--config", CONFIG_PATH)

_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HASH_LENGTH: Final = 10
#: Longest StatefulSet name whose pods' `controller-revision-hash` label (name, a dash and a
#: 10-character hash) still fits in 63 characters.
_STATEFULSET_NAME_LIMIT: Final = 52


def content_hash(text: str, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of `text` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def is_dns_label(name: str) -> bool:
    """True when `name` is an RFC 1123 label (what volume and Service names must be)."""
    return _DNS_LABEL.fullmatch(name) is not None


def bounded(prefix: str, name: str, limit: int = 63) -> str:
    """`prefix + name` when that is a DNS label of at most `limit` characters.

    Otherwise as much of it as fits, a dash and a hash of `name`, so that two long names that
    share a beginning still get different results. Dots (allowed in object names, not in
    labels) are replaced by dashes in the readable part.
    """
    whole = prefix + name
    if len(whole) <= limit and is_dns_label(whole):
        return whole
    digest = content_hash(name, _HASH_LENGTH)
    readable = (prefix + name.replace(".", "-"))[: limit - _HASH_LENGTH - 1].rstrip("-")
    return f"{readable}-{digest}"


def policy_label_value(policy: str) -> str:
    """The value of `sealtrail.dev/policy` for `policy` (label values are at most 63)."""
    return bounded("", policy)


def managed_labels(policy: str) -> dict[str, str]:
    """The labels on every object the operator creates for `policy`."""
    return {
        NAME_LABEL: APP_NAME,
        MANAGED_BY_LABEL: MANAGED_BY,
        POLICY_LABEL: policy_label_value(policy),
    }


def collector_labels(policy: str) -> dict[str, str]:
    """The selector of a policy's collector pods (its Service and StatefulSet select by it)."""
    return {
        NAME_LABEL: APP_NAME,
        COMPONENT_LABEL: COMPONENT_COLLECTOR,
        POLICY_LABEL: policy_label_value(policy),
    }


def config_map_name(policy: str) -> str:
    """`sealtrail-<policy>`: the worker config of a policy (sidecar and collector alike).

    At most 63 characters, because the policy status names it in a field that takes a label.
    """
    return bounded("sealtrail-", policy)


def collector_name(policy: str) -> str:
    """`sealtrail-collector-<policy>`: the collector's StatefulSet and Service."""
    return bounded("sealtrail-collector-", policy, _STATEFULSET_NAME_LIMIT)


def collector_tls_name(policy: str) -> str:
    """`sealtrail-collector-<policy>-tls`: the Secret with the collector's serving certificate."""
    return collector_name(policy) + "-tls"


def collector_ca_name(policy: str) -> str:
    """`sealtrail-collector-<policy>-ca`: the collector's CA (a Secret and a ConfigMap).

    The Secret holds the CA's key and is never mounted; the ConfigMap publishes the CA
    certificate (and an audit webhook kubeconfig) for whoever configures a caller.
    """
    return collector_name(policy) + "-ca"


def owner_reference(policy: str, uid: str) -> dict[str, object]:
    """The reference that makes an object the policy's, so it goes when the policy goes."""
    return {
        "apiVersion": OWNER_API_VERSION,
        "kind": OWNER_KIND,
        "name": policy,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def secret_mount_path(secret: str) -> str:
    """Where a Secret named by a `secretKeyRef` is mounted (a directory, one file per key)."""
    return f"{SECRETS_DIR}/{secret}"


def secret_file(secret: str, key: str) -> str:
    """The file a `secretKeyRef {name: secret, key: key}` becomes."""
    return f"{secret_mount_path(secret)}/{key}"


def tls_mount_path(secret: str) -> str:
    """Where a `tls.secretName` Secret is mounted (`ca.crt`, `tls.crt`, `tls.key` inside)."""
    return f"{TLS_DIR}/{secret}"


def secret_volume_name(secret: str) -> str:
    """The pod volume of a credential Secret: `st-secret-<name>`, or a hash when too long."""
    return bounded("st-secret-", secret)


def config_map_mount_path(name: str) -> str:
    """Where a ConfigMap a policy names (the handoff collector's CA) is mounted."""
    return f"{CONFIG_MAPS_DIR}/{name}"


def config_map_volume_name(name: str) -> str:
    """The pod volume of such a ConfigMap: `st-cm-<name>`, or a hash when too long."""
    return bounded("st-cm-", name)


def tls_volume_name(secret: str) -> str:
    """The pod volume of a TLS Secret: `st-tls-<name>`, or a hash when too long."""
    return bounded("st-tls-", secret)
